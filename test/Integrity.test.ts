/**
 * No member and no server can lie (issue 12). Each test is one attack, built outside the API: a
 * malicious member crafts commits and welcomes with ts-mls from its own stored state, a lying
 * delivery service wraps the honest one. Each shows the attack refused, the honest members still
 * converging, and every process still running (vitest fails the run on an unhandled rejection).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Option } from "effect"
import {
  type ClientState,
  type KeyPackage,
  type MLSMessage,
  type Proposal,
  createApplicationMessage,
  createCommit,
  createGroup,
  decodeGroupState,
  defaultCapabilities,
  encodeMlsMessage,
  generateKeyPackageWithKey,
  getCiphersuiteFromName,
  getCiphersuiteImpl
} from "ts-mls"
import { defaultClientConfig } from "ts-mls/clientConfig.js"
import { decodeKeyPackage, encodeKeyPackage, makeKeyPackageRef, signKeyPackage } from "ts-mls/keyPackage.js"
import { signLeafNodeKeyPackage } from "ts-mls/leafNode.js"
import { encodeRequiredCapabilities } from "ts-mls/requiredCapabilities.js"
import { decryptGroupSecrets, encryptGroupSecrets, type Welcome } from "ts-mls/welcome.js"
import { fromHex, toHex, utf8 } from "../src/domain/Bytes.ts"
import * as IdentityLog from "../src/domain/IdentityLog.ts"
import type { ConversationId, GroupId, InstallationId } from "../src/domain/Ids.ts"
import { GroupMessageInput, WelcomeMessageInput, WelcomePayload, WelcomePayloadJson } from "../src/domain/Wire.ts"
import { Schema } from "effect"
import type { Conversation } from "../src/services/Client.ts"
import { type TestClient, TestNetwork } from "../src/testing.ts"

type Network = Effect.Effect.Success<typeof TestNetwork.make>

const suite = getCiphersuiteImpl(getCiphersuiteFromName("MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"))
const cipherSuite = Effect.promise(() => suite)
/** Converge's metadata extension type: every Converge key package lists it. */
const METADATA_EXTENSION = 0xf0c0

// ---- the attacker's tools ---------------------------------------------------------------------

const groupIdOf = (c: Conversation) => c.debugInfo.pipe(Effect.map((d) => d.groupIds[0]!))

/** A member's MLS state for a group, straight from its database (what a malicious client holds). */
const stateOf = (net: Network, client: TestClient, groupId: GroupId) =>
  Effect.gen(function*() {
    const row = yield* (yield* net.storage(client)).groups.get(groupId)
    const decoded = decodeGroupState(Option.getOrThrow(row).mls_state, 0)![0]
    return { ...decoded, clientConfig: defaultClientConfig } as ClientState
  })

/** Posts raw MLS bytes to a group topic, as any member's connection can; returns the sequence id. */
const post = (net: Network, groupId: GroupId, message: MLSMessage) =>
  net.delivery.sendGroupMessages([GroupMessageInput.make({ groupId, payload: encodeMlsMessage(message) })]).pipe(
    Effect.map((envelopes) => envelopes[0]!.sequenceId)
  )

const commitWith = (state: ClientState, proposals: Array<Proposal>, cs?: Awaited<typeof suite>) =>
  Effect.gen(function*() {
    const cipher = cs ?? (yield* cipherSuite)
    return yield* Effect.promise(() =>
      createCommit({ state, cipherSuite: cipher }, { extraProposals: proposals, ratchetTreeExtension: true })
    )
  })

/** A text in Converge's content format, encrypted from a state the attacker holds. */
const textFrom = (state: ClientState, text: string) =>
  Effect.gen(function*() {
    const content = JSON.stringify({ _tag: "Text", nonce: toHex(crypto.getRandomValues(new Uint8Array(16))), text })
    const { privateMessage } = yield* Effect.promise(async () => createApplicationMessage(state, utf8(content), await suite))
    return { version: "mls10", wireformat: "mls_private_message", privateMessage } as MLSMessage
  })

/** The published key package of an installation, decoded. */
const keyPackageOf = (net: Network, installationId: InstallationId) =>
  net.delivery.fetchKeyPackages([installationId]).pipe(
    Effect.map((fetched) => decodeKeyPackage(fetched[0]!.keyPackage!, 0)![0])
  )

const signingKeyOf = (net: Network, client: TestClient) =>
  Effect.flatMap(net.storage(client), (s) => s.identity.get).pipe(
    Effect.map((row) => ({ signKey: Option.getOrThrow(row).signature_private_key, publicKey: Option.getOrThrow(row).signature_public_key }))
  )

/** A key package re-signed by its owner's key after `change` edits its leaf (a malicious owner's). */
const resign = (kp: KeyPackage, signKey: Uint8Array, change: (leaf: KeyPackage["leafNode"]) => Partial<KeyPackage["leafNode"]>) =>
  Effect.gen(function*() {
    const cs = yield* cipherSuite
    const { signature: _leafSignature, ...leafTbs } = kp.leafNode
    const leafNode = yield* Effect.promise(() =>
      signLeafNodeKeyPackage({ ...leafTbs, ...change(kp.leafNode) } as never, signKey, cs.signature)
    )
    const { signature: _signature, ...tbs } = kp
    return yield* Effect.promise(() => signKeyPackage({ ...tbs, leafNode }, signKey, cs.signature))
  })

const add = (keyPackage: KeyPackage): Proposal => ({ proposalType: "add", add: { keyPackage } })

// ---- what the honest members must still see ---------------------------------------------------

const open = (client: TestClient, id: ConversationId) => client.conversation(id)
const memberInboxes = (c: Conversation) => c.members.pipe(Effect.map((ms) => ms.map((m) => m.inboxId).sort()))

/** The honest members agree on the epoch and members, and a new message reaches all of them. */
const stillConverging = (id: ConversationId, honest: ReadonlyArray<TestClient>, text: string) =>
  Effect.gen(function*() {
    const [first, ...others] = honest
    yield* (yield* open(first!, id)).send(text)
    for (const client of honest) yield* client.syncAll
    const infos = yield* Effect.forEach(honest, (c) => Effect.flatMap(open(c, id), (conv) => conv.debugInfo))
    expect(new Set(infos.map((i) => i.epochAuthenticator)).size).toBe(1)
    const members = yield* Effect.forEach(honest, (c) => Effect.flatMap(open(c, id), memberInboxes))
    for (const m of members) expect(m).toEqual(members[0])
    for (const client of others) {
      const texts = (yield* (yield* open(client, id)).messages()).filter((m) => m.kind === "text").map((m) => m.text)
      expect(texts).toContain(text)
    }
  })

/** No stored message of any honest member is attributed to `inboxId`. */
const nothingFrom = (id: ConversationId, honest: ReadonlyArray<TestClient>, inboxId: string) =>
  Effect.gen(function*() {
    for (const client of honest) {
      const messages = yield* (yield* open(client, id)).messages()
      expect(messages.filter((m) => m.senderInboxId === inboxId)).toEqual([])
    }
  })

/** Alice, Bob and Mallory in one group, everyone synced. */
const threeMembers = (net: Network, name?: string) =>
  Effect.gen(function*() {
    const [alice, bob, mallory] = yield* Effect.all(["alice", "bob", "mallory"].map((n) => net.client(n)))
    const group = yield* alice!.createGroup([bob!.inboxId, mallory!.inboxId], name === undefined ? {} : { name })
    yield* Effect.all([bob!.syncAll, mallory!.syncAll])
    return { alice: alice!, bob: bob!, mallory: mallory!, group, groupId: yield* groupIdOf(group) }
  })

describe("A malicious member", () => {
  it.scoped("1. cannot post as another inbox by renaming its leaf in an UpdatePath", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const { alice, bob, mallory, group, groupId } = yield* threeMembers(net)
      const victim = yield* net.client("victim")
      // Mallory's leaf keeps her key and installation but names the victim's inbox; then she writes.
      const state = yield* stateOf(net, mallory, groupId)
      const own = state.privatePath.leafIndex * 2
      const leaf = state.ratchetTree[own]!
      if (leaf.nodeType !== "leaf") throw new Error("expected Mallory's leaf")
      const forgedIdentity = utf8(`${victim.inboxId}:${mallory.installationId}`)
      const forgedTree = state.ratchetTree.slice()
      forgedTree[own] = { nodeType: "leaf", leaf: { ...leaf.leaf, credential: { credentialType: "basic", identity: forgedIdentity } } }
      const forged = yield* commitWith({ ...state, ratchetTree: forgedTree }, [])
      yield* post(net, groupId, forged.commit)
      yield* post(net, groupId, yield* textFrom(forged.newState, "I am the victim"))

      yield* Effect.all([alice.syncAll, bob.syncAll, mallory.syncAll])
      yield* nothingFrom(group.id, [alice, bob], victim.inboxId)
      expect(yield* memberInboxes(group)).toEqual([alice.inboxId, bob.inboxId, mallory.inboxId].sort())
      yield* stillConverging(group.id, [alice, bob, mallory], "after the forged commit")
    }))

  it.scoped("3. cannot end anyone's process: required_capabilities by GCE, then a commit with failing Adds", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const { alice, bob, mallory, group, groupId } = yield* threeMembers(net)
      const state = yield* stateOf(net, mallory, groupId)
      // What every member supports (ts-mls checks that much), so only later Adds could fail it.
      const required = encodeRequiredCapabilities({ extensionTypes: [METADATA_EXTENSION], proposalTypes: [], credentialTypes: [] })
      const gce = yield* commitWith(state, [{
        proposalType: "group_context_extensions",
        groupContextExtensions: { extensions: [...state.groupContext.extensions, { extensionType: "required_capabilities", extensionData: required }] }
      }])
      yield* post(net, groupId, gce.commit)
      // Two Adds whose credentials no member accepts, at the current epoch: ts-mls 1.6.4 rejects
      // them in its async reduce, one rejection unobserved, which ended the process before.
      const cs = yield* cipherSuite
      const strangers = yield* Effect.forEach([1, 2], (n) =>
        Effect.promise(async () => {
          const keys = await cs.signature.keygen()
          const identity = utf8(`stranger-${n}`)
          const capabilities = { ...defaultCapabilities(), extensions: [...defaultCapabilities().extensions, METADATA_EXTENSION] }
          const now = BigInt(Math.floor(Date.now() / 1000))
          return generateKeyPackageWithKey({ credentialType: "basic", identity }, capabilities, { notBefore: now - 60n, notAfter: now + 3600n }, [], keys, cs)
        }))
      const adds = yield* commitWith(state, strangers.map((s) => add(s.publicPackage)))
      yield* post(net, groupId, adds.commit)

      yield* Effect.all([alice.syncAll, bob.syncAll])
      // Again after a restart: the cursor moved past both, nothing replays into a crash.
      yield* net.restart(alice)
      yield* alice.syncAll
      const atAlice = yield* open(alice, group.id)
      expect((yield* atAlice.debugInfo).epoch).toBe((yield* (yield* open(bob, group.id)).debugInfo).epoch)
      expect(yield* memberInboxes(atAlice)).toEqual([alice.inboxId, bob.inboxId, mallory.inboxId].sort())
      yield* stillConverging(group.id, [alice, bob, mallory], "still here")
    }))

  it.scoped("7. cannot rename the group by GroupContextExtensions nor suspend it by ReInit", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const { alice, bob, mallory, group, groupId } = yield* threeMembers(net, "book club")
      const state = yield* stateOf(net, mallory, groupId)
      const rename = yield* commitWith(state, [{
        proposalType: "group_context_extensions",
        groupContextExtensions: {
          extensions: [{ extensionType: METADATA_EXTENSION, extensionData: utf8(JSON.stringify({ name: "pwned", description: null })) }]
        }
      }])
      yield* post(net, groupId, rename.commit)
      const reinit = yield* commitWith(state, [{
        proposalType: "reinit",
        reinit: { groupId: state.groupContext.groupId, version: "mls10", cipherSuite: state.groupContext.cipherSuite, extensions: [] }
      }])
      yield* post(net, groupId, reinit.commit)

      yield* Effect.all([alice.syncAll, bob.syncAll, mallory.syncAll])
      const carol = yield* net.client("carol")
      yield* group.addMembers([carol.inboxId])
      yield* carol.syncAll
      expect((yield* (yield* open(carol, group.id)).metadata).name).toBe("book club")
      for (const client of [alice, bob]) expect(yield* (yield* open(client, group.id)).state).toBe("active")
      yield* stillConverging(group.id, [alice, bob, mallory, carol], "not suspended")
    }))
})

describe("A malicious delivery service", () => {
  it.scoped("2. cannot put its own device into a DM by answering with another key package", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [bob, mallory] = yield* Effect.all([net.client("bob"), net.client("mallory")])
      let lying = true
      const alice = yield* net.client("alice", {
        wrapDelivery: (honest) => ({
          ...honest,
          fetchKeyPackages: (ids) =>
            Effect.gen(function*() {
              const answer = yield* honest.fetchKeyPackages(ids)
              if (!lying) return answer
              const [malloryPackage] = yield* honest.fetchKeyPackages([mallory.installationId])
              return answer.map((f) => f.installationId === bob.installationId ? { ...f, keyPackage: malloryPackage!.keyPackage } : f)
            })
        })
      })
      const refused = yield* alice.findOrCreateDm(bob.inboxId).pipe(Effect.flip)
      expect(refused._tag).toBe("KeyPackageUnavailable")
      yield* mallory.syncAll
      expect(yield* mallory.conversations()).toEqual([])

      // The service lies only once the group exists: the publisher's own fetch is checked too.
      lying = false
      const group = yield* alice.createGroup([])
      lying = true
      const adding = yield* group.addMembers([bob.inboxId]).pipe(Effect.either)
      expect(Either.isLeft(adding)).toBe(true)
      yield* Effect.all([mallory.syncAll, bob.syncAll])
      expect(yield* mallory.conversations()).toEqual([])
      expect(yield* memberInboxes(group)).toEqual([alice.inboxId])

      lying = false
      const dm = yield* alice.findOrCreateDm(bob.inboxId)
      yield* dm.send("hi Bob")
      yield* bob.syncAll
      const atBob = yield* open(bob, dm.id)
      expect((yield* atBob.messages()).filter((m) => m.kind === "text").map((m) => m.text)).toEqual(["hi Bob"])
      expect(yield* memberInboxes(atBob)).toEqual([alice.inboxId, bob.inboxId].sort())
    }))
})
