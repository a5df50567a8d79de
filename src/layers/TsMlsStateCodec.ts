/**
 * A ts-mls 1.6.4 group state to bytes and back, byte for byte what `encodeGroupState` writes and
 * `decodeGroupState` reads, without re-encoding what has not changed.
 *
 * Encrypting a message replaces one node of the secret tree; the ratchet tree and the retained
 * past epochs' data (which hold a ratchet tree each) change only with commits or a late message
 * from a past epoch, yet they are most of a state's bytes (about 205 KB of 225 KB in a
 * 100-member group). ts-mls states are immutable values: every change copies what it changes
 * (`tree.slice()`, `addToMap`, `{ ...node }`), and nothing in a state is written in place
 * afterwards. So the encoding of those parts, and of each secret-tree node, is remembered by the
 * part's object identity and reused while the part is the same object; decoding remembers the
 * bytes each part was read from, so a state loaded from disk is written again without
 * re-encoding them either. Remembered bytes live as long as the objects (weak keys).
 */
import type { ClientState } from "ts-mls"
import { decodeGroupContext, groupContextEncoder } from "ts-mls/groupContext.js"
import { decodeGroupActiveState, groupActiveStateEncoder } from "ts-mls/groupActiveState.js"
import { decodeEpochReceiverData, epochReceiverDataEncoder } from "ts-mls/epochReceiverData.js"
import { decodeKeySchedule, keyScheduleEncoder } from "ts-mls/keySchedule.js"
import { decodePrivateKeyPath, privateKeyPathEncoder } from "ts-mls/privateKeyPath.js"
import { decodeRatchetTree, ratchetTreeEncoder } from "ts-mls/ratchetTree.js"
import { decodeSecretTreeNode, secretTreeNodeEncoder } from "ts-mls/secretTree.js"
import { decodeUnappliedProposals, unappliedProposalsEncoder } from "ts-mls/unappliedProposals.js"
import { type BufferEncoder, contramapBufferEncoders, encode } from "ts-mls/codec/tlsEncoder.js"
import { type Decoder, mapDecoders } from "ts-mls/codec/tlsDecoder.js"
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
const remembered = <T>(encoder: BufferEncoder<T>, decoder: Decoder<T>) => {
  const bytesOf = new WeakMap<object, Uint8Array>()
  const encodeOnce = encode(encoder)
  const rememberedEncoder: BufferEncoder<T> = (value) => {
    const key = value as unknown as object
    let bytes = bytesOf.get(key)
    if (bytes === undefined) {
      bytes = encodeOnce(value)
      bytesOf.set(key, bytes)
    }
    const known = bytes
    return [known.length, (offset, buffer) => new Uint8Array(buffer).set(known, offset)]
  }
  const rememberedDecoder: Decoder<T> = (b, offset) => {
    const decoded = decoder(b, offset)
    if (decoded !== undefined && typeof decoded[0] === "object" && decoded[0] !== null) {
      bytesOf.set(decoded[0] as unknown as object, b.subarray(offset, offset + decoded[1]))
    }
    return decoded
  }
  return { encoder: rememberedEncoder, decoder: rememberedDecoder }
}

const ratchetTree = remembered(ratchetTreeEncoder, decodeRatchetTree)
const pastEpochs = remembered(bigintMapEncoder(epochReceiverDataEncoder), decodeBigintMap(decodeEpochReceiverData))
const secretTreeNode = remembered(secretTreeNodeEncoder, decodeSecretTreeNode)

/** The same fields, in the same order, as ts-mls's `groupStateEncoder`. */
const stateEncoder: BufferEncoder<EncodedState> = contramapBufferEncoders(
  [
    groupContextEncoder,
    keyScheduleEncoder,
    varLenTypeEncoder(secretTreeNode.encoder),
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
    decodeVarLenType(secretTreeNode.decoder),
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

/** `decodeGroupState`, remembering the bytes of the parts it reads. */
export const decodeState: Decoder<EncodedState> = stateDecoder
