/** An example content codec: a reply to a message (its id) with a text. */
import { Schema } from "effect"
import { MessageId } from "../Ids.ts"
import { jsonCodec } from "./ContentCodec.ts"

/** Longest reply text, in characters. */
export const MAX_REPLY_TEXT = 16_384

export class Reply extends Schema.Class<Reply>("Reply")({
  reference: MessageId,
  text: Schema.String.pipe(Schema.maxLength(MAX_REPLY_TEXT))
}) {
  /** `type` of a reply's content. */
  static readonly contentType = "converge.dev/reply:1"
  static readonly codec = jsonCodec(Reply.contentType, Reply, (reply) => reply.text)
  /** The content to `sendContent` (its fallback is the reply's text). */
  static readonly encode = Reply.codec.encode
  /** The reply a message carries, if it is one. */
  static readonly decode = Reply.codec.decode
}
