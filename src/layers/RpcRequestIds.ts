/**
 * Request ids on the RPC wire, checked before `@effect/rpc` reads them. It turns every id into
 * a `BigInt` (its parse is quadratic-ish in the digits: a 3-million-digit id held a server's
 * event loop for 11 s, a 5-million-digit answer a client's for over a second), on both sides:
 * the server reads the ids of requests, acks and interrupts, the client those of chunks and
 * exits. Our client counts ids from 0, so an id of more than 20 digits is nobody's.
 */
import { RpcSerialization } from "@effect/rpc"

/** Longest request id taken: the RPC client counts from 0, so 20 digits (2^64) is plenty. */
export const MAX_REQUEST_ID_DIGITS = 20
const REQUEST_ID = new RegExp(`^[0-9]{1,${MAX_REQUEST_ID_DIGITS}}$`)

/** A request id `BigInt` reads at no cost: a decimal of at most 20 digits (or a bigint of no sign). */
export const isShortRequestId = (id: unknown): boolean =>
  typeof id === "bigint" ? id >= 0n : typeof id === "string" && REQUEST_ID.test(id)

/** The request id a message of either side carries, if it is of a kind that carries one. */
const requestIdOf = (message: unknown): { readonly id: unknown } | undefined => {
  if (typeof message !== "object" || message === null) return undefined
  const m = message as { readonly _tag?: unknown; readonly id?: unknown; readonly requestId?: unknown }
  if (m._tag === "Request") return { id: m.id }
  if (m._tag === "Ack" || m._tag === "Interrupt" || m._tag === "Exit" || m._tag === "Chunk") return { id: m.requestId }
  return undefined
}

const hasShortId = (message: unknown) => {
  const carried = requestIdOf(message)
  return carried === undefined || isShortRequestId(carried.id)
}

/**
 * A serialization whose decoder looks at every message's request id before any RPC layer
 * does. With `"refuse"` (the server) a message with an id that is not a short decimal is a
 * protocol defect (the message, and the rest of its frame or body, are dropped); `@effect/rpc`
 * would also echo the id back, and throws on ids `BigInt` does not take. With `"drop"` (the
 * client) such a message is left out: it answers none of our calls, as an exit for an id
 * unknown to the RPC client would, and a throw in the HTTP transport's stream would be a defect.
 */
export const boundedRequestIds = (
  inner: RpcSerialization.RpcSerialization["Type"],
  malformed: "refuse" | "drop" = "refuse"
) =>
  RpcSerialization.RpcSerialization.of({
    contentType: inner.contentType,
    includesFraming: inner.includesFraming,
    unsafeMake: () => {
      const parser = inner.unsafeMake()
      return {
        encode: parser.encode,
        decode: (data) => {
          const messages = parser.decode(data)
          if (messages.every(hasShortId)) return messages
          if (malformed === "drop") return messages.filter(hasShortId)
          throw new Error(`malformed request: a request id must be a decimal of at most ${MAX_REQUEST_ID_DIGITS} digits`)
        }
      }
    }
  })
