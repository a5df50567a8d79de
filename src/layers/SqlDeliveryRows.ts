/**
 * How the SQL delivery store reads and writes its columns on both drivers, and how its
 * operations fail and are traced.
 */
import { Effect, Schema } from "effect"
import { IdentityUpdate } from "../domain/Wire.ts"
import { DeliveryStoreError } from "../services/DeliveryStore.ts"
import { serverSpan } from "./DeliveryRequests.ts"

/** Largest value of a signed 64-bit column: cursors above it can only be past the end. */
export const MAX_INT64 = 9_223_372_036_854_775_807n

/** Drivers return BIGINT as string (pg) or number (SQLite), and text as text. */
export const big = (value: unknown): bigint => BigInt(value as string | number | bigint)

/** Drivers return blobs as Buffers; hand out plain, unshared Uint8Arrays. */
export const bytesOf = (value: unknown): Uint8Array => {
  const view = value as Uint8Array
  return new Uint8Array(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength))
}

/** A BIGINT column as either driver returns it: text (pg), a number or a bigint (SQLite). */
const BigIntColumn = Schema.Union(Schema.BigInt, Schema.BigIntFromNumber, Schema.BigIntFromSelf)

/** A topic's head (`ds_topics`). */
export const HeadRow = Schema.Struct({ topic: Schema.String, last_sequence_id: BigIntColumn })

const IdentityUpdateJson = Schema.parseJson(IdentityUpdate)
export const encodeUpdate = Schema.encodeSync(IdentityUpdateJson)
export const decodeUpdate = Schema.decodeUnknown(IdentityUpdateJson)

/** Maps an operation's failure to `DeliveryStoreError` and traces it as `DeliveryStore.<operation>`. */
export const failed = (operation: string) => <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  effect.pipe(
    Effect.mapError((cause) => new DeliveryStoreError({ operation, cause })),
    serverSpan(`DeliveryStore.${operation}`)
  )
