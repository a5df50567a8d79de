/**
 * The bytes Converge stores for a ts-mls 1.6.4 group state: ts-mls's own encoding
 * (`TsMlsStateCodec`) less what it writes again and again.
 *
 * A 100-member state after a few commits is about 228 KB in ts-mls's encoding: the current epoch
 * (ratchet tree 37 KB, secret tree 19 KB) and, for late messages, three past epochs of 57 KB
 * each, whose ratchet trees are the current tree but for a node or two, and whose secret trees
 * give every node a pair of ratchets although only the leaves' are ever used (RFC 9420 ratchets
 * only at leaves; ts-mls derives the others and reads them only to list them as consumed). Every
 * add wrote those bytes twice (the write-ahead's staged state, then the group row). Here:
 *
 * - a past epoch's ratchet tree is written as its length and the nodes where it differs from the
 *   current tree; read back, it shares the current tree's nodes, as in memory;
 * - a secret tree is written as its leaves; its other nodes read back as one shared blank pair
 *   of ratchets (nothing reads them).
 *
 * The same state is about 79 KB. The bytes begin with a magic (ts-mls's begin with the protocol
 * version, 0x0001), so states written before this format read as they were and are written in it
 * on their next save.
 *
 * An own commit's staged state, written ahead until the commit lands, is written as what the
 * commit changed from the state it was created from (`encodeStagedState`): about 11 KB for an add
 * to a 100-member group. The group row then gets the whole state.
 */
import type { RatchetTree } from "ts-mls"
import { decodeUint32, decodeUint64, decodeUint8, uint32Encoder, uint64Encoder, uint8Encoder } from "ts-mls/codec/number.js"
import { decodeOptional, optionalEncoder } from "ts-mls/codec/optional.js"
import { type Decoder, mapDecoders } from "ts-mls/codec/tlsDecoder.js"
import { type BufferEncoder, contramapBufferEncoder, contramapBufferEncoders, encode } from "ts-mls/codec/tlsEncoder.js"
import {
  decodeVarLenData,
  decodeVarLenType,
  varLenDataEncoder,
  varLenTypeEncoder
} from "ts-mls/codec/variableLength.js"
import type { EpochReceiverData } from "ts-mls/epochReceiverData.js"
import { decodeGroupActiveState, groupActiveStateEncoder } from "ts-mls/groupActiveState.js"
import { decodeGroupContext, groupContextEncoder } from "ts-mls/groupContext.js"
import { decodeKeySchedule, keyScheduleEncoder } from "ts-mls/keySchedule.js"
import { decodePrivateKeyPath, privateKeyPathEncoder } from "ts-mls/privateKeyPath.js"
import type { SecretTree } from "ts-mls/secretTree.js"
import { decodeUnappliedProposals, unappliedProposalsEncoder } from "ts-mls/unappliedProposals.js"
import { bytesEqual } from "../domain/Bytes.ts"
import {
  decodeState as decodeTsMlsState,
  type EncodedState,
  ratchetTree,
  remembered,
  secretTreeNode,
  treeNode,
  withinOneState
} from "./TsMlsStateCodec.ts"

/** "CVS" and the format's number. A ts-mls state begins with its protocol version (0x0001). */
const MAGIC = new Uint8Array([0x43, 0x56, 0x53, 0x02])

/**
 * Bounds what a tree or secret tree length read back may allocate (a tree of 2^20 leaves): the
 * bytes are the engine's own, sealed at rest, but a damaged row must fail to decode, not exhaust
 * memory.
 */
const MAX_NODES = 2 ** 21

/**
 * Past epochs a stored state may hold (`MlsCrypto.layer`'s `maxPastEpochs` is capped to it): a
 * damaged row claiming more is refused rather than read.
 */
export const MAX_PAST_EPOCHS = 64

/** The number of nodes of the smallest full binary tree with at least `n` nodes (2^k - 1). */
const fullTreeSize = (n: number): number => {
  let size = 1
  while (size < n) size = size * 2 + 1
  return size
}

type TreeNode = RatchetTree[number]
type SecretTreeNode = SecretTree[number]

// ---- secret trees: leaves only ------------------------------------------------------------

const blankRatchet = () => Object.freeze({ secret: new Uint8Array(0), generation: 0, unusedGenerations: Object.freeze({}) })
/**
 * What a secret tree's non-leaf node reads back as. ts-mls reads a secret tree's nodes only at
 * `leafToNodeIndex` (to ratchet a sender's keys) and in `allSecretTreeValues` (the values it
 * hands back as consumed, to be zeroed): an empty secret zeroes to nothing. Frozen: shared.
 */
export const BLANK_SECRET_NODE: SecretTreeNode = Object.freeze({ handshake: blankRatchet(), application: blankRatchet() })

const secretTreeLeaves = varLenTypeEncoder(secretTreeNode.encoder)
const decodeSecretTreeLeaves = decodeVarLenType(secretTreeNode.decoder)

/** Node count, then the leaves' nodes (even indices) in order. */
const compactSecretTree = remembered<SecretTree>(
  contramapBufferEncoders(
    [uint32Encoder, secretTreeLeaves],
    (tree: SecretTree) => [tree.length, tree.filter((_, index) => index % 2 === 0)] as const
  ),
  (b, offset) => {
    const decoded = mapDecoders([decodeUint32, decodeSecretTreeLeaves], (width, leaves) => ({ width, leaves }))(b, offset)
    if (decoded === undefined) return undefined
    const [{ leaves, width }, length] = decoded
    if (width > MAX_NODES) return undefined
    if (width === 0 ? leaves.length !== 0 : width % 2 !== 1 || leaves.length !== (width + 1) / 2) return undefined
    const tree: Array<SecretTreeNode> = new Array(width)
    for (let index = 0; index < width; index++) tree[index] = index % 2 === 0 ? leaves[index / 2]! : BLANK_SECRET_NODE
    return [tree, length]
  }
)

// ---- past epochs: their ratchet trees as changes to the current tree -----------------------

/** Whether a past tree's node is the current tree's node at the same index (same object, or same bytes). */
const sameNode = (past: TreeNode, current: TreeNode): boolean => {
  if (past === current) return true
  if (past === undefined || current === undefined) return false
  return bytesEqual(treeNode.bytes(past), treeNode.bytes(current))
}

const optionalNode = optionalEncoder(treeNode.encoder)
const decodeOptionalNode = decodeOptional(treeNode.decoder)
const changeEncoder: BufferEncoder<readonly [number, TreeNode]> = contramapBufferEncoders(
  [uint32Encoder, optionalNode],
  (change: readonly [number, TreeNode]) => change as [number, TreeNode]
)
const decodeChange = mapDecoders([decodeUint32, decodeOptionalNode], (index, node) => [index, node] as const)

/** The tree's length and the `[index, node]` pairs where it differs from `current`. */
const treeChangesEncoder = (current: RatchetTree): BufferEncoder<RatchetTree> => (tree) => {
  const changes: Array<readonly [number, TreeNode]> = []
  for (let index = 0; index < tree.length; index++) {
    if (!sameNode(tree[index], current[index])) changes.push([index, tree[index]])
  }
  return contramapBufferEncoders([uint32Encoder, varLenTypeEncoder(changeEncoder)], () => [tree.length, changes] as const)(
    tree
  )
}

/** The tree the changes describe, sharing `current`'s other nodes. */
const decodeTreeChanges = (current: RatchetTree): Decoder<RatchetTree> => (b, offset) => {
  const decoded = mapDecoders([decodeUint32, decodeVarLenType(decodeChange)], (length, changes) => ({ length, changes }))(b, offset)
  if (decoded === undefined) return undefined
  const [{ changes, length }, read] = decoded
  // A past tree is the current one grown or shrunk by the commits since: longer than the full
  // tree holding both it and every node it names, it is a damaged row, not a tree.
  const lastNamed = changes.reduce((last, [index]) => Math.max(last, index), -1)
  if (length > MAX_NODES || length > fullTreeSize(Math.max(current.length, lastNamed + 1))) return undefined
  const tree: Array<TreeNode> = new Array(length)
  for (let index = 0; index < length; index++) tree[index] = current[index]
  for (const [index, node] of changes) {
    if (index >= length) return undefined
    tree[index] = node
  }
  return [tree, read]
}

const pastEpochEncoder = (current: RatchetTree): BufferEncoder<readonly [bigint, EpochReceiverData]> =>
  contramapBufferEncoders(
    [uint64Encoder, varLenDataEncoder, varLenDataEncoder, groupContextEncoder, compactSecretTree.encoder, treeChangesEncoder(current)],
    ([epoch, past]: readonly [bigint, EpochReceiverData]) =>
      [epoch, past.resumptionPsk, past.senderDataSecret, past.groupContext, past.secretTree, past.ratchetTree] as const
  )

const decodePastEpoch = (current: RatchetTree): Decoder<readonly [bigint, EpochReceiverData]> =>
  mapDecoders(
    [
      decodeUint64,
      decodeVarLenData,
      decodeVarLenData,
      decodeGroupContext,
      compactSecretTree.decoder,
      decodeTreeChanges(current)
    ],
    (epoch, resumptionPsk, senderDataSecret, groupContext, secretTree, ratchetTree) =>
      [epoch, { resumptionPsk, secretTree, ratchetTree, senderDataSecret, groupContext }] as const
  )

const pastEpochsEncoder = (current: RatchetTree): BufferEncoder<EncodedState["historicalReceiverData"]> =>
  contramapBufferEncoder(varLenTypeEncoder(pastEpochEncoder(current)), (map) => Array.from(map.entries()))

// ---- the state ------------------------------------------------------------------------------

/** The fields written before the past epochs, in order (a whole state and a staged one alike). */
const headFields = (s: EncodedState) =>
  [
    s.groupContext,
    s.keySchedule,
    s.secretTree,
    s.ratchetTree,
    s.privatePath,
    s.signaturePrivateKey,
    s.unappliedProposals,
    s.confirmationTag
  ] as const

const magicEncoder: BufferEncoder<unknown> = () => [MAGIC.length, (offset, buffer) => new Uint8Array(buffer).set(MAGIC, offset)]

const stateEncoder: BufferEncoder<EncodedState> = (state) =>
  contramapBufferEncoders(
    [
      magicEncoder,
      groupContextEncoder,
      keyScheduleEncoder,
      compactSecretTree.encoder,
      ratchetTree.encoder,
      privateKeyPathEncoder,
      varLenDataEncoder,
      unappliedProposalsEncoder,
      varLenDataEncoder,
      pastEpochsEncoder(state.ratchetTree),
      groupActiveStateEncoder
    ],
    (s: EncodedState) => [undefined, ...headFields(s), s.historicalReceiverData, s.groupActiveState] as const
  )(state)

/** The fields before the past epochs, in the order written. */
const decodeHead = mapDecoders(
  [
    decodeGroupContext,
    decodeKeySchedule,
    compactSecretTree.decoder,
    ratchetTree.decoder,
    decodePrivateKeyPath,
    decodeVarLenData,
    decodeUnappliedProposals,
    decodeVarLenData
  ],
  (groupContext, keySchedule, secretTree, ratchetTree, privatePath, signaturePrivateKey, unappliedProposals, confirmationTag) => ({
    groupContext,
    keySchedule,
    secretTree,
    ratchetTree,
    privatePath,
    signaturePrivateKey,
    unappliedProposals,
    confirmationTag
  })
)

const decodeCompact: Decoder<EncodedState> = (b, offset) => {
  const head = decodeHead(b, offset + MAGIC.length)
  if (head === undefined) return undefined
  const [fields, headLength] = head
  const rest = mapDecoders(
    [decodeVarLenType(decodePastEpoch(fields.ratchetTree)), decodeGroupActiveState],
    (pastEpochs, groupActiveState) => ({ historicalReceiverData: new Map(pastEpochs), groupActiveState })
  )(b, offset + MAGIC.length + headLength)
  if (rest === undefined || rest[0].historicalReceiverData.size > MAX_PAST_EPOCHS) return undefined
  return [{ ...fields, ...rest[0] }, MAGIC.length + headLength + rest[1]]
}

const hasMagic = (b: Uint8Array, offset: number) =>
  b.length >= offset + MAGIC.length && MAGIC.every((byte, i) => b[offset + i] === byte)

/** The stored bytes of a state (this module's format). */
export const encodeStoredState: (state: EncodedState) => Uint8Array = encode(stateEncoder)

/** A state from stored bytes: this module's format, or ts-mls's as written before it. */
export const decodeStoredState: Decoder<EncodedState> = withinOneState((b, offset) =>
  hasMagic(b, offset) ? decodeCompact(b, offset) : decodeTsMlsState(b, offset)
)

// ---- staged states: what an own commit changed, against the state it was created from --------

/** "CVSS": a staged state, written as its differences from the state its commit was created from. */
const STAGED_MAGIC = new Uint8Array([0x43, 0x56, 0x53, 0x53])

/** How a staged state's past epoch is written (its first byte): in full, or as the base's current or past epoch of that number. */
const PAST_IN_FULL = 0
const PAST_IS_BASE_CURRENT = 1
const PAST_IS_BASE_PAST = 2

/** The base's current epoch as ts-mls keeps it among the past epochs (`addHistoricalReceiverData`). */
const isBaseCurrent = (past: EpochReceiverData, base: EncodedState) =>
  past.secretTree === base.secretTree && past.ratchetTree === base.ratchetTree &&
  past.groupContext === base.groupContext && past.senderDataSecret === base.keySchedule.senderDataSecret &&
  past.resumptionPsk === base.keySchedule.resumptionPsk

const pastEpochOf = (base: EncodedState, epoch: bigint): EpochReceiverData | undefined =>
  epoch === base.groupContext.epoch
    ? {
      secretTree: base.secretTree,
      ratchetTree: base.ratchetTree,
      senderDataSecret: base.keySchedule.senderDataSecret,
      groupContext: base.groupContext,
      resumptionPsk: base.keySchedule.resumptionPsk
    }
    : base.historicalReceiverData.get(epoch)

const stagedPastEncoder = (staged: EncodedState, base: EncodedState): BufferEncoder<readonly [bigint, EpochReceiverData]> => {
  const inFull = pastEpochEncoder(staged.ratchetTree)
  return ([epoch, past]) => {
    if (epoch === base.groupContext.epoch && isBaseCurrent(past, base)) {
      return contramapBufferEncoders([uint8Encoder, uint64Encoder], () => [PAST_IS_BASE_CURRENT, epoch] as const)(undefined)
    }
    if (base.historicalReceiverData.get(epoch) === past) {
      return contramapBufferEncoders([uint8Encoder, uint64Encoder], () => [PAST_IS_BASE_PAST, epoch] as const)(undefined)
    }
    return contramapBufferEncoders([uint8Encoder, inFull], () => [PAST_IN_FULL, [epoch, past]] as const)(undefined)
  }
}

const decodeStagedPast = (current: RatchetTree, base: EncodedState): Decoder<readonly [bigint, EpochReceiverData]> => {
  const inFull = decodePastEpoch(current)
  return (b, offset) => {
    if (b[offset] === PAST_IN_FULL) {
      const decoded = inFull(b, offset + 1)
      return decoded === undefined ? undefined : [decoded[0], decoded[1] + 1]
    }
    const decoded = mapDecoders([decodeUint8, decodeUint64], (kind, epoch) => ({ epoch, kind }))(b, offset)
    if (decoded === undefined) return undefined
    const [{ epoch, kind }, length] = decoded
    const fromBase = kind === PAST_IS_BASE_CURRENT
      ? (epoch === base.groupContext.epoch ? pastEpochOf(base, epoch) : undefined)
      : kind === PAST_IS_BASE_PAST
      ? base.historicalReceiverData.get(epoch)
      : undefined
    return fromBase === undefined ? undefined : [[epoch, fromBase], length]
  }
}

/**
 * The bytes to write ahead for an own commit's staged state, given the state `base` its commit was
 * created from: the new epoch in full, but its ratchet tree as changes to the base's, and the past
 * epochs it shares with the base by reference. About 11 KB for an add to a 100-member group instead of 79.
 */
export const encodeStagedState = (staged: EncodedState, base: EncodedState): Uint8Array =>
  encode(contramapBufferEncoders(
    [
      (_: unknown) => [STAGED_MAGIC.length, (offset: number, buffer: ArrayBuffer) => new Uint8Array(buffer).set(STAGED_MAGIC, offset)],
      uint64Encoder,
      groupContextEncoder,
      keyScheduleEncoder,
      compactSecretTree.encoder,
      treeChangesEncoder(base.ratchetTree),
      privateKeyPathEncoder,
      varLenDataEncoder,
      unappliedProposalsEncoder,
      varLenDataEncoder,
      varLenTypeEncoder(stagedPastEncoder(staged, base)),
      groupActiveStateEncoder
    ] as const,
    (s: EncodedState) =>
      [
        undefined,
        base.groupContext.epoch,
        ...headFields(s),
        Array.from(s.historicalReceiverData.entries()),
        s.groupActiveState
      ] as const
  ))(staged)

const decodeStagedHead = (base: EncodedState) =>
  mapDecoders(
    [
      decodeUint64,
      decodeGroupContext,
      decodeKeySchedule,
      compactSecretTree.decoder,
      decodeTreeChanges(base.ratchetTree),
      decodePrivateKeyPath,
      decodeVarLenData,
      decodeUnappliedProposals,
      decodeVarLenData
    ],
    (baseEpoch, groupContext, keySchedule, secretTree, ratchetTree, privatePath, signaturePrivateKey, unappliedProposals, confirmationTag) => ({
      baseEpoch,
      fields: { groupContext, keySchedule, secretTree, ratchetTree, privatePath, signaturePrivateKey, unappliedProposals, confirmationTag }
    })
  )

/**
 * A staged state from `encodeStagedState`'s bytes and the group's state at the epoch its commit
 * was created in (the base, or the base as later messages of that epoch left it: their past
 * epochs are then the ones it has now), or from a whole stored state's bytes. Undefined when the
 * base is at another epoch.
 */
export const decodeStagedState = (base: EncodedState): Decoder<EncodedState> =>
  withinOneState((b, offset) => {
    if (!(b.length >= offset + STAGED_MAGIC.length && STAGED_MAGIC.every((byte, i) => b[offset + i] === byte))) {
      return hasMagic(b, offset) ? decodeCompact(b, offset) : decodeTsMlsState(b, offset)
    }
    const head = decodeStagedHead(base)(b, offset + STAGED_MAGIC.length)
    if (head === undefined || head[0].baseEpoch !== base.groupContext.epoch) return undefined
    const [{ fields }, headLength] = head
    const rest = mapDecoders(
      [decodeVarLenType(decodeStagedPast(fields.ratchetTree, base)), decodeGroupActiveState],
      (pastEpochs, groupActiveState) => ({ historicalReceiverData: new Map(pastEpochs), groupActiveState })
    )(b, offset + STAGED_MAGIC.length + headLength)
    if (rest === undefined || rest[0].historicalReceiverData.size > MAX_PAST_EPOCHS) return undefined
    return [{ ...fields, ...rest[0] }, STAGED_MAGIC.length + headLength + rest[1]]
  })

/**
 * The staged state `staged`, created from `was`, as `decodeStagedState` would read it against
 * `now` (the group's state at the same epoch when the commit lands): the past epochs it shares
 * with `was` are taken from `now`. Messages read between the commit's creation and its landing
 * used up their keys in `now`; adopting `staged` as it was would bring those keys back.
 */
export const rebaseStaged = (staged: EncodedState, was: EncodedState, now: EncodedState): EncodedState => {
  if (was === now || was.groupContext.epoch !== now.groupContext.epoch) return staged
  const historicalReceiverData = new Map<bigint, EpochReceiverData>()
  for (const [epoch, past] of staged.historicalReceiverData) {
    const fromNow = epoch === was.groupContext.epoch && isBaseCurrent(past, was)
      ? pastEpochOf(now, epoch)
      : was.historicalReceiverData.get(epoch) === past
      ? now.historicalReceiverData.get(epoch)
      : undefined
    historicalReceiverData.set(epoch, fromNow ?? past)
  }
  return { ...staged, historicalReceiverData }
}
