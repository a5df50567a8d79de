/**
 * How values sit in SQLite columns, shared by the SQLite adapters: SQLite hands back bigint or
 * number for integers and Buffers for blobs; the domain wants numbers, bigints, booleans and
 * plain Uint8Arrays, and camelCase fields.
 */
import { ParseResult, Schema, type SchemaAST } from "effect"
import type { Sealed, SealedWith } from "./StorageKey.ts"

/**
 * An integer column's value as SQLite hands it back: a bigint (safe integers) or a number. One
 * check, not a union of two schemas: every integer column of every row read passes through it.
 */
const SqlInteger = Schema.declare((u): u is bigint | number => typeof u === "bigint" || typeof u === "number", {
  identifier: "SqlInteger"
})

/** A REAL where an integer belongs is damage: refused, not turned into a defect by `BigInt`. */
const integerOnly = (n: bigint | number, ast: SchemaAST.AST) =>
  typeof n === "bigint" || Number.isSafeInteger(n)
    ? ParseResult.succeed(n)
    : ParseResult.fail(new ParseResult.Type(ast, n, `an integer column holds ${n}`))

/** Counters are numbers in the domain. */
export const Int = Schema.transformOrFail(SqlInteger, Schema.Number, {
  strict: true,
  decode: (n, _, ast) => ParseResult.map(integerOnly(n, ast), Number),
  encode: ParseResult.succeed
})
export const Flag = Schema.transformOrFail(SqlInteger, Schema.Boolean, {
  strict: true,
  decode: (n, _, ast) => ParseResult.map(integerOnly(n, ast), (i) => Number(i) !== 0),
  encode: (b) => ParseResult.succeed(b ? 1 : 0)
})
export const Big = Schema.transformOrFail(SqlInteger, Schema.BigIntFromSelf, {
  strict: true,
  decode: (n, _, ast) => ParseResult.map(integerOnly(n, ast), BigInt),
  encode: ParseResult.succeed
})
/** One integer read outside a row schema (a cursor, a maximum): damage fails typed, as in a row. */
export const decodeBig = Schema.decodeUnknown(Big)

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
