/**
 * Request authentication for the delivery service: a signed statement that a registered
 * installation made this exact request, now.
 *
 * The installation signs, with its MLS signature key (Ed25519), the hash of: the operation, a
 * digest of the request (every field that matters, payloads by their hashes), the time and a
 * random nonce. The service checks the signature against the installation's key in the
 * identity store, the time against its clock (a short window), and the nonce against the ones
 * it saw in that window, so a captured request cannot be replayed. The statement is labelled
 * apart from MLS's own signatures (RFC 9420 SignWithLabel uses "MLS 1.0 "), so one can never be
 * passed off as the other.
 */
import { Schema } from "effect"
import { labelledHash, sha256Hex, toHex, utf8 } from "./Bytes.ts"
import { signEd25519, verifyStrict } from "./Ed25519.ts"
import { InstallationId } from "./Ids.ts"
import { validatedMaker } from "./SchemaClass.ts"

/** The header that carries a request's authentication over the network (JSON of `RequestAuth`). */
export const AUTH_HEADER = "x-converge-auth"

const Hex = (bytes: number) => Schema.String.pipe(Schema.pattern(new RegExp(`^[0-9a-f]{${bytes * 2}}$`)))

export class RequestAuth extends Schema.Class<RequestAuth>("RequestAuth")({
  installationId: InstallationId,
  /** The signer's clock, nanoseconds since the Unix epoch, as a decimal string of at most 20 digits. */
  timeNs: Schema.String.pipe(Schema.pattern(/^[0-9]{1,20}$/)),
  nonce: Hex(16),
  signature: Hex(64)
}) {}
export const RequestAuthJson = Schema.parseJson(RequestAuth)
/** `RequestAuth.make`, its validator built once: every authenticated request signs one. */
const makeRequestAuth = validatedMaker(RequestAuth)

/** The operations that need a caller: every write, and every read of a welcome topic. */
export type AuthenticatedOperation =
  | "sendGroupMessages"
  | "sendGroupMessagesIf"
  | "sendWelcomeMessages"
  | "queryWelcomeMessages"
  | "subscribeWelcomeMessages"
  | "uploadKeyPackage"

/** A digest of a request's fields, in a fixed order; bytes enter by their hashes. */
export const digestOf = (...fields: ReadonlyArray<string | bigint | number | Uint8Array | undefined>): string =>
  toHex(labelledHash(
    "request-digest",
    ...fields.map((f) => utf8(f instanceof Uint8Array ? sha256Hex(f) : f === undefined ? "-" : String(f)))
  ))

const statement = (
  op: AuthenticatedOperation,
  digest: string,
  auth: Pick<RequestAuth, "installationId" | "timeNs" | "nonce">
): Uint8Array => labelledHash("request-auth", utf8(op), utf8(digest), utf8(auth.installationId), utf8(auth.timeNs), utf8(auth.nonce))

/**
 * ts-mls keeps Ed25519 private keys as PKCS#8 (48 bytes: a 16-byte header, then the 32-byte
 * seed); some signers take the seed.
 */
const PKCS8_ED25519_HEADER = "302e020100300506032b657004220420"
export const ed25519Seed = (privateKey: Uint8Array): Uint8Array => {
  if (privateKey.length === 32) return privateKey
  if (privateKey.length === 48 && toHex(privateKey.subarray(0, 16)) === PKCS8_ED25519_HEADER) return privateKey.slice(16)
  throw new Error(`not an Ed25519 private key (${privateKey.length} bytes)`)
}

export const signRequest = (
  installationId: InstallationId,
  privateKey: Uint8Array,
  op: AuthenticatedOperation,
  digest: string,
  timeNs: bigint
): RequestAuth => {
  const unsigned = { installationId, timeNs: String(timeNs), nonce: toHex(crypto.getRandomValues(new Uint8Array(16))) }
  const signature = toHex(signEd25519(privateKey, statement(op, digest, unsigned)))
  return makeRequestAuth({ ...unsigned, signature })
}

/** Does the signature hold for this operation and request under the installation's key (hex)? */
export const verifyRequest = (
  auth: RequestAuth,
  op: AuthenticatedOperation,
  digest: string,
  signaturePublicKey: string
): boolean => {
  try {
    return verifyStrict(signaturePublicKey, statement(op, digest, auth), auth.signature)
  } catch {
    return false
  }
}

/** The digest each authenticated operation signs: the same on the client and on the server. */
export const requestDigests = {
  sendGroupMessages: (messages: ReadonlyArray<{ readonly groupId: string; readonly payload: Uint8Array }>) =>
    digestOf(...messages.flatMap((m) => [m.groupId, m.payload])),
  sendGroupMessagesIf: (
    messages: ReadonlyArray<{ readonly groupId: string; readonly payload: Uint8Array }>,
    ifTopicEndsAt: bigint
  ) => digestOf(ifTopicEndsAt, ...messages.flatMap((m) => [m.groupId, m.payload])),
  sendWelcomeMessages: (messages: ReadonlyArray<{ readonly installationId: string; readonly payload: Uint8Array }>) =>
    digestOf(...messages.flatMap((m) => [m.installationId, m.payload])),
  queryWelcomeMessages: (query: { readonly installationId: string; readonly afterSequenceId: bigint; readonly limit?: number }) =>
    digestOf(query.installationId, query.afterSequenceId, query.limit),
  subscribeWelcomeMessages: (filter: { readonly installationId: string; readonly afterSequenceId: bigint }) =>
    digestOf(filter.installationId, filter.afterSequenceId),
  uploadKeyPackage: (upload: { readonly installationId: string; readonly keyPackage: Uint8Array }) =>
    digestOf(upload.installationId, upload.keyPackage)
} as const
