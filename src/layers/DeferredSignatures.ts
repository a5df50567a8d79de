/**
 * Signature checks on libuv's thread pool while the main thread goes on decrypting: a run of
 * someone's application messages (a catch-up page) verifies its Ed25519 signatures on the other
 * core instead of one after another between decryptions.
 *
 * ts-mls awaits `signature.verify` inside each step, so the deferred ciphersuite answers "valid"
 * at once and keeps the real check's promise. Whoever runs ts-mls with it must treat everything
 * that run produced as provisional: `allValid` first, and on `false` throw the results away and
 * redo the run with the real ciphersuite, which then refuses exactly what it always refused.
 */
import type { CiphersuiteImpl } from "ts-mls"
import { verifyEd25519Async } from "../domain/Ed25519.ts"
import { nodeCiphersuite } from "./NodeCiphersuite.ts"

export interface DeferredSignatures {
  /** `cs` with `signature.verify` deferred; every other primitive is the original. */
  readonly ciphersuite: CiphersuiteImpl
  /** Whether every check asked so far passed (waits for all of them). */
  readonly allValid: () => Promise<boolean>
}

/**
 * Only for the node:crypto ciphersuite: the deferred check is the same OpenSSL Ed25519 call, so
 * "valid" means exactly what the real `verify` would have answered. Any other provider: `undefined`.
 */
export const deferSignatures = (cs: CiphersuiteImpl): DeferredSignatures | undefined => {
  if (cs !== nodeCiphersuite) return undefined
  const pending: Array<Promise<boolean>> = []
  const signature: CiphersuiteImpl["signature"] = {
    ...cs.signature,
    verify: (publicKey, message, signature) => {
      pending.push(verifyEd25519Async(publicKey, message, signature))
      return Promise.resolve(true)
    }
  }
  // Built as `nodeCiphersuite` is (same fields, same order), so it has the same hidden class: the
  // ts-mls steps that take a ciphersuite see one shape, not two (a spread copy makes another).
  const ciphersuite: CiphersuiteImpl = {
    hash: cs.hash,
    hpke: cs.hpke,
    signature,
    kdf: cs.kdf,
    rng: cs.rng,
    name: cs.name
  }
  const allValid = async () => (await Promise.all(pending)).every((valid) => valid)
  return { ciphersuite, allValid }
}
