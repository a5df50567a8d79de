/**
 * DM stitching (libxmtp #1142): however many MLS groups lie beneath a DM, the app sees one
 * conversation, `dm:<lower>:<higher>`, and every installation converges on one group.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, TestClock } from "effect"
import { dmId } from "../src/domain/Ids.ts"
import { TestNetwork } from "../src/testing.ts"

const fast = { installationCheckInterval: "0 millis" } as const

describe("DMs", () => {
  it.scoped("Alice and Bob create the DM at once and both send: one conversation, merged, converging", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast)])
      const [atAlice, atBob] = yield* Effect.all([alice.findOrCreateDm(bob.inboxId), bob.findOrCreateDm(alice.inboxId)], {
        concurrency: 2
      })
      expect(atAlice.id).toBe(dmId(alice.inboxId, bob.inboxId))
      expect(atBob.id).toBe(atAlice.id)

      yield* TestClock.adjust("1 second")
      yield* atAlice.send("hi bob")
      yield* TestClock.adjust("1 second")
      yield* atBob.send("hi alice")
      yield* Effect.all([alice.syncAll, bob.syncAll])
      yield* Effect.all([alice.syncAll, bob.syncAll])

      for (const client of [alice, bob]) {
        const dms = yield* client.conversations({ kind: "dm" })
        expect(dms.map((c) => c.id)).toEqual([atAlice.id])
        const messages = yield* dms[0]!.messages()
        expect(messages.filter((m) => m.kind === "text").map((m) => m.text)).toEqual(["hi bob", "hi alice"])
        expect(messages.every((m) => m.conversationId === atAlice.id)).toBe(true)
        // Both groups recorded "added"; the conversation shows it once.
        expect(messages.filter((m) => m.kind === "membershipChange").length).toBeLessThanOrEqual(2)
        expect((yield* dms[0]!.debugInfo).groupIds.length).toBe(2)
      }
      // Both sides now send on the group used last.
      const [primaryAtAlice, primaryAtBob] = yield* Effect.all([atAlice.debugInfo, atBob.debugInfo])
      expect(primaryAtAlice.groupIds[0]).toBe(primaryAtBob.groupIds[0])
      yield* TestClock.adjust("1 second")
      yield* atAlice.send("converged")
      yield* bob.syncAll
      const last = (yield* atBob.messages({ direction: "desc", limit: 1 }))[0]!
      expect([last.text, last.groupId]).toEqual(["converged", primaryAtBob.groupIds[0]])
    }))

  it.scoped("membership changes of a DM are refused with a typed error", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("carol")])
      const dm = yield* alice.findOrCreateDm(bob.inboxId)
      const errors = yield* Effect.all([
        dm.addMembers([carol.inboxId]).pipe(Effect.flip),
        dm.removeMembers([bob.inboxId]).pipe(Effect.flip),
        dm.leave.pipe(Effect.flip),
        alice.findOrCreateDm(alice.inboxId).pipe(Effect.flip)
      ])
      expect(errors.map((e) => e._tag)).toEqual(["InvalidInput", "InvalidInput", "InvalidInput", "InvalidInput"])
      // Asking again finds the same DM rather than making another group.
      const again = yield* alice.findOrCreateDm(bob.inboxId)
      expect((yield* again.debugInfo).groupIds).toEqual((yield* dm.debugInfo).groupIds)
    }))

  it.scoped("the primary group switches to the one last used (libxmtp test_double_dms)", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast)])
      const atAlice = yield* alice.findOrCreateDm(bob.inboxId)
      yield* TestClock.adjust("1 second")
      yield* atAlice.send("first, in alice's group")
      // Bob has not synced: he creates a second group for the same DM.
      const atBob = yield* bob.findOrCreateDm(alice.inboxId)
      yield* TestClock.adjust("1 second")
      yield* atBob.send("second, in bob's group")
      const bobsGroup = (yield* atBob.messages({ direction: "desc", limit: 1 }))[0]!.groupId

      yield* alice.syncAll
      expect((yield* atAlice.debugInfo).groupIds[0]).toBe(bobsGroup)
      yield* TestClock.adjust("1 second")
      yield* atAlice.send("third, alice follows bob")
      expect((yield* atAlice.messages({ direction: "desc", limit: 1 }))[0]!.groupId).toBe(bobsGroup)
      yield* bob.syncAll
      expect((yield* atBob.messages()).filter((m) => m.kind === "text").map((m) => m.text)).toEqual([
        "first, in alice's group",
        "second, in bob's group",
        "third, alice follows bob"
      ])
    }))

  it.scoped("a second installation of Bob joins later and sees the DM as one conversation", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast)])
      const [atAlice, atBob] = yield* Effect.all([alice.findOrCreateDm(bob.inboxId), bob.findOrCreateDm(alice.inboxId)], {
        concurrency: 2
      })
      yield* Effect.all([alice.syncAll, bob.syncAll])

      const bob2 = yield* net.client("bob2", { ...fast, sameInboxAs: bob })
      expect(bob2.inboxId).toBe(bob.inboxId)
      // Whoever syncs first adds the new device to every group of the DM.
      yield* Effect.all([alice.syncAll, bob.syncAll])
      yield* bob2.syncAll
      const dms = yield* bob2.conversations({ kind: "dm" })
      expect(dms.map((c) => c.id)).toEqual([atAlice.id])
      expect((yield* dms[0]!.debugInfo).groupIds.length).toBe(2)

      yield* TestClock.adjust("1 second")
      yield* atAlice.send("to all of bob's devices")
      yield* TestClock.adjust("1 second")
      yield* atBob.send("from bob's first device")
      yield* bob2.syncAll
      const seen = (yield* dms[0]!.messages()).filter((m) => m.kind === "text").map((m) => m.text)
      expect(seen).toEqual(["to all of bob's devices", "from bob's first device"])
      yield* dms[0]!.send("from bob's second device")
      yield* alice.syncAll
      expect((yield* atAlice.messages({ direction: "desc", limit: 1 }))[0]!.text).toBe("from bob's second device")
    }))
})
