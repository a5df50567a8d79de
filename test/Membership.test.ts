/**
 * Leaving (libxmtp #441: leaving is per inbox, not per device) and inboxes whose
 * installations come and go.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Option } from "effect"
import * as IdentityLog from "../src/domain/IdentityLog.ts"
import type { ConversationId } from "../src/domain/Ids.ts"
import type { Conversation } from "../src/services/Client.ts"
import { type TestClient, TestNetwork } from "../src/testing.ts"

const fast = { installationCheckInterval: "0 millis" } as const
const open = (client: TestClient, id: ConversationId) => client.conversation(id)
const memberInboxes = (c: Conversation) => c.members.pipe(Effect.map((ms) => ms.map((m) => m.inboxId).sort()))
const texts = (c: Conversation) =>
  c.messages().pipe(Effect.map((ms) => ms.filter((m) => m.kind === "text").map((m) => m.text)))

describe("Leaving a group", () => {
  it.scoped("leaving removes every installation of the inbox", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const alice = yield* net.client("alice", fast)
      const alice2 = yield* net.client("alice2", { ...fast, sameInboxAs: alice })
      const [bob, carol] = yield* Effect.all([net.client("bob", fast), net.client("carol", fast)])
      const group = yield* bob.createGroup([alice.inboxId, carol.inboxId])
      yield* Effect.all([alice.syncAll, alice2.syncAll, carol.syncAll])
      expect((yield* group.members).find((m) => m.inboxId === alice.inboxId)?.installationIds.length).toBe(2)

      const atAlice = yield* open(alice, group.id)
      yield* atAlice.leave
      expect(yield* atAlice.state).toBe("pendingRemove")
      yield* alice2.syncAll
      expect(yield* (yield* open(alice2, group.id)).state).toBe("pendingRemove")

      yield* bob.syncAll // bob sees the request and commits the removal of both devices
      yield* Effect.all([alice.syncAll, alice2.syncAll, carol.syncAll])
      expect(yield* atAlice.state).toBe("inactive")
      expect(yield* (yield* open(alice2, group.id)).state).toBe("inactive")
      expect(yield* memberInboxes(group)).toEqual([bob.inboxId, carol.inboxId].sort())
      expect(yield* memberInboxes(yield* open(carol, group.id))).toEqual([bob.inboxId, carol.inboxId].sort())
      yield* group.send("after alice left")
      yield* Effect.all([alice.syncAll, alice2.syncAll])
      expect(yield* texts(atAlice)).not.toContain("after alice left")
      expect(yield* texts(yield* open(alice2, group.id))).not.toContain("after alice left")
    }))

  // Seed 20060 (6 inboxes, 150 ops): a leaver's other device added two inboxes and removed the
  // last member that had seen the leave request. The newcomers never saw it, so nobody ever
  // committed the leaver's removal and it stayed pendingRemove.
  it.scoped("a member that asked to leave can no longer add or remove members; the others still remove it", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all(["alice", "bob", "carol"].map((n) => net.client(n, fast)))
      const group = yield* alice!.createGroup([bob!.inboxId])
      yield* bob!.syncAll
      const atBob = yield* open(bob!, group.id)
      yield* atBob.leave

      const adding = yield* atBob.addMembers([carol!.inboxId]).pipe(Effect.flip)
      const removing = yield* atBob.removeMembers([alice!.inboxId]).pipe(Effect.flip)
      expect([adding._tag, removing._tag]).toEqual(["InvalidInput", "InvalidInput"])
      expect(adding.message).toContain("asked to leave")

      yield* alice!.syncAll
      yield* bob!.syncAll
      expect(yield* atBob.state).toBe("inactive")
      expect(yield* memberInboxes(group)).toEqual([alice!.inboxId])
    }))

  it.scoped("a member added after a leave request reads it in the group's settings and removes the leaver", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, carol, dave] = yield* Effect.all(["alice", "carol", "dave"].map((n) => net.client(n, fast)))
      const group = yield* alice!.createGroup([carol!.inboxId])
      yield* carol!.syncAll
      const atCarol = yield* open(carol!, group.id)
      yield* atCarol.leave

      // Alice adds Dave, then drops off the network before she commits Carol's removal.
      yield* group.addMembers([dave!.inboxId])
      yield* net.faults.partition(alice!.installationId)
      // Dave joins at an epoch whose settings list Carol as leaving: he removes her himself.
      // (He could not remove Alice instead: she is the group's only super admin.)
      yield* dave!.syncAll
      const atDave = yield* open(dave!, group.id)
      expect(yield* memberInboxes(atDave)).toEqual([alice!.inboxId, dave!.inboxId].sort())
      yield* carol!.syncAll
      expect(yield* atCarol.state).toBe("inactive")
      yield* net.faults.heal(alice!.installationId)
      yield* alice!.syncAll
      expect(yield* memberInboxes(group)).toEqual([alice!.inboxId, dave!.inboxId].sort())
    }))

  it.scoped("a member added while someone is leaving accepts a plain member's removal of the leaver, as everyone does", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol, dave] = yield* Effect.all(["alice", "bob", "carol", "dave"].map((n) => net.client(n, fast)))
      const group = yield* alice!.createGroup([bob!.inboxId, carol!.inboxId], { permissions: "adminsOnly" })
      yield* Effect.all([bob!.syncAll, carol!.syncAll])
      yield* (yield* open(carol!, group.id)).leave
      yield* net.faults.partition(carol!.installationId)

      // Alice, the admin, adds Dave and drops off before she removes Carol: Bob, a plain member, does.
      yield* group.addMembers([dave!.inboxId])
      yield* net.faults.partition(alice!.installationId)
      yield* bob!.syncAll
      const atBob = yield* open(bob!, group.id)
      expect(yield* memberInboxes(atBob)).toEqual([alice!.inboxId, bob!.inboxId, dave!.inboxId].sort())

      // Dave joined after Carol asked: he must judge Bob's commit as Bob and Alice do.
      yield* dave!.syncAll
      const atDave = yield* open(dave!, group.id)
      yield* Effect.forEach([alice!, carol!], (c) => net.faults.heal(c.installationId))
      yield* Effect.all([alice!.syncAll, carol!.syncAll, dave!.syncAll, bob!.syncAll])
      const epochs = yield* Effect.forEach([group, atBob, atDave], (c) => Effect.map(c.debugInfo, (d) => `${d.epoch}:${d.maybeForked}`))
      expect(new Set(epochs).size).toBe(1)
      expect(yield* memberInboxes(atDave)).toEqual([alice!.inboxId, bob!.inboxId, dave!.inboxId].sort())
      expect(yield* (yield* open(carol!, group.id)).state).toBe("inactive")
    }))

  // Seed 20069 (6 inboxes, 150 ops): the last two members were devices of one inbox that left.
  // The first went inactive on its own; the other, partitioned, had not read the request and
  // later published a message that its sibling, "a member throughout", never stored.
  it.scoped("the last devices of a leaving inbox: the leaver removes its sibling before it goes, so nothing is half-delivered", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const alice = yield* net.client("alice", fast)
      const alice2 = yield* net.client("alice2", { ...fast, sameInboxAs: alice })
      const bob = yield* net.client("bob", fast)
      const group = yield* bob.createGroup([alice.inboxId])
      yield* Effect.all([alice.syncAll, alice2.syncAll])
      const [atAlice, atAlice2] = yield* Effect.all([open(alice, group.id), open(alice2, group.id)])
      // Alice's second device, cut off, asks to leave and writes a message: both wait to go out.
      yield* net.faults.partition(alice2.installationId)
      yield* Effect.either(atAlice2.leave)
      yield* atAlice2.sendOptimistic("written while cut off")

      // Bob leaves (naming Alice super admin first), then Alice: she commits Bob's removal, and
      // only her two devices are left.
      yield* group.setRole(alice.inboxId, "superAdmin")
      yield* group.leave
      yield* atAlice.leave
      yield* alice.syncAll // commits Bob's removal (a round publishes one commit)
      yield* alice.syncAll // alone with her own devices: removes her sibling, then goes
      yield* bob.syncAll
      expect(yield* group.state).toBe("inactive")
      expect(yield* atAlice.state).toBe("inactive")

      yield* net.faults.heal(alice2.installationId)
      yield* alice2.syncAll
      expect(yield* atAlice2.state).toBe("inactive")
      const [mine] = (yield* atAlice2.messages()).filter((m) => m.text === "written while cut off")
      expect(mine?.deliveryStatus).toBe("failed")
      expect(yield* texts(atAlice)).not.toContain("written while cut off")
    }))

  it.scoped("a request to leave that never went out dies with the removal: re-added, the member stays", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all(["alice", "bob"].map((n) => net.client(n, fast)))
      const group = yield* alice!.createGroup([bob!.inboxId])
      yield* bob!.syncAll
      const atBob = yield* open(bob!, group.id)
      // Bob, cut off, asks to leave: the request waits. Alice removes him, then takes him back.
      yield* net.faults.partition(bob!.installationId)
      yield* Effect.either(atBob.leave)
      yield* group.removeMembers([bob!.inboxId])
      yield* group.addMembers([bob!.inboxId])
      yield* net.faults.heal(bob!.installationId)

      // Bob reads his removal before he rejoins: the old request must not go out afterwards.
      yield* bob!.syncAll
      yield* Effect.all([alice!.syncAll, bob!.syncAll])
      yield* Effect.all([alice!.syncAll, bob!.syncAll])
      expect(yield* atBob.state).toBe("active")
      expect(yield* memberInboxes(group)).toEqual([alice!.inboxId, bob!.inboxId].sort())
    }))

  it.scoped("Bob's removal of a leaver, written ahead when he crashed, dies with Alice's removal: re-added, the member stays", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all(["alice", "bob", "carol"].map((n) => net.client(n, fast)))
      const group = yield* alice!.createGroup([bob!.inboxId, carol!.inboxId], { permissions: "adminsOnly" })
      yield* Effect.all([bob!.syncAll, carol!.syncAll])
      const atCarol = yield* open(carol!, group.id)
      // Carol asks to leave; Bob (no admin: the request is what lets him) writes her removal ahead and crashes.
      yield* atCarol.leave.pipe(Effect.either)
      yield* net.crashAt(bob!, "publish.afterWriteAheadBeforeSend")
      yield* Effect.exit(bob!.syncAll)
      yield* net.restart(bob!)
      // Meanwhile Alice, an admin, removes Carol and takes her back.
      yield* alice!.syncAll
      yield* alice!.syncAll
      yield* group.addMembers([carol!.inboxId])
      yield* carol!.syncAll

      // Bob reads both: his old removal must not go out again, on a request everyone else has settled.
      yield* bob!.syncAll
      yield* bob!.syncAll
      yield* Effect.all([alice!.syncAll, carol!.syncAll])
      const atBob = yield* open(bob!, group.id)
      const epochs = yield* Effect.forEach([group, atBob, atCarol], (c) => Effect.map(c.debugInfo, (d) => d.epoch))
      expect(new Set(epochs).size).toBe(1)
      expect(yield* atCarol.state).toBe("active")
      for (const c of [group, atBob]) expect(yield* memberInboxes(c)).toEqual([alice!.inboxId, bob!.inboxId, carol!.inboxId].sort())
    }))

  it.scoped("three members commit the removal at once: one wins, the others resolve as no-ops", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol, dave] = yield* Effect.all(["alice", "bob", "carol", "dave"].map((n) => net.client(n, fast)))
      const group = yield* alice!.createGroup([bob!.inboxId, carol!.inboxId, dave!.inboxId])
      yield* Effect.all([bob!.syncAll, carol!.syncAll, dave!.syncAll])
      yield* (yield* open(dave!, group.id)).leave

      yield* Effect.all([alice!.syncAll, bob!.syncAll, carol!.syncAll], { concurrency: "unbounded" })
      yield* Effect.all([alice!.syncAll, bob!.syncAll, carol!.syncAll, dave!.syncAll])

      const remaining = [alice!, bob!, carol!]
      const infos = yield* Effect.forEach(remaining, (c) => open(c, group.id).pipe(Effect.flatMap((g) => g.debugInfo)))
      expect(new Set(infos.map((i) => `${i.epoch}:${i.epochAuthenticator}`)).size).toBe(1)
      for (const client of remaining) {
        const conversation = yield* open(client, group.id)
        expect(yield* memberInboxes(conversation)).toEqual([alice!.inboxId, bob!.inboxId, carol!.inboxId].sort())
        const removals = (yield* conversation.messages()).filter((m) => m.kind === "membershipChange" && m.text.includes(`"removedInboxes":["${dave!.inboxId}"]`))
        expect(removals.length).toBe(1)
      }
      expect(yield* (yield* open(dave!, group.id)).state).toBe("inactive")
    }))

  it.scoped("leaving while offline is published on the next sync", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast)])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      const atBob = yield* open(bob, group.id)
      yield* net.faults.partition(bob.installationId)
      expect((yield* atBob.leave.pipe(Effect.flip))._tag).toBe("DeliveryError")
      expect(yield* atBob.state).toBe("pendingRemove")
      yield* net.faults.heal(bob.installationId)

      yield* bob.syncAll
      yield* alice.syncAll
      yield* bob.syncAll
      expect(yield* atBob.state).toBe("inactive")
      expect(yield* memberInboxes(group)).toEqual([alice.inboxId])
    }))

  it.scoped("leaving a DM or a group you are not in is a typed error; a re-added member is active again", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast), net.client("carol", fast)])
      const group = yield* alice.createGroup([bob.inboxId, carol.inboxId])
      yield* Effect.all([bob.syncAll, carol.syncAll])
      yield* group.removeMembers([bob.inboxId])
      yield* bob.syncAll
      const atBob = yield* open(bob, group.id)
      expect((yield* atBob.leave.pipe(Effect.flip))._tag).toBe("NotAMember")
      expect((yield* (yield* bob.findOrCreateDm(alice.inboxId)).leave.pipe(Effect.flip))._tag).toBe("InvalidInput")

      yield* group.send("while bob was out")
      yield* group.addMembers([bob.inboxId])
      yield* group.send("welcome back")
      yield* bob.syncAll
      expect(yield* atBob.state).toBe("active")
      expect(yield* texts(atBob)).toEqual(["welcome back"])
      yield* atBob.send("glad to be back")
      yield* Effect.all([alice.syncAll, carol.syncAll])
      expect((yield* texts(yield* open(carol, group.id))).slice(-1)).toEqual(["glad to be back"])
    }))
})

describe("Inboxes with several installations", () => {
  it.scoped("a device registered after the group exists is added by whoever syncs first and sees both devices' messages", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast)])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      const bob2 = yield* net.client("bob2", { ...fast, sameInboxAs: bob })
      // Alice keeps sending meanwhile; her next sync adds the new device.
      yield* group.send("before the new device")
      yield* alice.syncAll
      yield* bob2.syncAll
      const atBob2 = yield* open(bob2, group.id)
      expect((yield* group.members).find((m) => m.inboxId === bob.inboxId)?.installationIds).toEqual(
        [bob.installationId, bob2.installationId].sort()
      )
      yield* (yield* open(bob, group.id)).send("from bob's phone")
      yield* group.send("from alice")
      yield* bob2.syncAll
      expect(yield* texts(atBob2)).toEqual(["from bob's phone", "from alice"])
      yield* atBob2.send("from bob's laptop")
      yield* bob.syncAll
      expect((yield* texts(yield* open(bob, group.id))).slice(-1)).toEqual(["from bob's laptop"])
      expect((yield* bob2.conversations()).map((c) => c.id)).toEqual([group.id])
    }))

  it.scoped("a removed member sees the members as its removal left them, before and after a restart", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("carol")])
      const group = yield* alice.createGroup([bob.inboxId, carol.inboxId])
      yield* Effect.all([bob.syncAll, carol.syncAll])
      // Bob has looked at the members (so his client remembers them) before Alice removes him.
      expect(yield* memberInboxes(yield* open(bob, group.id))).toEqual([alice.inboxId, bob.inboxId, carol.inboxId].sort())

      yield* group.removeMembers([bob.inboxId])
      yield* bob.syncAll
      const atBob = yield* open(bob, group.id)
      expect(yield* atBob.state).toBe("inactive")
      const seen = yield* memberInboxes(atBob)
      expect(seen).toEqual([alice.inboxId, carol.inboxId].sort())
      yield* net.restart(bob)
      expect(yield* memberInboxes(yield* open(bob, group.id))).toEqual(seen)
    }))

  it.scoped("a revoked device is removed and cannot read later messages", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast)])
      const bob2 = yield* net.client("bob2", { ...fast, sameInboxAs: bob })
      const group = yield* alice.createGroup([bob.inboxId])
      yield* Effect.all([bob.syncAll, bob2.syncAll])
      expect(yield* (yield* open(bob2, group.id)).state).toBe("active")

      const [log] = yield* net.delivery.getIdentityUpdates([{ inboxId: bob.inboxId, afterSequence: 0 }])
      const state = Option.getOrThrow(Either.getOrThrow(IdentityLog.replay(log!.updates.map((u) => u.update))))
      yield* net.delivery.publishIdentityUpdate(
        IdentityLog.signUpdate(bob.rootSecretKey!, bob.inboxId, state, { _tag: "RevokeInstallation", installationId: bob2.installationId })
      )
      yield* alice.syncAll
      yield* group.send("not for the stolen laptop")
      yield* Effect.all([bob.syncAll, bob2.syncAll])
      expect(yield* (yield* open(bob2, group.id)).state).toBe("inactive")
      expect(yield* texts(yield* open(bob2, group.id))).not.toContain("not for the stolen laptop")
      expect(yield* texts(yield* open(bob, group.id))).toContain("not for the stolen laptop")
      expect((yield* group.members).find((m) => m.inboxId === bob.inboxId)?.installationIds).toEqual([bob.installationId])
    }))
})
