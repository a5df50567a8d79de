/**
 * Request ids on the RPC wire, checked before `@effect/rpc` reads them. It turns every id into
 * a `BigInt` (its parse is quadratic-ish in the digits: a 3-million-digit id held a server's
 * event loop for 11 s, a 5-million-digit answer a client's for over a second), on both sides:
 * the server reads the ids of requests, acks and interrupts, the client those of chunks and
 * exits. Our client counts ids from 0, so an id of more than 20 digits is nobody's.
 *
 * On the server, also how deeply a request nests: one nested 5,000 levels deep overflowed the
 * stack while the RPC server formatted why its payload did not decode, and took down every
 * call of its connection.
 */
import type { RpcMessage } from "@effect/rpc"
import { RpcSerialization } from "@effect/rpc"
import { Schema } from "effect"

import { DeliveryError } from "../domain/Errors.ts"
import { makeDepthScanner } from "./JsonDepth.ts"

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

// ---- nesting depth (server side) ----

/**
 * Deepest nesting a request may have. The deepest real one is 4 levels (`publishIdentityUpdate`:
 * message, payload, update, action; headers are 3), so 64 leaves room and stays far below
 * where recursive formatting of a value overflows the stack (between 1,000 and 5,000).
 */
export const MAX_REQUEST_DEPTH = 64

const tooDeepDetail = `malformed request: nested more than ${MAX_REQUEST_DEPTH} levels deep`

/** A request too deep, answered as the service answers bad input: typed, not retryable. */
const tooDeepFailure = {
  _tag: "Failure",
  cause: {
    _tag: "Fail",
    error: Schema.encodeSync(DeliveryError)(new DeliveryError({ reason: "InvalidRequest", retryable: false, detail: tooDeepDetail }))
  }
} as const

const tooDeepDefect = () => new Error(tooDeepDetail)

/**
 * What goes on in place of a request too deep: its id and tag, no headers, and a payload
 * (`null`) that no RPC's payload schema takes, so the server answers it at once, under its id,
 * with a defect (which `encode` turns into the typed refusal) and runs nothing. The deep value
 * is dropped before anything but `JSON.parse` (which does not recurse) walks it. A message whose id cannot be answered under is a
 * protocol defect, as an id that is not a short decimal is.
 */
const standIn = (message: unknown): RpcMessage.RequestEncoded => {
  const m = (typeof message === "object" && message !== null ? message : {}) as {
    readonly _tag?: unknown
    readonly id?: unknown
    readonly tag?: unknown
  }
  if (m._tag !== "Request" || !isShortRequestId(m.id) || typeof m.tag !== "string") throw tooDeepDefect()
  return { _tag: "Request", id: String(m.id), tag: m.tag, payload: null, headers: [] }
}

/**
 * Ids remembered per connection: one whose answer never comes (an RPC the server does not
 * have answers with a defect naming no request) must not make the set grow without bound.
 */
const MAX_REMEMBERED_REFUSALS = 64

interface EncodedExit {
  readonly _tag?: unknown
  readonly requestId?: unknown
  readonly exit?: { readonly _tag?: unknown; readonly cause?: { readonly _tag?: unknown } }
}

/**
 * The depth check of one connection's (or HTTP body's) parser: `check` swaps each message
 * deeper than the bound for its stand-in and remembers its id, as the server writes ids in
 * answers ("007" as "7"); `answer` replaces the defect the server then sends under that id.
 */
const makeDepthGuard = (framed: boolean) => {
  const depths = makeDepthScanner(framed, MAX_REQUEST_DEPTH)
  const refused = new Set<string>()
  const answerOne = (response: unknown): unknown => {
    const r = response as EncodedExit | null
    if (r?._tag !== "Exit" || typeof r.requestId !== "string" || !refused.delete(r.requestId)) return response
    // Only the server's defect is ours to replace: a refusal for a cap or a duplicate id stays.
    return r.exit?._tag === "Failure" && r.exit.cause?._tag === "Die" ? { ...r, exit: tooDeepFailure } : response
  }
  return {
    /** The depth of each message `text` completes, for `check` once `text` is parsed. */
    scan: depths,
    check: (messages: ReadonlyArray<unknown>, scanned: ReadonlyArray<number>): ReadonlyArray<unknown> => {
      if (scanned.every((depth) => depth <= MAX_REQUEST_DEPTH)) return messages
      // Parser and scanner split messages alike; if not, nothing here can be trusted.
      if (scanned.length !== messages.length) throw tooDeepDefect()
      return messages.map((message, i) => {
        if (scanned[i]! <= MAX_REQUEST_DEPTH) return message
        const request = standIn(message)
        refused.add(String(BigInt(request.id)))
        if (refused.size > MAX_REMEMBERED_REFUSALS) refused.delete(refused.values().next().value!)
        return request
      })
    },
    answer: (response: unknown): unknown =>
      refused.size === 0 ? response : Array.isArray(response) ? response.map(answerOne) : answerOne(response)
  }
}

const textDecoder = new TextDecoder()

/**
 * A serialization whose decoder looks at every message's request id before any RPC layer
 * does. With `"refuse"` (the server) a message with an id that is not a short decimal is a
 * protocol defect (the message, and the rest of its frame or body, are dropped); `@effect/rpc`
 * would also echo the id back, and throws on ids `BigInt` does not take. With `"drop"` (the
 * client) such a message is left out: it answers none of our calls, as an exit for an id
 * unknown to the RPC client would, and a throw in the HTTP transport's stream would be a defect.
 *
 * The server also scans every message's nesting before it is parsed: a request deeper than
 * `MAX_REQUEST_DEPTH` gets a typed `InvalidRequest` under its id, and the connection goes on.
 * The client checks its answers' depth in its own wire formats (`RpcAnswerDepth`), with a bound of its own.
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
      const depth = malformed === "refuse" ? makeDepthGuard(inner.includesFraming) : undefined
      const decodeChecked = (data: Uint8Array | string): ReadonlyArray<unknown> => {
        if (depth === undefined) return parser.decode(data)
        // Decoded once here, so the scanner and the parser read the same text.
        const text = typeof data === "string" ? data : textDecoder.decode(data)
        const scanned = depth.scan(text)
        return depth.check(parser.decode(text), scanned)
      }
      return {
        encode: depth === undefined ? parser.encode : (response) => parser.encode(depth.answer(response)),
        decode: (data) => {
          const messages = decodeChecked(data)
          if (messages.every(hasShortId)) return messages
          if (malformed === "drop") return messages.filter(hasShortId)
          throw new Error(`malformed request: a request id must be a decimal of at most ${MAX_REQUEST_ID_DIGITS} digits`)
        }
      }
    }
  })
