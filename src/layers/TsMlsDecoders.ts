/**
 * ts-mls 1.6.4's decoders of ratchet-tree nodes and key packages, giving the same values faster.
 *
 * ts-mls turns every enum number back into its name by rebuilding a reverse map of the whole
 * enum on each call (`enumNumberToKey`), and every leaf lists the 19 cipher suites ts-mls knows
 * in its capabilities: 19 rebuilds of a 19-entry map per leaf, most of the time of reading a
 * 100-member tree or a batch of key packages. Here the capabilities are read with reverse maps
 * built once, with ts-mls's own rules (an unknown value of an open enum reads as its decimal
 * string, of a closed one refuses the whole encoding; a later key with the same number wins).
 * The rest of a leaf, every parent node and a key package's extensions are decoded by ts-mls's
 * own decoders. MLS messages too: ts-mls builds a message's decoder anew for its wireformat and
 * rebuilds three reverse maps to read a private message's header, most of what a delivery service
 * spends checking one; private messages are read here, every other wireformat by ts-mls.
 */
import { decodeMlsMessage as tsMlsDecodeMlsMessage, type GroupInfo, type KeyPackage, type MLSMessage, type RatchetTree } from "ts-mls"
import { decodeOptional } from "ts-mls/codec/optional.js"
import { credentialTypes } from "ts-mls/credentialType.js"
import { ciphersuites } from "ts-mls/crypto/ciphersuite.js"
import { decodeUint16, decodeUint64, decodeUint8 } from "ts-mls/codec/number.js"
import { contentTypes } from "ts-mls/contentType.js"
import { type Decoder, mapDecoder, mapDecoderOption, mapDecoders } from "ts-mls/codec/tlsDecoder.js"
import { decodeVarLenData, decodeVarLenType } from "ts-mls/codec/variableLength.js"
import { decodeCredential } from "ts-mls/credential.js"
import { decodeExtension } from "ts-mls/extension.js"
import { decodeLeafNodeInfoOmitted } from "ts-mls/leafNode.js"
import { CodecError } from "ts-mls/mlsError.js"
import { decodeParentNode } from "ts-mls/parentNode.js"
import { extendRatchetTree } from "ts-mls/ratchetTree.js"
import { protocolVersions } from "ts-mls/protocolVersion.js"
import { wireformats } from "ts-mls/wireformat.js"

type TreeNode = NonNullable<RatchetTree[number]>

/** ts-mls's `enumNumberToKey` (closed) or `openEnumNumberToKey` (open), its reverse map built once. */
const enumNames = <K extends string>(values: Readonly<Record<K, number>>, open: boolean) => {
  const names = new Map<number, K>()
  for (const [key, value] of Object.entries(values) as Array<[K, number]>) names.set(value, key)
  return (n: number): K | string | undefined => names.get(n) ?? (open ? n.toString() : undefined)
}

const decodeProtocolVersion = mapDecoderOption(decodeUint16, enumNames(protocolVersions, false))
const decodeCiphersuite = mapDecoderOption(decodeUint16, enumNames(ciphersuites, true))

/** ts-mls's `decodeCapabilities`, field for field. */
const decodeCapabilities = mapDecoders(
  [
    decodeVarLenType(decodeProtocolVersion),
    decodeVarLenType(decodeCiphersuite),
    decodeVarLenType(decodeUint16),
    decodeVarLenType(decodeUint16),
    decodeVarLenType(mapDecoderOption(decodeUint16, enumNames(credentialTypes, true)))
  ],
  (versions, ciphersuites, extensions, proposals, credentials) => ({
    versions,
    ciphersuites,
    extensions,
    proposals,
    credentials
  })
)

/** ts-mls's `decodeLeafNodeData`, field for field. */
const decodeLeafNodeData = mapDecoders(
  [decodeVarLenData, decodeVarLenData, decodeCredential, decodeCapabilities],
  (hpkePublicKey, signaturePublicKey, credential, capabilities) => ({
    hpkePublicKey,
    signaturePublicKey,
    credential,
    capabilities
  })
)

/** ts-mls's `decodeLeafNode`, field for field. */
const decodeLeafNode = mapDecoders(
  [decodeLeafNodeData, decodeLeafNodeInfoOmitted, decodeVarLenData],
  (data, info, signature) => ({ ...data, ...info, signature })
)

/** ts-mls's `decodeNode`: a node type (1 leaf, 2 parent), then that node. */
export const decodeNode: Decoder<TreeNode> = (b, offset) => {
  const nodeType = decodeUint8(b, offset)
  if (nodeType === undefined) return undefined
  if (nodeType[0] === 1) {
    const leaf = decodeLeafNode(b, offset + nodeType[1])
    return leaf === undefined ? undefined : [{ nodeType: "leaf", leaf: leaf[0] } as TreeNode, nodeType[1] + leaf[1]]
  }
  if (nodeType[0] === 2) {
    const parent = decodeParentNode(b, offset + nodeType[1])
    return parent === undefined ? undefined : [{ nodeType: "parent", parent: parent[0] }, nodeType[1] + parent[1]]
  }
  return undefined
}

/** ts-mls's `decodeRatchetTree`, over the node decoder above. */
export const decodeRatchetTree: Decoder<RatchetTree> = mapDecoder(decodeVarLenType(decodeOptional(decodeNode)), extendRatchetTree)

/** ts-mls's `ratchetTreeFromExtension`: the tree a GroupInfo carries, if it carries one. */
export const ratchetTreeFromExtension = (info: GroupInfo): RatchetTree | undefined => {
  const treeExtension = info.extensions.find((ex) => ex.extensionType === "ratchet_tree")
  if (treeExtension === undefined) return undefined
  const tree = decodeRatchetTree(treeExtension.extensionData, 0)
  if (tree === undefined) throw new CodecError("Could not decode RatchetTree")
  return tree[0]
}

/** ts-mls's `decodeKeyPackage`, field for field: its leaf must come from a key package. */
export const decodeKeyPackage: Decoder<KeyPackage> = mapDecoders(
  [
    mapDecoders(
      [
        decodeProtocolVersion,
        decodeCiphersuite,
        decodeVarLenData,
        mapDecoderOption(decodeLeafNode, (leafNode) => leafNode.leafNodeSource === "key_package" ? leafNode : undefined),
        decodeVarLenType(decodeExtension)
      ],
      (version, cipherSuite, initKey, leafNode, extensions) => ({ version, cipherSuite, initKey, leafNode, extensions })
    ),
    decodeVarLenData
  ],
  (keyPackageTBS, signature) => ({ ...keyPackageTBS, signature }) as KeyPackage
)

const decodeWireformat = mapDecoderOption(decodeUint16, enumNames(wireformats, false))

/** ts-mls's `decodePrivateMessage`, field for field. */
const decodePrivateMessage = mapDecoders(
  [decodeVarLenData, decodeUint64, mapDecoderOption(decodeUint8, enumNames(contentTypes, false)), decodeVarLenData, decodeVarLenData, decodeVarLenData],
  (groupId, epoch, contentType, authenticatedData, encryptedSenderData, ciphertext) =>
    ({ groupId, epoch, contentType, authenticatedData, encryptedSenderData, ciphertext }) as Extract<MLSMessage, { wireformat: "mls_private_message" }>["privateMessage"]
)

/** ts-mls's `decodeMlsMessage`: a version, a wireformat, then that message (private ones read here). */
export const decodeMlsMessage: Decoder<MLSMessage> = (b, offset) => {
  const version = decodeProtocolVersion(b, offset)
  if (version === undefined) return undefined
  const wireformat = decodeWireformat(b, offset + version[1])
  if (wireformat?.[0] !== "mls_private_message") return tsMlsDecodeMlsMessage(b, offset)
  const privateMessage = decodePrivateMessage(b, offset + version[1] + wireformat[1])
  if (privateMessage === undefined) return undefined
  const message = { wireformat: "mls_private_message", privateMessage: privateMessage[0], version: version[0] } as MLSMessage
  return [message, version[1] + wireformat[1] + privateMessage[1]]
}
