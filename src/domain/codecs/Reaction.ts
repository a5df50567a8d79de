/** An example content codec: an emoji reaction to a message (its id), added or removed. */
import { Schema } from "effect"
import { MessageId } from "../Ids.ts"
import { jsonCodec } from "./ContentCodec.ts"

/** Longest reaction, in characters (an emoji with modifiers, or a short code). */
export const MAX_REACTION_EMOJI = 32

export class Reaction extends Schema.Class<Reaction>("Reaction")({
  reference: MessageId,
  emoji: Schema.String.pipe(Schema.minLength(1), Schema.maxLength(MAX_REACTION_EMOJI)),
  action: Schema.Literal("added", "removed")
}) {
  /** `type` of a reaction's content. */
  static readonly contentType = "converge.dev/reaction:1"
  static readonly codec = jsonCodec(
    Reaction.contentType,
    Reaction,
    (r) => r.action === "added" ? `reacted ${r.emoji}` : `removed the reaction ${r.emoji}`
  )
  /** The content to `sendContent` (its fallback says who reacted how, for clients without the codec). */
  static readonly encode = Reaction.codec.encode
  /** The reaction a message carries, if it is one. */
  static readonly decode = Reaction.codec.decode
}
