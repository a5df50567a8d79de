/**
 * No member and no server can lie (issue 12). Each test is one attack, built outside the API: a
 * malicious member crafts commits and welcomes with ts-mls from its own stored state, a lying
 * delivery service wraps the honest one. Each shows the attack refused, the honest members still
 * converging, and every process still running (vitest fails the run on an unhandled rejection).
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Option, Schema, TestClock } from "effect"
import {
  type ClientState,
  type KeyPackage,
  type MLSMessage,
  type Proposal,
  createApplicationMessage,
  createCommit,
  createGroup,
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
import { decodeStoredState } from "../src/layers/TsMlsStoredState.ts"
import * as IdentityLog from "../src/domain/IdentityLog.ts"
import type { ConversationId, GroupId, InboxId, InstallationId } from "../src/domain/Ids.ts"
import { GroupMessageInput, WelcomeMessageInput, WelcomePayload, WelcomePayloadJson } from "../src/domain/Wire.ts"
import type { Conversation } from "../src/services/Client.ts"
import * as LeafAuthentication from "../src/services/LeafAuthentication.ts"
import type { GroupView, LeafMember } from "../src/services/MlsCrypto.ts"
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
    const decoded = decodeStoredState(Option.getOrThrow(row).mlsState, 0)![0]
    return { ...decoded, clientConfig: defaultClientConfig } as ClientState
  })

/** Posts raw MLS bytes to a group topic, as any installation with an account can; returns the sequence id. */
const post = (net: Network, groupId: GroupId, message: MLSMessage) =>
  net.intruder.pipe(
    Effect.flatMap((intruder) =>
      intruder.sendGroupMessages([GroupMessageInput.make({ groupId, payload: encodeMlsMessage(message) })])
    ),
    Effect.map((envelopes) => envelopes[0]!.sequenceId)
  )

/** Sends a welcome payload sealed to the key package it was made for, as anyone can. */
const sendWelcome = (net: Network, installationId: InstallationId, keyPackage: KeyPackage, payload: string) =>
  Effect.gen(function*() {
    const sealed = yield* net.crypto.sealToKeyPackage(encodeKeyPackage(keyPackage), utf8(payload))
    const intruder = yield* net.intruder
    yield* intruder.sendWelcomeMessages([WelcomeMessageInput.make({ installationId, payload: sealed })])
  })

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
    Effect.map((row) => ({ signKey: Option.getOrThrow(row).signaturePrivateKey, publicKey: Option.getOrThrow(row).signaturePublicKey }))
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

/**
 * The welcome re-encrypted to the joiner without its path secret. (The committer knows the group
 * secrets it encrypts; the test reads them back with the joiner's init key instead.)
 */
const withoutPathSecret = (net: Network, joiner: TestClient, keyPackage: KeyPackage, welcome: Welcome) =>
  Effect.gen(function*() {
    const cs = yield* cipherSuite
    const rows = yield* (yield* net.storage(joiner)).keyPackages.list
    const ref = yield* Effect.promise(() => makeKeyPackageRef(keyPackage, cs.hash))
    const row = rows.find((r) => r.ref === toHex(ref))!
    // Converge's private package: a format byte, then length-prefixed keys, the init key first.
    const length = new DataView(row.privatePackage.buffer, row.privatePackage.byteOffset).getUint32(1)
    const initPrivate = yield* Effect.promise(() => cs.hpke.importPrivateKey(row.privatePackage.slice(5, 5 + length)))
    const secrets = yield* Effect.promise(() => decryptGroupSecrets(initPrivate, ref, welcome, cs.hpke))
    expect(secrets?.pathSecret).toBeDefined()
    const sealed = yield* Effect.promise(async () =>
      encryptGroupSecrets(await cs.hpke.importPublicKey(keyPackage.initKey), welcome.encryptedGroupInfo, {
        ...secrets!,
        pathSecret: undefined
      }, cs.hpke)
    )
    return {
      ...welcome,
      secrets: [{ newMember: ref, encryptedGroupSecrets: { kemOutput: sealed.enc, ciphertext: sealed.ct } }]
    } satisfies Welcome
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

      // Nor by switching her leaf to another key and inbox: the new leaf is signed with the new key
      // (the first signature ts-mls makes), the commit with her own.
      const cs = yield* cipherSuite
      const other = yield* Effect.promise(() => cs.signature.keygen())
      const switched = state.ratchetTree.slice()
      switched[own] = {
        nodeType: "leaf",
        leaf: {
          ...leaf.leaf,
          signaturePublicKey: other.publicKey,
          credential: { credentialType: "basic", identity: utf8(`${victim.inboxId}:${IdentityLog.installationIdOf(other.publicKey)}`) }
        }
      }
      let signatures = 0
      const signature = Object.create(cs.signature) as typeof cs.signature
      signature.sign = (key, message) => cs.signature.sign(++signatures === 1 ? other.signKey : key, message)
      const rekeyed = yield* commitWith({ ...state, ratchetTree: switched }, [], { ...cs, signature })
      yield* post(net, groupId, rekeyed.commit)
      yield* Effect.all([alice.syncAll, bob.syncAll, mallory.syncAll])
      expect(yield* memberInboxes(group)).toEqual([alice.inboxId, bob.inboxId, mallory.inboxId].sort())
      yield* stillConverging(group.id, [alice, bob, mallory], "after the forged commits")
    }))

  it.scoped("3. cannot end anyone's process: required_capabilities by GCE, then a commit with failing Adds", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const { alice, bob, mallory, group, groupId } = yield* threeMembers(net)
      const state = yield* stateOf(net, mallory, groupId)
      // x509 credentials: every member's capabilities list them (ts-mls checks that much).
      const required = encodeRequiredCapabilities({ extensionTypes: [], proposalTypes: [], credentialTypes: ["x509"] })
      const gce = yield* commitWith(state, [{
        proposalType: "group_context_extensions",
        groupContextExtensions: { extensions: [...state.groupContext.extensions, { extensionType: "required_capabilities", extensionData: required }] }
      }])
      yield* post(net, groupId, gce.commit)
      // Then two Adds that fail it. Mallory's own ts-mls would fail them too: in her copy of the
      // state the extension is typed by number (3, the same bytes on the wire), which it skips.
      const cs = yield* cipherSuite
      const strangers = yield* Effect.forEach([1, 2], () =>
        Effect.promise(async () => {
          const keys = await cs.signature.keygen()
          const identity = utf8(`${mallory.inboxId}:${IdentityLog.installationIdOf(keys.publicKey)}`)
          const capabilities = {
            ...defaultCapabilities(),
            credentials: ["basic" as const],
            extensions: [...defaultCapabilities().extensions, METADATA_EXTENSION, 3]
          }
          const now = BigInt(Math.floor(Date.now() / 1000))
          return generateKeyPackageWithKey({ credentialType: "basic", identity }, capabilities, { notBefore: now - 60n, notAfter: now + 3600n }, [], keys, cs)
        }))
      const after = gce.newState
      const blind = {
        ...after,
        groupContext: {
          ...after.groupContext,
          extensions: after.groupContext.extensions.map((e) => e.extensionType === "required_capabilities" ? { ...e, extensionType: 3 } : e)
        }
      }
      yield* post(net, groupId, (yield* commitWith(blind, strangers.map((s) => add(s.publicPackage)))).commit)
      // And the same Adds at the current epoch, where only Converge's identity check stops them.
      yield* post(net, groupId, (yield* commitWith(state, strangers.map((s) => add(s.publicPackage)))).commit)

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

  it.scoped("4. cannot put a key on the tree that its path secret does not derive (RFC 9420 §7.5)", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const { alice, bob, mallory, group, groupId } = yield* threeMembers(net)
      const state = yield* stateOf(net, mallory, groupId)
      // A ciphersuite whose second key derivation (the first parent node of the UpdatePath) gives a
      // random key: the path secrets are sent as usual, the tree gets a key nobody can open.
      const cs = yield* cipherSuite
      let derivations = 0
      const hpke = Object.create(cs.hpke) as typeof cs.hpke
      hpke.deriveKeyPair = (ikm) => ++derivations === 2 ? cs.hpke.generateKeyPair() : cs.hpke.deriveKeyPair(ikm)
      const epoch = (yield* group.debugInfo).epoch
      const swapped = yield* commitWith(state, [], { ...cs, hpke })
      yield* post(net, groupId, swapped.commit)

      yield* Effect.all([alice.syncAll, bob.syncAll, mallory.syncAll])
      expect((yield* group.debugInfo).epoch).toBe(epoch)
      yield* stillConverging(group.id, [alice, bob, mallory], "the tree is sound")
      // A commit by someone else afterwards still reaches everyone.
      yield* (yield* open(bob, group.id)).updateKeys
      yield* stillConverging(group.id, [alice, bob, mallory], "after a key update")
    }))

  it.scoped("5. cannot add a leaf that copies a member's encryption key", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const { alice, bob, mallory, group, groupId } = yield* threeMembers(net)
      // Mallory's second device, registered after the group's installation checks ran.
      const mallory2 = yield* net.client("mallory2", { sameInboxAs: mallory })
      const state = yield* stateOf(net, mallory, groupId)
      const aliceLeaf = state.ratchetTree[0]!
      if (aliceLeaf.nodeType !== "leaf") throw new Error("expected Alice's leaf")
      const { signKey } = yield* signingKeyOf(net, mallory2)
      const copying = yield* resign(yield* keyPackageOf(net, mallory2.installationId), signKey, () => ({
        hpkePublicKey: aliceLeaf.leaf.hpkePublicKey
      }))
      const epoch = (yield* group.debugInfo).epoch
      yield* post(net, groupId, (yield* commitWith(state, [add(copying)])).commit)

      yield* Effect.all([alice.syncAll, bob.syncAll])
      // The forged add is skipped; the device joins only by the members' own add (immediate
      // join: their syncAll adds it at once), with the key it really holds.
      const after = yield* stateOf(net, alice, groupId)
      const keys = after.ratchetTree.flatMap((node) => (node?.nodeType === "leaf" ? [toHex(node.leaf.hpkePublicKey)] : []))
      expect(new Set(keys).size).toBe(keys.length)
      expect((yield* group.debugInfo).epoch <= epoch + 1n).toBe(true)
      // The group can still add members.
      const carol = yield* net.client("carol")
      yield* group.addMembers([carol.inboxId])
      yield* Effect.all([carol.syncAll, mallory.syncAll, mallory2.syncAll])
      yield* stillConverging(group.id, [alice, bob, carol], "carol is in")
    }))

  // Whether a revocation came before or after a commit depends on when each member reads the log,
  // so refusing the commit would split the group: the first member to read it removes the device.
  it.scoped("6. cannot keep a revoked device in the group: the first member to see it removes it", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const { alice, bob, mallory, group, groupId } = yield* threeMembers(net)
      const alice2 = yield* net.client("alice2", { sameInboxAs: alice })
      // Mallory keeps the device's key package, then Alice revokes the device (it was stolen).
      const stolen = yield* keyPackageOf(net, alice2.installationId)
      const log = yield* net.delivery.getIdentityUpdates([{ inboxId: alice.inboxId, afterSequence: 0 }])
      const head = Option.getOrThrow(Either.getOrThrow(IdentityLog.replay(log[0]!.updates.map((e) => e.update))))
      yield* net.delivery.publishIdentityUpdate(
        IdentityLog.signUpdate(alice.rootSecretKey!, alice.inboxId, head, {
          _tag: "RevokeInstallation",
          installationId: alice2.installationId
        })
      )
      const state = yield* stateOf(net, mallory, groupId)
      const stolenAdd = yield* commitWith(state, [add(stolen)])
      yield* post(net, groupId, stolenAdd.commit)
      const welcome = Schema.encodeSync(WelcomePayloadJson)(WelcomePayload.make({
        groupId,
        commitSequenceId: 1n as never,
        welcome: encodeMlsMessage({ version: "mls10", wireformat: "mls_welcome", welcome: stolenAdd.welcome! })
      }))
      yield* sendWelcome(net, alice2.installationId, stolen, welcome)

      // Bob's sync reads the commit and commits the removal in the same round.
      yield* bob.syncAll
      yield* Effect.all([alice.syncAll, mallory.syncAll, alice2.syncAll])
      for (const client of [alice, bob]) {
        const members = yield* (yield* open(client, group.id)).members
        expect(members.flatMap((m) => m.installationIds)).not.toContain(alice2.installationId)
      }
      yield* stillConverging(group.id, [alice, bob, mallory], "without the stolen device")
      // The stolen device reads nothing sent after its removal.
      const atThief = yield* alice2.conversations({ includeInactive: true })
      for (const conversation of atThief) {
        const texts = (yield* conversation.messages()).map((m) => m.text)
        expect(texts).not.toContain("without the stolen device")
      }
    }))

  it.scoped("8. cannot take over a removed member's conversation with an unrelated group of the same id", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, mallory] = yield* Effect.all(["alice", "bob", "mallory"].map((n) => net.client(n)))
      const group = yield* alice!.createGroup([bob!.inboxId], { name: "old friends" })
      const groupId = yield* groupIdOf(group)
      yield* bob!.syncAll
      yield* group.removeMembers([bob!.inboxId])
      yield* bob!.syncAll
      const atBob = yield* open(bob!, group.id)
      expect(yield* atBob.state).toBe("inactive")

      // Mallory, never in the group, makes one with its id and metadata, past Bob's epoch, with Bob in it.
      const cs = yield* cipherSuite
      const keys = yield* signingKeyOf(net, mallory!)
      const own = yield* Effect.promise(() =>
        generateKeyPackageWithKey(
          { credentialType: "basic", identity: utf8(`${mallory!.inboxId}:${mallory!.installationId}`) },
          { ...defaultCapabilities(), extensions: [...defaultCapabilities().extensions, METADATA_EXTENSION] },
          { notBefore: 0n, notAfter: 2n ** 40n },
          [],
          keys,
          cs
        )
      )
      const metadata = utf8(JSON.stringify({ name: "old friends", description: null }))
      let state = yield* Effect.promise(() =>
        createGroup(fromHex(groupId), own.publicPackage, own.privatePackage, [{ extensionType: METADATA_EXTENSION, extensionData: metadata }], cs)
      )
      for (let i = 0; i < 4; i++) state = (yield* commitWith(state, [])).newState
      const adding = yield* commitWith(state, [add(yield* keyPackageOf(net, bob!.installationId))])
      const payload = Schema.encodeSync(WelcomePayloadJson)(WelcomePayload.make({
        groupId,
        commitSequenceId: 1n as never,
        welcome: encodeMlsMessage({ version: "mls10", wireformat: "mls_welcome", welcome: adding.welcome! })
      }))
      yield* sendWelcome(net, bob!.installationId, yield* keyPackageOf(net, bob!.installationId), payload)

      yield* bob!.syncAll
      expect(yield* atBob.state).toBe("inactive")
      // Taken back by a member of the group's own history, Bob is active again.
      yield* group.addMembers([bob!.inboxId])
      yield* bob!.syncAll
      expect(yield* atBob.state).toBe("active")
      yield* stillConverging(group.id, [alice!, bob!], "welcome back")
    }))

  it.scoped("9. cannot leave a joiner without the keys of its ancestors (welcome without path secret)", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const { alice, bob, mallory, group, groupId } = yield* threeMembers(net)
      const mallory2 = yield* net.client("mallory2", { sameInboxAs: mallory })
      // Mallory's second device joins first, through Mallory's next installation check.
      yield* TestClock.adjust("10 seconds")
      yield* (yield* open(mallory, group.id)).sync
      yield* Effect.all([alice.syncAll, bob.syncAll, mallory2.syncAll])
      const carol = yield* net.client("carol")

      // A commit removing Mallory's other device and adding Carol carries an UpdatePath: Carol
      // needs its path secret. Mallory's welcome leaves it out.
      const state = yield* stateOf(net, mallory, groupId)
      const device2 = (yield* group.members).flatMap((m) => m.installationIds).includes(mallory2.installationId)
      expect(device2).toBe(true)
      const leaf2 = state.ratchetTree.findIndex((n) =>
        n?.nodeType === "leaf" && new TextDecoder().decode(n.leaf.credential.credentialType === "basic" ? n.leaf.credential.identity : new Uint8Array()).endsWith(mallory2.installationId)
      ) / 2
      const carolPackage = yield* keyPackageOf(net, carol.installationId)
      const committed = yield* commitWith(state, [{ proposalType: "remove", remove: { removed: leaf2 } }, add(carolPackage)])
      const sequenceId = yield* post(net, groupId, committed.commit)
      const welcome = yield* withoutPathSecret(net, carol, carolPackage, committed.welcome!)
      const payload = Schema.encodeSync(WelcomePayloadJson)(WelcomePayload.make({
        groupId,
        commitSequenceId: sequenceId,
        welcome: encodeMlsMessage({ version: "mls10", wireformat: "mls_welcome", welcome })
      }))
      yield* sendWelcome(net, carol.installationId, carolPackage, payload)

      yield* Effect.all([alice.syncAll, bob.syncAll, carol.syncAll])
      expect(yield* carol.conversations()).toEqual([])
      yield* stillConverging(group.id, [alice, bob], "carol never joined")
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

describe("the leaf rules, case by case", () => {
  const key = (n: number) => new Uint8Array(32).fill(n)
  const leaf = (leafIndex: number, inbox: string, installation: string, k: number): LeafMember => ({
    leafIndex,
    inboxId: inbox.padEnd(64, "0") as InboxId,
    installationId: installation.padEnd(64, "0") as InstallationId,
    signaturePublicKey: key(k)
  })
  const view = (members: ReadonlyArray<LeafMember>, metadata?: Uint8Array): GroupView => ({
    groupId: "0".repeat(32) as GroupId,
    epoch: 3n,
    epochAuthenticator: "",
    members,
    active: true,
    ownLeafIndex: 0,
    metadata
  })
  const alice = leaf(0, "a", "a1", 1)
  const bob = leaf(1, "b", "b1", 2)

  it("leafIdentityChange: a leaf keeps its inbox and key; the committer stays itself; one leaf per installation", () => {
    const before = view([alice, bob])
    expect(LeafAuthentication.leafIdentityChange(before, view([alice, bob]), bob)).toBeUndefined()
    expect(LeafAuthentication.leafIdentityChange(before, view([alice, { ...bob, inboxId: alice.inboxId }]), bob))
      .toContain("moved from inbox")
    expect(LeafAuthentication.leafIdentityChange(before, view([alice, { ...bob, signaturePublicKey: key(9) }]), bob))
      .toContain("signature key")
    expect(LeafAuthentication.leafIdentityChange(before, view([alice, leaf(1, "c", "c1", 3)]), bob))
      .toContain("the committer's leaf 1 became")
    expect(LeafAuthentication.leafIdentityChange(before, view([alice, bob, { ...bob, leafIndex: 2 }]), alice))
      .toContain("holds two leaves")
    // A removal and a new leaf in the freed slot, by someone else: a new leaf, not a change.
    expect(LeafAuthentication.leafIdentityChange(before, view([alice, leaf(1, "c", "c1", 3)]), alice)).toBeUndefined()
    expect(LeafAuthentication.enteringLeaves(before, view([alice, leaf(1, "c", "c1", 3)])).map((m) => m.leafIndex)).toEqual([1])
  })

  it("reactivationProblem: the same kind of conversation, signed by someone who was in the group with us", () => {
    const meta = utf8("{}")
    const stored = view([alice, bob], meta)
    const mallory = leaf(2, "m", "m1", 7)
    const carol = leaf(3, "c", "c2", 11)
    const details = (members: ReadonlyArray<LeafMember>, signed: ReadonlyArray<LeafMember>, rotated: ReadonlyArray<LeafMember> = []) =>
      members.map((m) => ({
        ...m,
        encryptionKey: key(rotated.includes(m) ? 100 + m.leafIndex : 50 + m.leafIndex),
        groupSigned: signed.includes(m)
      }))
    const problem = (
      joined: GroupView,
      inviter: LeafMember | undefined,
      groupSigned: ReadonlyArray<LeafMember> = [],
      rotated: ReadonlyArray<LeafMember> = joined.members
    ) =>
      LeafAuthentication.reactivationProblem(
        { view: stored, leaves: details(stored.members, []), formerInboxes: new Set([carol.inboxId]) },
        { view: joined, leaves: details(joined.members, groupSigned, rotated) },
        inviter
      )
    expect(problem(view([alice, bob], meta), bob)).toBeUndefined()
    // Settings change by commits a removed member missed (a rename), so only the kind must match.
    expect(problem(view([alice, bob], utf8("{\"name\":\"renamed\"}")), bob)).toBeUndefined()
    expect(problem(view([alice, bob]), bob)).toContain("DM")
    expect(problem(view([alice, bob, mallory], meta), mallory)).toContain("nobody")
    expect(problem(view([alice, bob], meta), { ...bob, signaturePublicKey: key(8) })).toContain("nobody")
    // Our own leaf vouches for nothing; a leaf signed for the group by someone we knew does.
    expect(problem(view([alice, bob, mallory], meta), alice, [alice])).toContain("nobody")
    expect(problem(view([alice, bob, mallory], meta), mallory, [bob])).toBeUndefined()
    expect(problem(view([alice, bob, mallory], meta), undefined, [mallory])).toContain("nobody")
    // The very key-package leaf we knew (same encryption key) vouches; a fresh key package does not.
    expect(problem(view([alice, bob, mallory], meta), mallory, [], [alice, mallory])).toBeUndefined()
    expect(problem(view([alice, bob, mallory], meta), mallory, [], [alice, bob, mallory])).toContain("nobody")
    // Signed by a device of an inbox our transcript shows in the group before (it left before we did).
    expect(problem(view([alice, mallory, carol], meta), carol)).toBeUndefined()
  })
})
