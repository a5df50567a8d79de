/**
 * Who holds each leaf of a ts-mls ratchet tree. A leaf's credential is a basic credential whose
 * identity is UTF-8 `inboxId:installationId`, and the installation id must be the SHA-256 of the
 * leaf's signature key. Members are decoded once per leaf object and listed once per tree (trees
 * are immutable values and share unchanged nodes across epochs).
 */
import type { Credential, LeafNode, RatchetTree } from "ts-mls"
import { fromUtf8, utf8 } from "../domain/Bytes.ts"
import { installationIdOf } from "../domain/IdentityLog.ts"
import type { InboxId, InstallationId } from "../domain/Ids.ts"
import type { LeafIdentity, LeafMember } from "../services/MlsCrypto.ts"
import { protocolVersionIn } from "./TsMlsExtensions.ts"

const IDENTITY = /^([0-9a-f]{64}):([0-9a-f]{64})$/

export const encodeIdentity = (identity: LeafIdentity): Uint8Array => utf8(`${identity.inboxId}:${identity.installationId}`)

export const decodeIdentity = (credential: Credential): LeafIdentity | undefined => {
  if (credential.credentialType !== "basic") return undefined
  let text: string
  try {
    text = fromUtf8(credential.identity)
  } catch {
    return undefined
  }
  const match = IDENTITY.exec(text)
  if (match === null) return undefined
  return { inboxId: match[1] as InboxId, installationId: match[2] as InstallationId }
}

/** The check that always runs: the credential names the installation its signature key hashes to. */
export const structuralIdentity = (credential: Credential, signaturePublicKey: Uint8Array): LeafIdentity | string => {
  const identity = decodeIdentity(credential)
  if (identity === undefined) return "credential is not a basic inboxId:installationId credential"
  if (installationIdOf(signaturePublicKey) !== identity.installationId) {
    return `installation id ${identity.installationId} is not the hash of its signature key`
  }
  return identity
}

/**
 * Each leaf's member, by leaf object: a leaf keeps its object (and index) across the epochs it
 * stays in (ts-mls and the state decoder share unchanged nodes), so a new epoch's member list
 * decodes only the leaves its commit brought in, not 100 credentials per commit.
 */
const membersByLeaf = new WeakMap<LeafNode, LeafMember | null>()
export const leafMemberAt = (tree: RatchetTree, leafIndex: number): LeafMember | undefined => {
  const node = tree[leafIndex * 2]
  if (node?.nodeType !== "leaf") return undefined
  const known = membersByLeaf.get(node.leaf)
  if (known !== undefined && (known === null || known.leafIndex === leafIndex)) return known ?? undefined
  const identity = decodeIdentity(node.leaf.credential)
  if (identity === undefined) {
    membersByLeaf.set(node.leaf, null)
    return undefined
  }
  const protocolVersion = protocolVersionIn(node.leaf.extensions)
  const member: LeafMember = {
    ...identity,
    leafIndex,
    signaturePublicKey: node.leaf.signaturePublicKey,
    ...(protocolVersion === undefined ? {} : { protocolVersion })
  }
  membersByLeaf.set(node.leaf, member)
  return member
}

/** Members by tree: trees are immutable values and read on every step (O(members) to list). */
const membersByTree = new WeakMap<RatchetTree, ReadonlyArray<LeafMember>>()
export const membersOf = (tree: RatchetTree): ReadonlyArray<LeafMember> => {
  const known = membersByTree.get(tree)
  if (known !== undefined) return known
  const members = Array.from({ length: Math.ceil(tree.length / 2) }, (_, leafIndex) => leafMemberAt(tree, leafIndex))
    .filter((m): m is LeafMember => m !== undefined)
  membersByTree.set(tree, members)
  return members
}

/** A leaf's member by index: `leafMemberAt` from the tree's member list, indexed once per tree. */
const leavesByTree = new WeakMap<RatchetTree, ReadonlyMap<number, LeafMember>>()
export const senderAt = (tree: RatchetTree, leafIndex: number): LeafMember | undefined => {
  let leaves = leavesByTree.get(tree)
  if (leaves === undefined) {
    leaves = new Map(membersOf(tree).map((m) => [m.leafIndex, m]))
    leavesByTree.set(tree, leaves)
  }
  return leaves.get(leafIndex)
}
