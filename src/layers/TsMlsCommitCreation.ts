/**
 * Creating a commit as ts-mls 1.6.4's `createCommit` does, step for step and from its own exported
 * steps, for the one shape Converge sends (a member's commit as a private message, the ratchet
 * tree in the welcome's group info, no PSKs of its own), doing less of the work: the new epoch's
 * secret tree from `TsMlsSecretTree` (its leaves only: two thirds of the derivations), the tree
 * hash from the hashes of the tree the commit started from (`TsMlsTreeHashes`: only the replaced
 * path is hashed again), and the welcome's tree encoded from the nodes' remembered bytes
 * (`TsMlsStateCodec`).
 * test/TsMlsCommitCreation.test.ts replays the same randomness through both and compares the
 * commit, the welcome and the new state byte for byte.
 */
import type { CiphersuiteImpl, ClientState, GroupContext, KeyPackage, MLSMessage, Proposal, RatchetTree, Welcome } from "ts-mls"
import {
  addHistoricalReceiverData,
  type ApplyProposalsResult,
  applyProposals,
  checkCanSendHandshakeMessages,
  makePskIndex,
  nextEpochContext
} from "ts-mls/clientState.js"
import { createGroupInfo } from "ts-mls/createCommit.js"
import { createConfirmationTag, createContentCommitSignature, type FramedContentCommit } from "ts-mls/framedContent.js"
import { makeKeyPackageRef } from "ts-mls/keyPackage.js"
import { type EpochSecrets, initializeEpoch } from "ts-mls/keySchedule.js"
import { protect } from "ts-mls/messageProtection.js"
import { UsageError } from "ts-mls/mlsError.js"
import { getCommitSecret, pathToPathSecrets } from "ts-mls/pathSecrets.js"
import { mergePrivateKeyPaths, toPrivateKeyPath, updateLeafKey } from "ts-mls/privateKeyPath.js"
import type { ProposalOrRef } from "ts-mls/proposalOrRefType.js"
import { type LeafIndex, leafToNodeIndex, leafWidth, toLeafIndex, toNodeIndex } from "ts-mls/treemath.js"
import { createUpdatePath, firstCommonAncestor, type PathSecret } from "ts-mls/updatePath.js"
import { base64ToBytes, zeroOutUint8Array } from "ts-mls/util/byteArray.js"
import { encryptGroupInfo, encryptGroupSecrets } from "ts-mls/welcome.js"
import { leafSecretTree } from "./TsMlsSecretTree.ts"
import { ratchetTree as rememberedTree } from "./TsMlsStateCodec.ts"
import { treeHashesAfter } from "./TsMlsTreeHashes.ts"

export interface CreatedCommit {
  readonly commit: MLSMessage
  readonly welcome: Welcome | undefined
  readonly newState: ClientState
  /** As ts-mls's `consumed`: the pre-commit init secret among them (see TsMlsCommits). */
  readonly consumed: ReadonlyArray<Uint8Array>
}

const NO_AUTHENTICATED_DATA = new Uint8Array()

/** The pending proposals by reference, then the new ones (ts-mls's `bundleAllProposals`). */
const allProposalsOf = (state: ClientState, proposals: ReadonlyArray<Proposal>): Array<ProposalOrRef> => [
  ...Object.keys(state.unappliedProposals).map((ref): ProposalOrRef => ({
    proposalOrRefType: "reference",
    reference: base64ToBytes(ref)
  })),
  ...proposals.map((proposal): ProposalOrRef => ({ proposalOrRefType: "proposal", proposal }))
]

/** RFC 9420 §12.4: a member's commit of `proposals` (and the pending ones), as ts-mls creates it. */
export const createMemberCommit = async (
  state: ClientState,
  cs: CiphersuiteImpl,
  proposals: ReadonlyArray<Proposal>
): Promise<CreatedCommit> => {
  checkCanSendHandshakeMessages(state)
  const ownLeaf = toLeafIndex(state.privatePath.leafIndex)
  const allProposals = allProposalsOf(state, proposals)
  const applied = await applyProposals(state, allProposals, ownLeaf, makePskIndex(state, {}), true, cs)
  if (applied.additionalResult.kind === "externalCommit") throw new UsageError("Cannot create externalCommit as a member")
  const reinit = applied.additionalResult.kind === "reinit" ? applied.additionalResult.reinit : undefined
  // New members get their path secret in the welcome: leaving them out of the UpdatePath keeps
  // its ciphertexts in the order receivers expect.
  const addedNodes = applied.additionalResult.kind === "memberCommit"
    ? applied.additionalResult.addedLeafNodes.map(([leafIndex]) => leafToNodeIndex(leafIndex))
    : []
  const [tree, updatePath, pathSecrets, newPrivateKey] = applied.needsUpdatePath
    ? await createUpdatePath(applied.tree, ownLeaf, state.groupContext, state.signaturePrivateKey, cs, addedNodes)
    : [applied.tree, undefined, [] as Array<PathSecret>, undefined]
  const extensions = applied.additionalResult.kind === "memberCommit" && applied.additionalResult.extensions.length > 0
    ? applied.additionalResult.extensions
    : state.groupContext.extensions
  const privatePath = mergePrivateKeyPaths(
    newPrivateKey === undefined
      ? state.privatePath
      : updateLeafKey(state.privatePath, await cs.hpke.exportPrivateKey(newPrivateKey)),
    await toPrivateKeyPath(pathToPathSecrets(pathSecrets), state.privatePath.leafIndex, cs)
  )
  const lastPathSecret = pathSecrets.at(-1)
  const commitSecret = lastPathSecret === undefined
    ? new Uint8Array(cs.kdf.size)
    : await getCommitSecret(tree, toNodeIndex(lastPathSecret.nodeIndex), lastPathSecret.secret, cs.kdf)
  const { framedContent, signature } = await createContentCommitSignature(
    state.groupContext,
    "mls_private_message",
    { proposals: allProposals, path: updatePath },
    { senderType: "member", leafIndex: state.privatePath.leafIndex },
    NO_AUTHENTICATED_DATA,
    state.signaturePrivateKey,
    cs.signature
  )
  const groupContext = await nextEpochContext(
    { ...state.groupContext, extensions },
    "mls_private_message",
    framedContent,
    signature,
    await treeHashesAfter(state.ratchetTree, tree, cs.hash).root(),
    state.confirmationTag,
    cs.hash
  )
  const epochSecrets = await initializeEpoch(state.keySchedule.initSecret, commitSecret, groupContext, applied.pskSecret, cs.kdf)
  const confirmationTag = await createConfirmationTag(epochSecrets.keySchedule.confirmationKey, groupContext.confirmedTranscriptHash, cs.hash)
  const [commit, consumedByProtect] = await protectCommit(state, framedContent, signature, confirmationTag, cs)
  const welcome = await createWelcome(groupContext, confirmationTag, state, tree, cs, epochSecrets, applied, pathSecrets)
  const [historicalReceiverData, consumedEpochData] = addHistoricalReceiverData(state)
  const newState: ClientState = {
    groupContext,
    ratchetTree: tree,
    secretTree: await leafSecretTree(leafWidth(tree.length), epochSecrets.encryptionSecret, cs.kdf),
    keySchedule: epochSecrets.keySchedule,
    privatePath,
    unappliedProposals: {},
    historicalReceiverData,
    confirmationTag,
    signaturePrivateKey: state.signaturePrivateKey,
    groupActiveState: applied.selfRemoved
      ? { kind: "removedFromGroup" }
      : reinit !== undefined
      ? { kind: "suspendedPendingReinit", reinit }
      : { kind: "active" },
    clientConfig: state.clientConfig
  }
  zeroOutUint8Array(commitSecret)
  zeroOutUint8Array(epochSecrets.encryptionSecret)
  zeroOutUint8Array(epochSecrets.joinerSecret)
  return { commit, welcome, newState, consumed: [...consumedByProtect, ...consumedEpochData, state.keySchedule.initSecret] }
}

/** The commit as a private message of the epoch it leaves (ts-mls's `protectCommit`). */
const protectCommit = async (
  state: ClientState,
  content: FramedContentCommit,
  signature: Uint8Array,
  confirmationTag: Uint8Array,
  cs: CiphersuiteImpl
): Promise<readonly [MLSMessage, ReadonlyArray<Uint8Array>]> => {
  const protectedCommit = await protect(
    state.keySchedule.senderDataSecret,
    NO_AUTHENTICATED_DATA,
    state.groupContext,
    state.secretTree,
    { ...content, auth: { contentType: content.contentType, signature, confirmationTag } },
    state.privatePath.leafIndex,
    state.clientConfig.paddingConfig,
    cs
  )
  return [{ version: "mls10", wireformat: "mls_private_message", privateMessage: protectedCommit.privateMessage }, protectedCommit.consumed]
}

/** The welcome of the commit's new members, the ratchet tree in its group info; none without adds. */
const createWelcome = async (
  groupContext: GroupContext,
  confirmationTag: Uint8Array,
  state: ClientState,
  tree: RatchetTree,
  cs: CiphersuiteImpl,
  epochSecrets: EpochSecrets,
  applied: ApplyProposalsResult,
  pathSecrets: ReadonlyArray<PathSecret>
): Promise<Welcome | undefined> => {
  // ts-mls builds, signs and encrypts the group info before finding there is no one to welcome.
  if (applied.additionalResult.kind !== "memberCommit" || applied.additionalResult.addedLeafNodes.length === 0) return undefined
  // The tree's encoding keeps the bytes of every node the commit did not replace (and saving the state reuses it).
  const treeExtension = { extensionType: "ratchet_tree" as const, extensionData: rememberedTree.bytes(tree) }
  const groupInfo = await createGroupInfo(groupContext, confirmationTag, state, [treeExtension], cs)
  const encryptedGroupInfo = await encryptGroupInfo(groupInfo, epochSecrets.welcomeSecret, cs)
  const secrets = await Promise.all(applied.additionalResult.addedLeafNodes.map(async ([leafIndex, keyPackage]) => {
    const encrypted = await groupSecretsFor(tree, leafIndex, keyPackage, state, pathSecrets, encryptedGroupInfo, epochSecrets, applied, cs)
    return { newMember: await makeKeyPackageRef(keyPackage, cs.hash), encryptedGroupSecrets: encrypted }
  }))
  return { cipherSuite: groupContext.cipherSuite, secrets, encryptedGroupInfo }
}

/** A new member's joiner secret and the path secret of its first common ancestor with us, sealed to its init key. */
const groupSecretsFor = async (
  tree: RatchetTree,
  leafIndex: LeafIndex,
  keyPackage: KeyPackage,
  state: ClientState,
  pathSecrets: ReadonlyArray<PathSecret>,
  encryptedGroupInfo: Uint8Array,
  epochSecrets: EpochSecrets,
  applied: ApplyProposalsResult,
  cs: CiphersuiteImpl
) => {
  const ancestor = firstCommonAncestor(tree, leafIndex, toLeafIndex(state.privatePath.leafIndex))
  const pathSecret = pathSecrets.find((secret) => secret.nodeIndex === ancestor)
  const sealed = await encryptGroupSecrets(
    await cs.hpke.importPublicKey(keyPackage.initKey),
    encryptedGroupInfo,
    { joinerSecret: epochSecrets.joinerSecret, pathSecret: pathSecret?.secret, psks: applied.pskIds },
    cs.hpke
  )
  return { kemOutput: sealed.enc, ciphertext: sealed.ct }
}
