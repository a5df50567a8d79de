/**
 * How values sit in SQLite columns, shared by the SQLite adapters: SQLite hands back bigint or
 * number for integers and Buffers for blobs; the domain wants numbers, bigints, booleans and
 * plain Uint8Arrays, and camelCase fields.
 */
import { Schema } from "effect"
import type { Sealed, SealedWith } from "./StorageKey.ts"

/** SQLite hands back bigint (safe integers) or number; counters are numbers in the domain. */
export const Int = Schema.transform(Schema.Union(Schema.BigIntFromSelf, Schema.Number), Schema.Number, {
  strict: true,
  decode: (n) => Number(n),
  encode: (n) => n
})
export const Flag = Schema.transform(Schema.Union(Schema.BigIntFromSelf, Schema.Number), Schema.Boolean, {
  strict: true,
  decode: (n) => Number(n) !== 0,
  encode: (b) => (b ? 1 : 0)
})
export const Big = Schema.transform(Schema.Union(Schema.BigIntFromSelf, Schema.Number), Schema.BigIntFromSelf, {
  strict: true,
  decode: (n) => BigInt(n),
  encode: (n) => n
})
/** SQLite hands back Node Buffers; normalise them to plain Uint8Arrays. */
export const Bytes = Schema.transform(Schema.Uint8ArrayFromSelf, Schema.Uint8ArrayFromSelf, {
  strict: true,
  decode: (bytes) => (bytes.constructor === Uint8Array ? bytes : new Uint8Array(bytes)),
  encode: (bytes) => bytes
})
export const Nullable = Schema.NullOr
/** A camelCase field read from its snake_case column. */
export const column = <S extends Schema.Schema.All>(schema: S, name: string) =>
  Schema.propertySignature(schema).pipe(Schema.fromKey(name))

/** Sealed columns: `Sealed` (effectful, for encoding), or `SealedWith` a known key (decoding). */
export type SealedColumn = (column: string) => ReturnType<typeof Sealed> | ReturnType<typeof SealedWith>
/** Sealed columns opened with the storage's key: how the repositories decode the rows they read. */
export type SealedWithKey = (column: string) => ReturnType<typeof SealedWith>
