import { describe, expect, it, layer } from "@effect/vitest"
import { randomBytes } from "node:crypto"
import { Effect } from "effect"
import { fromUtf8, sha256Hex, toHex, utf8 } from "../src/domain/Bytes.ts"
import type { InboxId, InstallationId } from "../src/domain/Ids.ts"
import { installationIdOf } from "../src/domain/IdentityLog.ts"
import {
  type LeafIdentity,
  MlsCrypto,
  type MlsCryptoOptions,
  type MlsGroupState
} from "../src/services/MlsCrypto.ts"
import * as TsMlsCrypto from "../src/layers/TsMlsCrypto.ts"
import {
  type ClientState,
  createCommit,
  encodeMlsMessage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  type Proposal
} from "ts-mls"
import {
  type Crypto,
  exchange,
  expectReason,
  type Member,
  newInstallation,
  setUpGroup
} from "./support/MlsGroups.ts"

/** A commit by `committer` (self-update unless told), processed by the others. */
const commitAndDeliver = (
  crypto: Crypto,
  committer: Member,
  others: ReadonlyArray<Member>,
  changes: Parameters<Crypto["createCommit"]>[1] = {}
) =>
  Effect.gen(function*() {
    const { commit, staged } = yield* crypto.createCommit(committer.state, changes)
    committer.state = staged
    for (const member of others) {
      const processed = yield* crypto.process(member.state, commit)
      if (processed.kind !== "commit") throw new Error("expected a commit")
      expect(processed.committer.installationId).toBe(committer.identity.installationId)
      member.state = processed.state
    }
    return commit
  })

const expectSameEpoch = (crypto: Crypto, members: ReadonlyArray<Member>) => {
  const views = members.map((m) => crypto.view(m.state))
  for (const v of views) {
    expect(v.epoch).toBe(views[0]!.epoch)
    expect(v.epochAuthenticator).toBe(views[0]!.epochAuthenticator)
    expect(v.groupId).toBe(views[0]!.groupId)
  }
  return views[0]!
}

const withOptions = (options: MlsCryptoOptions) => Effect.provide(MlsCrypto, TsMlsCrypto.layer(options))

layer(TsMlsCrypto.layer())("MlsCrypto (ts-mls)", (it) => {
  describe("sealed welcomes", () => {
    it.effect("only the installation whose key package it was sealed to can open it", () =>
      Effect.gen(function*() {
        const crypto = yield* MlsCrypto
        const [bob, carol] = yield* Effect.all([newInstallation(crypto), newInstallation(crypto)])
        const secret = utf8("group id, cursor and DM peers")
        const sealed = yield* crypto.sealToKeyPackage(bob.keyPackage.publicPackage, secret)
        // Nothing of the plaintext shows.
        expect(toHex(sealed).includes(toHex(secret))).toBe(false)
        const opened = yield* crypto.openSealed(sealed, [carol.keyPackage, bob.keyPackage])
        expect(fromUtf8(opened.plaintext)).toBe(fromUtf8(secret))
        expect(opened.keyPackageRef).toBe(bob.keyPackage.ref)
        expectReason(yield* Effect.flip(crypto.openSealed(sealed, [carol.keyPackage])), "CannotDecrypt")
        const tampered = sealed.slice()
        tampered[tampered.length - 1] = tampered[tampered.length - 1]! ^ 1
        expect((yield* Effect.flip(crypto.openSealed(tampered, [bob.keyPackage])))._tag).toBe("CryptoError")
        expectReason(yield* Effect.flip(crypto.openSealed(sealed.slice(0, 20), [bob.keyPackage])), "Malformed")
      }))
  })

  describe("key packages", () => {
    it.effect("key packages name their installation and verify", () =>
      Effect.gen(function*() {
        const crypto = yield* MlsCrypto
        const keys = yield* crypto.generateSignatureKeyPair
        const inboxId = sha256Hex(utf8("inbox")) as InboxId
        const identity = { inboxId, installationId: installationIdOf(keys.publicKey) }
        const first = yield* crypto.generateKeyPackage(identity, keys)
        const second = yield* crypto.generateKeyPackage(identity, keys)
        const info = yield* crypto.keyPackageInfo(first.publicPackage)
        expect(info.inboxId).toBe(identity.inboxId)
        expect(info.installationId).toBe(identity.installationId)
        expect(info.ref).toBe(first.ref)
        expect(info.signaturePublicKey).toEqual(keys.publicKey)
        // Every key package of one installation shares its signature key.
        expect((yield* crypto.keyPackageInfo(second.publicPackage)).signaturePublicKey).toEqual(keys.publicKey)
        expect(second.ref).not.toBe(first.ref)

        const tampered = Uint8Array.from(first.publicPackage)
        tampered[tampered.length - 1]! ^= 1
        expectReason(yield* Effect.flip(crypto.keyPackageInfo(tampered)), "BadSignature")
        expectReason(yield* Effect.flip(crypto.keyPackageInfo(randomBytes(64))), "Malformed")

        const wrongId = { ...identity, installationId: sha256Hex(utf8("other")) as InstallationId }
        expectReason(yield* Effect.flip(crypto.generateKeyPackage(wrongId, keys)), "Unauthenticated")
      }))
  })

  describe("three-member story", () => {
    it.effect("add two in one commit, talk, remove one", () =>
      Effect.gen(function*() {
        const crypto = yield* MlsCrypto
        const [alice, bob, carol] = (yield* setUpGroup(crypto, 3)) as [Member, Member, Member]

        const view = expectSameEpoch(crypto, [alice, bob, carol])
        expect(view.epoch).toBe(1n)
        expect(view.members.map((m) => m.installationId).sort()).toEqual(
          [alice, bob, carol].map((m) => m.identity.installationId).sort()
        )
        expect(crypto.view(bob.state).active).toBe(true)
        expect(new Set([alice, bob, carol].map((m) => crypto.view(m.state).ownLeafIndex)).size).toBe(3)

        yield* exchange(crypto, "hi from alice", alice, [bob, carol])
        yield* exchange(crypto, "hi from bob", bob, [alice, carol])
        yield* exchange(crypto, "hi from carol", carol, [alice, bob])

        const carolBefore = carol.state
        const removal = yield* crypto.createCommit(alice.state, { remove: [carol.identity.installationId] })
        expect(removal.welcome).toBeUndefined()
        alice.state = removal.staged
        const bobSees = yield* crypto.process(bob.state, removal.commit)
        expect(bobSees.kind).toBe("commit")
        expect(bobSees.epoch).toBe(2n)
        bob.state = bobSees.state

        const header = yield* crypto.inspect(removal.commit)
        expect(header).toEqual({ kind: "commit", groupId: view.groupId, epoch: 1n })

        // Carol learns she was removed.
        const carolSees = yield* crypto.process(carol.state, removal.commit)
        expect(carolSees.kind).toBe("commit")
        carol.state = carolSees.state
        expect(crypto.view(carol.state).active).toBe(false)

        const after = expectSameEpoch(crypto, [alice, bob])
        expect(after.epoch).toBe(2n)
        expect(after.members.map((m) => m.installationId).sort()).toEqual(
          [alice, bob].map((m) => m.identity.installationId).sort()
        )
        const secret = yield* exchange(crypto, "carol is gone", alice, [bob])

        // Neither carol's removed state nor her pre-removal state can read the new epoch.
        expectReason(yield* Effect.flip(crypto.process(carol.state, secret)), "NotAMember")
        expectReason(yield* Effect.flip(crypto.process(carolBefore, secret)), "WrongEpoch")
        expectReason(yield* Effect.flip(crypto.encrypt(carol.state, utf8("still here?"))), "NotAMember")
        // Removing someone who is not there.
        expectReason(
          yield* Effect.flip(crypto.createCommit(alice.state, { remove: [carol.identity.installationId] })),
          "NotAMember"
        )
        // Nor can a member remove itself by commit.
        const selfRemoval = yield* Effect.flip(
          crypto.createCommit(alice.state, { remove: [alice.identity.installationId] })
        )
        expect(selfRemoval._tag).toBe("CryptoError")
      }))
  })

  describe("members by leaf", () => {
    it.effect("a newcomer who takes a removed member's leaf is listed there, by the committer, the others and a reload", () =>
      Effect.gen(function*() {
        const crypto = yield* MlsCrypto
        const [alice, bob, carol] = (yield* setUpGroup(crypto, 3)) as [Member, Member, Member]
        const carolsLeaf = crypto.view(carol.state).ownLeafIndex
        yield* commitAndDeliver(crypto, alice, [bob], { remove: [carol.identity.installationId] })
        const dave = yield* newInstallation(crypto)
        yield* commitAndDeliver(crypto, alice, [bob], { add: [dave.keyPackage.publicPackage] })
        const reloaded = yield* crypto.deserialize(crypto.serialize(alice.state))
        for (const state of [alice.state, bob.state, reloaded]) {
          const members = crypto.view(state).members
          expect(members.find((m) => m.leafIndex === carolsLeaf)?.installationId).toBe(dave.identity.installationId)
          expect(members.map((m) => m.installationId).sort()).toEqual(
            [alice, bob, dave].map((m) => m.identity.installationId).sort()
          )
          expect(members.find((m) => m.installationId === bob.identity.installationId)?.leafIndex).toBe(
            crypto.view(bob.state).ownLeafIndex
          )
        }
      }))
  })

  describe("competing commits", () => {
    it.effect("the first commit on the topic wins; the loser processes it from its pre-commit state", () =>
      Effect.gen(function*() {
        const crypto = yield* MlsCrypto
        const [alice, bob] = (yield* setUpGroup(crypto, 2)) as [Member, Member]
        const dave = yield* newInstallation(crypto)

        // Both commit at epoch 1: bob a key update, alice an add.
        const bobCommit = yield* crypto.createCommit(bob.state, {})
        const aliceCommit = yield* crypto.createCommit(alice.state, { add: [dave.keyPackage.publicPackage] })
        expect(aliceCommit.welcome).toBeDefined()

        // Bob's commit is sequenced first: bob adopts his staged state, alice discards hers.
        bob.state = bobCommit.staged
        const processed = yield* crypto.process(alice.state, bobCommit.commit)
        if (processed.kind !== "commit") throw new Error("expected a commit")
        expect(processed.committer.installationId).toBe(bob.identity.installationId)
        expect(processed.epoch).toBe(2n)
        alice.state = processed.state

        // Alice's losing commit is for an epoch bob has left.
        expectReason(yield* Effect.flip(crypto.process(bob.state, aliceCommit.commit)), "WrongEpoch")

        const view = expectSameEpoch(crypto, [alice, bob])
        expect(view.epoch).toBe(2n)
        yield* exchange(crypto, "after the race", alice, [bob])
        yield* exchange(crypto, "agreed", bob, [alice])

        // A message from alice's discarded staged state does not decrypt for bob.
        const orphan = yield* crypto.encrypt(aliceCommit.staged, utf8("from the losing branch"))
        const error = yield* Effect.flip(crypto.process(bob.state, orphan.message))
        expect(error._tag).toBe("CryptoError")
      }))
  })

  describe("persistence", () => {
    it.effect("a deserialized state keeps working and has the same view", () =>
      Effect.gen(function*() {
        const crypto = yield* MlsCrypto
        const [alice, bob] = (yield* setUpGroup(crypto, 2)) as [Member, Member]
        yield* exchange(crypto, "before", alice, [bob])

        const restoredAlice = yield* crypto.deserialize(crypto.serialize(alice.state))
        const restoredBob = yield* crypto.deserialize(crypto.serialize(bob.state))
        expect(crypto.view(restoredAlice)).toEqual(crypto.view(alice.state))
        expect(crypto.view(restoredBob)).toEqual(crypto.view(bob.state))
        alice.state = restoredAlice
        bob.state = restoredBob

        yield* exchange(crypto, "after restore", alice, [bob])
        yield* exchange(crypto, "reply", bob, [alice])
        yield* commitAndDeliver(crypto, bob, [alice])
        expect(expectSameEpoch(crypto, [alice, bob]).epoch).toBe(2n)

        expectReason(yield* Effect.flip(crypto.deserialize(randomBytes(200))), "Malformed")
        expectReason(yield* Effect.flip(crypto.deserialize(new Uint8Array())), "Malformed")
        const truncated = crypto.serialize(alice.state).slice(0, 100)
        expectReason(yield* Effect.flip(crypto.deserialize(truncated)), "Malformed")
      }))
  })

  describe("errors", () => {
    it.effect("inspect rejects garbage and reads headers", () =>
      Effect.gen(function*() {
        const crypto = yield* MlsCrypto
        expectReason(yield* Effect.flip(crypto.inspect(randomBytes(80))), "Malformed")
        expectReason(yield* Effect.flip(crypto.inspect(new Uint8Array())), "Malformed")

        const [alice, bob] = (yield* setUpGroup(crypto, 2)) as [Member, Member]
        const groupId = crypto.view(alice.state).groupId
        const sent = yield* crypto.encrypt(alice.state, utf8("x"))
        expect(yield* crypto.inspect(sent.message)).toEqual({ kind: "application", groupId, epoch: 1n })
        const carol = yield* newInstallation(crypto)
        const { welcome } = yield* crypto.createCommit(alice.state, { add: [carol.keyPackage.publicPackage] })
        expect((yield* crypto.inspect(welcome!)).kind).toBe("welcome")
        // Messages are garbage to process too.
        expectReason(yield* Effect.flip(crypto.process(bob.state, randomBytes(80))), "Malformed")
        expectReason(yield* Effect.flip(crypto.process(bob.state, welcome!)), "Malformed")
      }))

    it.effect("welcomes: wrong key package and garbage", () =>
      Effect.gen(function*() {
        const crypto = yield* MlsCrypto
        const [alice] = (yield* setUpGroup(crypto, 1)) as [Member]
        const bob = yield* newInstallation(crypto)
        const stranger = yield* newInstallation(crypto)
        const { welcome } = yield* crypto.createCommit(alice.state, { add: [bob.keyPackage.publicPackage] })
        expectReason(yield* Effect.flip(crypto.joinFromWelcome(welcome!, [stranger.keyPackage])), "CannotDecrypt")
        expectReason(yield* Effect.flip(crypto.joinFromWelcome(randomBytes(50), [bob.keyPackage])), "Malformed")
        // The right package among others is found.
        const state = yield* crypto.joinFromWelcome(welcome!, [stranger.keyPackage, bob.keyPackage])
        expect(crypto.view(state).epoch).toBe(1n)
        expectReason(
          yield* Effect.flip(crypto.createCommit(alice.state, { add: [randomBytes(40)] })),
          "Malformed"
        )
      }))

    it.effect("a message from a foreign group is refused", () =>
      Effect.gen(function*() {
        const crypto = yield* MlsCrypto
        const [alice] = (yield* setUpGroup(crypto, 2)) as [Member, Member]
        const [other] = (yield* setUpGroup(crypto, 2)) as [Member, Member]
        const foreign = yield* crypto.encrypt(other.state, utf8("wrong group"))
        const error = yield* Effect.flip(crypto.process(alice.state, foreign.message))
        expectReason(error, "CannotDecrypt")
      }))

    it.effect("a replayed application message fails the second time", () =>
      Effect.gen(function*() {
        const crypto = yield* MlsCrypto
        const [alice, bob] = (yield* setUpGroup(crypto, 2)) as [Member, Member]
        const message = yield* exchange(crypto, "once", alice, [bob])
        expectReason(yield* Effect.flip(crypto.process(bob.state, message)), "CannotDecrypt")
      }))

    it.effect("a message from a future epoch is WrongEpoch", () =>
      Effect.gen(function*() {
        const crypto = yield* MlsCrypto
        const [alice, bob] = (yield* setUpGroup(crypto, 2)) as [Member, Member]
        const bobBehind = bob.state
        yield* commitAndDeliver(crypto, alice, [bob])
        const sent = yield* crypto.encrypt(alice.state, utf8("epoch 2"))
        expectReason(yield* Effect.flip(crypto.process(bobBehind, sent.message)), "WrongEpoch")
      }))

    it.effect("past epochs: 2 old decrypts, 5 old is WrongEpoch (maxPastEpochs 3)", () =>
      Effect.gen(function*() {
        const crypto = yield* MlsCrypto
        const [alice, bob] = (yield* setUpGroup(crypto, 2)) as [Member, Member]
        const old = yield* crypto.encrypt(alice.state, utf8("from epoch 1"))
        alice.state = old.state
        for (let i = 0; i < 3; i++) yield* commitAndDeliver(crypto, alice, [bob])
        const recent = yield* crypto.encrypt(alice.state, utf8("from epoch 4"))
        alice.state = recent.state
        yield* commitAndDeliver(crypto, bob, [alice])
        yield* commitAndDeliver(crypto, alice, [bob])
        expect(crypto.view(bob.state).epoch).toBe(6n)

        const processed = yield* crypto.process(bob.state, recent.message)
        if (processed.kind !== "application") throw new Error("expected an application message")
        expect(fromUtf8(processed.plaintext)).toBe("from epoch 4")
        expect(processed.epoch).toBe(4n)
        expect(processed.sender.installationId).toBe(alice.identity.installationId)
        bob.state = processed.state

        expectReason(yield* Effect.flip(crypto.process(bob.state, old.message)), "WrongEpoch")
      }))
  })
})

describe("authenticate hook", () => {
  it.effect("a rejected installation cannot be added, joined with, or sneaked in", () =>
    Effect.gen(function*() {
      const lenient = yield* withOptions({})
      const banned = yield* newInstallation(lenient)
      const authenticate = (identity: LeafIdentity) =>
        Promise.resolve(identity.installationId !== banned.identity.installationId)
      const strict = yield* withOptions({ authenticate })

      // The strict adder refuses the key package outright. A rejected Add followed by another
      // Add used to leave an unhandled rejection inside ts-mls (vitest reports those).
      const [strictAlice] = (yield* setUpGroup(strict, 1)) as [Member]
      const fine = yield* newInstallation(strict)
      expectReason(
        yield* Effect.flip(strict.createCommit(strictAlice.state, {
          add: [banned.keyPackage.publicPackage, fine.keyPackage.publicPackage]
        })),
        "Unauthenticated"
      )

      // A lenient adder adds it; a strict joiner refuses the welcome, a strict member the commit.
      const [alice, bob] = (yield* setUpGroup(lenient, 2)) as [Member, Member]
      const strictBob = yield* strict.deserialize(lenient.serialize(bob.state))
      const carol = yield* newInstallation(lenient)
      const { commit, welcome } = yield* lenient.createCommit(alice.state, {
        add: [banned.keyPackage.publicPackage, carol.keyPackage.publicPackage]
      })
      expectReason(yield* Effect.flip(strict.joinFromWelcome(welcome!, [carol.keyPackage])), "Unauthenticated")
      expectReason(yield* Effect.flip(strict.process(strictBob, commit)), "Unauthenticated")
      // The lenient instance accepts both.
      expect((yield* lenient.process(bob.state, commit)).kind).toBe("commit")
      expect(lenient.view(yield* lenient.joinFromWelcome(welcome!, [carol.keyPackage])).members).toHaveLength(4)
    }))

  it.effect("a welcome's whole tree is announced to the prepare hook first; each leaf is still judged on its own", () =>
    Effect.gen(function*() {
      const lenient = yield* withOptions({})
      const banned = yield* newInstallation(lenient)
      const order: Array<string> = []
      const prepared: Array<ReadonlyArray<LeafIdentity>> = []
      const authenticate = (identity: LeafIdentity) => {
        order.push("authenticate")
        return Promise.resolve(identity.installationId !== banned.identity.installationId)
      }
      // A prepare hook that fails (a delivery service down) decides nothing either way.
      const prepare = (leaves: ReadonlyArray<LeafIdentity>) => {
        order.push("prepare")
        prepared.push(leaves)
        return Promise.reject(new Error("identity service unavailable"))
      }
      const strict = (yield* withOptions({})).authenticatedBy(authenticate, prepare)

      const [alice] = (yield* setUpGroup(lenient, 3)) as [Member, Member, Member]
      const carol = yield* newInstallation(lenient)
      const fine = yield* lenient.createCommit(alice.state, { add: [carol.keyPackage.publicPackage] })
      const joined = yield* strict.joinFromWelcome(fine.welcome!, [carol.keyPackage])
      expect(strict.view(joined).members).toHaveLength(4)
      // Once, before any single check, with every leaf of the tree (the joiner's own too).
      expect(order[0]).toBe("prepare")
      expect(order.filter((o) => o === "prepare")).toHaveLength(1)
      expect(prepared[0]!.map((l) => l.installationId).sort()).toEqual(
        strict.view(joined).members.map((m) => m.installationId).sort()
      )

      const dave = yield* newInstallation(lenient)
      const bad = yield* lenient.createCommit(fine.staged, {
        add: [banned.keyPackage.publicPackage, dave.keyPackage.publicPackage]
      })
      expectReason(yield* Effect.flip(strict.joinFromWelcome(bad.welcome!, [dave.keyPackage])), "Unauthenticated")
      expect(prepared[1]!.map((l) => l.installationId)).toContain(banned.identity.installationId)
    }))

  it.effect("the structural check runs without any hook", () =>
    Effect.gen(function*() {
      const crypto = yield* withOptions({})
      const keys = yield* crypto.generateSignatureKeyPair
      const other = yield* crypto.generateSignatureKeyPair
      // A credential naming another key's installation cannot even be made into a key package.
      const forged = { inboxId: sha256Hex(utf8("x")) as InboxId, installationId: installationIdOf(other.publicKey) }
      expectReason(yield* Effect.flip(crypto.generateKeyPackage(forged, keys)), "Unauthenticated")
    }))
})

/** Commits the port never makes, built with ts-mls itself from a member's state (as a hostile member could). */
const handBuiltCommit = (state: MlsGroupState, proposals: (client: ClientState) => Array<Proposal>) =>
  Effect.promise(async () => {
    const client = (state as unknown as { readonly client: ClientState }).client
    const cs = await getCiphersuiteImpl(getCiphersuiteFromName("MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"))
    const result = await createCommit({ state: client, cipherSuite: cs }, {
      extraProposals: proposals(client),
      ratchetTreeExtension: true
    })
    return encodeMlsMessage(result.commit)
  })

layer(TsMlsCrypto.layer())("group settings in the context (extension 0xf0c0)", (it) => {
  it.effect("a metadata commit reaches every member, who sees the settings before and after", () =>
    Effect.gen(function*() {
      const crypto = yield* MlsCrypto
      const [alice, bob, carol] = (yield* setUpGroup(crypto, 3)) as [Member, Member, Member]
      const { commit, staged } = yield* crypto.createCommit(alice.state, { metadata: utf8("{\"name\":\"new\"}") })
      alice.state = staged
      for (const member of [bob, carol]) {
        const processed = yield* crypto.process(member.state, commit)
        if (processed.kind !== "commit") throw new Error("expected a commit")
        expect(processed.metadataBefore).toBeUndefined()
        expect(fromUtf8(processed.metadataAfter!)).toBe("{\"name\":\"new\"}")
        member.state = processed.state
      }
      expectSameEpoch(crypto, [alice, bob, carol])
      expect(fromUtf8(crypto.view(carol.state).metadata!)).toBe("{\"name\":\"new\"}")
      // A later joiner reads it from the group context too.
      const dave = yield* newInstallation(crypto)
      const { welcome } = yield* crypto.createCommit(alice.state, { add: [dave.keyPackage.publicPackage] })
      const joined = yield* crypto.joinFromWelcome(welcome!, [dave.keyPackage])
      expect(fromUtf8(crypto.view(joined).metadata!)).toBe("{\"name\":\"new\"}")
    }))

  it.effect("the port never puts a metadata change beside a removal (ts-mls #742)", () =>
    Effect.gen(function*() {
      const crypto = yield* MlsCrypto
      const [alice, , carol] = (yield* setUpGroup(crypto, 3)) as [Member, Member, Member]
      const refused = yield* Effect.flip(
        crypto.createCommit(alice.state, { metadata: utf8("{}"), remove: [carol.identity.installationId] })
      )
      expectReason(refused, "Internal")
    }))

  it.effect("receivers refuse a context change beyond the metadata, or beside a Remove", () =>
    Effect.gen(function*() {
      const crypto = yield* MlsCrypto
      const [alice, bob, carol] = (yield* setUpGroup(crypto, 3)) as [Member, Member, Member]
      const settings = { extensionType: 0xf0c0, extensionData: utf8("{}") }
      // 0xf0c1 is in every leaf's capabilities, so ts-mls alone would take it into the context.
      const extra = handBuiltCommit(alice.state, (client) => [{
        proposalType: "group_context_extensions",
        groupContextExtensions: {
          extensions: [...client.groupContext.extensions, settings, { extensionType: 0xf0c1, extensionData: new Uint8Array(4) }]
        }
      }])
      const problem = yield* Effect.flip(crypto.process(bob.state, yield* extra))
      expectReason(problem, "Malformed")
      expect(problem.detail).toContain("more than the metadata")
      const carolLeaf = crypto.view(carol.state).ownLeafIndex
      const withRemove = handBuiltCommit(alice.state, () => [
        { proposalType: "remove", remove: { removed: carolLeaf } },
        { proposalType: "group_context_extensions", groupContextExtensions: { extensions: [settings] } }
      ])
      const refused = yield* Effect.flip(crypto.process(bob.state, yield* withRemove))
      expectReason(refused, "Malformed")
      expect(refused.detail).toContain("#742")
    }))
})
