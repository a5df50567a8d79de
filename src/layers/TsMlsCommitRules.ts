/**
 * The checks on a received commit that ts-mls 1.6.4 leaves out or gets wrong, each a named rule
 * with the RFC 9420 section or ts-mls gap it covers. Every rule returns the reason it refuses, or
 * undefined. `TsMlsCommits.checkReceivedCommit` runs the structural rules on the decoded commit
 * *before* `processMessage` (so ts-mls never sees a proposal list it would mishandle), and
 * `TsMlsReceive.process` runs `updatePathKeysMatchSecrets` after it.
 */
import type { CiphersuiteImpl, ClientState, Commit, GroupContext, KeyPackage, LeafNode, RatchetTree } from "ts-mls"
import { applyUpdatePathSecret } from "ts-mls/createCommit.js"
import { decodeRequiredCapabilities } from "ts-mls/requiredCapabilities.js"
import { leafToNodeIndex, toLeafIndex, toNodeIndex } from "ts-mls/treemath.js"
import { bytesEqual, toHex } from "../domain/Bytes.ts"
import { privateKeysFromPathSecret } from "./TsMlsWelcome.ts"

const leafAt = (tree: RatchetTree, leafIndex: number): LeafNode | undefined => {
  const node = tree[leafToNodeIndex(toLeafIndex(leafIndex))]
  return node?.nodeType === "leaf" ? node.leaf : undefined
}

/**
 * Converge sends commits whose proposals are Adds, Removes and GroupContextExtensions (the
 * group's settings, see governance), by value (RFC 9420 §12.4), and nothing else. A proposal by
 * reference would need a standalone proposal first (refused); an Update proposal, a PSK, a
 * ReInit (which would suspend the group for everyone) or an ExternalInit is never sent by an
 * honest member. A context change that touches more than the settings extension (say, adding
 * required_capabilities, see `lacksRequiredCapabilities`) is refused by `contextChangeProblem`.
 */
export const forbiddenProposal = (commit: Commit): string | undefined => {
  for (const p of commit.proposals) {
    if (p.proposalOrRefType !== "proposal") return "proposals by reference are not accepted"
    const type = p.proposal.proposalType
    // A context change is judged by what it changes (TsMlsExtensions.contextChangeProblem), and by
    // the group's policy (Governance.checkCommit).
    if (type !== "add" && type !== "remove" && type !== "group_context_extensions") {
      return `${String(type)} proposals are not accepted`
    }
  }
  return undefined
}

/**
 * RFC 9420 §12.2 / §12.4.2: each Remove names a non-blank leaf, once, and never the committer
 * (a member leaves by asking the others to remove it).
 */
export const badRemoval = (tree: RatchetTree, committer: number, commit: Commit): string | undefined => {
  const seen = new Set<number>()
  for (const p of commit.proposals) {
    if (p.proposalOrRefType !== "proposal" || p.proposal.proposalType !== "remove") continue
    const removed = p.proposal.remove.removed
    if (removed === committer) return "a commit cannot remove its committer"
    if (seen.has(removed)) return `leaf ${removed} is removed twice`
    if (leafAt(tree, removed) === undefined) return `leaf ${removed} is blank`
    seen.add(removed)
  }
  return undefined
}

/** The Adds a commit carries (by value: `forbiddenProposal` refuses references). */
export const addsOf = (commit: Commit): ReadonlyArray<KeyPackage> =>
  commit.proposals.flatMap((p) =>
    p.proposalOrRefType === "proposal" && p.proposal.proposalType === "add" ? [p.proposal.add.keyPackage] : []
  )

const removalsOf = (commit: Commit): ReadonlySet<number> =>
  new Set(commit.proposals.flatMap((p) =>
    p.proposalOrRefType === "proposal" && p.proposal.proposalType === "remove" ? [p.proposal.remove.removed] : []
  ))

/**
 * RFC 9420 §5.3.3 and Converge's identity: a leaf's credential may be replaced only by one naming
 * the same client, and in Converge the client *is* its signature key (installation id = hash of the
 * key). So the committer's UpdatePath leaf keeps its credential and signature key byte for byte;
 * only its encryption key changes. ts-mls 1.6.4 checks neither: a member could rename itself
 * into another inbox (`<victim>:<own installation>`) or switch to another key.
 */
export const pathLeafChangesIdentity = (tree: RatchetTree, committer: number, commit: Commit): string | undefined => {
  const path = commit.path
  if (path === undefined) return undefined
  const current = leafAt(tree, committer)
  if (current === undefined) return `committer leaf ${committer} is blank`
  const before = current.credential
  const after = path.leafNode.credential
  const sameCredential = before.credentialType === "basic" && after.credentialType === "basic" &&
    bytesEqual(before.identity, after.identity)
  if (!sameCredential) return "the UpdatePath leaf names another client than the committer's leaf"
  if (!bytesEqual(current.signaturePublicKey, path.leafNode.signaturePublicKey)) {
    return "the UpdatePath leaf changes the committer's signature key"
  }
  return undefined
}

/**
 * A leaf's keys as hex, once per leaf object: a leaf outlives many epochs (ts-mls and the state
 * decoder share unchanged nodes between trees), and every commit compares all of them.
 */
const leafKeys = new WeakMap<LeafNode, { readonly hpke: string; readonly signature: string }>()
const leafKeysOf = (leaf: LeafNode) => {
  let keys = leafKeys.get(leaf)
  if (keys === undefined) {
    keys = { hpke: toHex(leaf.hpkePublicKey), signature: toHex(leaf.signaturePublicKey) }
    leafKeys.set(leaf, keys)
  }
  return keys
}

/**
 * RFC 9420 §7.3 / §12.1.1: the encryption key and the signature key of every new leaf (each Add's,
 * and the committer's UpdatePath leaf) are unique among the leaves of the group and among each
 * other; an Add's init key differs from its encryption key. ts-mls 1.6.4's
 * `validateLeafNodeCredentialAndKeyUniqueness` compares the tree with itself, never the new leaf,
 * so an Add copying a member's encryption key was accepted (and every later Add then failed).
 */
export const duplicateLeafKeys = (tree: RatchetTree, committer: number, commit: Commit): string | undefined => {
  const removed = removalsOf(commit)
  const hpke = new Set<string>()
  const signature = new Set<string>()
  for (const [i, node] of tree.entries()) {
    if (node?.nodeType !== "leaf") continue
    const leafIndex = i / 2
    if (removed.has(leafIndex)) continue
    const keys = leafKeysOf(node.leaf)
    // The committer's own encryption key is replaced by its UpdatePath leaf.
    if (leafIndex !== committer || commit.path === undefined) hpke.add(keys.hpke)
    signature.add(keys.signature)
  }
  if (commit.path !== undefined) {
    const key = toHex(commit.path.leafNode.hpkePublicKey)
    if (hpke.has(key)) return "the UpdatePath leaf reuses an encryption key of the group"
    hpke.add(key)
  }
  for (const kp of addsOf(commit)) {
    const encryption = toHex(kp.leafNode.hpkePublicKey)
    const init = toHex(kp.initKey)
    if (encryption === init) return "an added key package has the same init and encryption keys"
    if (hpke.has(encryption)) return "an added leaf reuses an encryption key of the group"
    const signing = toHex(kp.leafNode.signaturePublicKey)
    if (signature.has(signing)) return "an added leaf reuses a signature key of the group"
    hpke.add(encryption)
    signature.add(signing)
  }
  return undefined
}

/**
 * RFC 9420 §11.1: if the group context has a required_capabilities extension, every added leaf
 * supports what it lists. ts-mls 1.6.4 checks it inside its async Add validation, where two failing
 * Adds make an unhandled rejection that ends the process; checked here, one Add at a time, first.
 */
export const lacksRequiredCapabilities = (context: GroupContext, leaf: LeafNode): string | undefined => {
  const extension = context.extensions.find((e) => e.extensionType === "required_capabilities")
  if (extension === undefined) return undefined
  const required = decodeRequiredCapabilities(extension.extensionData, 0)?.[0]
  if (required === undefined) return "the group's required_capabilities do not decode"
  const supported = required.credentialTypes.every((c) => leaf.capabilities.credentials.includes(c)) &&
    required.extensionTypes.every((e) => leaf.capabilities.extensions.includes(e)) &&
    required.proposalTypes.every((p) => leaf.capabilities.proposals.includes(p))
  return supported ? undefined : "an added leaf lacks the group's required capabilities"
}

/**
 * RFC 9420 §7.5 (and §12.4.2): the public keys an UpdatePath puts in the tree are the ones its
 * path secrets derive. ts-mls 1.6.4 derives our private keys from the decrypted secret without
 * comparing, so a committer could put another key on a node and cut off whoever relies on it at the
 * next commit. Decrypts the path secret again (as ts-mls did) and checks every node from our common
 * ancestor with the committer up to the root. Throws the reason on a mismatch.
 */
export const updatePathKeysMatchSecrets = async (
  before: ClientState,
  after: ClientState,
  committer: number,
  commit: Commit,
  cs: CiphersuiteImpl
): Promise<void> => {
  const path = commit.path
  if (path === undefined || after.groupActiveState.kind !== "active") return
  // New members get their path secret in the welcome; ts-mls leaves them out of the resolution.
  const added = addsOf(commit).map((kp) => after.ratchetTree.findIndex((node) =>
    node?.nodeType === "leaf" && bytesEqual(node.leaf.hpkePublicKey, kp.leafNode.hpkePublicKey)
  )).filter((nodeIndex) => nodeIndex >= 0).map(toNodeIndex)
  // The context the committer encrypted to: the old one with the new tree hash and epoch.
  const context = { ...before.groupContext, treeHash: after.groupContext.treeHash, epoch: before.groupContext.epoch + 1n }
  const secret = await applyUpdatePathSecret(
    after.ratchetTree,
    before.privatePath,
    toLeafIndex(committer),
    context,
    path,
    added,
    cs
  )
  await privateKeysFromPathSecret(after.ratchetTree, toNodeIndex(secret.nodeIndex), secret.pathSecret, cs)
}
