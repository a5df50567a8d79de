/**
 * `createMemberCommit` (src/layers/TsMlsCommitCreation.ts) must create exactly the commit,
 * welcome and state ts-mls 1.6.4's `createCommit` creates: members who receive it run ts-mls.
 * Both run on the same state with the same randomness (ts-mls's run records every random byte
 * and HPKE seal, ours replays them) and their outputs are compared byte for byte, over adds to
 * groups of many sizes, several adds at once, removals, self-updates, settings changes and
 * removal with an add, committed by the creator and by other members. The secret trees compare
 * at their leaves: ours leaves parents blank, as a stored state reads back.
 */
import { describe, expect, it } from "@effect/vitest"
import {
  type CiphersuiteImpl,
  type ClientState,
  type Proposal,
  createCommit,
  createGroup,
  emptyPskIndex,
  encodeMlsMessage,
  joinGroup,
  processMessage
} from "ts-mls"
import { createSecretTree } from "ts-mls/secretTree.js"
import { utf8 } from "../src/domain/Bytes.ts"
import { nodeCiphersuite as cs } from "../src/layers/NodeCiphersuite.ts"
import { createMemberCommit } from "../src/layers/TsMlsCommitCreation.ts"
import { leafSecretTree } from "../src/layers/TsMlsSecretTree.ts"
import { BLANK_SECRET_NODE } from "../src/layers/TsMlsStoredState.ts"
import { withMetadata } from "../src/layers/TsMlsExtensions.ts"
import { acceptAll, addOf, asGroupMessage, hex, leafStateBytes, newPackage } from "./support/TsMlsFixtures.ts"

/**
 * A suite that records the randomness ts-mls draws (random bytes, HPKE seals with their fresh
 * ephemeral keys), and one that hands the same back: ours must draw the same, in the same order.
 */
const recordAndReplay = (inner: CiphersuiteImpl) => {
  const randoms: Array<Uint8Array> = []
  const seals = new Map<string, { ct: Uint8Array; enc: Uint8Array }>()
  // Several newcomers may share a path secret: the recipient's key tells their seals apart.
  const sealKey = async (publicKey: Parameters<CiphersuiteImpl["hpke"]["seal"]>[0], plaintext: Uint8Array, info: Uint8Array) =>
    `${hex(await inner.hpke.exportPublicKey(publicKey))}/${hex(plaintext)}/${hex(info)}`
  const recording: CiphersuiteImpl = {
    ...inner,
    rng: {
      randomBytes: (n) => {
        const bytes = inner.rng.randomBytes(n)
        randoms.push(bytes.slice())
        return bytes
      }
    },
    hpke: {
      ...inner.hpke,
      seal: async (publicKey, plaintext, info, aad) => {
        const sealed = await inner.hpke.seal(publicKey, plaintext, info, aad)
        seals.set(await sealKey(publicKey, plaintext, info), sealed)
        return sealed
      }
    }
  }
  const replaying: CiphersuiteImpl = {
    ...inner,
    rng: {
      randomBytes: (n) => {
        const bytes = randoms.shift()
        if (bytes === undefined || bytes.length !== n) throw new Error(`drew ${n} random bytes ts-mls did not`)
        return bytes.slice()
      }
    },
    hpke: {
      ...inner.hpke,
      seal: async (publicKey, plaintext, info) => {
        const sealed = seals.get(await sealKey(publicKey, plaintext, info))
        if (sealed === undefined) throw new Error("sealed something ts-mls did not")
        return sealed
      }
    }
  }
  return { recording, replaying, unused: () => randoms.length }
}

/** ts-mls's commit and ours from the same state and randomness: equal bytes, or the same refusal. */
const compareCommits = async (state: ClientState, proposals: ReadonlyArray<Proposal>) => {
  const { recording, replaying, unused } = recordAndReplay(cs)
  const theirs = await createCommit({ state, cipherSuite: recording }, { extraProposals: [...proposals], ratchetTreeExtension: true })
  const ours = await createMemberCommit(state, replaying, proposals)
  expect(unused()).toBe(0)
  expect(hex(encodeMlsMessage(ours.commit))).toBe(hex(encodeMlsMessage(theirs.commit)))
  const welcomeOf = (welcome: typeof ours.welcome) =>
    welcome === undefined ? "none" : hex(encodeMlsMessage({ version: "mls10", wireformat: "mls_welcome", welcome }))
  expect(welcomeOf(ours.welcome)).toBe(welcomeOf(theirs.welcome))
  expect(leafStateBytes(ours.newState)).toBe(leafStateBytes(theirs.newState))
  expect(ours.consumed.map(hex)).toEqual(theirs.consumed.map(hex))
  return { theirs, ours }
}

/** A group of `size` members founded by "creator", one of them ("member-0") joined, the last one removed again. */
const groupOf = async (size: number) => {
  const creator = await newPackage("creator")
  const members = await Promise.all(Array.from({ length: size }, (_, i) => newPackage(`member-${i}`)))
  let founder = await createGroup(utf8(`group of ${size}`), creator.publicPackage, creator.privatePackage, [], cs)
  if (size === 0) return { founder, member: undefined }
  const added = await createCommit({ state: founder, cipherSuite: cs }, {
    extraProposals: members.map((m): Proposal => ({ proposalType: "add", add: { keyPackage: m.publicPackage } })),
    ratchetTreeExtension: true
  })
  founder = added.newState
  let member = await joinGroup(added.welcome!, members[0]!.publicPackage, members[0]!.privatePackage, emptyPskIndex, cs)
  if (size >= 3) {
    const removal = await createCommit({ state: founder, cipherSuite: cs }, {
      extraProposals: [{ proposalType: "remove", remove: { removed: size } }],
      ratchetTreeExtension: true
    })
    founder = removal.newState
    member = (await processMessage(asGroupMessage(removal.commit), member, emptyPskIndex, acceptAll, cs)).newState
  }
  return { founder, member }
}

describe("TsMlsSecretTree", () => {
  it("derives each leaf's ratchets as ts-mls's createSecretTree does, for every width up to 130", async () => {
    for (let width = 1; width <= 130; width++) {
      const secret = cs.rng.randomBytes(32)
      const theirs = await createSecretTree(width, secret.slice(), cs.kdf)
      const ours = await leafSecretTree(width, secret.slice(), cs.kdf)
      expect(ours.length).toBe(theirs.length)
      for (let index = 0; index < theirs.length; index += 2) {
        expect(hex(ours[index]!.application.secret)).toBe(hex(theirs[index]!.application.secret))
        expect(hex(ours[index]!.handshake.secret)).toBe(hex(theirs[index]!.handshake.secret))
      }
      for (let index = 1; index < theirs.length; index += 2) expect(ours[index]).toBe(BLANK_SECRET_NODE)
    }
  })

  it("leaves the caller's encryption secret as it was (the caller wipes it)", async () => {
    const secret = cs.rng.randomBytes(32)
    const before = hex(secret)
    await leafSecretTree(8, secret, cs.kdf)
    expect(hex(secret)).toBe(before)
  })
})

describe("createMemberCommit", () => {
  it("adds one member to groups of 1 to 33 members exactly as ts-mls does", async () => {
    for (const size of [0, 1, 2, 3, 5, 8, 17, 33]) {
      const { founder } = await groupOf(size)
      await compareCommits(founder, [addOf(await newPackage(`newcomer-${size}`))])
    }
  })

  it("adds three at once, removes, updates its own path, and changes the settings exactly as ts-mls does", async () => {
    const { founder, member } = await groupOf(9)
    const three = await Promise.all([1, 2, 3].map((i) => newPackage(`newcomer-${i}`)))
    await compareCommits(founder, three.map(addOf))
    await compareCommits(founder, [{ proposalType: "remove", remove: { removed: 4 } }])
    await compareCommits(founder, [])
    await compareCommits(founder, [{
      proposalType: "group_context_extensions",
      groupContextExtensions: { extensions: withMetadata(founder.groupContext.extensions, utf8("renamed")) }
    }])
    await compareCommits(founder, [{ proposalType: "remove", remove: { removed: 5 } }, addOf(await newPackage("replacement"))])
    // A member who joined from a welcome commits too.
    await compareCommits(member!, [addOf(await newPackage("invited-by-member"))])
    await compareCommits(member!, [])
  })

  it("stays exact over a run of its own commits, each starting from the state the last one made", async () => {
    // Each commit's tree hash reuses the hashes of the tree before it: a stale or wrong one would show here.
    let { founder: state } = await groupOf(12)
    const steps: Array<() => Promise<ReadonlyArray<Proposal>>> = [
      async () => [addOf(await newPackage("first"))],
      async () => [{ proposalType: "remove", remove: { removed: 3 } }],
      async () => [],
      async () => [addOf(await newPackage("second")), addOf(await newPackage("third"))],
      async () => [{ proposalType: "remove", remove: { removed: 7 } }, { proposalType: "remove", remove: { removed: 8 } }],
      async () => [addOf(await newPackage("fourth"))],
      async () => []
    ]
    for (const step of steps) state = (await compareCommits(state, await step())).ours.newState
  })

  it("creates a commit the other members process and a welcome the newcomer joins from, into the same epoch", async () => {
    const { founder, member } = await groupOf(5)
    const newcomer = await newPackage("newcomer")
    const ours = await createMemberCommit(founder, cs, [addOf(newcomer)])
    const processed = await processMessage(asGroupMessage(ours.commit), member!, emptyPskIndex, acceptAll, cs)
    const joined = await joinGroup(ours.welcome!, newcomer.publicPackage, newcomer.privatePackage, emptyPskIndex, cs)
    const epochAuthenticator = (state: ClientState) => hex(state.keySchedule.epochAuthenticator)
    expect(epochAuthenticator(processed.newState)).toBe(epochAuthenticator(ours.newState))
    expect(epochAuthenticator(joined)).toBe(epochAuthenticator(ours.newState))
  })

  it("refuses what ts-mls refuses: a removal of a leaf that is not in the group", async () => {
    const { founder } = await groupOf(3)
    const removal: Array<Proposal> = [{ proposalType: "remove", remove: { removed: 40 } }]
    const theirs = await createCommit({ state: founder, cipherSuite: cs }, { extraProposals: removal }).then(() => "created", (e) => String(e))
    const ours = await createMemberCommit(founder, cs, removal).then(() => "created", (e) => String(e))
    expect(theirs).not.toBe("created")
    expect(ours).toBe(theirs)
  })
})
