/**
 * What the XMTP V3 server reads out of MLS bytes, as node-go's validation service does: the
 * group id of a group message and whether it is a commit (or proposal), and a key package's
 * installation key after verifying it (size and list bounds, canonical encoding, init key distinct
 * from the leaf's encryption key, signatures, lifetime, an `MlsCredential` naming an inbox).
 * Nothing else of the MLS content is checked: clients validate commits themselves.
 */
import { ed25519 } from "@noble/curves/ed25519.js"
import { Data, Effect } from "effect"
import { decodeMlsMessage, type KeyPackage } from "ts-mls"
import type { Signature } from "ts-mls/crypto/signature.js"
import { encodeKeyPackage, verifyKeyPackage } from "ts-mls/keyPackage.js"
import { decodeKeyPackage } from "../layers/TsMlsDecoders.ts"
import { verifyLeafNodeSignatureKeyPackage } from "ts-mls/leafNode.js"
import { codecs } from "./Proto.ts"

/** Bytes that are not what they claim to be; `reason` is sent to the caller. */
export class MalformedMls extends Data.TaggedError("MalformedMls")<{ readonly reason: string }> {}

/** XMTP's one ciphersuite: MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519. */
const XMTP_CIPHERSUITE = "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519"

const decodeWhole = <A>(
  what: string,
  decode: (bytes: Uint8Array, offset: number) => [A, number] | undefined,
  bytes: Uint8Array
): Effect.Effect<A, MalformedMls> =>
  Effect.suspend(() => {
    let decoded: [A, number] | undefined
    try {
      decoded = decode(bytes, 0)
    } catch (e) {
      return Effect.fail(new MalformedMls({ reason: `${what}: ${e instanceof Error ? e.message : String(e)}` }))
    }
    if (decoded === undefined || decoded[1] !== bytes.length) {
      return Effect.fail(new MalformedMls({ reason: `${what}: cannot decode` }))
    }
    return Effect.succeed(decoded[0])
  })

export interface GroupMessageFacts {
  readonly groupId: Uint8Array
  readonly isCommit: boolean
}

/** The group id and commit-ness of an MLS group message (a PrivateMessage or PublicMessage). */
export const inspectGroupMessage = (bytes: Uint8Array): Effect.Effect<GroupMessageFacts, MalformedMls> =>
  Effect.flatMap(decodeWhole("group message", decodeMlsMessage, bytes), (message) => {
    switch (message.wireformat) {
      case "mls_private_message": {
        const { groupId, contentType } = message.privateMessage
        return Effect.succeed({ groupId, isCommit: contentType !== "application" })
      }
      case "mls_public_message": {
        const { groupId, contentType } = message.publicMessage.content
        return Effect.succeed({ groupId, isCommit: contentType !== "application" })
      }
      default:
        return Effect.fail(new MalformedMls({ reason: `group message: a ${message.wireformat} is not a group message` }))
    }
  }).pipe(
    Effect.filterOrFail(
      (facts) => facts.groupId.length > 0,
      () => new MalformedMls({ reason: "group message: empty group id" })
    )
  )

/** ts-mls's signature port on @noble/curves Ed25519 (verification only: the server signs nothing). */
const ed25519Signature: Signature = {
  verify: async (publicKey, message, signature) => {
    try {
      return ed25519.verify(signature, message, publicKey, { zip215: false })
    } catch {
      return false
    }
  },
  sign: () => Promise.reject(new Error("the XMTP server does not sign")),
  keygen: () => Promise.reject(new Error("the XMTP server makes no keys"))
}

export interface KeyPackageFacts {
  /** The leaf's signature key: XMTP's installation key. */
  readonly installationKey: Uint8Array
  /** The inbox its `MlsCredential` names. */
  readonly inboxId: string
  readonly notAfterSeconds: bigint
}

const checkLifetime = (kp: KeyPackage, nowSeconds: bigint): Effect.Effect<void, MalformedMls> => {
  const { notBefore, notAfter } = kp.leafNode.lifetime
  // A little leeway for clocks, as openmls allows.
  return notBefore - 3600n <= nowSeconds && nowSeconds <= notAfter
    ? Effect.void
    : Effect.fail(new MalformedMls({ reason: `key package: outside its lifetime (${notBefore}..${notAfter})` }))
}

/**
 * libxmtp's key packages (@xmtp/node-sdk 5.5.0) are 1,659 bytes, 1,221 of them a post-quantum
 * key in an extension; anything far past that is refused before ts-mls spends time on it.
 */
export const MAX_KEY_PACKAGE_BYTES = 16 * 1024

/**
 * Entries in any one list of a key package (each capability list, each extension list): libxmtp's
 * longest has 8. ts-mls encodes a list through one nested closure per entry, so a long one
 * overflows the stack when the signature is checked.
 */
export const MAX_KEY_PACKAGE_LIST_ENTRIES = 256

const sameBytes = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((byte, i) => byte === b[i])

/** What can be refused from the decoded value alone, before anything is re-encoded. */
const checkShape = (kp: KeyPackage): Effect.Effect<void, MalformedMls> => {
  const refuse = (reason: string) => Effect.fail(new MalformedMls({ reason: `key package: ${reason}` }))
  const { capabilities, credential } = kp.leafNode
  if (kp.cipherSuite !== XMTP_CIPHERSUITE) return refuse(`ciphersuite ${kp.cipherSuite} is not XMTP's`)
  // Checked here, not after the signatures: an X.509 credential is one more list to re-encode.
  if (credential.credentialType !== "basic") return refuse("the credential is not a basic credential")
  const lists = [
    capabilities.versions,
    capabilities.ciphersuites,
    capabilities.extensions,
    capabilities.proposals,
    capabilities.credentials,
    kp.leafNode.extensions,
    kp.extensions
  ]
  if (lists.some((list) => list.length > MAX_KEY_PACKAGE_LIST_ENTRIES)) {
    return refuse(`a list of more than ${MAX_KEY_PACKAGE_LIST_ENTRIES} entries`)
  }
  if (kp.leafNode.signaturePublicKey.length !== 32) return refuse("the signature key is not an Ed25519 key")
  // RFC 9420 10.1; openmls refuses it too (InitKeyEqualsEncryptionKey).
  if (sameBytes(kp.initKey, kp.leafNode.hpkePublicKey)) return refuse("the init key is the leaf's encryption key")
  return Effect.void
}

/**
 * The signatures are checked over ts-mls's re-encoding of the decoded value, so the bytes received
 * must be that encoding: otherwise a copy of another's key package with, say, a length written in a
 * longer form would verify as theirs and replace it (openmls and tls_codec refuse such bytes).
 */
const checkCanonical = (kp: KeyPackage, bytes: Uint8Array): Effect.Effect<void, MalformedMls> =>
  Effect.try({
    try: () => encodeKeyPackage(kp),
    catch: (e) => new MalformedMls({ reason: `key package: ${e instanceof Error ? e.message : String(e)}` })
  }).pipe(
    Effect.filterOrFail(
      (encoded) => sameBytes(encoded, bytes),
      () => new MalformedMls({ reason: "key package: not in the canonical encoding" })
    ),
    Effect.asVoid
  )

const checkSignatures = (kp: KeyPackage): Effect.Effect<void, MalformedMls> =>
  Effect.tryPromise({
    try: async () =>
      await verifyKeyPackage(kp, ed25519Signature) &&
      await verifyLeafNodeSignatureKeyPackage(kp.leafNode, ed25519Signature),
    // No failure of ts-mls is a defect: whatever it throws on, the bytes are what is wrong.
    catch: (e) => new MalformedMls({ reason: `key package: ${e instanceof Error ? e.message : String(e)}` })
  }).pipe(
    Effect.filterOrFail(
      (signed) => signed,
      () => new MalformedMls({ reason: "key package: signature does not verify" })
    ),
    Effect.asVoid
  )

/** Decodes and verifies a key package as node-go does (`VerifiedKeyPackageV2`). */
export const verifyXmtpKeyPackage = (
  bytes: Uint8Array,
  nowSeconds: bigint
): Effect.Effect<KeyPackageFacts, MalformedMls> =>
  Effect.gen(function*() {
    if (bytes.length > MAX_KEY_PACKAGE_BYTES) {
      return yield* new MalformedMls({ reason: `key package: over ${MAX_KEY_PACKAGE_BYTES} bytes` })
    }
    const kp = yield* decodeWhole("key package", decodeKeyPackage, bytes)
    yield* checkShape(kp)
    yield* checkCanonical(kp, bytes)
    yield* checkSignatures(kp)
    yield* checkLifetime(kp, nowSeconds)
    const credential = kp.leafNode.credential
    // Refused in checkShape already; again here for the type.
    if (credential.credentialType !== "basic") {
      return yield* new MalformedMls({ reason: "key package: the credential is not a basic credential" })
    }
    const inboxId = yield* Effect.try({
      try: () => codecs.mlsCredential.decode(credential.identity).inboxId,
      catch: () => new MalformedMls({ reason: "key package: the credential is not an MlsCredential" })
    })
    if (!/^[0-9a-f]{64}$/.test(inboxId)) {
      return yield* new MalformedMls({ reason: "key package: the credential names no inbox id" })
    }
    return { installationKey: kp.leafNode.signaturePublicKey, inboxId, notAfterSeconds: kp.leafNode.lifetime.notAfter }
  })
