/**
 * The state codec reuses the bytes of parts that did not change (ratchet tree, past epochs,
 * secret-tree nodes). Whatever a group goes through, its bytes must stay exactly what ts-mls's
 * own `encodeGroupState` writes for the same state, and read back to the same state.
 */
import { describe, expect, it } from "@effect/vitest"
import { randomBytes } from "node:crypto"
import { isDeepStrictEqual } from "node:util"
import {
  type ClientState,
  type KeyPackage,
  createApplicationMessage,
  createCommit,
  createGroup,
  decodeGroupState,
  decodeMlsMessage,
  defaultCapabilities,
  defaultLifetime,
  emptyPskIndex,
  encodeGroupState,
  encodeMlsMessage,
  generateKeyPackage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  joinGroup,
  type MLSMessage,
  processMessage,
  type Proposal
} from "ts-mls"
import { utf8 } from "../src/domain/Bytes.ts"
import { NATIVE_CIPHERSUITE, nodeCryptoProvider } from "../src/layers/NodeCiphersuite.ts"
import { decodeState, encodeState } from "../src/layers/TsMlsStateCodec.ts"

const suite = () => getCiphersuiteImpl(getCiphersuiteFromName(NATIVE_CIPHERSUITE), nodeCryptoProvider)
const acceptAll = () => "accept" as const

/** The codec's bytes must be ts-mls's bytes; decoding them must give a state ts-mls encodes the same. */
const expectSameAsTsMls = (state: ClientState) => {
  const expected = encodeGroupState(state)
  expect(encodeState(state)).toEqual(expected)
  const decoded = decodeState(expected, 0)!
  expect(decoded[1]).toBe(expected.length)
  expect(encodeGroupState({ ...decoded[0], clientConfig: state.clientConfig } as ClientState)).toEqual(expected)
  expect(encodeState(decoded[0])).toEqual(expected)
}

/** A state read back from its bytes, as the engine does after a restart. */
const reloaded = (state: ClientState): ClientState =>
  ({ ...decodeState(encodeState(state), 0)![0], clientConfig: state.clientConfig }) as ClientState

/** Through bytes, as the network carries it: the receiver shares no object with the sender. */
const wire = (message: MLSMessage) =>
  decodeMlsMessage(encodeMlsMessage(message), 0)![0] as Parameters<typeof processMessage>[0]
const privateMessage = (sent: { readonly privateMessage: unknown }) =>
  wire({ version: "mls10", wireformat: "mls_private_message", privateMessage: sent.privateMessage } as MLSMessage)

describe("TsMlsStateCodec", () => {
  it("writes what ts-mls writes through adds, messages, key updates, removals and a late message from a past epoch", async () => {
    const cs = await suite()
    const newPackage = (name: string) =>
      generateKeyPackage({ credentialType: "basic", identity: utf8(name) }, defaultCapabilities(), defaultLifetime, [], cs)
    const alicePackage = await newPackage("alice")
    const bobPackage = await newPackage("bob")
    const others = await Promise.all(Array.from({ length: 6 }, (_, i) => newPackage(`member ${i}`)))

    let alice = await createGroup(randomBytes(16), alicePackage.publicPackage, alicePackage.privatePackage, [], cs)
    expectSameAsTsMls(alice)
    const adds = [bobPackage, ...others].map((p): Proposal => ({ proposalType: "add", add: { keyPackage: p.publicPackage } }))
    const added = await createCommit({ state: alice, cipherSuite: cs }, { extraProposals: adds, ratchetTreeExtension: true })
    alice = added.newState
    expectSameAsTsMls(alice)
    let bob = await joinGroup(added.welcome!, bobPackage.publicPackage, bobPackage.privatePackage, emptyPskIndex, cs)
    expectSameAsTsMls(bob)

    // Messages both ways: only the sender's secret-tree node changes; the rest is reused.
    for (let i = 0; i < 5; i++) {
      const sent = await createApplicationMessage(alice, utf8(`hello ${i}`), cs)
      alice = sent.newState
      expectSameAsTsMls(alice)
      bob = (await processMessage(privateMessage(sent), bob, emptyPskIndex, acceptAll, cs)).newState
      expectSameAsTsMls(bob)
    }
    // Alice restarts mid-epoch and goes on from the state read back.
    alice = reloaded(alice)
    const afterRestart = await createApplicationMessage(alice, utf8("after restart"), cs)
    alice = afterRestart.newState
    expectSameAsTsMls(alice)
    bob = (await processMessage(privateMessage(afterRestart), bob, emptyPskIndex, acceptAll, cs)).newState

    // A message sent before a key update reaches bob after it: bob's past-epoch data changes.
    const late = await createApplicationMessage(alice, utf8("late"), cs)
    alice = late.newState
    const update = await createCommit({ state: alice, cipherSuite: cs }, {})
    alice = update.newState
    expectSameAsTsMls(alice)
    bob = reloaded(bob)
    bob = (await processMessage(wire(update.commit), bob, emptyPskIndex, acceptAll, cs)).newState
    expectSameAsTsMls(bob)
    const lateRead = await processMessage(privateMessage(late), bob, emptyPskIndex, acceptAll, cs)
    expect(lateRead.kind).toBe("applicationMessage")
    bob = lateRead.newState
    expectSameAsTsMls(bob)

    // Removals shrink the tree; the states stay byte-identical.
    const removal = await createCommit({ state: alice, cipherSuite: cs }, {
      extraProposals: [{ proposalType: "remove", remove: { removed: 3 } }, { proposalType: "remove", remove: { removed: 5 } }]
    })
    alice = removal.newState
    expectSameAsTsMls(alice)
    bob = (await processMessage(wire(removal.commit), bob, emptyPskIndex, acceptAll, cs)).newState
    expectSameAsTsMls(bob)
    const final = await createApplicationMessage(bob, utf8("still here"), cs)
    expectSameAsTsMls(final.newState)
  })

  it("reads a state back as ts-mls does, with the nodes its past epochs' trees share with the current tree shared", async () => {
    const cs = await suite()
    const newPackage = (name: string) =>
      generateKeyPackage({ credentialType: "basic", identity: utf8(name) }, defaultCapabilities(), defaultLifetime, [], cs)
    const packages = await Promise.all(Array.from({ length: 8 }, (_, i) => newPackage(`member ${i}`)))
    let state = await createGroup(randomBytes(16), packages[0]!.publicPackage, packages[0]!.privatePackage, [], cs)
    const add = (p: { readonly publicPackage: KeyPackage }): Proposal => ({ proposalType: "add", add: { keyPackage: p.publicPackage } })
    state = (await createCommit({ state, cipherSuite: cs }, { extraProposals: packages.slice(1, 6).map(add) })).newState
    state = (await createCommit({ state, cipherSuite: cs }, { extraProposals: [add(packages[6]!)] })).newState
    state = (await createCommit({ state, cipherSuite: cs }, { extraProposals: [{ proposalType: "remove", remove: { removed: 2 } }] })).newState
    expect(state.historicalReceiverData.size).toBeGreaterThanOrEqual(2)

    const bytes = encodeGroupState(state)
    const [ours] = decodeState(bytes, 0)!
    const [theirs] = decodeGroupState(bytes, 0)!
    expect(ours).toEqual(theirs)
    // Leaves no commit touched are one object in every tree that holds them.
    let shared = 0
    for (const past of ours.historicalReceiverData.values()) {
      for (const [index, node] of past.ratchetTree.entries()) {
        const current = ours.ratchetTree[index]
        if (node === undefined || current === undefined) continue
        if (!isDeepStrictEqual(node, current)) continue
        expect(node).toBe(current)
        shared++
      }
    }
    expect(shared).toBeGreaterThan(5)
  })

  it("refuses bytes that are not a whole state", async () => {
    const cs = await suite()
    const pkg = await generateKeyPackage({ credentialType: "basic", identity: utf8("a") }, defaultCapabilities(), defaultLifetime, [], cs)
    const state = await createGroup(randomBytes(16), pkg.publicPackage, pkg.privatePackage, [], cs)
    const bytes = encodeState(state)
    const truncated = bytes.subarray(0, bytes.length - 40)
    const ours = (() => { try { return decodeState(truncated, 0) } catch { return undefined } })()
    const theirs = (() => { try { return decodeGroupState(truncated, 0) } catch { return undefined } })()
    expect(ours === undefined || ours[1] !== bytes.length).toBe(true)
    expect(theirs === undefined || theirs[1] !== bytes.length).toBe(true)
  })
})
