/**
 * Applying a member's commit received as a private message of the current epoch, as ts-mls
 * 1.6.4's `processMessage` does (its `processPrivateMessage` and `processCommit`), step for step
 * and from its own exported steps and checks, doing less of the work: the new epoch's secret tree
 * from `TsMlsSecretTree` (leaves only), and the new tree's hash once, from the hashes of the tree
 * before (`TsMlsTreeHashes`), where ts-mls hashes the whole tree twice. Anything else (an older
 * epoch, a proposal, a commit from a non-member) is not taken here: the caller hands it to ts-mls.
 * test/TsMlsCommitProcessing.test.ts compares the states both make, and their refusals.
 */
import type { CiphersuiteImpl, ClientState, PrivateMessage } from "ts-mls"
import {
  addHistoricalReceiverData,
  applyProposals,
  nextEpochContext,
  throwIfDefined,
  validateLeafNodeCredentialAndKeyUniqueness,
  validateLeafNodeUpdateOrCommit
} from "ts-mls/clientState.js"
import { applyUpdatePathSecret } from "ts-mls/createCommit.js"
import { deriveSecret } from "ts-mls/crypto/kdf.js"
import { verifyConfirmationTag } from "ts-mls/framedContent.js"
import { initializeEpoch } from "ts-mls/keySchedule.js"
import { type UnprotectResult, unprotectPrivateMessage } from "ts-mls/messageProtection.js"
import { CryptoVerificationError, InternalError, ValidationError } from "ts-mls/mlsError.js"
import { pathToRoot } from "ts-mls/pathSecrets.js"
import { mergePrivateKeyPaths, type PrivateKeyPath, toPrivateKeyPath } from "ts-mls/privateKeyPath.js"
import { emptyPskIndex } from "ts-mls/pskIndex.js"
import { findBlankLeafNodeIndex } from "ts-mls/ratchetTree.js"
import { type LeafIndex, leafToNodeIndex, leafWidth, root, toLeafIndex, toNodeIndex } from "ts-mls/treemath.js"
import { applyUpdatePath, type UpdatePath } from "ts-mls/updatePath.js"
import { zeroOutUint8Array } from "ts-mls/util/byteArray.js"
import { leafSecretTree } from "./TsMlsSecretTree.ts"
import { treeHashesAfter } from "./TsMlsTreeHashes.ts"

export interface ProcessedCommit {
  readonly newState: ClientState
  readonly committer: number
  /** As ts-mls's `consumed`: secrets to wipe once the new state is kept. */
  readonly consumed: ReadonlyArray<Uint8Array>
}

/**
 * The commit in `message` applied to `state`, or `undefined` when the message is not a member's
 * commit of the current epoch (ts-mls's own `processMessage` is then the one to read it).
 * `decrypted`: the message already unprotected against this very state (the commit checks did).
 */
export const processMemberCommit = async (
  state: ClientState,
  message: PrivateMessage,
  cs: CiphersuiteImpl,
  decrypted?: UnprotectResult
): Promise<ProcessedCommit | undefined> => {
  if (message.epoch !== state.groupContext.epoch || message.contentType !== "commit") return undefined
  const unprotected = decrypted ?? await unprotectPrivateMessage(
    state.keySchedule.senderDataSecret,
    message,
    state.secretTree,
    state.ratchetTree,
    state.groupContext,
    state.clientConfig.keyRetentionConfig,
    cs
  )
  const { auth, content } = unprotected.content
  if (content.contentType !== "commit" || content.sender.senderType !== "member") return undefined
  if (content.epoch !== state.groupContext.epoch) throw new ValidationError("Could not validate epoch")
  const committer = toLeafIndex(content.sender.leafIndex)
  const current = { ...state, secretTree: unprotected.tree }
  const applied = await applyProposals(current, content.commit.proposals, committer, emptyPskIndex, false, cs)
  const path = content.commit.path
  if (path !== undefined) {
    throwIfDefined(await validateLeafNodeUpdateOrCommit(path.leafNode, committer, current.groupContext, current.clientConfig.authService, cs.signature))
    throwIfDefined(await validateLeafNodeCredentialAndKeyUniqueness(applied.tree, path.leafNode, committer))
  }
  if (applied.needsUpdatePath && path === undefined) throw new ValidationError("Update path is required")
  // Removed by this commit: no path secret reaches us; the removal is recorded, nothing derived.
  if (applied.selfRemoved) {
    const newState: ClientState = { ...current, ratchetTree: applied.tree, unappliedProposals: {}, groupActiveState: { kind: "removedFromGroup" } }
    return { newState, committer, consumed: unprotected.consumed }
  }
  const extensions = applied.additionalResult.kind === "memberCommit" && applied.additionalResult.extensions.length > 0
    ? applied.additionalResult.extensions
    : current.groupContext.extensions
  const groupContext = { ...current.groupContext, extensions }
  const tree = path === undefined ? applied.tree : await applyUpdatePath(applied.tree, committer, path, cs.hash)
  const treeHash = await treeHashesAfter(state.ratchetTree, tree, cs.hash).root()
  const [privatePath, commitSecret] = path === undefined
    ? [current.privatePath, new Uint8Array(cs.kdf.size)] as const
    : await privatePathAfter(tree, current, committer, path, { ...groupContext, treeHash, epoch: groupContext.epoch + 1n }, addedNodes(applied), cs)
  if (auth.contentType !== "commit") throw new ValidationError("Received content as commit, but not auth")
  const nextContext = await nextEpochContext(groupContext, "mls_private_message", content, auth.signature, treeHash, current.confirmationTag, cs.hash)
  const epochSecrets = await initializeEpoch(current.keySchedule.initSecret, commitSecret, nextContext, applied.pskSecret, cs.kdf)
  if (!(await verifyConfirmationTag(epochSecrets.keySchedule.confirmationKey, auth.confirmationTag, nextContext.confirmedTranscriptHash, cs.hash))) {
    throw new CryptoVerificationError("Could not verify confirmation tag")
  }
  const reinit = applied.additionalResult.kind === "reinit" ? applied.additionalResult.reinit : undefined
  const [historicalReceiverData, consumedEpochData] = addHistoricalReceiverData(current)
  const newState: ClientState = {
    ...current,
    secretTree: await leafSecretTree(leafWidth(tree.length), epochSecrets.encryptionSecret, cs.kdf),
    ratchetTree: tree,
    privatePath,
    groupContext: nextContext,
    keySchedule: epochSecrets.keySchedule,
    confirmationTag: auth.confirmationTag,
    historicalReceiverData,
    unappliedProposals: {},
    groupActiveState: reinit === undefined ? { kind: "active" } : { kind: "suspendedPendingReinit", reinit }
  }
  zeroOutUint8Array(commitSecret)
  zeroOutUint8Array(epochSecrets.joinerSecret)
  zeroOutUint8Array(epochSecrets.encryptionSecret)
  return { newState, committer, consumed: [...unprotected.consumed, ...consumedEpochData, current.keySchedule.initSecret] }
}

/** The leaves the UpdatePath left out of its recipients (ts-mls's `excludeNodes`): those the commit adds. */
const addedNodes = (applied: Awaited<ReturnType<typeof applyProposals>>) =>
  applied.additionalResult.kind === "memberCommit"
    ? applied.additionalResult.addedLeafNodes.map(([leafIndex]) => leafToNodeIndex(toLeafIndex(leafIndex)))
    : [findBlankLeafNodeIndex(applied.tree) ?? toNodeIndex(applied.tree.length + 1)]

/** Our keys on the committer's new path and the commit secret (ts-mls's `updatePrivateKeyPath`). */
const privatePathAfter = async (
  tree: ClientState["ratchetTree"],
  state: ClientState,
  committer: LeafIndex,
  path: UpdatePath,
  groupContext: ClientState["groupContext"],
  excludeNodes: ReturnType<typeof addedNodes>,
  cs: CiphersuiteImpl
): Promise<readonly [PrivateKeyPath, Uint8Array]> => {
  const secret = await applyUpdatePathSecret(tree, state.privatePath, committer, groupContext, path, excludeNodes, cs)
  const pathSecrets = await pathToRoot(tree, toNodeIndex(secret.nodeIndex), secret.pathSecret, cs.kdf)
  const privatePath = mergePrivateKeyPaths(state.privatePath, await toPrivateKeyPath(pathSecrets, state.privatePath.leafIndex, cs))
  const rootSecret = pathSecrets[root(leafWidth(tree.length))]
  if (rootSecret === undefined) throw new InternalError("Could not find secret for root")
  return [privatePath, await deriveSecret(rootSecret, "path", cs.kdf)]
}
