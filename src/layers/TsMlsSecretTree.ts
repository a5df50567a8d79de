/**
 * A new epoch's secret tree (RFC 9420 §9) with the leaves' ratchets ts-mls 1.6.4's
 * `createSecretTree` derives, for a fraction of its work.
 *
 * ts-mls derives both ratchets of every node, parents too, and builds each `ExpandWithLabel`'s
 * label anew: 764 derivations for 128 leaves, half of a 100-member commit's creation. ts-mls reads
 * a secret tree only at leaves (`leafToNodeIndex`) and in `allSecretTreeValues` (to zero what
 * was consumed), so parents get `BLANK_SECRET_NODE`, as a stored state reads back
 * (TsMlsStoredState). Each label is encoded once per tree; each derivation is one HKDF-Expand.
 */
import type { Kdf } from "ts-mls"
import { uint16Encoder } from "ts-mls/codec/number.js"
import { composeBufferEncoders, encode } from "ts-mls/codec/tlsEncoder.js"
import { varLenDataEncoder } from "ts-mls/codec/variableLength.js"
import type { SecretTree } from "ts-mls/secretTree.js"
import { isLeaf, left, type NodeIndex, nodeWidth, right, root } from "ts-mls/treemath.js"
import { zeroOutUint8Array } from "ts-mls/util/byteArray.js"
import { utf8 } from "../domain/Bytes.ts"
import { BLANK_SECRET_NODE } from "./TsMlsStoredState.ts"

const kdfLabelEncoder = encode(composeBufferEncoders([uint16Encoder, varLenDataEncoder, varLenDataEncoder]))

/** The `KDFLabel` of `ExpandWithLabel(secret, label, context, length)`, as ts-mls encodes it. */
const kdfLabel = (label: string, context: Uint8Array, length: number): Uint8Array =>
  kdfLabelEncoder([length, utf8(`MLS 1.0 ${label}`), context])

/**
 * The secret tree of an epoch whose tree is `leafWidth` leaves wide: each leaf's handshake and
 * application ratchet at generation 0, as ts-mls's `createSecretTree` gives them; parents blank.
 */
export const leafSecretTree = async (leafWidth: number, encryptionSecret: Uint8Array, kdf: Kdf): Promise<SecretTree> => {
  const size = kdf.size
  const leftLabel = kdfLabel("tree", utf8("left"), size)
  const rightLabel = kdfLabel("tree", utf8("right"), size)
  const applicationLabel = kdfLabel("application", new Uint8Array(), size)
  const handshakeLabel = kdfLabel("handshake", new Uint8Array(), size)
  const tree: SecretTree = new Array(nodeWidth(leafWidth))
  const rootIndex = root(leafWidth)
  // Depth first, with an explicit stack: each parent's secret is used for its two children, then wiped.
  const stack: Array<[NodeIndex, Uint8Array]> = [[rootIndex, encryptionSecret]]
  while (stack.length > 0) {
    const [index, secret] = stack.pop()!
    if (isLeaf(index)) {
      tree[index] = {
        handshake: { secret: await kdf.expand(secret, handshakeLabel, size), generation: 0, unusedGenerations: {} },
        application: { secret: await kdf.expand(secret, applicationLabel, size), generation: 0, unusedGenerations: {} }
      }
    } else {
      tree[index] = BLANK_SECRET_NODE
      stack.push([right(index), await kdf.expand(secret, rightLabel, size)])
      stack.push([left(index), await kdf.expand(secret, leftLabel, size)])
    }
    // The caller owns (and wipes) the encryption secret; the intermediate ones are ours.
    if (index !== rootIndex) zeroOutUint8Array(secret)
  }
  return tree
}
