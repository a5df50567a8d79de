/**
 * The stored format of a group state writes a past epoch's ratchet tree as its changes to the
 * current tree and a secret tree as its leaves. A state read back must be the state written, but
 * for the secret trees' non-leaf nodes (which nothing reads), and must go on working: sending,
 * reading late messages from past epochs, committing, being read by others. States written in
 * ts-mls's own format before read as they were.
 */
import { describe, expect, it } from "@effect/vitest"
import { randomBytes } from "node:crypto"
import {
  type ClientState,
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
import { encode } from "ts-mls/codec/tlsEncoder.js"
import type { EpochReceiverData } from "ts-mls/epochReceiverData.js"
import { groupContextEncoder } from "ts-mls/groupContext.js"
import { keyScheduleEncoder } from "ts-mls/keySchedule.js"
import { utf8 } from "../src/domain/Bytes.ts"
import { NATIVE_CIPHERSUITE, nodeCryptoProvider } from "../src/layers/NodeCiphersuite.ts"
import {
  BLANK_SECRET_NODE,
  decodeStagedState,
  decodeStoredState,
  encodeStagedState,
  encodeStoredState,
  MAX_PAST_EPOCHS
} from "../src/layers/TsMlsStoredState.ts"

const suite = () => getCiphersuiteImpl(getCiphersuiteFromName(NATIVE_CIPHERSUITE), nodeCryptoProvider)
const acceptAll = () => "accept" as const
const decoder = new TextDecoder()

/** The state with its secret trees' non-leaf nodes blank, as the stored format reads them back. */
const leavesOnly = (state: ClientState): ClientState => {
  const blanked = <T>(tree: ReadonlyArray<T>) => tree.map((node, index) => (index % 2 === 0 ? node : BLANK_SECRET_NODE)) as Array<T>
  return {
    ...state,
    secretTree: blanked(state.secretTree),
    historicalReceiverData: new Map(
      [...state.historicalReceiverData].map(([epoch, past]) => [epoch, { ...past, secretTree: blanked(past.secretTree) }])
    )
  }
}

/**
 * Read back, the state is the state written (through ts-mls's own encoding, field for field), but
 * for the secret trees' non-leaf nodes; its bytes are written again as they are; and encoding the
 * same state afresh (new objects, nothing remembered) gives the same bytes.
 */
const expectStoredFaithfully = (state: ClientState) => {
  const stored = encodeStoredState(state)
  const [decoded, length] = decodeStoredState(stored, 0)!
  expect(length).toBe(stored.length)
  const again = { ...decoded, clientConfig: state.clientConfig } as ClientState
  expect(encodeGroupState(again)).toEqual(encodeGroupState(leavesOnly(state)))
  expect(encodeStoredState(decoded)).toEqual(stored)
  const fresh = decodeGroupState(encodeGroupState(state), 0)![0]
  expect(encodeStoredState(fresh)).toEqual(stored)
  return stored
}

/** A state read back from its stored bytes, as the engine does after a restart. */
const reloaded = (state: ClientState): ClientState =>
  ({ ...decodeStoredState(encodeStoredState(state), 0)![0], clientConfig: state.clientConfig }) as ClientState

const wire = (message: MLSMessage) =>
  decodeMlsMessage(encodeMlsMessage(message), 0)![0] as Parameters<typeof processMessage>[0]
const privateMessage = (sent: { readonly privateMessage: unknown }) =>
  wire({ version: "mls10", wireformat: "mls_private_message", privateMessage: sent.privateMessage } as MLSMessage)

const readText = async (state: ClientState, sent: { readonly privateMessage: unknown }) => {
  const cs = await suite()
  const read = await processMessage(privateMessage(sent), state, emptyPskIndex, acceptAll, cs)
  if (read.kind !== "applicationMessage") throw new Error("not an application message")
  return { text: decoder.decode(read.message), state: read.newState }
}

const newPackage = async (name: string) =>
  generateKeyPackage({ credentialType: "basic", identity: utf8(name) }, defaultCapabilities(), defaultLifetime, [], await suite())
const addOf = (p: Awaited<ReturnType<typeof newPackage>>): Proposal => ({ proposalType: "add", add: { keyPackage: p.publicPackage } })

describe("TsMlsStoredState", () => {
  it("reads back what it wrote, every restart included, through adds, messages, key updates, a late message and removals", async () => {
    const cs = await suite()
    const [alicePackage, bobPackage, ...others] = await Promise.all(
      Array.from({ length: 10 }, (_, i) => newPackage(`member ${i}`))
    )
    let alice = await createGroup(randomBytes(16), alicePackage!.publicPackage, alicePackage!.privatePackage, [], cs)
    expectStoredFaithfully(alice)
    const added = await createCommit({ state: alice, cipherSuite: cs }, {
      extraProposals: [bobPackage!, ...others.slice(0, 5)].map(addOf),
      ratchetTreeExtension: true
    })
    alice = reloaded(added.newState)
    expectStoredFaithfully(alice)
    let bob = reloaded(await joinGroup(added.welcome!, bobPackage!.publicPackage, bobPackage!.privatePackage, emptyPskIndex, cs))
    expectStoredFaithfully(bob)

    // Messages both ways, each side reloaded before every step.
    for (let i = 0; i < 3; i++) {
      const sent = await createApplicationMessage(reloaded(alice), utf8(`hello ${i}`), cs)
      alice = sent.newState
      expectStoredFaithfully(alice)
      const read = await readText(reloaded(bob), sent)
      expect(read.text).toBe(`hello ${i}`)
      bob = read.state
      expectStoredFaithfully(bob)
    }

    // Adds one by one, then a key update: past epochs pile up (four kept by default).
    for (const p of others.slice(5)) {
      const commit = await createCommit({ state: reloaded(alice), cipherSuite: cs }, { extraProposals: [addOf(p)] })
      alice = commit.newState
      bob = (await processMessage(wire(commit.commit), reloaded(bob), emptyPskIndex, acceptAll, cs)).newState
      expectStoredFaithfully(alice)
      expectStoredFaithfully(bob)
    }
    // Alice's message from this epoch reaches Bob only after her key update.
    const late = await createApplicationMessage(reloaded(alice), utf8("late"), cs)
    const update = await createCommit({ state: late.newState, cipherSuite: cs }, {})
    alice = update.newState
    bob = (await processMessage(wire(update.commit), reloaded(bob), emptyPskIndex, acceptAll, cs)).newState
    expect(bob.historicalReceiverData.size).toBeGreaterThanOrEqual(3)
    expectStoredFaithfully(bob)
    const lateRead = await readText(reloaded(bob), late)
    expect(lateRead.text).toBe("late")
    bob = lateRead.state
    expectStoredFaithfully(bob)
    // Read once, the late message's keys are gone from the state read back too.
    await expect(readText(reloaded(bob), late)).rejects.toThrow()

    // Removals shrink the tree below the past epochs' trees.
    const removal = await createCommit({ state: reloaded(alice), cipherSuite: cs }, {
      extraProposals: [{ proposalType: "remove", remove: { removed: 3 } }, { proposalType: "remove", remove: { removed: 9 } }]
    })
    alice = removal.newState
    bob = (await processMessage(wire(removal.commit), reloaded(bob), emptyPskIndex, acceptAll, cs)).newState
    expectStoredFaithfully(alice)
    expectStoredFaithfully(bob)
    const final = await createApplicationMessage(reloaded(bob), utf8("still here"), cs)
    expect((await readText(reloaded(alice), final)).text).toBe("still here")
  })

  it("writes each past epoch's tree as its changes: a state with past epochs takes well under half of ts-mls's bytes", async () => {
    const cs = await suite()
    const packages = await Promise.all(Array.from({ length: 24 }, (_, i) => newPackage(`member ${i}`)))
    let state = await createGroup(randomBytes(16), packages[0]!.publicPackage, packages[0]!.privatePackage, [], cs)
    state = (await createCommit({ state, cipherSuite: cs }, { extraProposals: packages.slice(1, 20).map(addOf) })).newState
    for (const p of packages.slice(20)) {
      state = (await createCommit({ state, cipherSuite: cs }, { extraProposals: [addOf(p)] })).newState
    }
    expect(state.historicalReceiverData.size).toBeGreaterThanOrEqual(3)
    const stored = expectStoredFaithfully(state)
    expect(stored.length).toBeLessThan(encodeGroupState(state).length / 2)
    // Read back, the past epochs' trees share the current tree's unchanged nodes.
    const [decoded] = decodeStoredState(stored, 0)!
    for (const past of decoded.historicalReceiverData.values()) {
      const shared = past.ratchetTree.filter((node, i) => node !== undefined && node === decoded.ratchetTree[i]).length
      expect(shared).toBeGreaterThanOrEqual(20)
    }
  })

  it("reads a state written in ts-mls's own format as ts-mls does, and writes it in the stored format", async () => {
    const cs = await suite()
    const packages = await Promise.all(Array.from({ length: 6 }, (_, i) => newPackage(`member ${i}`)))
    let state = await createGroup(randomBytes(16), packages[0]!.publicPackage, packages[0]!.privatePackage, [], cs)
    state = (await createCommit({ state, cipherSuite: cs }, { extraProposals: packages.slice(1, 4).map(addOf) })).newState
    state = (await createCommit({ state, cipherSuite: cs }, { extraProposals: packages.slice(4).map(addOf) })).newState
    const old = encodeGroupState(state)
    const [ours, length] = decodeStoredState(old, 0)!
    expect(length).toBe(old.length)
    expect(ours).toEqual(decodeGroupState(old, 0)![0])
    const rewritten = encodeStoredState(ours)
    expect(rewritten).not.toEqual(old)
    expect(decodeStoredState(rewritten, 0)![1]).toBe(rewritten.length)
  })

  it("refuses bytes that are not a whole stored state", async () => {
    const cs = await suite()
    const packages = await Promise.all(Array.from({ length: 4 }, (_, i) => newPackage(`member ${i}`)))
    let state = await createGroup(randomBytes(16), packages[0]!.publicPackage, packages[0]!.privatePackage, [], cs)
    state = (await createCommit({ state, cipherSuite: cs }, { extraProposals: packages.slice(1, 3).map(addOf) })).newState
    state = (await createCommit({ state, cipherSuite: cs }, { extraProposals: [addOf(packages[3]!)] })).newState
    const stored = encodeStoredState(state)
    const attempt = (bytes: Uint8Array) => {
      try {
        const decoded = decodeStoredState(bytes, 0)
        return decoded === undefined ? "refused" : decoded[1] === bytes.length ? "whole" : "partial"
      } catch {
        return "refused"
      }
    }
    expect(attempt(stored)).toBe("whole")
    expect(attempt(stored.subarray(0, stored.length - 40))).not.toBe("whole")
    expect(attempt(stored.subarray(0, stored.length / 2))).not.toBe("whole")
    // A secret tree claiming more nodes than any tree has is refused before anything is allocated.
    const widthAt = 4 + encode(groupContextEncoder)(state.groupContext).length + encode(keyScheduleEncoder)(state.keySchedule).length
    expect(new DataView(stored.buffer, stored.byteOffset).getUint32(widthAt)).toBe(state.secretTree.length)
    const huge = new Uint8Array(stored)
    new DataView(huge.buffer).setUint32(widthAt, 0x7fffffff)
    expect(attempt(huge)).toBe("refused")

    // Past epochs claiming trees far longer than any tree the state holds, or more past epochs
    // than a state keeps: a few KB of damaged row must not become a gigabyte of blank slots.
    const pastEpochs = (count: number, treeLength: number) =>
      new Map<bigint, EpochReceiverData>(Array.from({ length: count }, (_, i) => [
        state.groupContext.epoch - 1n - BigInt(i),
        {
          resumptionPsk: new Uint8Array(0),
          senderDataSecret: new Uint8Array(0),
          groupContext: state.groupContext,
          secretTree: [],
          ratchetTree: new Array(treeLength)
        }
      ]))
    const longTrees = encodeStoredState({ ...state, historicalReceiverData: pastEpochs(3, 2 ** 20) })
    expect(longTrees.length).toBeLessThan(10_000)
    expect(attempt(longTrees)).toBe("refused")
    expect(attempt(encodeStoredState({ ...state, historicalReceiverData: pastEpochs(MAX_PAST_EPOCHS + 1, state.ratchetTree.length) })))
      .toBe("refused")
    expect(attempt(encodeStoredState({ ...state, historicalReceiverData: pastEpochs(MAX_PAST_EPOCHS, state.ratchetTree.length) })))
      .toBe("whole")
  })

  it("writes an own commit's staged state as what the commit changed; read back against the state it was created from, it is the staged state", async () => {
    const cs = await suite()
    const packages = await Promise.all(Array.from({ length: 24 }, (_, i) => newPackage(`member ${i}`)))
    let base = await createGroup(randomBytes(16), packages[0]!.publicPackage, packages[0]!.privatePackage, [], cs)
    base = (await createCommit({ state: base, cipherSuite: cs }, { extraProposals: packages.slice(1, 20).map(addOf) })).newState
    for (const p of packages.slice(20, 23)) {
      base = (await createCommit({ state: base, cipherSuite: cs }, { extraProposals: [addOf(p)] })).newState
    }
    base = reloaded(base)
    const staged = (await createCommit({ state: base, cipherSuite: cs }, { extraProposals: [addOf(packages[23]!)] })).newState

    const written = encodeStagedState(staged, base)
    expect(written.length * 4).toBeLessThan(encodeStoredState(staged).length)
    const [read, length] = decodeStagedState(base)(written, 0)!
    expect(length).toBe(written.length)
    expect(encodeGroupState({ ...read, clientConfig: staged.clientConfig } as ClientState)).toEqual(encodeGroupState(leavesOnly(staged)))
    expect(encodeStoredState(read)).toEqual(encodeStoredState(staged))
    // Against a state at another epoch (here the staged one itself) it does not read.
    expect(decodeStagedState(staged)(written, 0)).toBeUndefined()
    // Whole stored states read as ever.
    expect(decodeStagedState(base)(encodeStoredState(staged), 0)![1]).toBe(encodeStoredState(staged).length)
  })

  it("a staged state read back against its base as later messages of that epoch left it keeps their consumed keys consumed", async () => {
    const cs = await suite()
    const [alicePackage, bobPackage, carolPackage] = await Promise.all(["alice", "bob", "carol"].map(newPackage))
    let alice = await createGroup(randomBytes(16), alicePackage!.publicPackage, alicePackage!.privatePackage, [], cs)
    const added = await createCommit({ state: alice, cipherSuite: cs }, { extraProposals: [addOf(bobPackage!)], ratchetTreeExtension: true })
    alice = added.newState
    let bob = await joinGroup(added.welcome!, bobPackage!.publicPackage, bobPackage!.privatePackage, emptyPskIndex, cs)

    // Alice stages an add; before it lands, Bob's first message of the epoch is read with her current state.
    const staging = await createCommit({ state: alice, cipherSuite: cs }, { extraProposals: [addOf(carolPackage!)] })
    const written = encodeStagedState(staging.newState, alice)
    const first = await createApplicationMessage(bob, utf8("first"), cs)
    const second = await createApplicationMessage(first.newState, utf8("second"), cs)
    bob = second.newState
    const afterFirst = await readText(alice, first)
    expect(afterFirst.text).toBe("first")

    // Her commit lands (after a restart, say): its staged state is read against the state she has now.
    const adopted = { ...decodeStagedState(afterFirst.state)(written, 0)![0], clientConfig: alice.clientConfig } as ClientState
    expect(encodeStoredState(adopted)).not.toEqual(encodeStoredState(staging.newState))
    bob = (await processMessage(wire(staging.commit), bob, emptyPskIndex, acceptAll, cs)).newState
    // Bob's second message, from the epoch before, is read late; the first, read already, is not again.
    expect((await readText(adopted, second)).text).toBe("second")
    await expect(readText(adopted, first)).rejects.toThrow()
    const next = await createApplicationMessage(adopted, utf8("after the add"), cs)
    expect((await readText(bob, next)).text).toBe("after the add")
  })
})
