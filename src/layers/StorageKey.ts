/**
 * Secrets at rest: the columns of the client database that hold keys and MLS states (the
 * installation's signature key, the inbox's root key, key packages' private parts, group
 * states and staged commits) are sealed with AES-256-GCM under a key the application
 * supplies. What is not sealed: message texts, ids, membership and metadata (protect those
 * with disk encryption). Without a key, values are stored as they are (and read back either
 * way, so a database can be sealed later: each value is sealed on its next write).
 *
 * Sealed value: "cv1" | 12-byte nonce | ciphertext | 16-byte tag. The column name is the
 * additional data, so a value moved to another column does not open.
 */
import { Config, ConfigError, Context, Effect, Option, ParseResult, Redacted, Schema } from "effect"
import * as NodeCrypto from "node:crypto"

const MAGIC = Buffer.from("cv1")
const NONCE_BYTES = 12
const TAG_BYTES = 16

export class StorageKey extends Context.Tag("converge/StorageKey")<StorageKey, Option.Option<Redacted.Redacted<Uint8Array>>>() {
  /** No key: secrets are stored as they are. */
  static readonly none = Option.none<Redacted.Redacted<Uint8Array>>()
}

const isSealed = (bytes: Uint8Array) =>
  bytes.length >= MAGIC.length + NONCE_BYTES + TAG_BYTES && Buffer.from(bytes.subarray(0, 3)).equals(MAGIC)

export const seal = (key: Uint8Array, column: string, plaintext: Uint8Array): Uint8Array => {
  const nonce = NodeCrypto.randomBytes(NONCE_BYTES)
  const cipher = NodeCrypto.createCipheriv("aes-256-gcm", key, nonce).setAAD(Buffer.from(column))
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()])
  return new Uint8Array(Buffer.concat([MAGIC, nonce, body, cipher.getAuthTag()]))
}

export const open = (key: Uint8Array, column: string, sealed: Uint8Array): Uint8Array => {
  const nonce = sealed.subarray(MAGIC.length, MAGIC.length + NONCE_BYTES)
  const body = sealed.subarray(MAGIC.length + NONCE_BYTES, sealed.length - TAG_BYTES)
  const decipher = NodeCrypto.createDecipheriv("aes-256-gcm", key, nonce).setAAD(Buffer.from(column))
  decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES))
  return new Uint8Array(Buffer.concat([decipher.update(body), decipher.final()]))
}

/** Seals `bytes` for `column` with the key in the context, if there is one. */
export const sealFor = (column: string) => (bytes: Uint8Array) =>
  Effect.map(StorageKey, Option.match({ onNone: () => bytes, onSome: (key) => seal(Redacted.value(key), column, bytes) }))

/**
 * A column holding a secret: sealed on the way in, opened on the way out. A sealed value read
 * without the key, or with another key, does not decode (the row is set aside, never used).
 */
export const Sealed = (column: string) =>
  Schema.transformOrFail(Schema.Uint8ArrayFromSelf, Schema.Uint8ArrayFromSelf, {
    strict: true,
    decode: (raw, _, ast) =>
      Effect.flatMap(StorageKey, (key) => {
        // SQLite hands back Node Buffers: plain Uint8Arrays out.
        const stored = raw.constructor === Uint8Array ? raw : new Uint8Array(raw)
        if (!isSealed(stored)) return ParseResult.succeed(stored)
        if (Option.isNone(key)) {
          return ParseResult.fail(new ParseResult.Type(ast, "sealed", `${column} is sealed and no storage key is given`))
        }
        return Effect.try({
          try: () => open(Redacted.value(key.value), column, stored),
          catch: () => new ParseResult.Type(ast, "sealed", `${column} does not open with the storage key`)
        })
      }),
    encode: (bytes) => sealFor(column)(bytes)
  })

/**
 * `Sealed` for a key known up front: seals and opens synchronously (no service to look up), so
 * a row schema built with it decodes without the effectful parser.
 */
export const SealedWith = (key: StorageKey["Type"], column: string) =>
  Schema.transformOrFail(Schema.Uint8ArrayFromSelf, Schema.Uint8ArrayFromSelf, {
    strict: true,
    decode: (raw, _, ast) => {
      // SQLite hands back a fresh Node Buffer per read: a plain Uint8Array view of it, no copy.
      const stored = raw.constructor === Uint8Array ? raw : new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength)
      if (!isSealed(stored)) return ParseResult.succeed(stored)
      if (Option.isNone(key)) {
        return ParseResult.fail(new ParseResult.Type(ast, "sealed", `${column} is sealed and no storage key is given`))
      }
      try {
        return ParseResult.succeed(open(Redacted.value(key.value), column, stored))
      } catch {
        return ParseResult.fail(new ParseResult.Type(ast, "sealed", `${column} does not open with the storage key`))
      }
    },
    encode: (bytes) =>
      ParseResult.succeed(Option.isNone(key) ? bytes : seal(Redacted.value(key.value), column, bytes))
  })

/** A 32-byte key from 64 hex characters. */
export const fromHex = (hex: string): Option.Option<Redacted.Redacted<Uint8Array>> =>
  /^[0-9a-fA-F]{64}$/.test(hex) ? Option.some(Redacted.make(new Uint8Array(Buffer.from(hex, "hex")))) : Option.none()

/** `CONVERGE_STORAGE_KEY` (64 hex characters), if set. */
export const fromConfig: Effect.Effect<StorageKey["Type"], ConfigError.ConfigError> = Effect.gen(function*() {
  const value = yield* Config.option(Config.redacted("CONVERGE_STORAGE_KEY"))
  if (Option.isNone(value)) return StorageKey.none
  const key = fromHex(Redacted.value(value.value))
  if (Option.isNone(key)) {
    return yield* Effect.fail(
      ConfigError.InvalidData(["CONVERGE_STORAGE_KEY"], "the storage key must be 64 hexadecimal characters")
    )
  }
  return key
})
