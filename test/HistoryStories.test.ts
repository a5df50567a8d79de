/**
 * A new phone shows what the old one holds: the history of every conversation travels from the
 * inbox's other installations, end-to-end encrypted in their own-devices group, resumes after a
 * crash, and never reaches a revoked device.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Option, TestClock } from "effect"
import { OWN_DEVICES_GROUP_NAME } from "../src/domain/HistoryArchive.ts"
import type { ConversationId } from "../src/domain/Ids.ts"
import type { Message } from "../src/domain/Model.ts"
import { Reply } from "../src/domain/codecs/Reply.ts"
import { simulatedCrashOf, type TestClient, TestNetwork } from "../src/testing.ts"

/** Every sync checks the members' installations (the periodic check, without waiting for it). */
const fast = { installationCheckInterval: "0 millis" } as const

/** What a reader sees of a message: who sent it, what, when, and whether it went out. */
const shown = (m: Message) => ({
  id: m.id,
  sender: m.senderInstallationId,
  kind: m.kind,
  text: m.text,
  sentAtNs: m.sentAtNs,
  status: m.deliveryStatus
})

const historyOf = (client: TestClient, id: ConversationId) =>
  client.conversation(id).pipe(
    Effect.flatMap((c) => c.messages()),
    Effect.map((ms) => ms.map(shown))
  )

/** Rounds of the two devices taking turns: request, answer, import. */
const settle = (...clients: ReadonlyArray<TestClient>) =>
  Effect.forEach([1, 2, 3], () => Effect.forEach(clients, (c) => c.syncAll, { discard: true }), { discard: true })

describe("History for new installations", () => {
  it.scoped("a second phone sees the whole earlier history: groups, a DM and a group it was removed from", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast), net.client("carol", fast)])
      const club = yield* alice.createGroup([bob.inboxId], { name: "Club" })
      yield* club.send("welcome to the club")
      yield* bob.syncAll
      yield* (yield* bob.conversation(club.id)).send("glad to be here")
      const dm = yield* alice.findOrCreateDm(carol.inboxId)
      yield* dm.send("hi Carol")
      yield* carol.syncAll
      yield* (yield* carol.conversation(dm.id)).send("hi Alice")
      // Bob's group, where Alice says something and is then removed.
      const gone = yield* bob.createGroup([alice.inboxId], { name: "Gone" })
      yield* gone.send("before the split")
      yield* alice.syncAll
      yield* (yield* alice.conversation(gone.id)).send("I was here")
      yield* bob.syncAll
      yield* gone.removeMembers([alice.inboxId])
      yield* alice.syncAll
      expect(yield* (yield* alice.conversation(gone.id)).state).toBe("inactive")

      // Alice's new phone.
      const alice2 = yield* net.client("alice2", { ...fast, sameInboxAs: alice })
      yield* settle(alice, alice2)
      expect(yield* alice2.historySync).toMatchObject({ state: "done" })

      for (const id of [club.id, dm.id, gone.id]) {
        const before = yield* historyOf(alice, id)
        expect(before.length).toBeGreaterThan(1)
        expect(yield* historyOf(alice2, id)).toEqual(before)
      }
      expect(yield* (yield* alice2.conversation(gone.id)).state).toBe("inactive")
      const listed = (yield* alice2.conversations({ includeInactive: true })).map((c) => c.id).sort()
      expect(listed).toEqual([club.id, dm.id, gone.id].sort())
      // The phone is a member of the groups Alice is still in, and reads on from there.
      yield* (yield* bob.conversation(club.id)).send("a new day")
      yield* alice2.syncAll
      expect((yield* historyOf(alice2, club.id)).map((m) => m.text)).toContain("a new day")
      expect((yield* alice2.historySync).messagesImported).toBeGreaterThan(0)
      // The pages went through the own-devices group, and the delivery service saw only ciphertext.
      const own = (yield* (yield* net.storage(alice)).groups.list({ includeInactive: false }))
        .filter((g) => g.name === OWN_DEVICES_GROUP_NAME)
      expect(own).toHaveLength(1)
      const carried = yield* net.inspect.groupMessages(own[0]!.id)
      expect(carried.length).toBeGreaterThan(2)
      for (const envelope of carried) expect(Buffer.from(envelope.payload).toString("latin1")).not.toContain("hi Carol")
      expect((yield* alice2.conversations()).map((c) => c.id)).not.toContain(own[0]!.id)
    }))

  it.scoped("after the import the phone stays level: what reaches only the old phone is passed on", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      // Installation checks fall due only every 5 seconds, and the test clock stands still:
      // the new phone is not added to Bob's group (Alice's phone checked it when it joined)
      // before Alice is removed from it. The own-devices group is new, so checked at once.
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* bob.createGroup([alice.inboxId], { name: "Short-lived" })
      yield* alice.syncAll
      const alice2 = yield* net.client("alice2", { sameInboxAs: alice })
      yield* settle(alice, alice2)
      expect(yield* alice2.historySync).toMatchObject({ state: "done" })
      const before = (yield* alice2.historySync).pagesImported

      yield* group.send("only the old phone is in here")
      yield* alice.syncAll
      yield* group.removeMembers([alice.inboxId])
      yield* settle(alice, alice2)
      expect((yield* historyOf(alice2, group.id)).map((m) => m.text)).toContain("only the old phone is in here")
      expect(yield* historyOf(alice2, group.id)).toEqual(yield* historyOf(alice, group.id))
      expect((yield* alice2.historySync).pagesImported).toBeGreaterThan(before)
    }))

  it.scoped("a deletion that reaches only the old phone after the import is passed on", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", { protocolVersion: 3 }), net.client("bob", { protocolVersion: 3 })])
      const group = yield* bob.createGroup([alice.inboxId], { name: "Loose lips" })
      // An older build cannot join this group: all it reads there comes through the old phone.
      yield* group.setMinProtocolVersion(3)
      const slip = yield* group.send("the door code is 4711")
      yield* group.send("see you there")
      yield* alice.syncAll
      const alice2 = yield* net.client("alice2", { sameInboxAs: alice, protocolVersion: 2 })
      yield* settle(alice, alice2)
      expect((yield* historyOf(alice2, group.id)).map((m) => m.text)).toContain("the door code is 4711")

      yield* group.deleteMessage(slip)
      yield* settle(alice, alice2)
      const [atOld, atNew] = yield* Effect.forEach([alice, alice2], (device) =>
        device.conversation(group.id).pipe(Effect.flatMap((c) => c.messages())))
      expect(atOld!.find((m) => m.id === slip)).toMatchObject({ deleted: true, text: "" })
      expect(atNew!.find((m) => m.id === slip)).toMatchObject({ deleted: true, text: "" })
      expect(atNew!.map((m) => m.text)).toContain("see you there")
      expect((yield* group.members).find((m) => m.inboxId === alice.inboxId)?.installationIds).toEqual([alice.installationId])
      const held = yield* (yield* net.storage(alice2)).messages.get(slip)
      expect(Option.map(held, (m) => m.content)).toEqual(Option.some(""))
    }))

  it.scoped("a disappearing message whose deadline passes on the way is never stored by the new phone", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast)])
      const group = yield* alice.createGroup([bob.inboxId], { name: "Fleeting" })
      const kept = yield* group.send("this one stays")
      yield* group.updateMetadata({ disappearAfterNs: 60_000_000_000n })
      const doomed = yield* group.send("gone in a minute")
      const alice2 = yield* net.client("alice2", { ...fast, sameInboxAs: alice })
      // The new phone asks, the old one answers while the message still lives...
      yield* Effect.forEach([alice, alice2, alice], (c) => c.syncAll, { discard: true })
      const answered = (yield* historyOf(alice, group.id)).map((m) => m.id)
      expect(answered).toContain(doomed)
      // ...and the page is read after the deadline: everything in it but that message is imported.
      yield* TestClock.adjust("61 seconds")
      yield* alice2.syncAll

      expect(yield* alice2.historySync).toMatchObject({ state: "done", messagesImported: answered.length - 1 })
      const ids = (yield* historyOf(alice2, group.id)).map((m) => m.id)
      expect(ids).toContain(kept)
      expect(ids).not.toContain(doomed)
      expect(yield* (yield* net.storage(alice2)).messages.get(doomed)).toEqual(Option.none())
    }))

  it.scoped("the new phone shows direct messages with their group, typed content and deletions as the old one does", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast), net.client("carol", fast)])
      const trip = yield* alice.createGroup([bob.inboxId, carol.inboxId], { name: "Trip" })
      const question = yield* trip.send("who brings the tent?")
      const secret = yield* trip.send("my phone number is 555-0100")
      yield* trip.deleteMessage(secret)
      yield* Effect.all([bob.syncAll, carol.syncAll])
      const atBob = yield* bob.conversation(trip.id)
      yield* atBob.sendContent(Reply.encode(new Reply({ reference: question, text: "me!" })))
      yield* atBob.sendDirect(alice.inboxId, "psst: it only fits two")
      yield* alice.syncAll

      const alice2 = yield* net.client("alice2", { ...fast, sameInboxAs: alice })
      yield* settle(alice, alice2)
      expect(yield* alice2.historySync).toMatchObject({ state: "done" })
      const view = (m: Message) => ({
        id: m.id,
        text: m.text,
        deleted: m.deleted,
        groupContext: m.groupContext,
        content: m.content === null ? null : { type: m.content.type, bytes: [...m.content.bytes] }
      })
      const [before, after] = yield* Effect.forEach([alice, alice2], (device) =>
        Effect.gen(function*() {
          const group = yield* device.conversation(trip.id)
          return { group: (yield* group.messages()).map(view), direct: (yield* group.directMessages()).map(view) }
        }))
      expect(after).toEqual(before)
      const deleted = after!.group.find((m) => m.id === secret)
      expect(deleted).toMatchObject({ deleted: true, text: "" })
      expect(after!.group.some((m) => m.content?.type === Reply.contentType)).toBe(true)
      expect(after!.direct).toMatchObject([{ text: "psst: it only fits two", groupContext: trip.id }])
    }))

  it.scoped("a crash halfway through the import resumes where it stopped, without duplicates", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      // Alice answers in pages of five messages.
      const alice = yield* net.client("alice", { ...fast, historyPageItems: 5 })
      const bob = yield* net.client("bob", fast)
      const group = yield* alice.createGroup([bob.inboxId], { name: "Many" })
      for (let i = 0; i < 12; i++) yield* group.sendOptimistic(`message ${i}`)
      yield* group.publishPending
      const alice2 = yield* net.client("alice2", { ...fast, sameInboxAs: alice })
      yield* Effect.forEach([alice, alice2, alice], (c) => c.syncAll, { discard: true })

      yield* net.crashAt(alice2, "history.afterPage")
      const crashed = yield* Effect.exit(alice2.syncAll)
      expect(Exit.isFailure(crashed) && simulatedCrashOf(crashed.cause)?.point).toBe("history.afterPage")
      yield* net.restart(alice2)
      const halfway = yield* alice2.historySync
      expect(halfway).toMatchObject({ state: "importing", pagesImported: 1 })

      const summary = yield* alice2.syncAll
      const done = yield* alice2.historySync
      expect(done.state).toBe("done")
      expect(done.pagesImported).toBeGreaterThan(3)
      expect(summary.historyImported + halfway.messagesImported).toBe(done.messagesImported)
      const messages = yield* historyOf(alice2, group.id)
      expect(new Set(messages.map((m) => m.id)).size).toBe(messages.length)
      expect(messages).toEqual(yield* historyOf(alice, group.id))
    }))

  it.scoped("a device revoked after asking receives no history", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast)])
      const group = yield* alice.createGroup([bob.inboxId], { name: "Secrets" })
      yield* group.send("the old plans")
      const stolen = yield* net.client("stolen", { ...fast, sameInboxAs: alice })
      // The stolen phone joins Alice's own-devices group and asks; then Alice revokes it.
      yield* alice.syncAll
      yield* stolen.syncAll
      expect(yield* stolen.historySync).toMatchObject({ state: "requesting" })
      yield* alice.revokeInstallation(stolen.installationId)
      yield* settle(alice, stolen)

      expect(yield* stolen.historySync).toMatchObject({ state: "requesting", pagesImported: 0, messagesImported: 0 })
      const readable = yield* stolen.conversations({ includeInactive: true })
      for (const c of readable) {
        expect((yield* c.messages()).map((m) => m.text)).not.toContain("the old plans")
      }
      // A phone registered afterwards still gets it.
      const alice3 = yield* net.client("alice3", { ...fast, sameInboxAs: alice })
      yield* settle(alice, alice3)
      expect((yield* historyOf(alice3, group.id)).map((m) => m.text)).toContain("the old plans")
    }))

  it.scoped("a phone that is in no conversation yet still brings a new phone into history sync", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast)])
      // Alice has no conversation yet, only a decision: she wants nothing from Bob.
      yield* alice.setConsent({ inboxId: bob.inboxId }, "denied")
      yield* alice.syncAll
      // Her new phone registers itself; the old phone learns of it only from the network.
      const alice2 = yield* net.client("alice2", { ...fast, sameInboxAs: alice })
      yield* settle(alice, alice2)

      expect(yield* alice2.historySync).toMatchObject({ state: "done" })
      expect(yield* alice2.consentOf({ inboxId: bob.inboxId })).toBe("denied")
      // What the old phone starts afterwards reaches the new one too.
      const club = yield* alice.createGroup([], { name: "Club" })
      yield* club.send("first words")
      yield* settle(alice, alice2)
      expect((yield* historyOf(alice2, club.id)).map((m) => m.text)).toContain("first words")
    }))
})
