/**
 * Bytes as standard, padded base64, in native code. Effect's `Uint8ArrayFromBase64` builds its
 * string a character at a time: a 37 KB welcome written ahead and then sent allocated megabytes.
 */
import { ParseResult, Schema, type SchemaAST } from "effect"

/** Largest byte field: above any request body a server accepts, so only the body limit binds. */
export const MAX_BYTES_FIELD = 64 * 1024 * 1024

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/

const notBase64 = (ast: SchemaAST.AST, text: string) =>
  ParseResult.fail(new ParseResult.Type(ast, `${text.slice(0, 16)}...`, "not padded base64"))

/**
 * Bytes as standard, padded base64, decoded and encoded by `Buffer` in native code. `Buffer`
 * silently skips what it cannot read, so the text must be what it writes for those bytes, or
 * else pass the alphabet and padding pattern (non-zero pad bits, as before).
 */
export const Base64Bytes: Schema.Schema<Uint8Array, string> = Schema.transformOrFail(
  Schema.String.pipe(Schema.maxLength(Math.ceil(MAX_BYTES_FIELD / 3) * 4)),
  Schema.Uint8ArrayFromSelf,
  {
    strict: true,
    decode: (text, _, ast) => {
      if (text.length % 4 !== 0) return notBase64(ast, text)
      const buffer = Buffer.from(text, "base64")
      // What Buffer encodes back to the same text is padded base64 (all we write): one native
      // pass each way, where the pattern took about 5 ns a character (0.3 ms on a 50 KB welcome,
      // read back several times per add). Anything else gets the pattern, as before.
      if (buffer.toString("base64") !== text && !BASE64.test(text)) return notBase64(ast, text)
      return ParseResult.succeed(new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength))
    },
    encode: (bytes) =>
      ParseResult.succeed(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64"))
  }
)
