/**
 * Bytes as standard, padded base64, in native code. Effect's `Uint8ArrayFromBase64` builds its
 * string a character at a time: a 37 KB welcome written ahead and then sent allocated megabytes.
 */
import { ParseResult, Schema } from "effect"

/** Largest byte field: above any request body a server accepts, so only the body limit binds. */
export const MAX_BYTES_FIELD = 64 * 1024 * 1024

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/

/**
 * Bytes as standard, padded base64, decoded and encoded by `Buffer` in native code. The
 * alphabet and length are checked first, since `Buffer` silently skips what it cannot read.
 */
export const Base64Bytes: Schema.Schema<Uint8Array, string> = Schema.transformOrFail(
  Schema.String.pipe(Schema.maxLength(Math.ceil(MAX_BYTES_FIELD / 3) * 4)),
  Schema.Uint8ArrayFromSelf,
  {
    strict: true,
    decode: (text, _, ast) => {
      if (text.length % 4 !== 0 || !BASE64.test(text)) {
        return ParseResult.fail(new ParseResult.Type(ast, `${text.slice(0, 16)}...`, "not padded base64"))
      }
      const buffer = Buffer.from(text, "base64")
      return ParseResult.succeed(new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength))
    },
    encode: (bytes) =>
      ParseResult.succeed(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64"))
  }
)
