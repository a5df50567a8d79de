/**
 * The pattern for typed content: a content type, a Schema for the value, JSON bytes on the wire
 * and a fallback text for clients that do not know the type. The engine never looks inside;
 * `Reply` and `Reaction` are the library's examples of it.
 */
import { Option, Schema } from "effect"

/** What `Conversation.sendContent` takes. */
export interface EncodedContent {
  readonly type: string
  readonly bytes: Uint8Array
  readonly fallback: string
}

/** What a `Message` carries (`message.content`), or null for plain text. */
export interface ReceivedContent {
  readonly content: { readonly type: string; readonly bytes: Uint8Array } | null
}

export interface ContentCodec<A> {
  readonly contentType: string
  /** The content to send: the value as JSON bytes, with its fallback text. */
  readonly encode: (value: A) => EncodedContent
  /** The value of a message of this type; none for another type or bytes that do not decode. */
  readonly decode: (message: ReceivedContent) => Option.Option<A>
}

export const jsonCodec = <A, I>(
  contentType: string,
  schema: Schema.Schema<A, I>,
  fallback: (value: A) => string
): ContentCodec<A> => {
  const json = Schema.parseJson(schema)
  const decodeJson = Schema.decodeUnknownOption(json)
  return {
    contentType,
    encode: (value) => ({
      type: contentType,
      bytes: new TextEncoder().encode(Schema.encodeSync(json)(value)),
      fallback: fallback(value)
    }),
    decode: (message) =>
      message.content === null || message.content.type !== contentType
        ? Option.none()
        : decodeJson(new TextDecoder("utf-8", { fatal: false }).decode(message.content.bytes))
  }
}
