/**
 * How deeply a server's answers nest, checked on the client before they are parsed. `JSON.parse`
 * copes with any depth (slowly: seconds for 16 MiB of brackets), but the RPC client's decoding and
 * effect's formatting of a value that does not decode recurse, and an answer nested 5,000 levels
 * deep overflowed the stack: a page or an error so nested failed its call with a `RangeError`
 * defect instead of a typed error, a chunk so nested ended its subscription for good, and over
 * WebSocket a chunk, defect or cause so nested took the connection down with every call on it
 * (the one answered waiting for its timeout).
 */
import { RpcSerialization } from "@effect/rpc"
import { nestingDepth } from "./JsonDepth.ts"
import { MAX_REQUEST_ID_DIGITS } from "./RpcRequestIds.ts"

/**
 * Deepest nesting an answer may have. The deepest a `DeliveryServer` gives is 9 levels
 * (`syncQuery`'s identity entries: message, exit, value, identities, inbox, updates, entry,
 * update, action; a test reads it off the RPC schemas), and the causes of calls it cut short
 * were 7 or 8 (chains of interruptions) over the RPC tests. 64 leaves room for both and stays far
 * below where decoding overflowed the stack here (a cause 1,500 levels deep, a value 2,500).
 */
export const MAX_ANSWER_DEPTH = 64

/** Thrown by a decoder for an answer nested too deep (over WebSocket, only one naming no call of ours). */
export class AnswerTooDeep extends Error {
  constructor() {
    super(`an answer from the server is nested more than ${MAX_ANSWER_DEPTH} levels deep`)
  }
}

/**
 * One answer's JSON, parsed, if it nests no deeper than the bound. For HTTP, where each response
 * carries one call: its response fails, and the call with it (`Unavailable`, retryable).
 */
export const parseAnswer = (text: string): unknown => {
  if (nestingDepth(text, MAX_ANSWER_DEPTH) > MAX_ANSWER_DEPTH) throw new AnswerTooDeep()
  return JSON.parse(text)
}

/**
 * An answer to one call as @effect/rpc's server writes it: its tag and id first. Read off the
 * text, so the deep value after them is never parsed.
 */
const ANSWER_HEAD_CHARS = 64
const ANSWER_HEAD = new RegExp(`^\\{"_tag":"(?:Exit|Chunk)","requestId":"([0-9]{1,${MAX_REQUEST_ID_DIGITS}})"`)

/** Ends the call as an answer that does not decode does: `transportErrors` makes it a retryable `Unavailable`. */
const tooDeepExit = { _tag: "Failure", cause: { _tag: "Die", defect: new AnswerTooDeep().message } } as const

/**
 * The RPC client's WebSocket wire format: JSON, one answer per message, each checked for depth
 * before it is parsed. An answer too deep to an exit or a chunk of ours becomes that call's exit
 * with a retryable `Unavailable` (a stream resubscribes), and the connection goes on. Any other
 * (no id read at the head) is a decoding error, which fails every call of the connection with a
 * retryable `Unavailable`: no more than an answer `Defect` does, which any server may send.
 */
export const depthBoundedJson: RpcSerialization.RpcSerialization["Type"] = RpcSerialization.RpcSerialization.of({
  contentType: RpcSerialization.json.contentType,
  includesFraming: false,
  unsafeMake: () => {
    const decoder = new TextDecoder()
    const encoder = RpcSerialization.json.unsafeMake()
    return {
      encode: encoder.encode,
      decode: (data) => {
        const text = typeof data === "string" ? data : decoder.decode(data)
        if (nestingDepth(text, MAX_ANSWER_DEPTH) <= MAX_ANSWER_DEPTH) return [JSON.parse(text)]
        const head = ANSWER_HEAD.exec(text.slice(0, ANSWER_HEAD_CHARS))
        if (head === null) throw new AnswerTooDeep()
        return [{ _tag: "Exit", requestId: head[1]!, exit: tooDeepExit }]
      }
    }
  }
})
