/**
 * Welcome wrapping (HPKE to the key package's init key, RFC 9420 EncryptWithLabel under a
 * label of our own): what travels on a welcome topic is readable by its installation only.
 * Format: version, the key package's ref (the recipient's own, so it knows which private
 * key to use), the KEM output and the ciphertext, each length-prefixed.
 */
import { Effect } from "effect"
import type { CiphersuiteImpl } from "ts-mls"
import { decryptWithLabel, encryptWithLabel } from "ts-mls/crypto/hpke.js"
import { makeKeyPackageRef } from "ts-mls/keyPackage.js"
import { bytesEqual, concat, toHex } from "../domain/Bytes.ts"
import type { MlsCryptoShape } from "../services/MlsCrypto.ts"
import { fail, tryMls } from "./TsMlsErrors.ts"
import { decodePublicPackage, type KeyPackageReader, u32 } from "./TsMlsKeyPackages.ts"

type Service = MlsCryptoShape

const SEALED_FORMAT = 1
const WRAPPER_LABEL = "converge welcome wrapper"

/** Splits a sealed welcome into its key package ref, KEM output and ciphertext. */
const splitSealed = (bytes: Uint8Array): readonly [Uint8Array, Uint8Array, Uint8Array] | undefined => {
  if (bytes[0] !== SEALED_FORMAT) return undefined
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const parts: Array<Uint8Array> = []
  let offset = 1
  while (parts.length < 3) {
    if (offset + 4 > bytes.length) return undefined
    const length = view.getUint32(offset)
    offset += 4
    if (offset + length > bytes.length) return undefined
    parts.push(bytes.subarray(offset, offset + length))
    offset += length
  }
  return offset === bytes.length ? parts as unknown as readonly [Uint8Array, Uint8Array, Uint8Array] : undefined
}

export const makeSealing = (cs: CiphersuiteImpl, decodeBundle: KeyPackageReader["decodeBundle"]) => {
  const sealToKeyPackage: Service["sealToKeyPackage"] = Effect.fn("MlsCrypto.sealToKeyPackage")(
    function*(keyPackage, plaintext) {
      const kp = yield* decodePublicPackage(keyPackage)
      const ref = yield* tryMls("seal", () => makeKeyPackageRef(kp, cs.hash))
      const sealed = yield* tryMls("seal", async () =>
        encryptWithLabel(await cs.hpke.importPublicKey(kp.initKey), WRAPPER_LABEL, ref, plaintext, cs.hpke))
      return concat(Uint8Array.of(SEALED_FORMAT), ...[ref, sealed.enc, sealed.ct].flatMap((part) => [u32(part.length), part]))
    }
  )

  const openSealed: Service["openSealed"] = Effect.fn("MlsCrypto.openSealed")(function*(sealed, keyPackages) {
    const parts = splitSealed(sealed)
    if (parts === undefined) return yield* fail("Malformed", "not a sealed welcome")
    const [ref, enc, ct] = parts
    for (const bundle of keyPackages) {
      const { privatePackage, publicPackage } = yield* decodeBundle(bundle)
      if (!bytesEqual(yield* tryMls("open", () => makeKeyPackageRef(publicPackage, cs.hash)), ref)) continue
      const plaintext = yield* tryMls("open", async () =>
        decryptWithLabel(await cs.hpke.importPrivateKey(privatePackage.initPrivateKey), WRAPPER_LABEL, ref, enc, ct, cs.hpke))
      return { plaintext, keyPackageRef: toHex(ref) }
    }
    return yield* fail("CannotDecrypt", "sealed to none of the given key packages")
  })

  return { sealToKeyPackage, openSealed }
}
