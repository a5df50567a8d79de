/**
 * What the XMTP V3 server reads out of MLS bytes, as node-go's validation service does: the
 * group id of a group message and whether it is a commit (or proposal), and a key package's
 * installation key after verifying it (signatures, lifetime, an `MlsCredential` naming an
 * inbox). Nothing else of the MLS content is checked: clients validate commits themselves.
 */
import { ed25519 } from "@noble/curves/ed25519.js"
import { Data, Effect } from "effect"
import { decodeMlsMessage, type KeyPackage } from "ts-mls"
import type { Signature } from "ts-mls/crypto/signature.js"
import { verifyKeyPackage } from "ts-mls/keyPackage.js"
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

/** Decodes and verifies a key package as node-go does (`VerifiedKeyPackageV2`). */
export const verifyXmtpKeyPackage = (
  bytes: Uint8Array,
  nowSeconds: bigint
): Effect.Effect<KeyPackageFacts, MalformedMls> =>
  Effect.gen(function*() {
    const kp = yield* decodeWhole("key package", decodeKeyPackage, bytes)
    if (kp.cipherSuite !== XMTP_CIPHERSUITE) {
      return yield* new MalformedMls({ reason: `key package: ciphersuite ${kp.cipherSuite} is not XMTP's` })
    }
    const signed = yield* Effect.promise(async () =>
      await verifyKeyPackage(kp, ed25519Signature) &&
      await verifyLeafNodeSignatureKeyPackage(kp.leafNode, ed25519Signature)
    )
    if (!signed) return yield* new MalformedMls({ reason: "key package: signature does not verify" })
    yield* checkLifetime(kp, nowSeconds)
    const credential = kp.leafNode.credential
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
    if (kp.leafNode.signaturePublicKey.length !== 32) {
      return yield* new MalformedMls({ reason: "key package: the signature key is not an Ed25519 key" })
    }
    return { installationKey: kp.leafNode.signaturePublicKey, inboxId, notAfterSeconds: kp.leafNode.lifetime.notAfter }
  })
