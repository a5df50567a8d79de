/**
 * A ts-mls 1.6.4 group state to bytes and back, byte for byte what `encodeGroupState` writes and
 * `decodeGroupState` reads, without re-encoding what has not changed.
 *
 * Encrypting a message replaces one node of the secret tree; the ratchet tree and the retained
 * past epochs' data (which hold a ratchet tree each) change only with commits or a late message
 * from a past epoch, yet they are most of a state's bytes (about 205 KB of 225 KB in a
 * 100-member group). ts-mls states are immutable values: every change copies what it changes
 * (`tree.slice()`, `addToMap`, `{ ...node }`), and nothing in a state is written in place
 * afterwards. So the encoding of those parts is remembered by the part's object identity and
 * reused while the part is the same object, at every level: each ratchet-tree node, each
 * secret-tree node, each past epoch (a commit keeps all but the path's nodes and adds one past
 * epoch whose tree is the previous state's: 1 ms to write a 100-member state after an add instead
 * of 30). Decoding remembers the bytes each part was read from, so a state loaded from disk is
 * written again without re-encoding them either. Remembered bytes live as long as the objects
 * (weak keys).
 */
import type { ClientState, RatchetTree } from "ts-mls"
import { decodeGroupContext, groupContextEncoder } from "ts-mls/groupContext.js"
import { decodeGroupActiveState, groupActiveStateEncoder } from "ts-mls/groupActiveState.js"
import type { EpochReceiverData } from "ts-mls/epochReceiverData.js"
import { decodeKeySchedule, keyScheduleEncoder } from "ts-mls/keySchedule.js"
import { decodePrivateKeyPath, privateKeyPathEncoder } from "ts-mls/privateKeyPath.js"
import { extendRatchetTree, nodeEncoder, stripBlankNodes } from "ts-mls/ratchetTree.js"
import { decodeSecretTreeNode, secretTreeNodeEncoder } from "ts-mls/secretTree.js"
import { decodeUnappliedProposals, unappliedProposalsEncoder } from "ts-mls/unappliedProposals.js"
import { type BufferEncoder, contramapBufferEncoder, contramapBufferEncoders, encode } from "ts-mls/codec/tlsEncoder.js"
import { type Decoder, mapDecoder, mapDecoders } from "ts-mls/codec/tlsDecoder.js"
import { decodeOptional, optionalEncoder } from "ts-mls/codec/optional.js"
import { decodeNode } from "./TsMlsDecoders.ts"
import {
  bigintMapEncoder,
  decodeBigintMap,
  decodeVarLenData,
  decodeVarLenType,
  varLenDataEncoder,
  varLenTypeEncoder
} from "ts-mls/codec/variableLength.js"

/** The state as ts-mls encodes it (its `clientConfig` holds functions and is not encoded). */
export type EncodedState = Omit<ClientState, "clientConfig">

/** An encoder and a decoder that share one memory of bytes per object. */
export const remembered = <T>(encoder: BufferEncoder<T>, decoder: Decoder<T>) => {
  const bytesOf = new WeakMap<object, Uint8Array>()
  const encodeOnce = encode(encoder)
  /** The value's bytes, encoded once. */
  const bytes = (value: T): Uint8Array => {
    const key = value as unknown as object
    let known = bytesOf.get(key)
    if (known === undefined) {
      known = encodeOnce(value)
      bytesOf.set(key, known)
    }
    return known
  }
  const rememberedEncoder: BufferEncoder<T> = (value) => {
    const known = bytes(value)
    return [known.length, (offset, buffer) => new Uint8Array(buffer).set(known, offset)]
  }
  const rememberedDecoder: Decoder<T> = (b, offset) => {
    const decoded = decoder(b, offset)
    if (decoded !== undefined && typeof decoded[0] === "object" && decoded[0] !== null) {
      bytesOf.set(decoded[0] as unknown as object, b.subarray(offset, offset + decoded[1]))
    }
    return decoded
  }
  return { encoder: rememberedEncoder, decoder: rememberedDecoder, bytes }
}

// Each level is remembered: a commit replaces the tree but keeps most of its nodes, and adds one
// past epoch to the map but keeps the others (whose trees are the earlier states' trees).
export const treeNode = remembered(nodeEncoder, decodeNode)
export const secretTreeNode = remembered(secretTreeNodeEncoder, decodeSecretTreeNode)
const secretTree = {
  encoder: varLenTypeEncoder(secretTreeNode.encoder),
  decoder: decodeVarLenType(secretTreeNode.decoder)
}
type TreeNode = RatchetTree[number]
const decodeOptionalNode = decodeOptional(treeNode.decoder)

/**
 * The trees decoded so far within one state, node by node with the bytes each came from. A state
 * holds the current tree and one per retained past epoch, mostly the same nodes: a node whose
 * bytes equal those of the node at the same index in an earlier tree is that node (decoding is a
 * function of the bytes it reads), so it is shared instead of decoded again, as ts-mls shares it
 * in memory. ts-mls's node decoder is slow (each enum value rebuilds a reverse map), and five
 * copies of every leaf would also take five times the memory.
 */
let earlierTrees: Array<{ readonly nodes: Array<TreeNode>; readonly bytes: Array<Uint8Array | undefined> }> = []

const sameBytes = (b: Uint8Array, offset: number, known: Uint8Array): boolean => {
  if (offset + known.length > b.length) return false
  for (let i = 0; i < known.length; i++) if (b[offset + i] !== known[i]) return false
  return true
}

/** ts-mls's `decodeVarLenType(decodeOptional(decodeNode))`, sharing equal nodes of earlier trees. */
const decodeTreeNodes: Decoder<Array<TreeNode>> = (b, offset) => {
  const references = earlierTrees
  const nodes: Array<TreeNode> = []
  const bytes: Array<Uint8Array | undefined> = []
  const element: Decoder<TreeNode> = (elements, at) => {
    const index = nodes.length
    if (elements[at] === 1) {
      for (const reference of references) {
        const known = reference.bytes[index]
        if (known === undefined || !sameBytes(elements, at + 1, known)) continue
        nodes.push(reference.nodes[index])
        bytes.push(known)
        return [reference.nodes[index], known.length + 1]
      }
    }
    const decoded = decodeOptionalNode(elements, at)
    if (decoded === undefined) return undefined
    nodes.push(decoded[0])
    bytes.push(decoded[0] === undefined ? undefined : elements.subarray(at + 1, at + decoded[1]))
    return decoded
  }
  const decoded = decodeVarLenType(element)(b, offset)
  if (decoded !== undefined) earlierTrees = [...references, { nodes, bytes }]
  return decoded
}

/** ts-mls's `ratchetTreeEncoder` / `decodeRatchetTree`, over remembered nodes. */
export const ratchetTree = remembered(
  contramapBufferEncoder(varLenTypeEncoder(optionalEncoder(treeNode.encoder)), stripBlankNodes),
  mapDecoder(decodeTreeNodes, extendRatchetTree)
)
/** ts-mls's `epochReceiverDataEncoder` / `decodeEpochReceiverData`, field for field. */
const pastEpoch = remembered<EpochReceiverData>(
  contramapBufferEncoders(
    [varLenDataEncoder, secretTree.encoder, ratchetTree.encoder, varLenDataEncoder, groupContextEncoder],
    (erd) => [erd.resumptionPsk, erd.secretTree, erd.ratchetTree, erd.senderDataSecret, erd.groupContext] as const
  ),
  mapDecoders(
    [decodeVarLenData, secretTree.decoder, ratchetTree.decoder, decodeVarLenData, decodeGroupContext],
    (resumptionPsk, secretTree, ratchetTree, senderDataSecret, groupContext) => ({
      resumptionPsk,
      secretTree,
      ratchetTree,
      senderDataSecret,
      groupContext
    })
  )
)
const pastEpochs = remembered(bigintMapEncoder(pastEpoch.encoder), decodeBigintMap(pastEpoch.decoder))

/** The same fields, in the same order, as ts-mls's `groupStateEncoder`. */
const stateEncoder: BufferEncoder<EncodedState> = contramapBufferEncoders(
  [
    groupContextEncoder,
    keyScheduleEncoder,
    secretTree.encoder,
    ratchetTree.encoder,
    privateKeyPathEncoder,
    varLenDataEncoder,
    unappliedProposalsEncoder,
    varLenDataEncoder,
    pastEpochs.encoder,
    groupActiveStateEncoder
  ],
  (state) =>
    [
      state.groupContext,
      state.keySchedule,
      state.secretTree,
      state.ratchetTree,
      state.privatePath,
      state.signaturePrivateKey,
      state.unappliedProposals,
      state.confirmationTag,
      state.historicalReceiverData,
      state.groupActiveState
    ] as const
)

/** The same fields, in the same order, as ts-mls's `decodeGroupState`. */
const stateDecoder: Decoder<EncodedState> = mapDecoders(
  [
    decodeGroupContext,
    decodeKeySchedule,
    secretTree.decoder,
    ratchetTree.decoder,
    decodePrivateKeyPath,
    decodeVarLenData,
    decodeUnappliedProposals,
    decodeVarLenData,
    pastEpochs.decoder,
    decodeGroupActiveState
  ],
  (
    groupContext,
    keySchedule,
    secretTree,
    ratchetTree,
    privatePath,
    signaturePrivateKey,
    unappliedProposals,
    confirmationTag,
    historicalReceiverData,
    groupActiveState
  ) => ({
    groupContext,
    keySchedule,
    secretTree,
    ratchetTree,
    privatePath,
    signaturePrivateKey,
    unappliedProposals,
    confirmationTag,
    historicalReceiverData,
    groupActiveState
  })
)

/** `encodeGroupState`, reusing the bytes of unchanged parts. */
export const encodeState: (state: EncodedState) => Uint8Array = encode(stateEncoder)

/** `decoder` with the trees of one state to share nodes with starting empty, and forgotten after. */
export const withinOneState = <T>(decoder: Decoder<T>): Decoder<T> => (b, offset) => {
  earlierTrees = []
  try {
    return decoder(b, offset)
  } finally {
    earlierTrees = []
  }
}

/** `decodeGroupState`, remembering the bytes of the parts it reads. */
export const decodeState: Decoder<EncodedState> = withinOneState(stateDecoder)
