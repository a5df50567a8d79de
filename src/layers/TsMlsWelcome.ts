/**
 * Joining a group from a Welcome on ts-mls 1.6.4, with the ratchet-tree validation of RFC 9420.
 *
 * ts-mls 1.6.4's `joinGroup` refuses valid welcomes. For each unmerged leaf of a parent node, its
 * tree check demands that every non-blank node on the leaf's whole direct path carry the *same*
 * unmerged_leaves list. RFC 9420 §7.9.1 asks only that each non-blank node between the leaf and
 * that parent list the leaf too. Trees ts-mls builds itself break the stricter rule once a blank
 * leaf under a non-blank parent is refilled, so a member added into that slot could never join
 * ("non-blank intermediate node must list leaf node in its unmerged_leaves"; marmot-ts #57).
 * ts-mls's main branch has the RFC's rule (src/validation.ts), but 1.6.4 runs its check inside
 * `joinGroup`, with no way around it. So this module performs the same join from ts-mls's own
 * exported steps and validates the tree itself, check for check, with the unmerged-leaves rule
 * as the RFC states it, and checks the welcome's path secret against the tree, which 1.6.4 skips.
 * A test compares the state it builds with ts-mls's on welcomes both accept.
 */
import type {
  AuthenticationService,
  CiphersuiteImpl,
  Credential,
  ClientConfig,
  ClientState,
  GroupContext,
  KeyPackage,
  LeafNode,
  PrivateKeyPackage,
  RatchetTree
} from "ts-mls"
import { validateLeafNodeUpdateOrCommit } from "ts-mls/clientState.js"
import { deriveSecret } from "ts-mls/crypto/kdf.js"
import { extensionsSupportedByCapabilities } from "ts-mls/extension.js"
import { verifyGroupInfoConfirmationTag, verifyGroupInfoSignature } from "ts-mls/groupInfo.js"
import { makeKeyPackageRef } from "ts-mls/keyPackage.js"
import { deriveKeySchedule } from "ts-mls/keySchedule.js"
import { verifyLeafNodeSignatureKeyPackage } from "ts-mls/leafNode.js"
import { CodecError, CryptoVerificationError, type MlsError, UsageError, ValidationError } from "ts-mls/mlsError.js"
import { pathToRoot } from "ts-mls/pathSecrets.js"
import { accumulatePskSecret, emptyPskIndex } from "ts-mls/pskIndex.js"
import { findLeafIndex } from "ts-mls/ratchetTree.js"
import { decodeRequiredCapabilities, type RequiredCapabilities } from "ts-mls/requiredCapabilities.js"
import {
  directPath,
  isAncestor,
  isLeaf,
  leafToNodeIndex,
  leafWidth,
  type NodeIndex,
  nodeToLeafIndex,
  root,
  toLeafIndex,
  toNodeIndex
} from "ts-mls/treemath.js"
import { firstCommonAncestor } from "ts-mls/updatePath.js"
import { bytesToBase64, zeroOutUint8Array } from "ts-mls/util/byteArray.js"
import { constantTimeEqual } from "ts-mls/util/constantTimeCompare.js"
import { decryptGroupInfo, decryptGroupSecrets, type Welcome } from "ts-mls/welcome.js"
import { ratchetTreeFromExtension } from "./TsMlsDecoders.ts"
import { leafSecretTree } from "./TsMlsSecretTree.ts"
import { treeHashesOf, verifyParentHashes } from "./TsMlsTreeHashes.ts"

// ---- tree validation (RFC 9420 §12.4.3.1) ---------------------------------------------------

const requiredCapabilitiesOf = (context: GroupContext): RequiredCapabilities | MlsError | undefined => {
  const extension = context.extensions.find((e) => e.extensionType === "required_capabilities")
  if (extension === undefined) return undefined
  return decodeRequiredCapabilities(extension.extensionData, 0)?.[0] ??
    new CodecError("Could not decode required_capabilities")
}

const supportsRequired = (required: RequiredCapabilities, leaf: LeafNode): boolean =>
  required.credentialTypes.every((c) => leaf.capabilities.credentials.includes(c)) &&
  required.extensionTypes.every((e) => leaf.capabilities.extensions.includes(e)) &&
  required.proposalTypes.every((p) => leaf.capabilities.proposals.includes(p))

/** RFC 9420 §7.3: a leaf's signature, credential, capabilities and (if asked) lifetime. */
const validateLeaf = async (
  leaf: LeafNode,
  leafIndex: number,
  context: GroupContext,
  config: ClientConfig,
  cs: CiphersuiteImpl
): Promise<MlsError | undefined> => {
  if (leaf.leafNodeSource !== "key_package") {
    return validateLeafNodeUpdateOrCommit(leaf, toLeafIndex(leafIndex), context, config.authService, cs.signature)
  }
  if (!(await verifyLeafNodeSignatureKeyPackage(leaf, cs.signature))) {
    return new CryptoVerificationError("Could not verify leaf node signature")
  }
  if (config.lifetimeConfig.validateLifetimeOnReceive) {
    const now = BigInt(Math.floor(Date.now() / 1000))
    if (leaf.lifetime.notBefore > now || leaf.lifetime.notAfter < now) {
      return new ValidationError("Current time not within Lifetime")
    }
  }
  if (!(await config.authService.validateCredential(leaf.credential, leaf.signaturePublicKey))) {
    return new ValidationError("Could not validate credential")
  }
  const required = requiredCapabilitiesOf(context)
  if (required instanceof Error) return required
  if (required !== undefined && !supportsRequired(required, leaf)) {
    return new ValidationError("LeafNode does not support required capabilities")
  }
  if (!extensionsSupportedByCapabilities(leaf.extensions, leaf.capabilities)) {
    return new ValidationError("LeafNode contains extension not listed in capabilities")
  }
  return undefined
}

/**
 * RFC 9420 §7.9.1: every unmerged leaf of a parent is a non-blank leaf below it, and every non-blank
 * node strictly between the two lists that leaf as unmerged as well.
 */
export const checkUnmergedLeaves = (tree: RatchetTree): ValidationError | undefined => {
  const width = leafWidth(tree.length)
  for (const [i, node] of tree.entries()) {
    if (node?.nodeType !== "parent") continue
    const parentIndex = toNodeIndex(i)
    for (const unmerged of node.parent.unmergedLeaves) {
      const leafNodeIndex = leafToNodeIndex(toLeafIndex(unmerged))
      if (tree[leafNodeIndex]?.nodeType !== "leaf" || !isAncestor(leafNodeIndex, parentIndex, tree.length)) {
        return new ValidationError(`unmerged leaf ${unmerged} of node ${i} is not a non-blank leaf below it`)
      }
      for (const between of directPath(leafNodeIndex, width)) {
        if (between === parentIndex) break
        const intermediate = tree[between]
        if (intermediate?.nodeType === "parent" && !intermediate.parent.unmergedLeaves.includes(unmerged)) {
          return new ValidationError(`node ${between} between leaf ${unmerged} and node ${i} does not list it as unmerged`)
        }
      }
    }
  }
  return undefined
}

/** The checks ts-mls 1.6.4 runs on a joiner's tree, with the unmerged-leaves rule as the RFC states it. */
export const validateRatchetTree = async (
  tree: RatchetTree,
  context: GroupContext,
  config: ClientConfig,
  cs: CiphersuiteImpl
): Promise<MlsError | undefined> => {
  const hpkeKeys = new Set<string>()
  const signatureKeys = new Set<string>()
  const credentialTypes = new Set<string>()
  for (const [i, node] of tree.entries()) {
    if (node === undefined) continue
    if ((node.nodeType === "leaf") !== isLeaf(toNodeIndex(i))) {
      return new ValidationError("Received Ratchet Tree is not structurally sound")
    }
    const hpkeKey = bytesToBase64(node.nodeType === "leaf" ? node.leaf.hpkePublicKey : node.parent.hpkePublicKey)
    if (hpkeKeys.has(hpkeKey)) return new ValidationError("hpke keys not unique")
    hpkeKeys.add(hpkeKey)
    if (node.nodeType !== "leaf") continue
    const signatureKey = bytesToBase64(node.leaf.signaturePublicKey)
    if (signatureKeys.has(signatureKey)) return new ValidationError("signature keys not unique")
    signatureKeys.add(signatureKey)
    credentialTypes.add(node.leaf.credential.credentialType)
    const leafError = await validateLeaf(node.leaf, nodeToLeafIndex(toNodeIndex(i)), context, config, cs)
    if (leafError !== undefined) return leafError
  }
  const unmergedError = checkUnmergedLeaves(tree)
  if (unmergedError !== undefined) return unmergedError
  for (const node of tree) {
    if (node?.nodeType !== "leaf") continue
    const supported: ReadonlyArray<string> = node.leaf.capabilities.credentials
    if ([...credentialTypes].some((type) => !supported.includes(type))) {
      return new ValidationError("LeafNode has credential that is not supported by member of the group")
    }
  }
  const hashes = treeHashesOf(tree, cs.hash)
  if (!(await verifyParentHashes(tree, hashes))) return new CryptoVerificationError("Unable to verify parent hash")
  if (!constantTimeEqual(context.treeHash, await hashes.root())) {
    return new ValidationError("Unable to verify tree hash")
  }
  return undefined
}

/**
 * RFC 9420 §7.9 (tree invariant) and §12.4.3.1: a joiner knows the private key of every non-blank
 * node above it that it is not listed under as unmerged, and it learns those keys only from the
 * welcome's path secret. So each non-blank ancestor the path secret does not cover must list the
 * joiner as unmerged; otherwise the joiner could not decrypt a later commit encrypted to that node.
 * ts-mls 1.6.4 does not check (its main branch does, since rc.13).
 */
export const joinerCoversAncestors = (
  tree: RatchetTree,
  joiner: number,
  keysFromPathSecret: Readonly<Record<number, Uint8Array>>
): ValidationError | undefined => {
  for (const ancestor of directPath(leafToNodeIndex(toLeafIndex(joiner)), leafWidth(tree.length))) {
    const node = tree[ancestor]
    if (node?.nodeType !== "parent" || keysFromPathSecret[ancestor] !== undefined) continue
    if (!node.parent.unmergedLeaves.includes(joiner)) {
      return new ValidationError(`node ${ancestor} above the joiner neither lists it as unmerged nor is in its path secret`)
    }
  }
  return undefined
}

/**
 * An authentication service that only notes what it is asked (and says yes), so a tree's other
 * checks need not wait for the identity lookups; `allValid` then asks the real one about each,
 * in order. Nothing is joined before it has answered.
 */
export class DeferredCredentials {
  private readonly asked: Array<readonly [Credential, Uint8Array]> = []
  constructor(private readonly inner: AuthenticationService) {}

  readonly service: AuthenticationService = {
    validateCredential: async (credential, signaturePublicKey) => {
      this.asked.push([credential, signaturePublicKey])
      return true
    }
  }

  async allValid(): Promise<boolean> {
    for (const [credential, signaturePublicKey] of this.asked) {
      if (!(await this.inner.validateCredential(credential, signaturePublicKey))) return false
    }
    return true
  }
}

// ---- the join (RFC 9420 §12.4.3.1) -----------------------------------------------------------

/**
 * The private keys of the nodes from `ancestor` to the root, derived from the welcome's path
 * secret. RFC 9420 §12.4.3.1 requires each to match the public key in its node; ts-mls 1.6.4 does
 * not check, so a bad path secret surfaced only at the next commit the member could not decrypt.
 */
export const privateKeysFromPathSecret = async (
  tree: RatchetTree,
  ancestor: NodeIndex,
  pathSecret: Uint8Array,
  cs: CiphersuiteImpl
): Promise<Record<number, Uint8Array>> => {
  const privateKeys: Record<number, Uint8Array> = {}
  for (const [index, secret] of Object.entries(await pathToRoot(tree, ancestor, pathSecret, cs.kdf))) {
    const { privateKey, publicKey } = await cs.hpke.deriveKeyPair(await deriveSecret(secret, "node", cs.kdf))
    const node = tree[Number(index)]
    // ts-mls derives a secret for the root even when the path left it blank (its copath side is
    // empty): there is no key to compare it with.
    const unchecked = node === undefined && Number(index) === root(leafWidth(tree.length))
    if (
      !unchecked &&
      (node?.nodeType !== "parent" ||
        !constantTimeEqual(await cs.hpke.exportPublicKey(publicKey), node.parent.hpkePublicKey))
    ) {
      throw new ValidationError(`the path secret does not give the key of node ${index}`)
    }
    privateKeys[Number(index)] = await cs.hpke.exportPrivateKey(privateKey)
  }
  return privateKeys
}

/**
 * ts-mls 1.6.4's `joinGroup(welcome, keyPackage, privateKeys, emptyPskIndex, cs, undefined,
 * undefined, config)`, step for step, with `validateRatchetTree` above in place of its own and the
 * path secret checked against the tree.
 * Converge never uses PSKs or resumption, so a welcome that needs one is refused.
 */
export const joinFromWelcome = async (
  welcome: Welcome,
  keyPackage: KeyPackage,
  privateKeys: PrivateKeyPackage,
  cs: CiphersuiteImpl,
  config: ClientConfig
): Promise<ClientState> => (await joinWithSigner(welcome, keyPackage, privateKeys, cs, config)).client

/** `joinFromWelcome`, also saying which leaf signed the welcome's GroupInfo (the member who added us). */
export const joinWithSigner = async (
  welcome: Welcome,
  keyPackage: KeyPackage,
  privateKeys: PrivateKeyPackage,
  cs: CiphersuiteImpl,
  config: ClientConfig,
  /** A batched identity lookup, run while the tree is checked; the leaves' credentials are judged after it. */
  beforeTreeValidation?: (tree: RatchetTree) => Promise<void>
): Promise<{ readonly client: ClientState; readonly signer: number }> => {
  const keyPackageRef = await makeKeyPackageRef(keyPackage, cs.hash)
  const initKey = await cs.hpke.importPrivateKey(privateKeys.initPrivateKey)
  const groupSecrets = await decryptGroupSecrets(initKey, keyPackageRef, welcome, cs.hpke)
  if (groupSecrets === undefined) throw new CodecError("Could not decode group secrets")
  const [pskSecret] = await accumulatePskSecret(groupSecrets.psks, emptyPskIndex, cs, new Uint8Array(cs.kdf.size))
  const groupInfo = await decryptGroupInfo(welcome, groupSecrets.joinerSecret, pskSecret, cs)
  if (groupInfo === undefined) throw new CodecError("Could not decode group info")
  const context = groupInfo.groupContext
  if (!extensionsSupportedByCapabilities(context.extensions, keyPackage.leafNode.capabilities)) {
    throw new UsageError("client does not support every extension in the GroupContext")
  }
  const tree = ratchetTreeFromExtension(groupInfo)
  if (tree === undefined) throw new UsageError("No RatchetTree passed and no ratchet_tree extension")

  // The identity lookups the leaves need (a fetch, and signatures checked on the thread pool) run
  // while the tree is checked here; each credential is judged once they are in, before the join.
  const prepared = beforeTreeValidation === undefined ? undefined : beforeTreeValidation(tree).catch(() => undefined)
  const credentials = new DeferredCredentials(config.authService)
  const signer = tree[leafToNodeIndex(toLeafIndex(groupInfo.signer))]
  if (signer === undefined) throw new ValidationError("Could not find signer leafNode")
  if (signer.nodeType === "parent") throw new ValidationError("Expected non blank leaf node")
  await credentials.service.validateCredential(signer.leaf.credential, signer.leaf.signaturePublicKey)
  if (!(await verifyGroupInfoSignature(groupInfo, signer.leaf.signaturePublicKey, cs.signature))) {
    throw new CryptoVerificationError("Could not verify groupInfo signature")
  }
  if (context.cipherSuite !== keyPackage.cipherSuite) {
    throw new ValidationError("cipher suite in the GroupInfo does not match the cipher_suite in the KeyPackage")
  }
  const treeError = await validateRatchetTree(tree, context, { ...config, authService: credentials.service }, cs)
  if (treeError !== undefined) throw treeError
  await prepared
  if (!(await credentials.allValid())) throw new ValidationError("Could not validate credential")

  const ownLeaf = findLeafIndex(tree, keyPackage.leafNode)
  if (ownLeaf === undefined) throw new ValidationError("Could not find own leaf when processing welcome")
  // The path secret, when sent, is for the joiner's and the signer's first common ancestor.
  const ancestor = firstCommonAncestor(tree, ownLeaf, toLeafIndex(groupInfo.signer))
  const pathKeys = groupSecrets.pathSecret === undefined
    ? {}
    : await privateKeysFromPathSecret(tree, ancestor, groupSecrets.pathSecret, cs)
  const uncovered = joinerCoversAncestors(tree, ownLeaf, pathKeys)
  if (uncovered !== undefined) throw uncovered
  const privatePath = {
    leafIndex: ownLeaf,
    privateKeys: { ...pathKeys, [leafToNodeIndex(ownLeaf)]: privateKeys.hpkePrivateKey }
  }
  const [keySchedule, encryptionSecret] = await deriveKeySchedule(groupSecrets.joinerSecret, pskSecret, context, cs.kdf)
  if (!(await verifyGroupInfoConfirmationTag(groupInfo, groupSecrets.joinerSecret, pskSecret, cs))) {
    throw new CryptoVerificationError("Could not verify confirmation tag")
  }
  const secretTree = await leafSecretTree(leafWidth(tree.length), encryptionSecret, cs.kdf)
  zeroOutUint8Array(encryptionSecret)
  zeroOutUint8Array(groupSecrets.joinerSecret)
  const client: ClientState = {
    groupContext: context,
    ratchetTree: tree,
    privatePath,
    signaturePrivateKey: privateKeys.signaturePrivateKey,
    confirmationTag: groupInfo.confirmationTag,
    unappliedProposals: {},
    keySchedule,
    secretTree,
    historicalReceiverData: new Map(),
    groupActiveState: { kind: "active" },
    clientConfig: config
  }
  return { client, signer: groupInfo.signer }
}
