/**
 * Group governance as users meet it: renames, roles, policies every member enforces, and a
 * commit built outside the API that breaks a policy.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Option } from "effect"
import { decodeSettings, encodeSettings } from "../src/domain/GroupSettings.ts"
import type { ConversationId, GroupId } from "../src/domain/Ids.ts"
import { GroupMetadata, PROTOCOL_VERSION } from "../src/domain/Model.ts"
import { GroupMessageInput } from "../src/domain/Wire.ts"
import type { Conversation } from "../src/services/Client.ts"
import { type TestClient, TestNetwork } from "../src/testing.ts"

const open = (client: TestClient, id: ConversationId) => client.conversation(id)
const nameAt = (c: Conversation) => c.metadata.pipe(Effect.map((m) => m.name))
const memberInboxes = (c: Conversation) => c.members.pipe(Effect.map((ms) => ms.map((m) => m.inboxId).sort()))
const epochOf = (c: Conversation) =>
  c.debugInfo.pipe(Effect.map((d) => `${d.epoch}:${d.epochAuthenticator}`))

/** Alice's admins-only group with Bob and Carol, Bob's state of it, and a way to post what Bob builds outside the API. */
const adminsOnlyTrio = Effect.gen(function*() {
  const net = yield* TestNetwork.make
  const [alice, bob, carol] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("carol")])
  const group = yield* alice.createGroup([bob.inboxId, carol.inboxId], { permissions: "adminsOnly" })
  yield* Effect.all([bob.syncAll, carol.syncAll])
  const groupId = group.id as unknown as GroupId
  const row = Option.getOrThrow(yield* (yield* net.storage(bob)).groups.get(groupId))
  const stateAtBob = yield* net.crypto.deserialize(row.mlsState)
  const sendAsBob = (commit: { readonly commit: Uint8Array }) =>
    Effect.flatMap(net.deliveryAs(bob), (ds) => ds.sendGroupMessages([GroupMessageInput.make({ groupId, payload: commit.commit })]))
  return { alice, bob, carol, group, net, sendAsBob, stateAtBob }
})

/** A group of three whose creator names the second a super admin too; the others have joined. */
const twoSuperAdmins = (first: string, second: string, third: string) =>
  Effect.gen(function*() {
    const net = yield* TestNetwork.make
    const clients = yield* Effect.all([net.client(first), net.client(second), net.client(third)])
    const group = yield* clients[0].createGroup([clients[1].inboxId, clients[2].inboxId])
    yield* group.setRole(clients[1].inboxId, "superAdmin")
    yield* Effect.all([clients[1].syncAll, clients[2].syncAll])
    return { clients, group, net }
  })

describe("Group governance", () => {
  it.scoped("a rename reaches every member and leaves a metadataChange entry", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* alice.createGroup([bob.inboxId], { name: "Climbing", imageUrl: "https://x.test/a.png" })
      yield* bob.syncAll
      const atBob = yield* open(bob, group.id)
      yield* atBob.updateMetadata({ name: "Bouldering", appData: "{\"v\":1}" })
      yield* alice.syncAll
      for (const c of [group, atBob]) {
        const metadata = yield* c.metadata
        expect([metadata.name, metadata.imageUrl, metadata.appData]).toEqual(["Bouldering", "https://x.test/a.png", "{\"v\":1}"])
      }
      const entries = (yield* group.messages()).filter((m) => m.kind === "metadataChange")
      expect(entries).toHaveLength(1)
      expect(JSON.parse(entries[0]!.text)).toMatchObject({ changed: ["appData", "name"], committedBy: bob.inboxId })
      expect(entries[0]!.id).toBe((yield* atBob.messages()).find((m) => m.kind === "metadataChange")?.id)
      // Over the bound: refused before anything is queued.
      const tooLong = yield* atBob.updateMetadata({ name: "x".repeat(101) }).pipe(Effect.flip)
      expect(tooLong._tag).toBe("InvalidInput")
    }))

  it.scoped("of two concurrent renames with ifMatch, one wins everywhere and the other fails with MetadataConflict", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("carol")])
      const group = yield* alice.createGroup([bob.inboxId, carol.inboxId], { name: "Old" })
      yield* Effect.all([bob.syncAll, carol.syncAll])
      const atBob = yield* open(bob, group.id)
      // Both read "Old" and rename at the same epoch: one commit wins, the other is re-derived
      // at the next epoch, where "Old" no longer holds.
      const outcomes = yield* Effect.all([
        atBob.updateMetadata({ name: "Bob's" }, { ifMatch: { name: "Old" } }).pipe(Effect.either),
        group.updateMetadata({ name: "Alice's" }, { ifMatch: { name: "Old" } }).pipe(Effect.either)
      ], { concurrency: 2 })
      const won = outcomes.flatMap((o, i) => o._tag === "Right" ? [["Bob's", "Alice's"][i]!] : [])
      const lost = outcomes.flatMap((o) => o._tag === "Left" ? [o.left] : [])
      expect(won).toHaveLength(1)
      expect(lost).toHaveLength(1)
      expect(lost[0]).toMatchObject({ _tag: "MetadataConflict", field: "name" })
      yield* Effect.all([bob.syncAll, carol.syncAll])
      const atCarol = yield* open(carol, group.id)
      yield* alice.syncAll
      for (const c of [group, atBob, atCarol]) expect(yield* nameAt(c)).toBe(won[0])
      expect(new Set([yield* epochOf(group), yield* epochOf(atBob), yield* epochOf(atCarol)]).size).toBe(1)
    }))

  it.scoped("a member added after a rename reads the new name", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("carol")])
      const group = yield* alice.createGroup([bob.inboxId], { name: "Before" })
      yield* group.updateMetadata({ name: "After", description: "new" })
      yield* bob.syncAll
      yield* (yield* open(bob, group.id)).addMembers([carol.inboxId])
      yield* carol.syncAll
      const atCarol = yield* open(carol, group.id)
      expect(yield* nameAt(atCarol)).toBe("After")
      expect((yield* atCarol.roles).superAdmins).toEqual([alice.inboxId])
    }))

  it.scoped("in an admins-only group a member's add fails, and a hand-built commit doing it is skipped by everyone", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol, dave] = yield* Effect.all(
        ["alice", "bob", "carol", "dave"].map((name) => net.client(name))
      )
      const group = yield* alice!.createGroup([bob!.inboxId, carol!.inboxId], { permissions: "adminsOnly" })
      yield* Effect.all([bob!.syncAll, carol!.syncAll])
      const atBob = yield* open(bob!, group.id)
      expect((yield* atBob.permissions).addMember).toBe("admins")
      const denied = yield* atBob.addMembers([dave!.inboxId]).pipe(Effect.flip)
      expect(denied).toMatchObject({ _tag: "PermissionDenied", action: "addMember", required: "admins" })
      const renameDenied = yield* atBob.updateMetadata({ name: "mine" }).pipe(Effect.flip)
      expect(renameDenied._tag).toBe("PermissionDenied")

      // Bob builds the same add with MLS directly, from his own state, and publishes it.
      const groupId = group.id as unknown as GroupId
      const row = Option.getOrThrow(yield* (yield* net.storage(bob!)).groups.get(groupId))
      const state = yield* net.crypto.deserialize(row.mlsState)
      const asBob = yield* net.deliveryAs(bob!)
      const [fetched] = yield* asBob.fetchKeyPackages([dave!.installationId])
      const forged = yield* net.crypto.createCommit(state, { add: [fetched!.keyPackage!] })
      yield* asBob.sendGroupMessages([GroupMessageInput.make({ groupId, payload: forged.commit })])

      const summaries = yield* Effect.all([alice!.syncAll, carol!.syncAll])
      for (const summary of summaries) expect(summary.skippedBy["policyViolation"]).toBe(1)
      yield* bob!.syncAll
      const atCarol = yield* open(carol!, group.id)
      for (const c of [group, atBob, atCarol]) {
        expect(yield* memberInboxes(c)).toEqual([alice!.inboxId, bob!.inboxId, carol!.inboxId].sort())
      }
      // The group goes on from the epoch the forgery was for: an allowed commit lands everywhere.
      yield* group.addMembers([dave!.inboxId])
      yield* Effect.all([bob!.syncAll, carol!.syncAll, dave!.syncAll])
      const atDave = yield* open(dave!, group.id)
      expect(new Set(yield* Effect.forEach([group, atBob, atCarol, atDave], epochOf)).size).toBe(1)
    }))

  it.scoped("a hand-built removal the policy forbids is skipped by everyone, the removed member included", () =>
    Effect.gen(function*() {
      const { alice, bob, carol, group, net, sendAsBob, stateAtBob } = yield* adminsOnlyTrio
      yield* sendAsBob(yield* net.crypto.createCommit(stateAtBob, { remove: [carol.installationId] }))
      yield* Effect.all([alice.syncAll, bob.syncAll, carol.syncAll])
      const atCarol = yield* open(carol, group.id)
      expect(yield* atCarol.state).toBe("active")
      // Carol is still in the group everyone holds: she reads what Alice sends next.
      yield* group.send("still here?")
      yield* carol.syncAll
      expect((yield* atCarol.messages()).filter((m) => m.kind === "text").map((m) => m.text)).toEqual(["still here?"])
      expect(yield* epochOf(atCarol)).toBe(yield* epochOf(group))
    }))

  it.scoped("a hand-built commit listing another member as leaving is skipped by everyone: nobody removes her", () =>
    Effect.gen(function*() {
      const { alice, bob, carol, group, net, sendAsBob, stateAtBob } = yield* adminsOnlyTrio
      const settings = Option.getOrThrow(decodeSettings(net.crypto.view(stateAtBob).metadata))
      // Bob, a plain member, writes Carol onto the leaving list: were it taken, anyone could remove her.
      yield* sendAsBob(yield* net.crypto.createCommit(stateAtBob, {
        metadata: encodeSettings(new GroupMetadata({ ...settings, leaving: [carol.inboxId] }))
      }))
      const seen = yield* Effect.forEach([alice!, bob!, carol!], (c) => c.syncAll)
      expect(seen.map((summary) => summary.skippedBy.policyViolation)).toEqual([1, 1, 1])
      yield* Effect.all([alice!.syncAll, bob!.syncAll, carol!.syncAll])
      const atCarol = yield* open(carol!, group.id)
      expect(yield* atCarol.state).toBe("active")
      expect(yield* memberInboxes(group)).toEqual([alice!.inboxId, bob!.inboxId, carol!.inboxId].sort())
      expect(yield* epochOf(atCarol)).toBe(yield* epochOf(group))
    }))

  it.scoped("promotion and demotion: an admin may then add, a demoted one may not; roles read the same everywhere", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol, dave] = yield* Effect.all(
        ["alice", "bob", "carol", "dave"].map((name) => net.client(name))
      )
      const group = yield* alice!.createGroup([bob!.inboxId, carol!.inboxId], { permissions: "adminsOnly" })
      yield* Effect.all([bob!.syncAll, carol!.syncAll])
      const atBob = yield* open(bob!, group.id)
      // Only super admins change roles.
      expect((yield* atBob.setRole(carol!.inboxId, "admin").pipe(Effect.flip))._tag).toBe("PermissionDenied")
      yield* group.setRole(bob!.inboxId, "admin")
      yield* bob!.syncAll
      yield* atBob.addMembers([dave!.inboxId])
      yield* Effect.all([alice!.syncAll, carol!.syncAll, dave!.syncAll])
      const atDave = yield* open(dave!, group.id)
      expect(yield* atDave.roles).toEqual({ admins: [bob!.inboxId], superAdmins: [alice!.inboxId] })
      yield* group.setRole(bob!.inboxId, "member")
      yield* bob!.syncAll
      const denied = yield* atBob.removeMembers([dave!.inboxId]).pipe(Effect.flip)
      expect(denied._tag).toBe("PermissionDenied")
      yield* Effect.all([carol!.syncAll, dave!.syncAll])
      for (const c of [group, atBob, atDave, yield* open(carol!, group.id)]) {
        expect(yield* c.roles).toEqual({ admins: [], superAdmins: [alice!.inboxId] })
      }
      const promoted = (yield* group.messages()).filter((m) => m.kind === "metadataChange").map((m) => JSON.parse(m.text).changed)
      expect(promoted).toEqual([["admins"], ["admins"]])
    }))

  it.scoped("in an admins-only group a plain member commits a leaver's removal, and the leaver accepts it", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("carol")])
      const group = yield* alice.createGroup([bob.inboxId, carol.inboxId], { permissions: "adminsOnly" })
      yield* Effect.all([bob.syncAll, carol.syncAll])
      const atCarol = yield* open(carol, group.id)
      yield* atCarol.leave
      // Bob may not remove anyone, but a member who asked to leave is anyone's to remove.
      yield* bob.syncAll
      yield* carol.syncAll
      expect(yield* atCarol.state).toBe("inactive")
      expect((yield* atCarol.debugInfo).maybeForked).toBe(false)
      yield* alice.syncAll
      expect(yield* memberInboxes(group)).toEqual([alice.inboxId, bob.inboxId].sort())
      expect(yield* epochOf(group)).toBe(yield* epochOf(yield* open(bob, group.id)))
    }))

  it.scoped("a member paused below the minimum version applies a plain member's removal of a leaver, and queues none it could not commit", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const v3 = { protocolVersion: 3 }
      const [alice, bob, carol] = yield* Effect.all([net.client("alice", v3), net.client("bob", v3), net.client("carol", v3)])
      const paula = yield* net.client("paula", { protocolVersion: 2 })
      const group = yield* alice.createGroup([bob.inboxId, carol.inboxId, paula.inboxId], { permissions: "adminsOnly" })
      yield* group.setMinProtocolVersion(3)
      yield* Effect.all([bob.syncAll, carol.syncAll, paula.syncAll])
      yield* (yield* open(carol, group.id)).leave
      // Paula reads the request while paused: she cannot commit the removal, and the group's list says the rest.
      yield* paula.syncAll
      yield* bob.syncAll
      yield* Effect.all([paula.syncAll, alice.syncAll])

      const atPaula = yield* open(paula, group.id)
      expect(yield* epochOf(atPaula)).toBe(yield* epochOf(yield* open(bob, group.id)))
      expect(yield* epochOf(group)).toBe(yield* epochOf(atPaula))
      expect(yield* memberInboxes(atPaula)).toEqual([alice.inboxId, bob.inboxId, paula.inboxId].sort())
      // She queued no removal she could not commit.
      expect(yield* (yield* net.storage(paula)).intents.byState(["ToPublish", "Published"])).toEqual([])
    }))

  it.scoped("the last super admin cannot leave or be demoted; after naming another, it can leave", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      expect(yield* group.leave.pipe(Effect.flip)).toMatchObject({ _tag: "PermissionDenied", action: "leave" })
      expect(yield* group.setRole(alice.inboxId, "admin").pipe(Effect.flip)).toMatchObject({ _tag: "PermissionDenied" })
      yield* group.setRole(bob.inboxId, "superAdmin")
      yield* group.leave
      yield* bob.syncAll
      yield* alice.syncAll
      expect(yield* group.state).toBe("inactive")
      expect(yield* memberInboxes(yield* open(bob, group.id))).toEqual([bob.inboxId])
    }))

  it.scoped("two super admins ask to leave at once: the first goes, the second stays as the last super admin", () =>
    Effect.gen(function*() {
      const { clients: [alice, bob, carol], group, net } = yield* twoSuperAdmins("alice", "bob", "carol")
      const atBob = yield* open(bob, group.id)
      // Each sees another super admin when asking, so both requests go out.
      yield* group.leave
      yield* atBob.leave
      // Alice asked first and is removed first (by bob on the way, or by carol); bob is then the
      // last super admin, whom nobody may remove, so every member voids his request at that epoch.
      yield* carol.syncAll
      yield* Effect.all([alice.syncAll, bob.syncAll, carol.syncAll])
      const atCarol = yield* open(carol, group.id)
      expect(yield* group.state).toBe("inactive")
      expect(yield* atBob.state).toBe("active")
      expect(yield* memberInboxes(atCarol)).toEqual([bob.inboxId, carol.inboxId].sort())
      expect(yield* epochOf(atBob)).toBe(yield* epochOf(atCarol))
      // Nobody keeps trying to remove bob.
      for (const member of [bob, carol]) {
        const pending = yield* net.storage(member).pipe(Effect.flatMap((s) => s.intents.byState(["ToPublish", "Published"])))
        expect(pending).toEqual([])
      }
      // Bob is a full member again: it writes, and after naming another super admin it can leave.
      yield* atBob.send("still here")
      yield* carol.syncAll
      expect((yield* atCarol.messages()).map((m) => m.text)).toContain("still here")
      yield* atBob.setRole(carol.inboxId, "superAdmin")
      yield* atBob.leave
      yield* carol.syncAll
      yield* bob.syncAll
      expect(yield* atBob.state).toBe("inactive")
      expect(yield* memberInboxes(atCarol)).toEqual([carol.inboxId])
    }))

  it.scoped("a leave voided when its inbox became the last super admin stays void: left alone later, it keeps the group", () =>
    Effect.gen(function*() {
      const { clients: [xena, sam, ann], group } = yield* twoSuperAdmins("xena", "sam", "ann")
      yield* group.leave
      // Ann removes Sam first: Xena is the last super admin, and her request is void.
      const atAnn = yield* open(ann, group.id)
      yield* atAnn.removeMembers([sam.inboxId])
      yield* xena.syncAll
      expect(yield* group.state).toBe("active")
      // Xena withdraws the request in a commit of her own, then removes Ann and is alone.
      yield* xena.syncAll
      yield* group.removeMembers([ann.inboxId])
      yield* Effect.all([xena.syncAll, ann.syncAll, xena.syncAll])
      expect(yield* memberInboxes(group)).toEqual([xena.inboxId])
      expect(yield* group.state).toBe("active")
      yield* group.send("still mine")
    }))

  it.scoped("a leave voided by the removal of the other super admin stays void when the leaver's own removals leave it alone", () =>
    Effect.gen(function*() {
      const { clients: [xena, sam, ann], group, net } = yield* twoSuperAdmins("xena", "sam", "ann")
      // All three ask, Xena last: she then holds the removals of Sam and of Ann, in that order.
      yield* (yield* open(sam, group.id)).leave
      yield* (yield* open(ann, group.id)).leave
      yield* group.leave
      yield* net.faults.partition(sam.installationId)
      yield* net.faults.partition(ann.installationId)
      // Sam's removal voids Xena's request (the last super admin, Ann still in); Ann's leaves her alone.
      yield* xena.syncAll
      yield* xena.syncAll
      yield* xena.syncAll
      expect(yield* memberInboxes(group)).toEqual([xena.inboxId])
      expect(yield* group.state).toBe("active")
      yield* group.send("still mine")
    }))

  it.scoped("a member on its way out with no leave listed or queued (an earlier version's request) asks again, as a commit", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      const groupId = group.id as unknown as GroupId
      yield* (yield* net.storage(bob)).groups.setMembership(groupId, "pendingRemove")
      // The next news in the group has Bob read it, and ask again.
      yield* group.send("news")
      yield* bob.syncAll
      yield* alice.syncAll
      yield* bob.syncAll
      expect(yield* (yield* open(bob, group.id)).state).toBe("inactive")
      expect(yield* memberInboxes(group)).toEqual([alice.inboxId])
    }))

  it.scoped("policies change only by a super admin, and the minimum version only goes up", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      // Alice speaks a version above the library's, so raising the minimum does not pause her.
      const [alice, bob] = yield* Effect.all([net.client("alice", { protocolVersion: PROTOCOL_VERSION + 1 }), net.client("bob")])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      const atBob = yield* open(bob, group.id)
      expect((yield* atBob.updatePermissions({ updateMetadata: "nobody" }).pipe(Effect.flip))._tag).toBe("PermissionDenied")
      yield* group.updatePermissions({ updateMetadata: "superAdmins" })
      yield* bob.syncAll
      expect((yield* atBob.permissions).updateMetadata).toBe("superAdmins")
      expect((yield* atBob.updateMetadata({ name: "x" }).pipe(Effect.flip))._tag).toBe("PermissionDenied")
      // A new group admits this library's version and later; the super admin raises it.
      expect(yield* atBob.minProtocolVersion).toBe(PROTOCOL_VERSION)
      yield* group.setMinProtocolVersion(PROTOCOL_VERSION + 1)
      yield* bob.syncAll
      expect(yield* atBob.minProtocolVersion).toBe(PROTOCOL_VERSION + 1)
      expect(yield* group.setMinProtocolVersion(PROTOCOL_VERSION).pipe(Effect.flip)).toMatchObject({ _tag: "PermissionDenied", action: "setMinProtocolVersion" })
      expect((yield* group.setMinProtocolVersion(0).pipe(Effect.flip))._tag).toBe("InvalidInput")
      expect(yield* group.minProtocolVersion).toBe(PROTOCOL_VERSION + 1)
    }))

  it.scoped("a new group keeps out installations of version 1, which do not read who is leaving, until they upgrade; a group such a client creates admits them", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const old = yield* net.client("old", { protocolVersion: 1 })
      const group = yield* alice.createGroup([bob.inboxId])
      expect(PROTOCOL_VERSION).toBe(2)
      expect(yield* group.minProtocolVersion).toBe(2)
      expect(yield* group.addMembers([old.inboxId]).pipe(Effect.flip)).toMatchObject({ _tag: "ProtocolVersionTooOld", required: 2, current: 1 })
      // Its own group admits its version, as the build it stands for made them; the others join it there.
      const theirs = yield* old.createGroup([alice.inboxId])
      expect(yield* theirs.minProtocolVersion).toBe(1)
      yield* alice.syncAll
      expect(yield* (yield* open(alice, theirs.id)).minProtocolVersion).toBe(1)

      // Upgraded, its first sync replaces the key package the server hands out: now it can be added.
      yield* net.restart(old, { protocolVersion: 2 })
      yield* old.syncAll
      yield* group.addMembers([old.inboxId])
      yield* old.syncAll
      yield* group.send("welcome back")
      yield* old.syncAll
      const atOld = yield* open(old, group.id)
      expect((yield* atOld.messages()).filter((m) => m.kind === "text").map((m) => m.text)).toEqual(["welcome back"])
    }))

  it.scoped("a super admin raises the minimum version: an old client is paused, reads, then upgrades and sends", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const alice = yield* net.client("alice", { protocolVersion: 3 })
      const [bob, carol] = yield* Effect.all([net.client("bob", { protocolVersion: 2 }), net.client("carol", { protocolVersion: 2 })])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      const atBob = yield* open(bob, group.id)
      yield* atBob.send("before")
      yield* group.setMinProtocolVersion(3)
      yield* bob.syncAll
      expect(yield* atBob.minProtocolVersion).toBe(3)
      const paused = { _tag: "ProtocolVersionTooOld", required: 3, current: 2 }
      expect(yield* atBob.send("while paused").pipe(Effect.flip)).toMatchObject(paused)
      expect(yield* atBob.sendOptimistic("queued while paused").pipe(Effect.flip)).toMatchObject(paused)
      expect(yield* atBob.addMembers([carol.inboxId]).pipe(Effect.flip)).toMatchObject(paused)
      expect(yield* atBob.updateMetadata({ name: "x" }).pipe(Effect.flip)).toMatchObject(paused)
      // Paused, Bob still reads.
      yield* group.send("hello")
      yield* bob.syncAll
      expect((yield* atBob.messages()).filter((m) => m.kind === "text").map((m) => m.text)).toEqual(["before", "hello"])

      // Carol's key package advertises version 2: Alice cannot add her, and a hand-built add is refused by all.
      expect(yield* group.addMembers([carol.inboxId]).pipe(Effect.flip)).toMatchObject(paused)
      const groupId = group.id as unknown as GroupId
      const row = Option.getOrThrow(yield* (yield* net.storage(alice)).groups.get(groupId))
      const asAlice = yield* net.deliveryAs(alice)
      const [fetched] = yield* asAlice.fetchKeyPackages([carol.installationId])
      const forged = yield* net.crypto.createCommit(yield* net.crypto.deserialize(row.mlsState), { add: [fetched!.keyPackage!] })
      yield* asAlice.sendGroupMessages([GroupMessageInput.make({ groupId, payload: forged.commit })])
      expect((yield* bob.syncAll).skippedBy["policyViolation"]).toBe(1)
      expect(yield* memberInboxes(atBob)).toEqual([alice.inboxId, bob.inboxId].sort())

      // Restarted on the same version, nothing decoded kept yet: still paused, judged on the stored row.
      yield* net.restart(bob, { protocolVersion: 2 })
      expect(yield* (yield* open(bob, group.id)).sendOptimistic("still paused").pipe(Effect.flip)).toMatchObject(paused)

      // Bob upgrades: a restart with the newer version un-pauses him.
      yield* net.restart(bob, { protocolVersion: 3 })
      yield* (yield* open(bob, group.id)).send("upgraded")
      yield* alice.syncAll
      expect((yield* group.messages()).filter((m) => m.kind === "text").map((m) => m.text)).toEqual(["before", "hello", "upgraded"])
      expect(yield* epochOf(group)).toBe(yield* epochOf(yield* open(bob, group.id)))
    }))
})
