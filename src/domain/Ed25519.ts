/**
 * Ed25519 on node:crypto (OpenSSL), with parsed keys cached by their bytes. Pure in the sense the
 * domain needs: no I/O, the same answer for the same input; the cache only saves re-parsing.
 *
 * `verifyStrict` is the identity log's rule: on top of RFC 8032 verification it refuses
 * non-canonical point encodings and small-order points for the key and for R, so one statement
 * has exactly one accepted signature encoding and no key verifies "everything".
 */
import { createPrivateKey, createPublicKey, type KeyObject, sign, verify } from "node:crypto"
import { fromHex } from "./Bytes.ts"
import { LruCache } from "./LruCache.ts"

const bufferOf = (bytes: Uint8Array): Buffer => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
const cacheKey = (bytes: Uint8Array): string => bufferOf(bytes).toString("latin1")

/** DER prefixes that wrap a raw 32-byte key as SubjectPublicKeyInfo / PKCS#8 (RFC 8410). */
export const ED25519_SPKI_PREFIX = fromHex("302a300506032b6570032100")
export const ED25519_PKCS8_PREFIX = fromHex("302e020100300506032b657004220420")

const withPrefix = (prefix: Uint8Array, key: Uint8Array): Buffer => Buffer.concat([prefix, key])

const publicKeys = new LruCache<KeyObject>(4096)
const privateKeys = new LruCache<KeyObject>(256)

/** A raw 32-byte public key as a KeyObject; throws on any other length, like WebCrypto's raw import. */
export const publicKeyObject = (publicKey: Uint8Array): KeyObject => {
  const id = cacheKey(publicKey)
  const cached = publicKeys.get(id)
  if (cached !== undefined) return cached
  if (publicKey.length !== 32) throw new RangeError(`an Ed25519 public key is 32 bytes, not ${publicKey.length}`)
  // As a JWK: OpenSSL parses it in a tenth of the time of the same key as DER, and takes the same keys.
  const key = createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: bufferOf(publicKey).toString("base64url") }, format: "jwk" })
  publicKeys.set(id, key)
  return key
}

/** A private key given as a raw 32-byte seed or as PKCS#8 DER (what WebCrypto exports, 48 bytes). */
export const privateKeyObject = (signKey: Uint8Array): KeyObject => {
  const id = cacheKey(signKey)
  const cached = privateKeys.get(id)
  if (cached !== undefined) return cached
  const der = signKey.length === 32 ? withPrefix(ED25519_PKCS8_PREFIX, signKey) : bufferOf(signKey)
  const key = createPrivateKey({ key: der, format: "der", type: "pkcs8" })
  if (key.asymmetricKeyType !== "ed25519") throw new TypeError(`not an Ed25519 private key: ${key.asymmetricKeyType}`)
  privateKeys.set(id, key)
  return key
}

export const signEd25519 = (signKey: Uint8Array, message: Uint8Array): Uint8Array =>
  new Uint8Array(sign(null, message, privateKeyObject(signKey)))

/** RFC 8032 verification as OpenSSL does it (S < L required). Throws for a key that is not 32 bytes. */
export const verifyEd25519 = (publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean =>
  verify(null, message, publicKeyObject(publicKey), signature)

/**
 * The same check on libuv's thread pool (OpenSSL, off the main thread). Never rejects: a key that is
 * not 32 bytes, or any failure, answers `false`.
 */
export const verifyEd25519Async = (publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): Promise<boolean> =>
  new Promise((resolve) => {
    try {
      verify(null, message, publicKeyObject(publicKey), signature, (error, valid) => resolve(error === null && valid))
    } catch {
      resolve(false)
    }
  })

// ---- strict encodings ------------------------------------------------------------------------

/** The low 255 bits (y) of the encodings of the eight points of order dividing 8. */
const SMALL_ORDER_Y = new Set([
  "0100000000000000000000000000000000000000000000000000000000000000",
  "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
  "0000000000000000000000000000000000000000000000000000000000000000",
  "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
  "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"
])

/** y < p = 2^255 - 19, read little-endian from the low 255 bits. */
const isCanonicalY = (point: Uint8Array): boolean => {
  if ((point[31]! & 0x7f) !== 0x7f) return true
  for (let i = 30; i >= 1; i--) if (point[i] !== 0xff) return true
  return point[0]! < 0xed
}

const lowBitsHex = (point: Uint8Array): string => {
  const y = Uint8Array.from(point)
  y[31]! &= 0x7f
  return Buffer.from(y).toString("hex")
}

/** A canonical encoding (y < p) of a point that is not of small order. */
export const isStrictPoint = (point: Uint8Array): boolean =>
  point.length === 32 && isCanonicalY(point) && !SMALL_ORDER_Y.has(lowBitsHex(point))

const LOWER_HEX = (bytes: number) => new RegExp(`^[0-9a-f]{${bytes * 2}}$`)
const PUBLIC_KEY_HEX = LOWER_HEX(32)
const SIGNATURE_HEX = LOWER_HEX(64)

/**
 * Verifies a hex signature under a hex public key, both in their one accepted spelling (lowercase,
 * exact length), with canonical, non-small-order points. S < L is checked by OpenSSL.
 */
export const verifyStrict = (publicKeyHex: string, message: Uint8Array, signatureHex: string): boolean => {
  const parsed = strictEncodings(publicKeyHex, signatureHex)
  return parsed !== undefined && verifyEd25519(parsed.publicKey, message, parsed.signature)
}

/** `verifyStrict` with the curve arithmetic on libuv's thread pool. Never rejects. */
export const verifyStrictAsync = (publicKeyHex: string, message: Uint8Array, signatureHex: string): Promise<boolean> => {
  const parsed = strictEncodings(publicKeyHex, signatureHex)
  return parsed === undefined ? Promise.resolve(false) : verifyEd25519Async(parsed.publicKey, message, parsed.signature)
}

/** The key and signature as bytes if both are spelled and encoded as `verifyStrict` demands. */
const strictEncodings = (publicKeyHex: string, signatureHex: string) => {
  if (!PUBLIC_KEY_HEX.test(publicKeyHex) || !SIGNATURE_HEX.test(signatureHex)) return undefined
  const publicKey = fromHex(publicKeyHex)
  const signature = fromHex(signatureHex)
  if (!isStrictPoint(publicKey) || !isStrictPoint(signature.subarray(0, 32))) return undefined
  return { publicKey, signature }
}
