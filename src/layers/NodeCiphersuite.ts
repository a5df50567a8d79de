/**
 * A ts-mls `CiphersuiteImpl` for ciphersuite 1 (MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519) on
 * node:crypto (OpenSSL), synchronous underneath.
 *
 * ts-mls 1.6.4's default provider goes through WebCrypto: it imports a key on every AES-GCM, HMAC
 * and Ed25519 call and awaits each one, and its HPKE (@hpke/core) does the same per step. Here
 * each primitive is one OpenSSL call, Ed25519 keys are parsed once and cached by their bytes
 * (domain/Ed25519), and HPKE is RFC 9180 base mode written out over the same primitives.
 *
 * Formats are the default provider's, so states, key packages and keys made by either work
 * with the other: Ed25519 private keys are 48-byte PKCS#8 (a raw 32-byte seed is accepted too),
 * public keys raw 32 bytes; X25519 keys raw 32 bytes; AEAD output is ciphertext || 16-byte tag.
 * test/NodeCiphersuite.test.ts checks every primitive and whole groups against the default.
 */
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  type KeyObject,
  randomFillSync,
  timingSafeEqual
} from "node:crypto"
import type {
  CiphersuiteImpl,
  CryptoProvider,
  Hash,
  Hpke,
  Kdf,
  PrivateKey,
  PublicKey,
  Rng,
  Signature
} from "ts-mls"
import { CryptoError, DependencyError } from "ts-mls/mlsError.js"
import { concat, fromHex, toHex, utf8 } from "../domain/Bytes.ts"
import { signEd25519, verifyEd25519 } from "../domain/Ed25519.ts"

export const NATIVE_CIPHERSUITE = "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519" as const

/** Node hands out Buffers; ts-mls gets plain Uint8Arrays (a Buffer's `slice` shares memory). */
const own = (buffer: Buffer): Uint8Array => new Uint8Array(buffer)

// ---- pacing --------------------------------------------------------------------------------------

/**
 * Every primitive here completes synchronously, so ts-mls's awaits resolve as microtasks and a long
 * run of MLS work (a catch-up over hundreds of messages, a simulation) would never let the event
 * loop run: no socket reads, no timers, for seconds. WebCrypto's thread-pool round trips used to
 * yield on every call; here a call yields (one `setImmediate`) only once `MAX_BLOCK_MS` have passed
 * since the last yield.
 */
const MAX_BLOCK_MS = 10
let lastTurn = performance.now()

const paced = <A>(run: () => Promise<A>): Promise<A> => {
  if (performance.now() - lastTurn < MAX_BLOCK_MS) return run()
  return new Promise((resolve) =>
    setImmediate(() => {
      lastTurn = performance.now()
      resolve(run())
    })
  )
}

/** The same methods, each behind `paced`. */
const pacedMethods = <T extends object>(methods: T): T =>
  Object.fromEntries(
    Object.entries(methods).map(([name, value]) => [
      name,
      typeof value === "function" ? (...args: Array<unknown>) => paced(() => value(...args)) : value
    ])
  ) as T

// ---- hash, HMAC, HKDF (SHA-256) ------------------------------------------------------------------

const HASH_LENGTH = 32

const digest = (data: Uint8Array): Uint8Array => own(createHash("sha256").update(data).digest())

const hmac = (key: Uint8Array, data: Uint8Array): Uint8Array => own(createHmac("sha256", key).update(data).digest())

const hash: Hash = pacedMethods({
  digest: async (data) => digest(data),
  mac: async (key, data) => hmac(key, data),
  verifyMac: async (key, mac, data) => {
    const expected = hmac(key, data)
    return mac.length === expected.length && timingSafeEqual(mac, expected)
  }
})

/** RFC 5869 HKDF-Expand; MLS asks for at most one block almost always. */
const hkdfExpand = (prk: Uint8Array, info: Uint8Array, length: number): Uint8Array => {
  if (length > 255 * HASH_LENGTH) throw new CryptoError(`HKDF-Expand cannot produce ${length} bytes`)
  const out = new Uint8Array(length)
  let block: Uint8Array = new Uint8Array(0)
  for (let counter = 1, offset = 0; offset < length; counter++) {
    block = own(createHmac("sha256", prk).update(block).update(info).update(Uint8Array.of(counter)).digest())
    out.set(block.subarray(0, Math.min(HASH_LENGTH, length - offset)), offset)
    offset += HASH_LENGTH
  }
  return out
}

const kdf: Kdf = pacedMethods({
  extract: async (salt, ikm) => hmac(salt, ikm),
  expand: async (prk, info, length) => hkdfExpand(prk, info, length),
  size: HASH_LENGTH
})

// ---- AES-GCM ---------------------------------------------------------------------------------------

const TAG_LENGTH = 16

/** The AES variant follows the key length, as WebCrypto's AES-GCM does. */
const gcmCipher = (key: Uint8Array) => {
  if (key.length === 16) return "aes-128-gcm" as const
  if (key.length === 32) return "aes-256-gcm" as const
  throw new CryptoError(`AES-GCM key of ${key.length} bytes`)
}

const aesGcmSeal = (key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, plaintext: Uint8Array): Uint8Array => {
  const cipher = createCipheriv(gcmCipher(key), key, nonce, { authTagLength: TAG_LENGTH })
  if (aad.length > 0) cipher.setAAD(aad)
  return own(Buffer.concat([cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]))
}

const aesGcmOpen = (key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, sealed: Uint8Array): Uint8Array => {
  if (sealed.length < TAG_LENGTH) throw new CryptoError("AES-GCM ciphertext shorter than its tag")
  const decipher = createDecipheriv(gcmCipher(key), key, nonce, { authTagLength: TAG_LENGTH })
  decipher.setAuthTag(sealed.subarray(sealed.length - TAG_LENGTH))
  if (aad.length > 0) decipher.setAAD(aad)
  try {
    return own(Buffer.concat([decipher.update(sealed.subarray(0, sealed.length - TAG_LENGTH)), decipher.final()]))
  } catch (e) {
    throw new CryptoError(`AES-GCM: ${e instanceof Error ? e.message : String(e)}`)
  }
}

// ---- Ed25519 ---------------------------------------------------------------------------------------

const signature: Signature = pacedMethods({
  sign: async (signKey, message) => signEd25519(signKey, message),
  verify: async (publicKey, message, sig) => verifyEd25519(publicKey, message, sig),
  keygen: async () => {
    const pair = generateKeyPairSync("ed25519")
    // PKCS#8 (48 bytes), as the default provider stores it.
    const signKey = own(pair.privateKey.export({ format: "der", type: "pkcs8" }))
    return { signKey, publicKey: own(pair.publicKey.export({ format: "der", type: "spki" })).slice(-32) }
  }
})

// ---- X25519 keys -----------------------------------------------------------------------------------

/**
 * X25519 keys go in and out of OpenSSL as JWK: its DER encoders and decoders cost 65-500 us a
 * key (a PKCS#8 import is the slowest), JWK 1-40 us, and HPKE imports or exports a key or two per
 * seal and open (a 100-member commit seals to every copath resolution).
 */
const base64url = (bytes: Uint8Array) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64url")
const fromBase64url = (text: string | undefined): Uint8Array => {
  const bytes = own(Buffer.from(text ?? "", "base64url"))
  if (bytes.length !== 32) throw new CryptoError("OpenSSL exported an X25519 key that is not 32 bytes")
  return bytes
}

/**
 * A private key from its 32 raw bytes. Node takes an OKP private JWK from `d` alone (OpenSSL
 * derives the public part) but insists that `x` be a string: it gets an empty one. Should a Node
 * version check `x`, the import fails and DER is used instead (`privateImport` is decided once).
 */
const X25519_PKCS8_PREFIX = fromHex("302e020100300506032b656e04220420")

const importPrivateJwk = (raw: Uint8Array) =>
  createPrivateKey({ key: { kty: "OKP", crv: "X25519", d: base64url(raw), x: "" }, format: "jwk" })
const importPrivateDer = (raw: Uint8Array) =>
  createPrivateKey({ key: Buffer.concat([X25519_PKCS8_PREFIX, raw]), format: "der", type: "pkcs8" })

/** The JWK import if it gives RFC 7748 section 6.1's key pair (Alice's) exactly, else DER. */
const privateImport = ((): (raw: Uint8Array) => KeyObject => {
  const secret = fromHex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
  const expected = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
  try {
    const exported = createPublicKey(importPrivateJwk(secret)).export({ format: "jwk" }).x
    if (toHex(fromBase64url(exported)) === expected) return importPrivateJwk
  } catch {
    // Falls through to DER.
  }
  return importPrivateDer
})()

/** The HPKE key objects this provider hands ts-mls, which only passes them back to it. */
interface X25519Public {
  readonly type: "public"
  readonly raw: Uint8Array
  readonly key: KeyObject
}

const rawPublicOf = (key: KeyObject): Uint8Array => fromBase64url(key.export({ format: "jwk" }).x)

const publicFromKey = (key: KeyObject): X25519Public => ({ type: "public", raw: rawPublicOf(key), key })

class X25519Private {
  readonly type = "private"
  private publicKey: X25519Public | undefined
  constructor(readonly raw: Uint8Array, readonly key: KeyObject, publicKey?: X25519Public) {
    this.publicKey = publicKey
  }
  /** Computed on first use (a scalar multiplication): only decapsulation and derivation need it. */
  get public(): X25519Public {
    return this.publicKey ??= publicFromKey(createPublicKey(this.key))
  }
}

const x25519Public = (raw: Uint8Array): X25519Public => {
  if (raw.length !== 32) throw new CryptoError(`an X25519 public key is 32 bytes, not ${raw.length}`)
  const key = createPublicKey({ key: { kty: "OKP", crv: "X25519", x: base64url(raw) }, format: "jwk" })
  return { type: "public", raw: Uint8Array.from(raw), key }
}

const x25519Private = (raw: Uint8Array): X25519Private => {
  if (raw.length !== 32) throw new CryptoError(`an X25519 private key is 32 bytes, not ${raw.length}`)
  return new X25519Private(Uint8Array.from(raw), privateImport(raw))
}

/**
 * A fresh key pair: 32 random bytes, clamped as OpenSSL's key generation clamps them, imported.
 * Not `generateKeyPairSync` + JWK export: on Node 20 that export holds the key's mutex while it
 * allocates, and a GC in that allocation may collect the generating job, whose destructor takes the
 * same mutex: the main thread then waits on itself for good (no error, no CPU; about once in a few
 * thousand generations under GC pressure, and it froze a whole bench run).
 */
const generateX25519 = () => {
  const raw = randomFillSync(new Uint8Array(32))
  raw[0]! &= 248
  raw[31]! &= 127
  raw[31]! |= 64
  const privateKey = new X25519Private(raw, privateImport(raw))
  return { privateKey, publicKey: privateKey.public }
}

const asPublic = (k: PublicKey): X25519Public => {
  const key = k as unknown as Partial<X25519Public>
  if (key.type !== "public" || !(key.raw instanceof Uint8Array)) throw new CryptoError("not a public key of this provider")
  return key as X25519Public
}
const asPrivate = (k: PrivateKey): X25519Private => {
  if (!((k as unknown) instanceof X25519Private)) throw new CryptoError("not a private key of this provider")
  return k as unknown as X25519Private
}
const toPublicKey = (k: X25519Public): PublicKey => k as unknown as PublicKey
const toPrivateKey = (k: X25519Private): PrivateKey => k as unknown as PrivateKey

// ---- HPKE, RFC 9180 base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM ----------------

const i2osp2 = (n: number) => Uint8Array.of(n >> 8, n & 0xff)
const KEM_SUITE = concat(utf8("KEM"), i2osp2(0x0020))
const HPKE_SUITE = concat(utf8("HPKE"), i2osp2(0x0020), i2osp2(0x0001), i2osp2(0x0001))
const HPKE_V1 = utf8("HPKE-v1")
const EMPTY = new Uint8Array(0)
const KEY_LENGTH = 16
const NONCE_LENGTH = 12

const labeledExtract = (suite: Uint8Array, salt: Uint8Array, label: string, ikm: Uint8Array) =>
  hmac(salt, concat(HPKE_V1, suite, utf8(label), ikm))

const labeledExpand = (suite: Uint8Array, prk: Uint8Array, label: string, info: Uint8Array, length: number) =>
  hkdfExpand(prk, concat(i2osp2(length), HPKE_V1, suite, utf8(label), info), length)

const deriveX25519 = (ikm: Uint8Array): X25519Private => {
  const prk = labeledExtract(KEM_SUITE, EMPTY, "dkp_prk", ikm)
  return x25519Private(labeledExpand(KEM_SUITE, prk, "sk", EMPTY, 32))
}

const kemSharedSecret = (dh: Uint8Array, enc: Uint8Array, recipient: Uint8Array) => {
  const prk = labeledExtract(KEM_SUITE, EMPTY, "eae_prk", dh)
  return labeledExpand(KEM_SUITE, prk, "shared_secret", concat(enc, recipient), HASH_LENGTH)
}

const encap = (recipient: X25519Public) => {
  const ephemeral = generateX25519()
  const dh = own(diffieHellman({ privateKey: ephemeral.privateKey.key, publicKey: recipient.key }))
  const enc = ephemeral.publicKey.raw
  return { enc, sharedSecret: kemSharedSecret(dh, enc, recipient.raw) }
}

const decap = (enc: Uint8Array, recipient: X25519Private) => {
  const dh = own(diffieHellman({ privateKey: recipient.key, publicKey: x25519Public(enc).key }))
  return kemSharedSecret(dh, enc, recipient.public.raw)
}

/** KeySchedule for mode_base (no PSK). */
const keySchedule = (sharedSecret: Uint8Array, info: Uint8Array) => {
  const context = concat(
    Uint8Array.of(0),
    labeledExtract(HPKE_SUITE, EMPTY, "psk_id_hash", EMPTY),
    labeledExtract(HPKE_SUITE, EMPTY, "info_hash", info)
  )
  const secret = labeledExtract(HPKE_SUITE, sharedSecret, "secret", EMPTY)
  return {
    key: labeledExpand(HPKE_SUITE, secret, "key", context, KEY_LENGTH),
    baseNonce: labeledExpand(HPKE_SUITE, secret, "base_nonce", context, NONCE_LENGTH),
    exporterSecret: labeledExpand(HPKE_SUITE, secret, "exp", context, HASH_LENGTH)
  }
}

/** Runs `f`, reporting any failure as ts-mls's CryptoError, as its generic HPKE wrapper does. */
const asCryptoError = <A>(f: () => A): A => {
  try {
    return f()
  } catch (e) {
    throw e instanceof CryptoError ? e : new CryptoError(`${e}`)
  }
}

const hpke: Hpke = pacedMethods<Hpke>({
  // Single-shot seal/open use sequence number 0, so the nonce is the base nonce.
  seal: async (publicKey, plaintext, info, aad) => {
    const { enc, sharedSecret } = encap(asPublic(publicKey))
    const { key, baseNonce } = keySchedule(sharedSecret, info)
    return { ct: aesGcmSeal(key, baseNonce, aad ?? EMPTY, plaintext), enc }
  },
  open: async (privateKey, enc, ciphertext, info, aad) =>
    asCryptoError(() => {
      const { key, baseNonce } = keySchedule(decap(enc, asPrivate(privateKey)), info)
      return aesGcmOpen(key, baseNonce, aad ?? EMPTY, ciphertext)
    }),
  exportSecret: async (publicKey, exporterContext, length, info) => {
    const { enc, sharedSecret } = encap(asPublic(publicKey))
    const { exporterSecret } = keySchedule(sharedSecret, info)
    return { enc, secret: labeledExpand(HPKE_SUITE, exporterSecret, "sec", exporterContext, length) }
  },
  importSecret: async (privateKey, exporterContext, enc, length, info) =>
    asCryptoError(() => {
      const { exporterSecret } = keySchedule(decap(enc, asPrivate(privateKey)), info)
      return labeledExpand(HPKE_SUITE, exporterSecret, "sec", exporterContext, length)
    }),
  importPrivateKey: async (k) => asCryptoError(() => toPrivateKey(x25519Private(k))),
  importPublicKey: async (k) => asCryptoError(() => toPublicKey(x25519Public(k))),
  exportPublicKey: async (k) => Uint8Array.from(asPublic(k).raw),
  exportPrivateKey: async (k) => Uint8Array.from(asPrivate(k).raw),
  encryptAead: async (key, nonce, aad, plaintext) => aesGcmSeal(key, nonce, aad ?? EMPTY, plaintext),
  decryptAead: async (key, nonce, aad, ciphertext) => asCryptoError(() => aesGcmOpen(key, nonce, aad ?? EMPTY, ciphertext)),
  deriveKeyPair: async (ikm) => {
    const privateKey = deriveX25519(ikm)
    return { privateKey: toPrivateKey(privateKey), publicKey: toPublicKey(privateKey.public) }
  },
  generateKeyPair: async () => {
    const { privateKey, publicKey } = generateX25519()
    return { privateKey: toPrivateKey(privateKey), publicKey: toPublicKey(publicKey) }
  },
  keyLength: KEY_LENGTH,
  nonceLength: NONCE_LENGTH
})

const rng: Rng = {
  randomBytes: (n) => randomFillSync(new Uint8Array(n))
}

/** Ciphersuite 1 on node:crypto. */
export const nodeCiphersuite: CiphersuiteImpl = { hash, hpke, signature, kdf, rng, name: NATIVE_CIPHERSUITE }

/** The same as a ts-mls `CryptoProvider`: `getCiphersuiteImpl(suite, nodeCryptoProvider)`. */
export const nodeCryptoProvider: CryptoProvider = {
  getCiphersuiteImpl: async (suite) => {
    if (suite.name !== NATIVE_CIPHERSUITE) {
      throw new DependencyError(`the node:crypto provider implements ${NATIVE_CIPHERSUITE} only, not ${suite.name}`)
    }
    return nodeCiphersuite
  }
}
