/**
 * The RPC client's ndjson framing for HTTP answers, bounded and linear. `@effect/rpc`'s own
 * (`RpcSerialization.ndjson`) appends each chunk to one string and searches it for a newline from
 * the start every time: a server that sends a long line in small chunks makes the client scan
 * (and flatten) everything held so far once per chunk, quadratic in the line. It also decodes
 * each chunk's bytes on their own, so a character split between two chunks comes out mangled.
 *
 * Here each chunk is decoded as part of one stream and searched once; the pieces of an unfinished
 * line are kept as they came and joined once, when its newline arrives. A line longer than the
 * bound fails the response (the call ends `Unavailable`) as soon as it is known to be too long,
 * and so does one nested too deep (`parseAnswer`), before it is parsed.
 */
import { RpcSerialization } from "@effect/rpc"
import { parseAnswer } from "./RpcAnswerDepth.ts"

/** Thrown by `decode` for a line over the bound; the parser has dropped what it held. */
export class AnswerTooLarge extends Error {
  constructor(readonly maxLineChars: number) {
    super(`an answer from the server is over ${maxLineChars} characters (maxAnswerBytes)`)
  }
}

/** ndjson with at most `maxLineChars` characters per line (bytes, for the ASCII JSON servers send). */
export const boundedNdjson = (maxLineChars: number): RpcSerialization.RpcSerialization["Type"] =>
  RpcSerialization.RpcSerialization.of({
    contentType: RpcSerialization.ndjson.contentType,
    includesFraming: true,
    unsafeMake: () => {
      const encoder = RpcSerialization.ndjson.unsafeMake()
      const decoder = new TextDecoder()
      /** The unfinished line, in the pieces it came in. */
      let pieces: Array<string> = []
      let held = 0
      const drop = () => {
        pieces = []
        held = 0
      }
      return {
        encode: encoder.encode,
        decode: (data) => {
          const text = typeof data === "string" ? data : decoder.decode(data, { stream: true })
          const messages: Array<unknown> = []
          let from = 0
          for (let newline = text.indexOf("\n"); newline !== -1; newline = text.indexOf("\n", from)) {
            if (held + newline - from > maxLineChars) {
              drop()
              throw new AnswerTooLarge(maxLineChars)
            }
            pieces.push(text.slice(from, newline))
            const line = pieces.join("")
            drop()
            from = newline + 1
            if (line.length > 0) messages.push(parseAnswer(line))
          }
          if (from < text.length) {
            held += text.length - from
            if (held > maxLineChars) {
              drop()
              throw new AnswerTooLarge(maxLineChars)
            }
            pieces.push(text.slice(from))
          }
          return messages
        }
      }
    }
  })
