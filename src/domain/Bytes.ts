/** Byte helpers shared by the domain and the layers. Pure. */
import * as nodeCrypto from "node:crypto"

const encoder = new TextEncoder()
const decoder = new TextDecoder("utf-8", { fatal: true })

export const utf8 = (text: string): Uint8Array => encoder.encode(text)
export const fromUtf8 = (bytes: Uint8Array): string => decoder.decode(bytes)

export const toHex = (bytes: Uint8Array): string => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex")

export const fromHex = (hex: string): Uint8Array => new Uint8Array(Buffer.from(hex, "hex"))

export const concat = (...parts: ReadonlyArray<Uint8Array>): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let offset = 0
  for (const part of parts) {
    out.set(part, offset)
    offset += part.length
  }
  return out
}

/**
 * The label, then each part after its length (u32, big-endian), fed to one hash without a
 * concatenated copy: a message id is derived per received message, and the copy with its small
 * arrays cost several times the hash (about 15 us against 3 us per id in a loop here).
 */
const lengthPrefix = Buffer.alloc(4)
const labelledDigest = (label: string, parts: ReadonlyArray<Uint8Array>) => {
  const hash = nodeCrypto.createHash("sha256").update(utf8(`converge/${label}\n`))
  for (const part of parts) {
    // `update` copies its input at once, so one length buffer serves every part.
    lengthPrefix.writeUInt32BE(part.length, 0)
    hash.update(lengthPrefix).update(part)
  }
  return hash
}

/** SHA-256 with a domain-separation label, so hashes of different kinds never collide. */
export const labelledHash = (label: string, ...parts: ReadonlyArray<Uint8Array>): Uint8Array =>
  new Uint8Array(labelledDigest(label, parts).digest())

/** `toHex(labelledHash(label, ...parts))`, without the intermediate copies. */
export const labelledHashHex = (label: string, ...parts: ReadonlyArray<Uint8Array>): string =>
  labelledDigest(label, parts).digest("hex")

/** Node's one-shot `crypto.hash` (20.12 and later); earlier versions make a Hash object. */
const oneShotHash = (nodeCrypto as { readonly hash?: typeof nodeCrypto.hash }).hash
const sha256HexOf = (bytes: Uint8Array): string =>
  oneShotHash === undefined ? nodeCrypto.createHash("sha256").update(bytes).digest("hex") : oneShotHash("sha256", bytes, "hex")

/** Reused for `labelledHashHexOfText`'s input (synchronous: nobody else writes it meanwhile). */
let textScratch = Buffer.allocUnsafe(512)

/**
 * `labelledHashHex(label, ...parts.map(utf8))` for text parts, the same digest: the input is
 * written into one buffer and hashed in one call. A message id is derived per received message,
 * and the three encodings and seven `update` calls cost 2.1 us an id, this 0.7 us.
 */
export const labelledHashHexOfText = (label: string, ...parts: ReadonlyArray<string>): string => {
  const head = `converge/${label}\n`
  let length = Buffer.byteLength(head, "utf8")
  for (const part of parts) length += 4 + Buffer.byteLength(part, "utf8")
  if (length > textScratch.length) textScratch = Buffer.allocUnsafe(length)
  let offset = textScratch.write(head, 0, "utf8")
  for (const part of parts) {
    const bytes = Buffer.byteLength(part, "utf8")
    offset = textScratch.writeUInt32BE(bytes, offset)
    offset += textScratch.write(part, offset, bytes, "utf8")
  }
  return sha256HexOf(textScratch.subarray(0, offset))
}

export const sha256Hex = sha256HexOf

/** One memcmp: a byte-by-byte loop took 2 ms on a 110 KB group state, compared on every load. */
export const bytesEqual = (a: Uint8Array, b: Uint8Array): boolean =>
  a.length === b.length &&
  Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength))
