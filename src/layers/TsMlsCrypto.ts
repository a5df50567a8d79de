/**
 * The `MlsCrypto` port on ts-mls 1.6.4, ciphersuite 1 (X25519, AES-128-GCM, SHA-256, Ed25519).
 * Only this module and its parts (TsMlsWelcome: its join; TsMlsStateCodec, TsMlsStoredState: its state bytes;
 * TsMlsExtensions, TsMlsMembers, TsMlsCommitRules, TsMlsTreeHashes) import ts-mls; see /work/shared/notes/ts-mls.md for the
 * version-specific facts it relies on (sender recovery, pending commits, error classes).
 *
 * Leaf credentials are basic credentials whose identity is UTF-8 `inboxId:installationId`,
 * and the installation id must be the SHA-256 of the leaf's signature key. That structural
 * check runs inside ts-mls's AuthenticationService hook on every leaf it validates, followed
 * by the caller's `authenticate`.
 */
import { type Context, Effect, Either, Layer } from "effect"
import {
  type AuthenticationService,
  type CiphersuiteImpl,
  type Commit,
  type ClientConfig,
  type ClientState,
  type Credential,
  type FramedContent,
  type KeyPackage,
  type MLSMessage,
  type PrivateKeyPackage,
  type PrivateMessage,
  type Proposal,
  type RatchetTree,
  createApplicationMessage,
  createCommit as mlsCreateCommit,
  createGroup as mlsCreateGroup,
  decodeMlsMessage,
  defaultCryptoProvider,
  defaultKeyRetentionConfig,
  emptyPskIndex,
  encodeMlsMessage,
  generateKeyPackageWithKey,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  processMessage
} from "ts-mls"
import { defaultClientConfig } from "ts-mls/clientConfig.js"
import { extensionsSupportedByCapabilities } from "ts-mls/extension.js"
import { decryptWithLabel, encryptWithLabel } from "ts-mls/crypto/hpke.js"
import { encodeKeyPackage, makeKeyPackageRef, verifyKeyPackage } from "ts-mls/keyPackage.js"
import { verifyLeafNodeSignatureKeyPackage } from "ts-mls/leafNode.js"
import { unprotectPrivateMessage } from "ts-mls/messageProtection.js"
import * as MlsError from "ts-mls/mlsError.js"
import { decodeKeyPackage } from "./TsMlsDecoders.ts"
import { LruCache } from "../domain/Ed25519.ts"
import * as StoredState from "./TsMlsStoredState.ts"
import { bytesEqual, concat, fromHex, sha256Hex, toHex } from "../domain/Bytes.ts"
import { CryptoError, type CryptoErrorReason } from "../domain/Errors.ts"
import type { GroupId, InstallationId } from "../domain/Ids.ts"
import { installationIdOf } from "../domain/IdentityLog.ts"
import {
  type CommitChanges,
  type GroupView,
  type KeyPackageBundle,
  type LeafIdentity,
  type MessageHeader,
  MlsCrypto,
  type MlsCryptoOptions,
  type MlsGroupState,
  type Processed,
  type ProcessedApplication
} from "../services/MlsCrypto.ts"
import { deferSignatures } from "./DeferredSignatures.ts"
import { nodeCryptoProvider } from "./NodeCiphersuite.ts"
import * as Rules from "./TsMlsCommitRules.ts"
import {
  capabilities,
  contextChangeProblem,
  metadataIn,
  METADATA_EXTENSION,
  protocolVersionExtension,
  protocolVersionIn,
  withMetadata
} from "./TsMlsExtensions.ts"
import { encodeIdentity, leafMemberAt, membersOf, senderAt, structuralIdentity } from "./TsMlsMembers.ts"
import { installRejectionGuard } from "./TsMlsRejectionGuard.ts"
import { joinWithSigner } from "./TsMlsWelcome.ts"

type Service = Context.Tag.Service<MlsCrypto>

const CIPHERSUITE = "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519" as const
const KEY_PACKAGE_LIFETIME_SECONDS = 90n * 24n * 60n * 60n
/** Key packages are valid from a little before their creation, to tolerate clock skew. */
const CLOCK_SKEW_SECONDS = 60n * 60n
// ---- opaque state ----------------------------------------------------------------------

interface Held {
  readonly client: ClientState
  /** For a state just joined from a welcome: the leaf that signed its GroupInfo. Not persisted. */
  readonly inviter?: number
}

const wrap = (client: ClientState, inviter?: number): MlsGroupState =>
  (inviter === undefined ? { client } : { client, inviter } satisfies Held) as unknown as MlsGroupState
const unwrapRaw = (state: MlsGroupState): ClientState => (state as unknown as Held).client

// ---- errors ----------------------------------------------------------------------------

/** Thrown from our AuthenticationService so a rejection stays distinguishable inside ts-mls. */
class CredentialRejected extends Error {
  override readonly name = "CredentialRejected"
}

const fail = (reason: CryptoErrorReason, detail: string) => Effect.fail(new CryptoError({ reason, detail }))

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

const toCryptoError = (op: string) => (e: unknown): CryptoError =>
  new CryptoError({ reason: reasonOf(e), detail: `${op}: ${describe(e)}` })

const tryMls = <A>(op: string, run: () => Promise<A>): Effect.Effect<A, CryptoError> =>
  Effect.tryPromise({ try: run, catch: toCryptoError(op) })

/** Views by the parts they are read from (states are immutable values; see `view`). */
const viewsByContext = new WeakMap<ClientState["groupContext"], {
  readonly keySchedule: ClientState["keySchedule"]
  readonly ratchetTree: RatchetTree
  readonly privatePath: ClientState["privatePath"]
  readonly groupActiveState: ClientState["groupActiveState"]
  readonly view: GroupView
}>()

// ---- codecs ----------------------------------------------------------------------------

/** Decodes a whole buffer with a ts-mls decoder; trailing bytes or a throwing decoder mean garbage. */
const decodeAllOrError = <A>(
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

const decodeAll = <A>(
  what: string,
  decode: (bytes: Uint8Array, offset: number) => [A, number] | undefined,
  bytes: Uint8Array
): Effect.Effect<A, CryptoError> => {
  const decoded = decodeAllOrError(what, decode, bytes)
  return decoded instanceof CryptoError ? Effect.fail(decoded) : Effect.succeed(decoded.ok)
}

/**
 * Messages a receiver's `header` decoded, by their bytes object, until the next read of the same
 * bytes (`inspect` or `process`) takes them: the envelope is decoded once. Taken, not kept: an
 * in-memory delivery service holds its payloads for good, and inspects every one it stores.
 */
const decodedMessages = new WeakMap<Uint8Array, MLSMessage>()
const decodeMessageOrError = (bytes: Uint8Array, keep = false): MLSMessage | CryptoError => {
  const known = decodedMessages.get(bytes)
  if (known !== undefined) {
    if (!keep) decodedMessages.delete(bytes)
    return known
  }
  const decoded = decodeAllOrError("MLS message", decodeMlsMessage, bytes)
  if (decoded instanceof CryptoError) return decoded
  if (keep) decodedMessages.set(bytes, decoded.ok)
  return decoded.ok
}
const decodeMessage = (bytes: Uint8Array): Effect.Effect<MLSMessage, CryptoError> => {
  const decoded = decodeMessageOrError(bytes)
  return decoded instanceof CryptoError ? Effect.fail(decoded) : Effect.succeed(decoded)
}
const decodePublicPackage = (bytes: Uint8Array) => decodeAll("key package", decodeKeyPackage, bytes)

const PRIVATE_PACKAGE_FORMAT = 1

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

const u32 = (n: number): Uint8Array => {
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

const kindOf = (contentType: "application" | "proposal" | "commit"): MessageHeader["kind"] =>
  contentType === "application" ? "application" : contentType

/** A group id is 16 bytes in this project; anything else is not one of ours. */
const groupIdOf = (bytes: Uint8Array): GroupId | undefined => bytes.length === 16 ? toHex(bytes) as GroupId : undefined

const headerOf = (message: MLSMessage): MessageHeader => {
  switch (message.wireformat) {
    case "mls_private_message": {
      const pm = message.privateMessage
      return { kind: kindOf(pm.contentType), groupId: groupIdOf(pm.groupId), epoch: pm.epoch }
    }
    case "mls_public_message": {
      const content = message.publicMessage.content
      return { kind: kindOf(content.contentType), groupId: groupIdOf(content.groupId), epoch: content.epoch }
    }
    case "mls_welcome":
      // A welcome's group id and epoch are inside its encrypted GroupInfo.
      return { kind: "welcome", groupId: undefined, epoch: 0n }
    case "mls_group_info": {
      const context = message.groupInfo.groupContext
      return { kind: "other", groupId: groupIdOf(context.groupId), epoch: context.epoch }
    }
    case "mls_key_package":
      return { kind: "other", groupId: undefined, epoch: 0n }
  }
}

const nowSeconds = (): bigint => BigInt(Math.floor(Date.now() / 1000))

const withinLifetime = (kp: KeyPackage): boolean => {
  const now = nowSeconds()
  return kp.leafNode.lifetime.notBefore <= now && now <= kp.leafNode.lifetime.notAfter
}

// ---- the service -----------------------------------------------------------------------

/** Key packages up to this size are kept once verified: 256 of them hold at most 4 MiB of input. */
const MAX_CACHED_PACKAGE_BYTES = 16 * 1024

export const make = (options: MlsCryptoOptions): Effect.Effect<Service> =>
  Effect.gen(function*() {
    const provider = options.provider === "default" ? defaultCryptoProvider : nodeCryptoProvider
    const cs = yield* Effect.promise(() => getCiphersuiteImpl(getCiphersuiteFromName(CIPHERSUITE), provider))
    installRejectionGuard()
    return serviceOn(cs, options)
  })

/** The service over one ciphersuite implementation; `authenticatedBy` makes a copy with another hook. */
const serviceOn = (cs: CiphersuiteImpl, options: MlsCryptoOptions): Service => {
    /** The structural check, then the caller's hook: throws `CredentialRejected` with the reason. */
    const authenticateLeaf = async (credential: Credential, signaturePublicKey: Uint8Array, newLeaf: boolean) => {
      const identity = structuralIdentity(credential, signaturePublicKey)
      if (typeof identity === "string") throw new CredentialRejected(identity)
      if (options.authenticate !== undefined && !(await options.authenticate(identity, signaturePublicKey, newLeaf))) {
        const which = newLeaf ? "a current installation" : "an installation"
        throw new CredentialRejected(
          `installation ${identity.installationId} is not ${which} of inbox ${identity.inboxId} with this key`
        )
      }
      return true
    }

    /** Hands the hook every structurally sound leaf of a tree about to be validated leaf by leaf. */
    const prepareTree = async (tree: RatchetTree): Promise<void> => {
      if (options.prepareAuthentication === undefined) return
      const leaves: Array<LeafIdentity & { readonly signaturePublicKey: Uint8Array }> = []
      for (const node of tree) {
        if (node?.nodeType !== "leaf") continue
        const identity = structuralIdentity(node.leaf.credential, node.leaf.signaturePublicKey)
        if (typeof identity !== "string") leaves.push({ ...identity, signaturePublicKey: node.leaf.signaturePublicKey })
      }
      // A warm-up only: if it fails, each leaf's own check meets the failure.
      await options.prepareAuthentication(leaves).catch(() => undefined)
    }

    // ts-mls calls this on commit path leaves, welcome trees and (after `checkAdds`) Adds.
    const authService: AuthenticationService = {
      validateCredential: (credential, signaturePublicKey) => authenticateLeaf(credential, signaturePublicKey, false)
    }

    const clientConfig: ClientConfig = {
      ...defaultClientConfig,
      // ts-mls keeps every past epoch when this is 0 (`slice(-0)`), so 1 is the floor; the stored
      // format reads at most MAX_PAST_EPOCHS back.
      keyRetentionConfig: {
        ...defaultKeyRetentionConfig,
        retainKeysForEpochs: Math.min(StoredState.MAX_PAST_EPOCHS, Math.max(1, options.maxPastEpochs ?? 3))
      },
      authService
    }
    /** A state's ts-mls client with this service's config (and so its `authenticate`), wherever it was made. */
    const unwrap = (state: MlsGroupState): ClientState => ({ ...unwrapRaw(state), clientConfig })

    const keyPackageRef = (kp: KeyPackage) =>
      tryMls("keyPackageRef", () => makeKeyPackageRef(kp, cs.hash)).pipe(Effect.map(toHex))

    const decodeBundle = (bundle: KeyPackageBundle) =>
      Effect.all({
        publicPackage: decodePublicPackage(bundle.publicPackage),
        privatePackage: decodePrivatePackage(bundle.privatePackage)
      })

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

    const createGroup: Service["createGroup"] = Effect.fn("MlsCrypto.createGroup")(function*(groupId, bundle, metadata) {
      const { privatePackage, publicPackage } = yield* decodeBundle(bundle)
      const identity = structuralIdentity(publicPackage.leafNode.credential, publicPackage.leafNode.signaturePublicKey)
      if (typeof identity === "string") return yield* fail("Unauthenticated", identity)
      const extensions = metadata === undefined ? [] : [{ extensionType: METADATA_EXTENSION, extensionData: metadata }]
      const client = yield* tryMls(
        "createGroup",
        () => mlsCreateGroup(fromHex(groupId), publicPackage, privatePackage, extensions, cs, clientConfig)
      )
      return wrap(client)
    })

    /** The leaf of each installation to remove; every one must be in the group. */
    const removalsFor = (client: ClientState, installations: ReadonlyArray<InstallationId>) => {
      const members = membersOf(client.ratchetTree)
      const leaves: Array<number> = []
      for (const installationId of new Set(installations)) {
        const matching = members.filter((m) => m.installationId === installationId)
        if (matching.length === 0) return fail("NotAMember", `installation ${installationId} is not in the group`)
        if (matching.some((m) => m.leafIndex === client.privatePath.leafIndex)) {
          return fail("Internal", "an installation cannot remove itself with its own commit")
        }
        leaves.push(...matching.map((m) => m.leafIndex))
      }
      return Effect.succeed(leaves)
    }

    /**
     * ts-mls 1.6.4 validates Adds inside an async `reduce` that starts every check before
     * awaiting the previous one, so when an Add fails and a later one fails or is still
     * pending, the earlier rejection goes unobserved: an unhandled rejection, which ends a Node
     * process by default. The same checks, run here one at a time first, fail cleanly instead
     * and leave ts-mls's own copies nothing to reject (the rejection guard is the backstop).
     */
    const checkAdds = (client: ClientState, adds: ReadonlyArray<KeyPackage>, sentByClient: boolean) =>
      tryMls("validateKeyPackage", async () => {
        for (const kp of adds) {
          const problem = await keyPackageProblem(client, kp, sentByClient)
          if (problem !== undefined) throw problem
        }
      })

    const keyPackageProblem = async (client: ClientState, kp: KeyPackage, sentByClient: boolean) => {
      const { cipherSuite, version } = client.groupContext
      if (kp.cipherSuite !== cipherSuite || kp.version !== version) {
        return new MlsError.ValidationError("key package ciphersuite or version differs from the group's")
      }
      // ts-mls verifies both again as it applies the Add; a package verified before is not redone here.
      const signed = signaturesHeld.has(kp) || (await verifyLeafNodeSignatureKeyPackage(kp.leafNode, cs.signature) &&
        await verifyKeyPackage(kp, cs.signature))
      if (!signed) return new MlsError.CryptoVerificationError("Invalid keypackage signature")
      if (sentByClient && !withinLifetime(kp)) return new MlsError.ValidationError("Current time not within Lifetime")
      // What we add must be a current installation; what others added may have been revoked since.
      await authenticateLeaf(kp.leafNode.credential, kp.leafNode.signaturePublicKey, sentByClient)
      const lacking = Rules.lacksRequiredCapabilities(client.groupContext, kp.leafNode)
      if (lacking !== undefined) return new MlsError.ValidationError(lacking)
      if (!extensionsSupportedByCapabilities(kp.leafNode.extensions, kp.leafNode.capabilities)) {
        return new MlsError.ValidationError("LeafNode contains extension not listed in capabilities")
      }
      if (!extensionsSupportedByCapabilities(client.groupContext.extensions, kp.leafNode.capabilities)) {
        return new MlsError.ValidationError("key package does not support the group's context extensions")
      }
      if (!kp.leafNode.capabilities.credentials.includes("basic")) {
        return new MlsError.ValidationError("key package does not support basic credentials")
      }
      return undefined
    }

    /** The structural rules of `TsMlsCommitRules`, in order; the first refusal wins. */
    const commitProblem = (client: ClientState, committer: number, commit: Commit): string | undefined =>
      Rules.forbiddenProposal(commit) ??
        contextChangeProblem(
          client.groupContext.extensions,
          commit.proposals.flatMap((p) => (p.proposalOrRefType === "proposal" ? [p.proposal] : []))
        ) ??
        Rules.badRemoval(client.ratchetTree, committer, commit) ??
        Rules.pathLeafChangesIdentity(client.ratchetTree, committer, commit) ??
        Rules.duplicateLeafKeys(client.ratchetTree, committer, commit)

    /** A commit's content, read ahead of processMessage for the rules above. */
    const commitContent = (client: ClientState, message: MLSMessage) =>
      Effect.gen(function*() {
        let content: FramedContent
        if (message.wireformat === "mls_public_message") {
          content = message.publicMessage.content
        } else if (message.wireformat === "mls_private_message") {
          // Pure: the ratcheted secret tree it returns is dropped; processMessage redoes this.
          const unprotected = yield* tryMls("process", () =>
            unprotectPrivateMessage(
              client.keySchedule.senderDataSecret,
              message.privateMessage,
              client.secretTree,
              client.ratchetTree,
              client.groupContext,
              client.clientConfig.keyRetentionConfig,
              cs
            ))
          content = unprotected.content.content
        } else {
          return yield* fail("Malformed", `${message.wireformat} is not a commit`)
        }
        if (content.contentType !== "commit") return yield* fail("Malformed", "not a commit")
        // External commits (a new member's own) are never sent by Converge.
        if (content.sender.senderType !== "member") return yield* fail("Malformed", "commits from non-members are not accepted")
        return { commit: content.commit, committer: content.sender.leafIndex }
      })

    /** Every rule a received commit must pass before ts-mls applies it. */
    const checkReceivedCommit = (client: ClientState, message: MLSMessage) =>
      Effect.gen(function*() {
        const { commit, committer } = yield* commitContent(client, message)
        const problem = commitProblem(client, committer, commit)
        if (problem !== undefined) return yield* fail("Malformed", problem)
        yield* checkAdds(client, Rules.addsOf(commit), false)
        return { commit, committer }
      })

    const metadataProposal = (client: ClientState, metadata: Uint8Array | undefined): Array<Proposal> =>
      metadata === undefined ? [] : [{
        proposalType: "group_context_extensions",
        groupContextExtensions: { extensions: withMetadata(client.groupContext.extensions, metadata) }
      }]

    const createCommit: Service["createCommit"] = Effect.fn("MlsCrypto.createCommit")(
      function*(state, changes: CommitChanges) {
        const client = unwrap(state)
        const adds = yield* Effect.forEach(changes.add ?? [], keptOrDecoded)
        const removed = yield* removalsFor(client, changes.remove ?? [])
        // A GroupContextExtensions proposal combined with a Remove breaks receivers (ts-mls #742).
        if (changes.metadata !== undefined && removed.length > 0) {
          return yield* fail("Internal", "a metadata change cannot share a commit with a removal (ts-mls #742)")
        }
        const proposals: Array<Proposal> = [
          ...removed.map((leaf): Proposal => ({ proposalType: "remove", remove: { removed: leaf } })),
          ...adds.map((keyPackage): Proposal => ({ proposalType: "add", add: { keyPackage } })),
          ...metadataProposal(client, changes.metadata)
        ]
        const problem = Rules.duplicateLeafKeys(client.ratchetTree, client.privatePath.leafIndex, {
          proposals: proposals.map((proposal) => ({ proposalOrRefType: "proposal", proposal })),
          path: undefined
        })
        if (problem !== undefined) return yield* fail("Malformed", problem)
        yield* checkAdds(client, adds, true)
        // An empty proposal list is a self-update: ts-mls then sends an UpdatePath.
        const result = yield* tryMls(
          "createCommit",
          () =>
            mlsCreateCommit(
              { state: client, cipherSuite: cs },
              { extraProposals: proposals, ratchetTreeExtension: true }
            )
        )
        // `result.consumed` is NOT zeroed: it holds the pre-commit init secret, which the
        // caller still needs if another commit wins this epoch (notes §3).
        return {
          commit: encodeMlsMessage(result.commit),
          welcome: result.welcome === undefined
            ? undefined
            : encodeMlsMessage({ version: "mls10", wireformat: "mls_welcome", welcome: result.welcome }),
          staged: wrap(result.newState)
        }
      }
    )

    const joinFromWelcome: Service["joinFromWelcome"] = Effect.fn("MlsCrypto.joinFromWelcome")(
      function*(bytes, keyPackages) {
        const message = yield* decodeMessage(bytes)
        if (message.wireformat !== "mls_welcome") return yield* fail("Malformed", "not a welcome message")
        const welcome = message.welcome
        const addressed = new Set(welcome.secrets.map((s) => toHex(s.newMember)))
        for (const bundle of keyPackages) {
          const { publicPackage, privatePackage } = yield* decodeBundle(bundle)
          // Recomputed rather than trusting `bundle.ref`, which came from storage.
          if (!addressed.has(yield* keyPackageRef(publicPackage))) continue
          // Not ts-mls's `joinGroup`: its tree check refuses trees ts-mls builds (see TsMlsWelcome).
          const joined = yield* tryMls(
            "joinFromWelcome",
            () => joinWithSigner(welcome, publicPackage, privatePackage, cs, clientConfig, prepareTree)
          )
          return wrap(joined.client, joined.signer)
        }
        return yield* fail("CannotDecrypt", "the welcome is not addressed to any of the given key packages")
      }
    )

    const encrypt: Service["encrypt"] = Effect.fn("MlsCrypto.encrypt")(function*(state, plaintext) {
      const { newState, privateMessage } = yield* tryMls(
        "encrypt",
        () => createApplicationMessage(unwrap(state), plaintext, cs)
      )
      return {
        message: encodeMlsMessage({ version: "mls10", wireformat: "mls_private_message", privateMessage }),
        state: wrap(newState)
      }
    })

    const inspect: Service["inspect"] = Effect.fn("MlsCrypto.inspect")(function*(bytes) {
      return headerOf(yield* decodeMessage(bytes))
    })

    /**
     * An application message: ts-mls 1.6.4's `processPrivateMessage` steps for that case (current
     * epoch, or a past one still retained), keeping the sender its sender data names, which
     * 1.6.4's result drops (notes §2). `unprotectPrivateMessage` decrypts the sender data, checks
     * the leaf is non-blank, decrypts the content and verifies its signature against that leaf.
     */
    const processApplication = async (client: ClientState, pm: PrivateMessage, suite: CiphersuiteImpl) => {
      const past = pm.epoch < client.groupContext.epoch ? client.historicalReceiverData.get(pm.epoch) : undefined
      if (pm.epoch < client.groupContext.epoch && past === undefined) {
        throw new MlsError.ValidationError("Cannot process message, epoch too old")
      }
      const keys = past ?? {
        senderDataSecret: client.keySchedule.senderDataSecret,
        secretTree: client.secretTree,
        ratchetTree: client.ratchetTree,
        groupContext: client.groupContext
      }
      const result = await unprotectPrivateMessage(
        keys.senderDataSecret,
        pm,
        keys.secretTree,
        keys.ratchetTree,
        keys.groupContext,
        client.clientConfig.keyRetentionConfig,
        suite
      )
      const content = result.content.content
      if (content.contentType !== "application" || content.sender.senderType !== "member") {
        throw new MlsError.ValidationError("not an application message from a member")
      }
      const newState: ClientState = past === undefined
        ? { ...client, secretTree: result.tree }
        : {
          ...client,
          historicalReceiverData: new Map(client.historicalReceiverData).set(pm.epoch, { ...past, secretTree: result.tree })
        }
      return { plaintext: content.applicationData, leafIndex: content.sender.leafIndex, tree: keys.ratchetTree, newState }
    }

    /** What `process` checks before any decryption: the refusal, or the group message and its header. */
    const screen = (client: ClientState, bytes: Uint8Array) => {
      const refuse = (reason: CryptoErrorReason, detail: string) => new CryptoError({ reason, detail })
      const message = decodeMessageOrError(bytes)
      if (message instanceof CryptoError) return message
      if (message.wireformat !== "mls_private_message" && message.wireformat !== "mls_public_message") {
        return refuse("Malformed", `${message.wireformat} is not a group message`)
      }
      const header = headerOf(message)
      const groupId = message.wireformat === "mls_private_message"
        ? message.privateMessage.groupId
        : message.publicMessage.content.groupId
      if (!bytesEqual(groupId, client.groupContext.groupId)) {
        const ours = toHex(client.groupContext.groupId)
        return refuse("CannotDecrypt", `message is for group ${toHex(groupId)}, not ${ours}`)
      }
      // We never send standalone proposals, and an accepted one would block sending (notes §2).
      if (header.kind === "proposal") return refuse("Malformed", "standalone proposals are not accepted")
      if (header.kind === "application" && message.wireformat === "mls_public_message") {
        return refuse("Malformed", "application messages must be private")
      }
      const epoch = client.groupContext.epoch
      if (header.epoch > epoch) {
        // ts-mls would fail with an undifferentiated CryptoError; a removed member never catches up.
        return client.groupActiveState.kind === "removedFromGroup"
          ? refuse("NotAMember", `removed at epoch ${epoch}; message is from epoch ${header.epoch}`)
          : refuse("WrongEpoch", `message is from future epoch ${header.epoch}; group is at ${epoch}`)
      }
      if (header.kind === "commit" && header.epoch < epoch) {
        return refuse("WrongEpoch", `commit for past epoch ${header.epoch}; group is at ${epoch}`)
      }
      return { message, header }
    }

    /** A screened private application message, decrypted and verified: the result `process` gives. */
    const applicationResult = async (
      client: ClientState,
      pm: PrivateMessage,
      epoch: bigint,
      suite: CiphersuiteImpl = cs
    ) => {
      const app = await processApplication(client, pm, suite)
      const sender = senderAt(app.tree, app.leafIndex)
      if (sender === undefined) return new CryptoError({ reason: "Internal", detail: "cannot resolve the sender leaf" })
      return {
        kind: "application",
        plaintext: app.plaintext,
        sender,
        epoch,
        state: wrap(app.newState)
      } satisfies Processed
    }

    const header: Service["header"] = (bytes) => {
      const message = decodeMessageOrError(bytes, true)
      return message instanceof CryptoError ? undefined : headerOf(message)
    }

    /**
     * A page's run: per message the same screen and steps as `process`, each from the state the
     * previous success left; a refused message leaves the state as it was. With more than one
     * message the signatures are checked on the thread pool meanwhile (DeferredSignatures); if any
     * fails, the run is redone with the real checks, so the answer is always the sequential one.
     */
    const processApplications: Service["processApplications"] = (state, messages) =>
      Effect.promise(async () => {
        const deferred = messages.length > 1 ? deferSignatures(cs) : undefined
        if (deferred !== undefined) {
          const provisional = await applicationsRun(deferred.ciphersuite, state, messages)
          if (await deferred.allValid()) return provisional
        }
        return applicationsRun(cs, state, messages)
      }).pipe(Effect.withSpan("MlsCrypto.processApplications", { attributes: { messages: messages.length } }))

    const processApplicationsUnconfirmed: Service["processApplicationsUnconfirmed"] = (state, messages) =>
      Effect.promise(async () => {
        const deferred = messages.length > 1 ? deferSignatures(cs) : undefined
        if (deferred === undefined) return { ...(await applicationsRun(cs, state, messages)), confirmed: Effect.succeed(true) }
        const provisional = await applicationsRun(deferred.ciphersuite, state, messages)
        return { ...provisional, confirmed: Effect.promise(deferred.allValid) }
      }).pipe(Effect.withSpan("MlsCrypto.processApplications", { attributes: { messages: messages.length } }))

    const applicationsRun = async (suite: CiphersuiteImpl, state: MlsGroupState, messages: ReadonlyArray<Uint8Array>) => {
      const results: Array<Either.Either<ProcessedApplication, CryptoError>> = []
      let current = state
      for (const bytes of messages) {
        const client = unwrap(current)
        const screened = screen(client, bytes)
        if (screened instanceof CryptoError) {
          results.push(Either.left(screened))
          continue
        }
        const { header, message } = screened
        if (header.kind !== "application" || message.wireformat !== "mls_private_message") {
          results.push(Either.left(new CryptoError({ reason: "Malformed", detail: "not an application message" })))
          continue
        }
        const app = await applicationResult(client, message.privateMessage, header.epoch, suite)
          .catch(toCryptoError("process"))
        if (!(app instanceof CryptoError)) current = app.state
        results.push(app instanceof CryptoError ? Either.left(app) : Either.right(app))
      }
      return { results, state: current }
    }

    const process: Service["process"] = Effect.fn("MlsCrypto.process")(function*(state, bytes) {
      const client = unwrap(state)
      const screened = screen(client, bytes)
      if (screened instanceof CryptoError) return yield* Effect.fail(screened)
      const { header, message } = screened
      if (header.kind === "application" && message.wireformat === "mls_private_message") {
        const app = yield* tryMls("process", () => applicationResult(client, message.privateMessage, header.epoch))
        return app instanceof CryptoError ? yield* Effect.fail(app) : app
      }
      const received = header.kind === "commit" ? yield* checkReceivedCommit(client, message) : undefined

      let committer: number | undefined
      const result = yield* tryMls("process", () =>
        processMessage(message, client, emptyPskIndex, (incoming) => {
          if (incoming.kind === "commit") committer = incoming.senderLeafIndex
          return "accept"
        }, cs))

      if (result.kind === "applicationMessage") return yield* fail("Malformed", "unexpected application message")
      if (committer === undefined || received === undefined || committer !== received.committer) {
        return yield* fail("Malformed", "commits from non-members are not accepted")
      }
      const before = client
      yield* tryMls("process", () =>
        Rules.updatePathKeysMatchSecrets(before, result.newState, received.committer, received.commit, cs))
      // Who signed it: the committer's leaf as it was, not as its own UpdatePath renamed it.
      const member = leafMemberAt(client.ratchetTree, committer) ?? leafMemberAt(result.newState.ratchetTree, committer)
      if (member === undefined) return yield* fail("Internal", `cannot resolve committer leaf ${committer}`)
      // If this commit removed us, the state stays at the old epoch, marked removed.
      const next = wrap(result.newState)
      return {
        kind: "commit",
        committer: member,
        epoch: header.epoch + 1n,
        state: next,
        metadataBefore: metadataIn(client.groupContext.extensions),
        metadataAfter: metadataIn(result.newState.groupContext.extensions)
      } satisfies Processed
    })

    /**
     * Welcome wrapping (HPKE to the key package's init key, RFC 9420 EncryptWithLabel under a
     * label of our own): what travels on a welcome topic is readable by its installation only.
     * Format: version, the key package's ref (the recipient's own, so it knows which private
     * key to use), the KEM output and the ciphertext, each length-prefixed.
     */
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

    const view: Service["view"] = (state): GroupView => {
      const client = unwrapRaw(state)
      // An application message changes only the secret tree: its state shares every part a view reads.
      const known = viewsByContext.get(client.groupContext)
      if (
        known !== undefined && known.keySchedule === client.keySchedule && known.ratchetTree === client.ratchetTree &&
        known.privatePath === client.privatePath && known.groupActiveState === client.groupActiveState
      ) return known.view
      const made: GroupView = {
        groupId: toHex(client.groupContext.groupId) as GroupId,
        epoch: client.groupContext.epoch,
        epochAuthenticator: toHex(client.keySchedule.epochAuthenticator),
        members: membersOf(client.ratchetTree),
        active: client.groupActiveState.kind === "active",
        ownLeafIndex: client.privatePath.leafIndex,
        metadata: metadataIn(client.groupContext.extensions)
      }
      const { groupActiveState, keySchedule, privatePath, ratchetTree } = client
      viewsByContext.set(client.groupContext, { keySchedule, ratchetTree, privatePath, groupActiveState, view: made })
      return made
    }

    const inviterOf: Service["inviterOf"] = (state) => {
      const inviter = (state as unknown as Held).inviter
      return inviter === undefined ? undefined : leafMemberAt(unwrapRaw(state).ratchetTree, inviter)
    }

    const leafDetails: Service["leafDetails"] = (state) => {
      const tree = unwrapRaw(state).ratchetTree
      return membersOf(tree).flatMap((m) => {
        const node = tree[m.leafIndex * 2]
        if (node?.nodeType !== "leaf") return []
        return [{ ...m, encryptionKey: node.leaf.hpkePublicKey, groupSigned: node.leaf.leafNodeSource !== "key_package" }]
      })
    }

    // The stored format (TsMlsStoredState): ts-mls's less its repeats, reusing the bytes of unchanged parts.
    const serialize: Service["serialize"] = (state) => StoredState.encodeStoredState(unwrapRaw(state))

    const deserialize: Service["deserialize"] = Effect.fn("MlsCrypto.deserialize")(function*(bytes) {
      const decoded = yield* decodeAll("group state", StoredState.decodeStoredState, bytes)
      // The encoding leaves out clientConfig (it holds functions), so it is re-attached here.
      return wrap({ ...decoded, clientConfig })
    })

    const serializeStaged: Service["serializeStaged"] = (staged, base) =>
      StoredState.encodeStagedState(unwrapRaw(staged), unwrapRaw(base))

    const deserializeStaged: Service["deserializeStaged"] = Effect.fn("MlsCrypto.deserializeStaged")(function*(bytes, base) {
      const decoded = yield* decodeAll("staged state", StoredState.decodeStagedState(unwrapRaw(base)), bytes)
      return wrap({ ...decoded, clientConfig })
    })

    const rebaseStaged: Service["rebaseStaged"] = (staged, was, now) => {
      const rebased = StoredState.rebaseStaged(unwrapRaw(staged), unwrapRaw(was), unwrapRaw(now))
      return rebased === unwrapRaw(staged) ? staged : wrap({ ...rebased, clientConfig })
    }

    return {
      rebaseStaged,
      sealToKeyPackage,
      openSealed,
      generateSignatureKeyPair,
      generateKeyPackage,
      keyPackageInfo,
      createGroup,
      createCommit,
      joinFromWelcome,
      encrypt,
      inspect,
      header,
      process,
      processApplications,
      processApplicationsUnconfirmed,
      view,
      serialize,
      deserialize,
      serializeStaged,
      deserializeStaged,
      inviterOf,
      leafDetails,
      authenticatedBy: (authenticate, prepare) =>
        serviceOn(cs, { ...options, authenticate, ...(prepare === undefined ? {} : { prepareAuthentication: prepare }) })
    } satisfies Service
}

/** `MlsCrypto` on ts-mls 1.6.4 (`MlsCrypto.layer` in the package root). */
export const layer = (options: MlsCryptoOptions = {}): Layer.Layer<MlsCrypto> => Layer.effect(MlsCrypto, make(options))
