/**
 * Tree hashes and parent-hash verification (RFC 9420 §7.8, §7.9.2) for a joiner's tree, deciding
 * exactly as ts-mls 1.6.4's `treeHashRoot` and `verifyParentHashes` do, at a fraction of the cost.
 *
 * ts-mls checks each leaf's parent-hash chain by hashing the "original sibling" subtree from
 * scratch, on a copy of the whole tree, at every step. For a tree whose root is set (any group
 * after a commit with a path, e.g. a removal) that is about n²/2 node hashes: 8,000 digests over
 * 1.7 MB to join a 100-member group. Here each subtree is hashed once; a step whose parent lists
 * unmerged leaves re-hashes only the subtrees that hold them. A tree whose parents list unmerged
 * leaves outside their own subtree (malformed) goes to ts-mls's own code, so every tree gets
 * ts-mls's answer.
 */
import type { RatchetTree } from "ts-mls"
import { encode } from "ts-mls/codec/tlsEncoder.js"
import type { Hash } from "ts-mls/crypto/hash.js"
import { InternalError } from "ts-mls/mlsError.js"
import { parentHashInputEncoder, verifyParentHashes as tsMlsVerifyParentHashes } from "ts-mls/parentHash.js"
import { findFirstNonBlankAncestor } from "ts-mls/ratchetTree.js"
import { leafNodeHashInputEncoder, parentNodeHashInputEncoder } from "ts-mls/treeHash.js"
import {
  isLeaf,
  leafWidth,
  left,
  type NodeIndex,
  nodeToLeafIndex,
  right,
  root,
  rootFromNodeWidth,
  toNodeIndex
} from "ts-mls/treemath.js"
import { constantTimeEqual } from "ts-mls/util/constantTimeCompare.js"

type TreeNode = RatchetTree[number]

/** The node indices under (and including) a node: a node at level k spans 2^(k+1) - 1 nodes centred on it. */
const nodeRange = (index: number): readonly [number, number] => {
  let level = 0
  while (((index >> level) & 1) === 1) level++
  const half = (1 << level) - 1
  return [index - half, index + half]
}

/** The leaf indices under a node (its first and last nodes are leaves). */
const leafRange = (index: number): readonly [number, number] => {
  const [first, last] = nodeRange(index)
  return [first / 2, last / 2]
}

/** Some parent lists an unmerged leaf that is not below it: RFC trees never do. */
const listsForeignLeaves = (tree: RatchetTree): boolean =>
  tree.some((node, index) => {
    if (node?.nodeType !== "parent") return false
    const [first, last] = leafRange(index)
    return node.parent.unmergedLeaves.some((leaf) => leaf < first || leaf > last)
  })

/**
 * Each subtree's hash, computed once (ts-mls `treeHash` encodings, node for node). Given the
 * hashes of an earlier tree (the one a commit started from), a subtree whose every node is the
 * very same object there (blanks included) takes its hash from it: a commit replaces a path's
 * nodes and keeps the others, so a 100-member tree's hash costs a few digests instead of 199.
 */
export class TreeHashes {
  private readonly plain = new Map<number, Uint8Array>()
  constructor(
    private readonly tree: RatchetTree,
    readonly hashFunction: Hash,
    private earlier: TreeHashes | undefined = undefined
  ) {}

  /** The hash of the whole tree, as ts-mls's `treeHashRoot`. */
  async root(): Promise<Uint8Array> {
    const hash = await this.of(rootFromNodeWidth(this.tree.length))
    // What the root needed from the earlier tree is now held here: trees do not chain in memory.
    this.earlier = undefined
    return hash
  }

  /** The hash of the subtree at `index`. */
  async of(index: number): Promise<Uint8Array> {
    const known = this.plain.get(index)
    if (known !== undefined) return known
    const computed = this.earlier !== undefined && this.earlier.holdsSameSubtree(this.tree, index)
      ? await this.earlier.of(index)
      : await this.compute(index, [])
    this.plain.set(index, computed)
    return computed
  }

  /** Whether `tree` holds this tree's very node objects throughout the subtree at `index`. */
  private holdsSameSubtree(tree: RatchetTree, index: number): boolean {
    const [first, last] = nodeRange(index)
    for (let i = first; i <= last; i++) if (tree[i] !== this.tree[i]) return false
    return true
  }

  /**
   * The subtree's hash in the tree with `removed` leaves blanked and dropped from every parent's
   * unmerged leaves (ts-mls `removeLeaves`; its trailing-blank trimming changes no subtree hash).
   */
  async without(index: number, removed: ReadonlyArray<number>): Promise<Uint8Array> {
    const [first, last] = leafRange(index)
    if (!removed.some((leaf) => leaf >= first && leaf <= last)) return this.of(index)
    return this.compute(index, removed)
  }

  private async compute(index: number, removed: ReadonlyArray<number>): Promise<Uint8Array> {
    const node: TreeNode = this.tree[index]
    const nodeIndex = toNodeIndex(index)
    if (isLeaf(nodeIndex)) {
      if (node?.nodeType === "parent") throw new InternalError("Somehow found parent node in leaf position")
      const leafIndex = nodeToLeafIndex(nodeIndex)
      const leafNode = removed.includes(leafIndex) ? undefined : node?.leaf
      return this.hashFunction.digest(encode(leafNodeHashInputEncoder)({ nodeType: "leaf", leafIndex, leafNode }))
    }
    if (node?.nodeType === "leaf") throw new InternalError("Somehow found leaf node in parent position")
    const parentNode = node === undefined || removed.length === 0
      ? node?.parent
      : { ...node.parent, unmergedLeaves: node.parent.unmergedLeaves.filter((leaf) => !removed.includes(leaf)) }
    const leftHash = await (removed.length === 0 ? this.of(left(nodeIndex)) : this.without(left(nodeIndex), removed))
    const rightHash = await (removed.length === 0 ? this.of(right(nodeIndex)) : this.without(right(nodeIndex), removed))
    return this.hashFunction.digest(encode(parentNodeHashInputEncoder)({ nodeType: "parent", parentNode, leftHash, rightHash }))
  }
}

/**
 * The hashes of the trees this process built or checked, by tree (a tree is never changed in
 * place once built): the next commit's tree takes its unchanged subtrees' hashes from them.
 */
const knownHashes = new WeakMap<RatchetTree, TreeHashes>()

/** The hashes of `tree`, known or to be computed. */
export const treeHashesOf = (tree: RatchetTree, hashFunction: Hash): TreeHashes => {
  let hashes = knownHashes.get(tree)
  if (hashes === undefined) {
    hashes = new TreeHashes(tree, hashFunction)
    knownHashes.set(tree, hashes)
  }
  return hashes
}

/** The hashes of `after`, a tree made from `before`, reusing what the two share. */
export const treeHashesAfter = (before: RatchetTree, after: RatchetTree, hashFunction: Hash): TreeHashes => {
  const hashes = new TreeHashes(after, hashFunction, treeHashesOf(before, hashFunction))
  knownHashes.set(after, hashes)
  return hashes
}

/** The parent hash a node's nearest non-blank ancestor implies (ts-mls `calculateParentHash`). */
const parentHashStep = async (
  tree: RatchetTree,
  hashes: TreeHashes,
  nodeIndex: NodeIndex,
  rootIndex: NodeIndex
): Promise<{ readonly hash: Uint8Array; readonly parent: NodeIndex }> => {
  const parentIndex = findFirstNonBlankAncestor(tree, nodeIndex)
  const parentNode = tree[parentIndex]
  if (parentIndex === rootIndex && parentNode === undefined) return { hash: new Uint8Array(), parent: parentIndex }
  if (parentNode === undefined || parentNode.nodeType === "leaf") throw new InternalError("Expected non-blank parent Node")
  const siblingIndex = nodeIndex < parentIndex ? right(parentIndex) : left(parentIndex)
  const originalSiblingTreeHash = await hashes.without(siblingIndex, parentNode.parent.unmergedLeaves)
  const input = {
    encryptionKey: parentNode.parent.hpkePublicKey,
    parentHash: parentNode.parent.parentHash,
    originalSiblingTreeHash
  }
  return { hash: await hashes.hashFunction.digest(encode(parentHashInputEncoder)(input)), parent: parentIndex }
}

const declaredParentHash = (node: NonNullable<TreeNode>): Uint8Array | undefined =>
  node.nodeType === "parent"
    ? node.parent.parentHash
    : node.leaf.leafNodeSource === "commit"
    ? node.leaf.parentHash
    : undefined

/**
 * Every non-blank parent node lies on exactly one leaf's verified parent-hash chain (RFC 9420
 * §7.9.2), as ts-mls's `verifyParentHashes` decides it.
 */
export const verifyParentHashes = async (tree: RatchetTree, hashes: TreeHashes): Promise<boolean> => {
  const parents = tree.flatMap((node, index) => node?.nodeType === "parent" ? [index] : [])
  if (parents.length === 0) return true
  if (listsForeignLeaves(tree)) return tsMlsVerifyParentHashes(tree, hashes.hashFunction)
  const rootIndex = root(leafWidth(tree.length))
  const coverage = new Map<number, number>()
  for (const [index, node] of tree.entries()) {
    if (node === undefined || !isLeaf(toNodeIndex(index))) continue
    let current = toNodeIndex(index)
    let currentNode: TreeNode = node
    while (current !== rootIndex && currentNode !== undefined) {
      const step = await parentHashStep(tree, hashes, current, rootIndex)
      const declared = declaredParentHash(currentNode)
      if (declared === undefined || !constantTimeEqual(step.hash, declared)) break
      coverage.set(step.parent, (coverage.get(step.parent) ?? 0) + 1)
      current = step.parent
      currentNode = tree[current]
    }
  }
  return parents.every((index) => coverage.get(index) === 1)
}
