/**
 * ts-mls 1.6.4's failures as `CryptoError`s: the one place that reads its error classes and
 * messages (notes/ts-mls.md), and the whole-buffer decoding every input of the adapter goes through.
 */
import { Effect } from "effect"
import * as MlsError from "ts-mls/mlsError.js"
import { CryptoError, type CryptoErrorReason } from "../domain/Errors.ts"

/** Thrown from our AuthenticationService so a rejection stays distinguishable inside ts-mls. */
export class CredentialRejected extends Error {
  override readonly name = "CredentialRejected"
}

export const fail = (reason: CryptoErrorReason, detail: string) => Effect.fail(new CryptoError({ reason, detail }))

const describe = (e: unknown): string => e instanceof Error ? `${e.name}: ${e.message}` : String(e)

/** ts-mls reports most failures as a class plus a message; this is the one place that reads them. */
const reasonOf = (e: unknown): CryptoErrorReason => {
  if (e instanceof CredentialRejected) return "Unauthenticated"
  const message = e instanceof Error ? e.message : String(e)
  if (e instanceof MlsError.CodecError) return "Malformed"
  if (e instanceof MlsError.CryptoVerificationError) return "BadSignature"
  if (e instanceof MlsError.CryptoError) return "CannotDecrypt"
  if (e instanceof MlsError.UsageError) return /removed from group/i.test(message) ? "NotAMember" : "Internal"
  if (e instanceof MlsError.ValidationError) {
    if (/epoch too old|former epoch|validate epoch/i.test(message)) return "WrongEpoch"
    if (/desired gen|too far in the future|no matching secret/i.test(message)) return "CannotDecrypt"
    if (/unable to find leafnode|non-blank leaf/i.test(message)) return "NotAMember"
    if (/validate (external )?credential/i.test(message)) return "Unauthenticated"
    // Everything else is a message or key package that breaks a protocol rule.
    return "Malformed"
  }
  if (e instanceof Error && e.name === "OperationError") return "CannotDecrypt"
  return "Internal"
}

export const toCryptoError = (op: string) => (e: unknown): CryptoError =>
  new CryptoError({ reason: reasonOf(e), detail: `${op}: ${describe(e)}` })

export const tryMls = <A>(op: string, run: () => Promise<A>): Effect.Effect<A, CryptoError> =>
  Effect.tryPromise({ try: run, catch: toCryptoError(op) })

/** Decodes a whole buffer with a ts-mls decoder; trailing bytes or a throwing decoder mean garbage. */
export const decodeAllOrError = <A>(
  what: string,
  decode: (bytes: Uint8Array, offset: number) => [A, number] | undefined,
  bytes: Uint8Array
): { readonly ok: A } | CryptoError => {
  let decoded: [A, number] | undefined
  try {
    decoded = decode(bytes, 0)
  } catch (e) {
    return new CryptoError({ reason: "Malformed", detail: `${what}: ${describe(e)}` })
  }
  if (decoded === undefined || decoded[1] !== bytes.length) {
    return new CryptoError({ reason: "Malformed", detail: `${what}: cannot decode` })
  }
  return { ok: decoded[0] }
}

export const decodeAll = <A>(
  what: string,
  decode: (bytes: Uint8Array, offset: number) => [A, number] | undefined,
  bytes: Uint8Array
): Effect.Effect<A, CryptoError> => {
  const decoded = decodeAllOrError(what, decode, bytes)
  return decoded instanceof CryptoError ? Effect.fail(decoded) : Effect.succeed(decoded.ok)
}
