/**
 * The ratchet-tree decoder in src/layers/TsMlsDecoders.ts must read every byte string exactly
 * as ts-mls 1.6.4's `decodeNode` / `decodeRatchetTree` do: the same values for real trees, the
 * same names for unknown enum values, the same refusals for damaged bytes. A member that read a
 * tree differently from the others would compute another tree hash and split from the group.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { isDeepStrictEqual } from "node:util"
import {
  type ClientState,
  createApplicationMessage,
  createCommit,
  createGroup,
  decodeMlsMessage as tsMlsDecodeMlsMessage,
  defaultCapabilities,
  defaultLifetime,
  encodeMlsMessage,
  generateKeyPackage,
  type MLSMessage,
  type Proposal
} from "ts-mls"
import { encode } from "ts-mls/codec/tlsEncoder.js"
import { varLenDataEncoder } from "ts-mls/codec/variableLength.js"
import { encodeCredential } from "ts-mls/credential.js"
import { decodeKeyPackage as tsMlsDecodeKeyPackage, encodeKeyPackage } from "ts-mls/keyPackage.js"
import { decodeNode as tsMlsDecodeNode, decodeRatchetTree as tsMlsDecodeRatchetTree, encodeNode, encodeRatchetTree } from "ts-mls/ratchetTree.js"
import { utf8 } from "../src/domain/Bytes.ts"
import { nodeCiphersuite as cs } from "../src/layers/NodeCiphersuite.ts"
import { decodeKeyPackage, decodeMlsMessage, decodeNode, decodeRatchetTree } from "../src/layers/TsMlsDecoders.ts"
import * as Prng from "../src/simulation/Prng.ts"

const encodeVarLenData = encode(varLenDataEncoder)

const newPackage = (name: string) =>
  generateKeyPackage({ credentialType: "basic", identity: utf8(name) }, defaultCapabilities(), defaultLifetime, [], cs)

/** Twelve members, one of them removed (so parent nodes are set), one added after. */
const groupTree = async () => {
  const packages = await Promise.all(Array.from({ length: 12 }, (_, i) => newPackage(`member ${i}`)))
  let state: ClientState = await createGroup(utf8("node-decoder"), packages[0]!.publicPackage, packages[0]!.privatePackage, [], cs)
  const commit = async (proposals: Array<Proposal>) =>
    (state = (await createCommit({ state, cipherSuite: cs }, { extraProposals: proposals })).newState)
  await commit(packages.slice(1, 11).map((p): Proposal => ({ proposalType: "add", add: { keyPackage: p.publicPackage } })))
  await commit([{ proposalType: "remove", remove: { removed: 4 } }])
  await commit([{ proposalType: "add", add: { keyPackage: packages[11]!.publicPackage } }])
  return state.ratchetTree
}

/** What a decoder made of the bytes: its value and length, nothing, or that it threw. */
const outcome = <A>(decode: () => A): A | "throws" => {
  try {
    return decode()
  } catch {
    return "throws"
  }
}

const expectSameReading = (bytes: Uint8Array) => {
  const ours = outcome(() => decodeNode(bytes, 0))
  const theirs = outcome(() => tsMlsDecodeNode(bytes, 0))
  expect(isDeepStrictEqual(ours, theirs), `bytes ${Buffer.from(bytes).toString("hex")}`).toBe(true)
  return theirs
}

describe("the ratchet-tree node and key package decoders", () => {
  it.effect("reads real trees as ts-mls does, node by node and whole", () =>
    Effect.promise(async () => {
      const tree = await groupTree()
      const nodes = tree.filter((n) => n !== undefined)
      expect(nodes.some((n) => n!.nodeType === "parent")).toBe(true)
      for (const node of nodes) {
        const read = expectSameReading(encodeNode(node!))
        expect(read).not.toBe("throws")
        expect(read).not.toBeUndefined()
      }
      const whole = encodeRatchetTree(tree)
      expect(decodeRatchetTree(whole, 0)).toEqual(tsMlsDecodeRatchetTree(whole, 0))
    }))

  it.effect("names unknown cipher suites and credential types as ts-mls does, and refuses an unknown version as it does", () =>
    Effect.promise(async () => {
      const tree = await groupTree()
      const leaf = tree.find((n) => n?.nodeType === "leaf")!
      if (leaf.nodeType !== "leaf") throw new Error("not a leaf")
      // Unknown numbers of the open enums are written from their decimal names.
      const unknown = {
        ...leaf,
        leaf: {
          ...leaf.leaf,
          capabilities: { ...leaf.leaf.capabilities, ciphersuites: ["1234"], credentials: ["basic", "4321"] }
        }
      } as unknown as typeof leaf
      const read = expectSameReading(encodeNode(unknown))
      expect(read).not.toBeUndefined()
      // The version list starts the capabilities, after the node type, the two keys and the credential.
      const bytes = encodeNode(leaf)
      const at = 1 + encodeVarLenData(leaf.leaf.hpkePublicKey).length + encodeVarLenData(leaf.leaf.signaturePublicKey).length +
        encodeCredential(leaf.leaf.credential).length
      expect([bytes[at + 1], bytes[at + 2]]).toEqual([0, 1]) // mls10
      const unknownVersion = Uint8Array.from(bytes)
      unknownVersion[at + 2] = 9
      expect(expectSameReading(unknownVersion)).toBeUndefined()
    }))

  it.effect("refuses or reads damaged and truncated bytes exactly as ts-mls does", () =>
    Effect.promise(async () => {
      const tree = await groupTree()
      const nodes = tree.filter((n) => n !== undefined).map((n) => encodeNode(n!))
      const rng = Prng.make(20261202)
      let refused = 0
      for (let i = 0; i < 600; i++) {
        const original = rng.pick(nodes)
        const copy = Uint8Array.from(original)
        for (let flips = rng.between(1, 3); flips > 0; flips--) copy[rng.int(copy.length)] = rng.int(256)
        const cut = rng.chance(0.3) ? copy.subarray(0, rng.int(copy.length)) : copy
        const theirs = expectSameReading(cut)
        if (theirs === undefined || theirs === "throws") refused++
      }
      expect(refused).toBeGreaterThan(20)
    }))

  it.effect("read key packages, whole and damaged, as ts-mls does", () =>
    Effect.promise(async () => {
      const packages = await Promise.all(Array.from({ length: 5 }, (_, i) => newPackage(`package ${i}`)))
      const encoded = packages.map((p) => encodeKeyPackage(p.publicPackage))
      for (const bytes of encoded) {
        const ours = decodeKeyPackage(bytes, 0)
        expect(ours).toEqual(tsMlsDecodeKeyPackage(bytes, 0))
        expect(ours?.[1]).toBe(bytes.length)
      }
      const rng = Prng.make(1202)
      for (let i = 0; i < 300; i++) {
        const copy = Uint8Array.from(rng.pick(encoded))
        for (let flips = rng.between(1, 3); flips > 0; flips--) copy[rng.int(copy.length)] = rng.int(256)
        const ours = outcome(() => decodeKeyPackage(copy, 0))
        const theirs = outcome(() => tsMlsDecodeKeyPackage(copy, 0))
        expect(isDeepStrictEqual(ours, theirs), Buffer.from(copy).toString("hex")).toBe(true)
      }
    }))

  it.effect("read MLS messages of every wireformat, whole, damaged, cut short or with bytes after, as ts-mls does", () =>
    Effect.promise(async () => {
      const packages = await Promise.all(Array.from({ length: 3 }, (_, i) => newPackage(`message ${i}`)))
      const founded = await createGroup(utf8("message-decoder"), packages[0]!.publicPackage, packages[0]!.privatePackage, [], cs)
      const added = await createCommit({ state: founded, cipherSuite: cs }, {
        extraProposals: [{ proposalType: "add", add: { keyPackage: packages[1]!.publicPackage } }],
        ratchetTreeExtension: true
      })
      const publicCommit = await createCommit({ state: added.newState, cipherSuite: cs }, { extraProposals: [], wireAsPublicMessage: true })
      const application = await createApplicationMessage(added.newState, utf8("hello"), cs)
      const messages: Array<MLSMessage> = [
        added.commit,
        publicCommit.commit,
        { version: "mls10", wireformat: "mls_private_message", privateMessage: application.privateMessage },
        { version: "mls10", wireformat: "mls_welcome", welcome: added.welcome! },
        { version: "mls10", wireformat: "mls_key_package", keyPackage: packages[2]!.publicPackage }
      ]
      const encoded = messages.map(encodeMlsMessage)
      const expectSameMessage = (bytes: Uint8Array) => {
        const ours = outcome(() => decodeMlsMessage(bytes, 0))
        const theirs = outcome(() => tsMlsDecodeMlsMessage(bytes, 0))
        expect(isDeepStrictEqual(ours, theirs), Buffer.from(bytes).toString("hex").slice(0, 200)).toBe(true)
        return theirs
      }
      for (const bytes of encoded) expect(expectSameMessage(bytes)).toEqual([expect.anything(), bytes.length])
      const rng = Prng.make(20261203)
      let refused = 0
      for (let i = 0; i < 1500; i++) {
        const copy = Uint8Array.from(rng.pick(encoded))
        // Damage mostly the header, where the wireformat, lengths and content type are.
        for (let flips = rng.between(1, 3); flips > 0; flips--) copy[rng.chance(0.7) ? rng.int(Math.min(40, copy.length)) : rng.int(copy.length)] = rng.int(256)
        const variant = rng.chance(0.2) ? copy.subarray(0, rng.int(copy.length)) : rng.chance(0.1) ? Uint8Array.of(...copy, 0) : copy
        const theirs = expectSameMessage(variant)
        if (theirs === undefined || theirs === "throws") refused++
      }
      expect(refused).toBeGreaterThan(100)
    }))
})
