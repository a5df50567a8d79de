/**
 * Key packages: a signature key pair, a key package for it (with its private part, in a format
 * of our own), decoding a bundle, and a received package verified once and kept (`keyPackageInfo`,
 * then an add's checks and its commit read the same package).
 */
import { Effect } from "effect"
import { type CiphersuiteImpl, generateKeyPackageWithKey, type KeyPackage, type PrivateKeyPackage } from "ts-mls"
import { encodeKeyPackage, makeKeyPackageRef, verifyKeyPackage } from "ts-mls/keyPackage.js"
import { verifyLeafNodeSignatureKeyPackage } from "ts-mls/leafNode.js"
import { concat, sha256Hex, toHex } from "../domain/Bytes.ts"
import { LruCache } from "../domain/LruCache.ts"
import type { CryptoError } from "../domain/Errors.ts"
import { installationIdOf } from "../domain/IdentityLog.ts"
import type { KeyPackageBundle, MlsCryptoShape } from "../services/MlsCrypto.ts"
import { decodeKeyPackage } from "./TsMlsDecoders.ts"
import { decodeAll, fail, tryMls } from "./TsMlsErrors.ts"
import { capabilities, protocolVersionExtension, protocolVersionIn } from "./TsMlsExtensions.ts"
import { encodeIdentity, structuralIdentity } from "./TsMlsMembers.ts"

type Service = MlsCryptoShape

const KEY_PACKAGE_LIFETIME_SECONDS = 90n * 24n * 60n * 60n
/** Key packages are valid from a little before their creation, to tolerate clock skew. */
const CLOCK_SKEW_SECONDS = 60n * 60n

export const decodePublicPackage = (bytes: Uint8Array) => decodeAll("key package", decodeKeyPackage, bytes)

const PRIVATE_PACKAGE_FORMAT = 1

export const u32 = (n: number): Uint8Array => {
  const out = new Uint8Array(4)
  new DataView(out.buffer).setUint32(0, n)
  return out
}

/** 1.6.4 has no codec for private key packages: a format byte, then three length-prefixed keys. */
const encodePrivatePackage = (p: PrivateKeyPackage): Uint8Array =>
  concat(
    Uint8Array.of(PRIVATE_PACKAGE_FORMAT),
    ...[p.initPrivateKey, p.hpkePrivateKey, p.signaturePrivateKey].flatMap((key) => [u32(key.length), key])
  )

const decodePrivatePackage = (bytes: Uint8Array): Effect.Effect<PrivateKeyPackage, CryptoError> => {
  if (bytes[0] !== PRIVATE_PACKAGE_FORMAT) return fail("Malformed", "private key package: unknown format")
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const keys: Array<Uint8Array> = []
  let offset = 1
  while (keys.length < 3) {
    if (offset + 4 > bytes.length) return fail("Malformed", "private key package: truncated")
    const length = view.getUint32(offset)
    offset += 4
    if (offset + length > bytes.length) return fail("Malformed", "private key package: truncated")
    keys.push(bytes.slice(offset, offset + length))
    offset += length
  }
  if (offset !== bytes.length) return fail("Malformed", "private key package: trailing bytes")
  const [initPrivateKey, hpkePrivateKey, signaturePrivateKey] = keys as [Uint8Array, Uint8Array, Uint8Array]
  return Effect.succeed({ initPrivateKey, hpkePrivateKey, signaturePrivateKey })
}

const nowSeconds = (): bigint => BigInt(Math.floor(Date.now() / 1000))

export const withinLifetime = (kp: KeyPackage): boolean => {
  const now = nowSeconds()
  return kp.leafNode.lifetime.notBefore <= now && now <= kp.leafNode.lifetime.notAfter
}

/** Key packages up to this size are kept once verified: 256 of them hold at most 4 MiB of input. */
const MAX_CACHED_PACKAGE_BYTES = 16 * 1024

/** Reading one service's key packages, with the cache of those that verified (one per service). */
export const makeKeyPackageReader = (cs: CiphersuiteImpl) => {
  const keyPackageRef = (kp: KeyPackage) =>
    tryMls("keyPackageRef", () => makeKeyPackageRef(kp, cs.hash)).pipe(Effect.map(toHex))

  const decodeBundle = (bundle: KeyPackageBundle) =>
    Effect.all({
      publicPackage: decodePublicPackage(bundle.publicPackage),
      privatePackage: decodePrivatePackage(bundle.privatePackage)
    })

  /**
   * Key packages that decoded and verified, by a hash of their bytes: an add reads the newcomer's
   * twice (the caller's check, then the commit's derivation). Only the lifetime depends on the
   * time. Bounded in bytes too (a server shares one instance): packages past a normal size (a few
   * hundred bytes) are verified every time, never kept.
   */
  const verifiedPackages = new LruCache<KeyPackage>(256)
  /** The packages `verifiedPackages` handed out: their signatures held (the objects are never changed). */
  const signaturesHeld = new WeakSet<KeyPackage>()
  /** The package kept for these bytes if they verified before (as an add's did in its checks), else decoded. */
  const keptOrDecoded = (bytes: Uint8Array) => {
    const kept = bytes.length <= MAX_CACHED_PACKAGE_BYTES ? verifiedPackages.get(sha256Hex(bytes)) : undefined
    return kept === undefined ? decodePublicPackage(bytes) : Effect.succeed(kept)
  }
  const verifiedPackage = (bytes: Uint8Array) =>
    Effect.gen(function*() {
      const id = bytes.length <= MAX_CACHED_PACKAGE_BYTES ? sha256Hex(bytes) : undefined
      const known = id === undefined ? undefined : verifiedPackages.get(id)
      if (known !== undefined) return known
      const kp = yield* decodePublicPackage(bytes)
      if (kp.cipherSuite !== cs.name) return yield* fail("Malformed", `key package uses ${kp.cipherSuite}`)
      const signed = yield* tryMls("keyPackageInfo", async () =>
        await verifyKeyPackage(kp, cs.signature) && await verifyLeafNodeSignatureKeyPackage(kp.leafNode, cs.signature))
      if (!signed) return yield* fail("BadSignature", "key package signature does not verify")
      if (id !== undefined) {
        verifiedPackages.set(id, kp)
        signaturesHeld.add(kp)
      }
      return kp
    })

  const keyPackageInfo: Service["keyPackageInfo"] = Effect.fn("MlsCrypto.keyPackageInfo")(function*(bytes) {
    const kp = yield* verifiedPackage(bytes)
    if (!withinLifetime(kp)) return yield* fail("Unauthenticated", "key package is outside its lifetime")
    const identity = structuralIdentity(kp.leafNode.credential, kp.leafNode.signaturePublicKey)
    if (typeof identity === "string") return yield* fail("Unauthenticated", identity)
    const protocolVersion = protocolVersionIn(kp.leafNode.extensions)
    return {
      ...identity,
      ref: yield* keyPackageRef(kp),
      signaturePublicKey: kp.leafNode.signaturePublicKey,
      ...(protocolVersion === undefined ? {} : { protocolVersion })
    }
  })

  return { keyPackageRef, decodeBundle, keyPackageInfo, keptOrDecoded, signaturesHeld }
}

export type KeyPackageReader = ReturnType<typeof makeKeyPackageReader>

/** Making key packages: a signature key pair, then packages for it. */
export const makeKeyPackageGenerator = (
  cs: CiphersuiteImpl,
  keyPackageRef: KeyPackageReader["keyPackageRef"]
) => {
  const generateSignatureKeyPair: Service["generateSignatureKeyPair"] = tryMls(
    "generateSignatureKeyPair",
    () => cs.signature.keygen()
  ).pipe(
    Effect.map(({ publicKey, signKey }) => ({ publicKey, privateKey: signKey })),
    Effect.withSpan("MlsCrypto.generateSignatureKeyPair")
  )

  const generateKeyPackage: Service["generateKeyPackage"] = Effect.fn("MlsCrypto.generateKeyPackage")(
    function*(identity, keys, options = {}) {
      if (installationIdOf(keys.publicKey) !== identity.installationId) {
        return yield* fail("Unauthenticated", "installation id is not the hash of the signature key")
      }
      const now = nowSeconds()
      // Lifetimes are checked by ts-mls against Date.now, so they are set from it too.
      const lifetime = { notBefore: now - CLOCK_SKEW_SECONDS, notAfter: now + KEY_PACKAGE_LIFETIME_SECONDS }
      const { publicPackage, privatePackage } = yield* tryMls("generateKeyPackage", () =>
        generateKeyPackageWithKey(
          { credentialType: "basic", identity: encodeIdentity(identity) },
          capabilities(),
          lifetime,
          [],
          { signKey: keys.privateKey, publicKey: keys.publicKey },
          cs,
          options.protocolVersion === undefined ? [] : [protocolVersionExtension(options.protocolVersion)]
        ))
      return {
        ref: yield* keyPackageRef(publicPackage),
        publicPackage: encodeKeyPackage(publicPackage),
        privatePackage: encodePrivatePackage(privatePackage)
      }
    }
  )

  return { generateSignatureKeyPair, generateKeyPackage }
}
