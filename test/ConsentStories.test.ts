/**
 * Consent as users meet it: what starts allowed and what unknown, a denied conversation that
 * disappears from the lists and the stream on every device of the inbox, a spammer whose
 * invitations are kept but never shown, and a new phone that learns all of it with the history.
 */
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Fiber, Stream } from "effect"
import type { ConversationId } from "../src/domain/Ids.ts"
import { type TestClient, TestNetwork } from "../src/testing.ts"

const fast = { installationCheckInterval: "0 millis" } as const

const listed = (client: TestClient, options?: Parameters<TestClient["conversations"]>[0]) =>
  client.conversations(options).pipe(Effect.map((cs) => cs.map((c) => c.id)))

const consentOf = (client: TestClient, conversationId: ConversationId) => client.consentOf({ conversationId })

/** Alice with a second phone that has taken in her history. */
const aliceWithPhone = (net: TestNetwork) =>
  Effect.gen(function*() {
    const alice = yield* net.client("alice", fast)
    const alice2 = yield* net.client("alice2", { ...fast, sameInboxAs: alice })
    for (let i = 0; i < 3; i++) yield* Effect.all([alice.syncAll, alice2.syncAll], { discard: true })
    expect(yield* alice2.historySync).toMatchObject({ state: "done" })
    return { alice, alice2 }
  })

describe("Consent", () => {
  it.scoped("what you start is allowed; what others start is unknown until you answer", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast)])
      const group = yield* alice.createGroup([bob.inboxId], { name: "Picnic" })
      const dm = yield* alice.findOrCreateDm(bob.inboxId)
      yield* dm.send("are you coming?")
      yield* bob.syncAll
      expect(yield* consentOf(alice, group.id)).toBe("allowed")
      expect(yield* consentOf(alice, dm.id)).toBe("allowed")
      expect(yield* consentOf(bob, group.id)).toBe("unknown")
      expect(yield* consentOf(bob, dm.id)).toBe("unknown")
      // Unknown is still listed by default.
      expect((yield* listed(bob)).sort()).toEqual([group.id, dm.id].sort())
      yield* (yield* bob.conversation(dm.id)).send("yes!")
      expect(yield* consentOf(bob, dm.id)).toBe("allowed")
      expect(yield* consentOf(bob, group.id)).toBe("unknown")
      // An explicit decision stands: answering again does not undo a denial.
      yield* bob.setConsent({ conversationId: group.id }, "denied")
      expect(yield* listed(bob)).toEqual([dm.id])
      expect(yield* listed(bob, { consent: ["denied"] })).toEqual([group.id])
      expect(yield* listed(bob, { consent: ["allowed"] })).toEqual([dm.id])
      const bad = yield* bob.setConsent({ conversationId: "nope" as ConversationId }, "denied").pipe(Effect.flip)
      expect(bad._tag).toBe("InvalidInput")
    }))

  it.scoped("denied on one phone: after a sync the other phone hides it from conversations() and streamMessages", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const { alice, alice2 } = yield* aliceWithPhone(net)
      const [bob, spammer] = yield* Effect.all([net.client("bob", fast), net.client("spammer", fast)])
      const friends = yield* bob.createGroup([alice.inboxId], { name: "Friends" })
      const spam = yield* spammer.createGroup([alice.inboxId], { name: "Cheap watches" })
      yield* Effect.all([alice.syncAll, alice2.syncAll], { discard: true })
      expect((yield* listed(alice2)).sort()).toEqual([friends.id, spam.id].sort())

      yield* alice.setConsent({ conversationId: spam.id }, "denied")
      yield* alice2.syncAll
      expect(yield* consentOf(alice2, spam.id)).toBe("denied")
      expect(yield* listed(alice2)).toEqual([friends.id])
      expect(yield* listed(alice)).toEqual([friends.id])

      const stream = yield* Effect.fork(
        alice2.streamMessages.pipe(
          Stream.filter((m) => m.kind === "text"),
          Stream.take(2),
          Stream.runCollect,
          Effect.map(Chunk.toReadonlyArray)
        )
      )
      yield* spam.send("buy now")
      yield* friends.send("dinner at eight")
      yield* spam.send("last chance")
      yield* friends.send("bring dessert")
      const streamed = yield* Fiber.join(stream)
      expect(streamed.map((m) => m.text)).toEqual(["dinner at eight", "bring dessert"])
      // Still recorded: the messages are there for whoever asks for denied conversations.
      expect((yield* (yield* alice2.conversation(spam.id)).messages()).map((m) => m.text)).toContain("buy now")
    }))

  it.scoped("a welcome from a denied inbox is recorded but not surfaced, on every phone", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const { alice, alice2 } = yield* aliceWithPhone(net)
      const mallory = yield* net.client("mallory", fast)
      yield* alice2.setConsent({ inboxId: mallory.inboxId }, "denied")
      yield* alice.syncAll
      expect(yield* alice.consentOf({ inboxId: mallory.inboxId })).toBe("denied")
      const trap = yield* mallory.createGroup([alice.inboxId], { name: "You won!" })
      const dm = yield* mallory.findOrCreateDm(alice.inboxId)
      yield* dm.send("click here")
      yield* Effect.all([alice.syncAll, alice2.syncAll], { discard: true })
      for (const phone of [alice, alice2]) {
        expect(yield* listed(phone)).toEqual([])
        expect(yield* consentOf(phone, trap.id)).toBe("denied")
        expect(yield* consentOf(phone, dm.id)).toBe("denied")
        expect((yield* listed(phone, { consent: ["denied"] })).sort()).toEqual([trap.id, dm.id].sort())
      }
    }))

  it.scoped("a denied DM stays denied across its stitched groups", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast)])
      // Both start the DM at once: two MLS groups under one conversation.
      const atAlice = yield* alice.findOrCreateDm(bob.inboxId)
      const atBob = yield* bob.findOrCreateDm(alice.inboxId)
      yield* Effect.all([alice.syncAll, bob.syncAll], { discard: true })
      expect((yield* atAlice.debugInfo).groupIds).toHaveLength(2)
      yield* alice.setConsent({ conversationId: atAlice.id }, "denied")
      yield* atBob.send("through my group")
      yield* alice.syncAll
      expect(yield* consentOf(alice, atAlice.id)).toBe("denied")
      expect(yield* listed(alice, { kind: "dm" })).toEqual([])
      expect((yield* atAlice.messages()).map((m) => m.text)).toContain("through my group")
    }))

  it.scoped("a new phone receives consent with the history; concurrent decisions end the same everywhere", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast)])
      const group = yield* bob.createGroup([alice.inboxId], { name: "Noise" })
      yield* alice.syncAll
      yield* alice.setConsent({ conversationId: group.id }, "denied")
      yield* alice.setConsent({ inboxId: bob.inboxId }, "allowed")
      const alice2 = yield* net.client("alice2", { ...fast, sameInboxAs: alice })
      for (let i = 0; i < 3; i++) yield* Effect.all([alice.syncAll, alice2.syncAll], { discard: true })
      expect(yield* consentOf(alice2, group.id)).toBe("denied")
      expect(yield* alice2.consentOf({ inboxId: bob.inboxId })).toBe("allowed")

      // Both phones decide about the group without hearing from each other: one decision wins on both.
      yield* alice.setConsent({ conversationId: group.id }, "allowed")
      yield* alice2.setConsent({ conversationId: group.id }, "unknown")
      for (let i = 0; i < 2; i++) yield* Effect.all([alice.syncAll, alice2.syncAll], { discard: true })
      expect(yield* consentOf(alice, group.id)).toBe(yield* consentOf(alice2, group.id))
    }))
})
