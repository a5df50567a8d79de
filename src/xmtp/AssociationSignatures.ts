/**
 * The signatures of XMTP identity updates, read and verified: ERC-191 (secp256k1 recovery over
 * keccak-256 of the Ethereum signed-message prefix and text) for wallets, Ed25519ph with the
 * context "IDENTITY UPDATE SIGNATURE" for installation keys. Reading one costs nothing; verifying
 * it is the costly part, which `signatureChecker` does once per distinct signature, in turns.
 */
import { ed25519ph } from "@noble/curves/ed25519.js"
import { secp256k1 } from "@noble/curves/secp256k1.js"
import { keccak_256 } from "@noble/hashes/sha3.js"
import { Data, Effect, Either } from "effect"
import type { Signature } from "./Proto.ts"
import type { Verification } from "./SignatureTurns.ts"

/** An update that does not apply; `reason` goes back to the caller. */
export class InvalidIdentityUpdate extends Data.TaggedError("InvalidIdentityUpdate")<{ readonly reason: string }> {}

export const fail = (reason: string) => Either.left(new InvalidIdentityUpdate({ reason }))

export const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex")
export const utf8 = (text: string) => new TextEncoder().encode(text)

/** A member's key in an association state: what a verified signature names as its signer. */
export const ethKey = (address: string) => `eth:${address}`
export const installationKey = (publicKey: Uint8Array) => `inst:${hex(publicKey)}`

export interface Verified {
  readonly signer: string
  readonly kind: SignatureKind
  /** The bytes a replay is recognised by (hex). */
  readonly raw: string
}

export type SignatureKind = "erc191" | "installationKey"

/**
 * A signature read but not yet verified: its kind and the bytes a replay is recognised by cost
 * nothing to know, so an update is refused for them before any signature is verified.
 */
export interface Parsed {
  readonly kind: SignatureKind
  readonly raw: string
  /** Tells the same signature apart within one update: what `verify` reads. */
  readonly key: string
  /** The costly part: a secp256k1 key recovery (~2 ms) or an Ed25519ph verification (~1 ms). */
  readonly verify: (text: string) => Either.Either<Verified, InvalidIdentityUpdate>
}

const INSTALLATION_KEY_CONTEXT = utf8("IDENTITY UPDATE SIGNATURE")
const HALF_ORDER = secp256k1.Point.CURVE().n >> 1n

/** An ERC-191 signature, 65 bytes r‖s‖v, with s normalized low: the address that signed is recovered by `verify`. */
const parseErc191 = (bytes: Uint8Array): Either.Either<Parsed, InvalidIdentityUpdate> => {
  if (bytes.length !== 65) return fail("an ERC-191 signature is not 65 bytes")
  const v = bytes[64]!
  let recovery = v >= 27 ? v - 27 : v
  if (recovery !== 0 && recovery !== 1) return fail("an ERC-191 signature has a bad recovery id")
  let signature: InstanceType<typeof secp256k1.Signature>
  try {
    signature = secp256k1.Signature.fromBytes(bytes.subarray(0, 64), "compact")
  } catch {
    return fail("an ERC-191 signature does not recover")
  }
  if (signature.s > HALF_ORDER) {
    // The low-s twin of a signature recovers the same key with the other recovery id.
    signature = new secp256k1.Signature(signature.r, secp256k1.Point.CURVE().n - signature.s)
    recovery ^= 1
  }
  // A replay is recognised by r and the low s, whatever the recovery byte's form.
  const raw = hex(signature.toBytes("compact"))
  const [low, bit] = [signature, recovery]
  const verify = (text: string): Either.Either<Verified, InvalidIdentityUpdate> => {
    try {
      const recoverable = low.addRecoveryBit(bit)
      const message = utf8(text)
      const prefixed = new Uint8Array([...utf8(`\x19Ethereum Signed Message:\n${message.length}`), ...message])
      const publicKey = recoverable.recoverPublicKey(keccak_256(prefixed)).toBytes(false)
      const address = `0x${hex(keccak_256(publicKey.subarray(1)).subarray(12))}`
      return Either.right({ signer: ethKey(address), kind: "erc191", raw })
    } catch {
      return fail("an ERC-191 signature does not recover")
    }
  }
  return Either.right({ kind: "erc191", raw, key: `erc191:${hex(bytes)}`, verify })
}

const parseInstallationKey = (bytes: Uint8Array, publicKey: Uint8Array): Either.Either<Parsed, InvalidIdentityUpdate> => {
  if (bytes.length !== 64 || publicKey.length !== 32) return fail("an installation key signature does not verify")
  const verify = (text: string): Either.Either<Verified, InvalidIdentityUpdate> => {
    let valid = false
    try {
      valid = ed25519ph.verify(bytes, utf8(text), publicKey, { context: INSTALLATION_KEY_CONTEXT, zip215: false })
    } catch {
      valid = false
    }
    return valid
      ? Either.right({ signer: installationKey(publicKey), kind: "installationKey", raw: hex(bytes) })
      : fail("an installation key signature does not verify")
  }
  return Either.right({ kind: "installationKey", raw: hex(bytes), key: `installationKey:${hex(bytes)}:${hex(publicKey)}`, verify })
}

export const parseSignature = (signature: Signature | undefined): Either.Either<Parsed, InvalidIdentityUpdate> => {
  if (signature?.erc191 !== undefined) return parseErc191(signature.erc191.bytes)
  if (signature?.installationKey !== undefined) return parseInstallationKey(signature.installationKey.bytes, signature.installationKey.publicKey)
  if (signature?.erc6492 !== undefined) {
    return fail("smart-contract wallet signatures (ERC-1271/6492) are not supported: this server reaches no chain")
  }
  if (signature?.passkey !== undefined) return fail("passkey signatures are not supported by this server")
  if (signature?.delegatedErc191 !== undefined) return fail("legacy delegated (V2) signatures are not supported by this server")
  return fail("a signature is missing")
}

/** Checks `text`'s signatures, each distinct one once: one wallet signature may serve every action of an update. */
export const signatureChecker = (text: string, verification: Verification) => {
  const known = new Map<string, Verified>()
  return (signature: Signature | undefined): Effect.Effect<Verified, InvalidIdentityUpdate> =>
    Effect.gen(function*() {
      const parsed = yield* parseSignature(signature)
      const cached = known.get(parsed.key)
      if (cached !== undefined) return cached
      const verified = yield* verification(() => parsed.verify(text))
      known.set(parsed.key, verified)
      return verified
    })
}
