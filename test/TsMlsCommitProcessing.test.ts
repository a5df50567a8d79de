/**
 * `processMemberCommit` (src/layers/TsMlsCommitProcessing.ts) must apply a received commit exactly
 * as ts-mls 1.6.4's `processMessage` does, and refuse what it refuses: members who disagree
 * fork the group. Every member of a group processes commits of every kind (adds, several adds,
 * removals, its own removal, self-updates, settings changes, from the creator and from other
 * members) both ways; the states compare byte for byte (secret trees at
 * their leaves: ours leaves parents blank, as a stored state reads back), and damaged commits
 * are refused with the same error.
 */
import { describe, expect, it } from "@effect/vitest"
import { type ClientState, type MLSMessage, type Proposal, createCommit, createGroup, emptyPskIndex, joinGroup, processMessage } from "ts-mls"
import { unprotectPrivateMessage } from "ts-mls/messageProtection.js"
import { utf8 } from "../src/domain/Bytes.ts"
import { nodeCiphersuite as cs } from "../src/layers/NodeCiphersuite.ts"
import { processMemberCommit } from "../src/layers/TsMlsCommitProcessing.ts"
import { withMetadata } from "../src/layers/TsMlsExtensions.ts"
import { acceptAll, addOf, asGroupMessage, hex, leafStateBytes, newPackage } from "./support/TsMlsFixtures.ts"

const privateMessageOf = (message: MLSMessage) => {
  if (message.wireformat !== "mls_private_message") throw new Error("expected a private message")
  return message.privateMessage
}

/** What a run ended with: its value, or the error it threw, as text. */
const outcome = async <A>(run: () => Promise<A>): Promise<A | string> => {
  try {
    return await run()
  } catch (error) {
    return `refused: ${String(error)}`
  }
}

/** One member processes `commit` both ways: the same new state, the same committer, the same secrets to wipe. */
const compareProcessing = async (receiver: ClientState, commit: MLSMessage) => {
  let committer: number | undefined
  const theirs = await outcome(() =>
    processMessage(asGroupMessage(commit), receiver, emptyPskIndex, (incoming) => {
      if (incoming.kind === "commit") committer = incoming.senderLeafIndex
      return acceptAll()
    }, cs))
  const ours = await outcome(() => processMemberCommit(receiver, privateMessageOf(commit), cs))
  if (typeof theirs === "string" || typeof ours === "string") {
    expect(ours).toBe(theirs)
    return undefined
  }
  expect(ours).toBeDefined()
  expect(theirs.kind).toBe("newState")
  if (ours === undefined || theirs.kind !== "newState") return undefined
  expect(ours.committer).toBe(committer)
  expect(leafStateBytes(ours.newState)).toBe(leafStateBytes(theirs.newState))
  expect(ours.newState.groupActiveState).toEqual(theirs.newState.groupActiveState)
  expect(ours.consumed.map(hex)).toEqual(theirs.consumed.map(hex))
  // Given the commit as the engine's checks already decrypted it: the same again.
  const pm = privateMessageOf(commit)
  const decrypted = await unprotectPrivateMessage(
    receiver.keySchedule.senderDataSecret, pm, receiver.secretTree, receiver.ratchetTree, receiver.groupContext,
    receiver.clientConfig.keyRetentionConfig, cs
  )
  const reused = await processMemberCommit(receiver, pm, cs, decrypted)
  expect(leafStateBytes(reused!.newState)).toBe(leafStateBytes(ours.newState))
  return ours.newState
}

/** A group of a creator and `size` members who all joined from the welcome. */
const groupOf = async (size: number) => {
  const creator = await newPackage("creator")
  const packages = await Promise.all(Array.from({ length: size }, (_, i) => newPackage(`member-${i}`)))
  const founded = await createGroup(utf8(`group of ${size}`), creator.publicPackage, creator.privatePackage, [], cs)
  const added = await createCommit({ state: founded, cipherSuite: cs }, { extraProposals: packages.map(addOf), ratchetTreeExtension: true })
  const members = await Promise.all(packages.map((p) => joinGroup(added.welcome!, p.publicPackage, p.privatePackage, emptyPskIndex, cs)))
  return [added.newState, ...members]
}

/** `states[committer]` commits `proposals`; everyone else processes it both ways; the group moves on with the results. */
const commitAndCompare = async (states: Array<ClientState>, committer: number, proposals: ReadonlyArray<Proposal>) => {
  const created = await createCommit({ state: states[committer]!, cipherSuite: cs }, { extraProposals: [...proposals], ratchetTreeExtension: true })
  const next: Array<ClientState> = []
  for (const [i, state] of states.entries()) {
    if (i === committer) {
      next.push(created.newState)
      continue
    }
    const processed = await compareProcessing(state, created.commit)
    expect(processed).toBeDefined()
    if (processed !== undefined && processed.groupActiveState.kind !== "removedFromGroup") next.push(processed)
  }
  return next
}

describe("processMemberCommit", () => {
  it("applies every kind of commit exactly as ts-mls does, for every member of the group", async () => {
    let states = await groupOf(6)
    // (Never a removal and an add in one commit: ts-mls 1.6.4's receivers cannot read that UpdatePath, and the engine never sends one.)
    states = await commitAndCompare(states, 0, [{ proposalType: "remove", remove: { removed: 2 } }])
    states = await commitAndCompare(states, 0, [addOf(await newPackage("replacement"))])
    states = await commitAndCompare(states, 0, [addOf(await newPackage("newcomer"))])
    states = await commitAndCompare(states, 0, [addOf(await newPackage("two")), addOf(await newPackage("three"))])
    states = await commitAndCompare(states, 0, [])
    // The member at index 2 removes leaf 4, whose holder processes its own removal.
    states = await commitAndCompare(states, 2, [{ proposalType: "remove", remove: { removed: 4 } }])
    states = await commitAndCompare(states, 1, [{
      proposalType: "group_context_extensions",
      groupContextExtensions: { extensions: withMetadata(states[1]!.groupContext.extensions, utf8("renamed")) }
    }])
    // The creator and six members, two of them removed (the newcomers were never handed their welcomes).
    expect(states.length).toBe(5)
  })

  it("processes a run of commits in a 24-member group as ts-mls does, each member's tree hash reusing the one before", async () => {
    let states = await groupOf(24)
    for (let round = 0; round < 3; round++) {
      states = await commitAndCompare(states, round, [addOf(await newPackage(`late-${round}`))])
      states = await commitAndCompare(states, round + 1, [])
    }
  })

  it("refuses as ts-mls refuses: a wrong confirmation tag, a damaged ciphertext", async () => {
    const [creator, member] = await groupOf(3)
    // A commit made from keys the group never agreed on: its confirmation tag cannot verify.
    const forged = await createCommit({
      state: { ...creator!, keySchedule: { ...creator!.keySchedule, initSecret: new Uint8Array(32).fill(9) } },
      cipherSuite: cs
    }, { extraProposals: [] })
    expect(await compareProcessing(member!, forged.commit)).toBeUndefined()
    const honest = await createCommit({ state: creator!, cipherSuite: cs }, { extraProposals: [] })
    const pm = privateMessageOf(honest.commit)
    const ciphertext = pm.ciphertext.slice()
    ciphertext[10]! ^= 1
    expect(await compareProcessing(member!, { ...honest.commit, privateMessage: { ...pm, ciphertext } } as MLSMessage)).toBeUndefined()
  })

  it("leaves to ts-mls what is not a member's commit of the current epoch", async () => {
    const [creator, member] = await groupOf(2)
    const commit = await createCommit({ state: creator!, cipherSuite: cs }, { extraProposals: [] })
    const after = await processMemberCommit(member!, privateMessageOf(commit.commit), cs)
    expect(after).toBeDefined()
    // The same commit again, one epoch later: not this epoch's.
    expect(await processMemberCommit(after!.newState, privateMessageOf(commit.commit), cs)).toBeUndefined()
  })
})
