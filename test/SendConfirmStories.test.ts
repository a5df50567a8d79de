/**
 * Stories of how a sender learns its message landed. The service answers a send with the stored
 * envelopes; when they are exactly the topic's next entries after the sender's cursor, the sender
 * reads them back from that answer. Whatever lands in between (someone's message, a commit), the
 * outcome is the one a fresh read of the topic gives: same order, same epoch, nothing twice.
 */
import { describe, expect, it } from "@effect/vitest"
import { type Context, Effect } from "effect"
import type { ConversationId, GroupId } from "../src/domain/Ids.ts"
import type { DeliveryService } from "../src/services/DeliveryService.ts"
import type { CrashPoint } from "../src/services/EngineContext.ts"
import { type TestClient, TestNetwork } from "../src/testing.ts"
import { withoutCondition } from "./support/WithoutCondition.ts"

type Delivery = Context.Tag.Service<DeliveryService>

const texts = (client: TestClient, id: ConversationId) =>
  client.conversation(id).pipe(
    Effect.flatMap((c) => c.messages()),
    Effect.map((ms) => ms.filter((m) => m.kind === "text").map((m) => [m.text, m.deliveryStatus] as const))
  )

/** The sender's stored texts with the topic ids they landed at. */
const landedAt = (net: TestNetwork, client: TestClient, id: ConversationId) =>
  Effect.gen(function*() {
    const rows = yield* (yield* net.storage(client)).messages.byConversation(id, {})
    return rows.filter((m) => m.kind === "text").map((m) => [m.content, m.sequenceId] as const)
  })

/** Runs `during` once, the first time the client passes `point` after `arm` is called. */
const hook = () => {
  let armed: { readonly point: CrashPoint; readonly during: Effect.Effect<void> } | undefined
  return {
    crashPoint: (point: CrashPoint) =>
      Effect.suspend(() => {
        if (armed?.point !== point) return Effect.void
        const during = armed.during
        armed = undefined
        return during
      }),
    arm: (point: CrashPoint, during: Effect.Effect<void, unknown>) =>
      Effect.sync(() => {
        armed = { point, during: Effect.orDie(during) }
      })
  }
}

/** Every publish as "<messages> if@<end>" (conditional) or "<messages> plain". */
const recordingSends = (calls: Array<string>) => (ds: Delivery): Delivery => ({
  ...ds,
  sendGroupMessagesIf: (messages, ifTopicEndsAt) =>
    Effect.zipRight(Effect.sync(() => calls.push(`${messages.length} if@${ifTopicEndsAt}`)), ds.sendGroupMessagesIf(messages, ifTopicEndsAt)),
  sendGroupMessages: (messages) =>
    Effect.zipRight(Effect.sync(() => calls.push(`${messages.length} plain`)), ds.sendGroupMessages(messages))
})

/** Alice (her crash points hooked, her delivery wrapped) in a group with Bob, who has read it. */
const aliceWithBob = (wrapDelivery: (ds: Delivery) => Delivery) =>
  Effect.gen(function*() {
    const net = yield* TestNetwork.make
    const interleave = hook()
    const alice = yield* net.client("alice", { crashPoint: interleave.crashPoint, wrapDelivery })
    const bob = yield* net.client("bob")
    const group = yield* alice.createGroup([bob.inboxId])
    yield* bob.syncAll
    const atBob = yield* bob.conversation(group.id)
    const epochBefore = (yield* group.debugInfo).epoch
    return { net, interleave, alice, bob, group, groupId: group.id as unknown as GroupId, atBob, epochBefore }
  })

describe("confirming a send", () => {
  it.live("Alice's messages land where the service says: she and Bob hold them at the same ids, in order", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = [yield* net.client("alice", { pageSize: 4 }), yield* net.client("bob")]
      const group = yield* alice.createGroup([bob.inboxId])
      yield* group.send("one")
      yield* group.send("two")
      // More than a page at once: read back a page at a time.
      for (let i = 0; i < 10; i++) yield* group.sendOptimistic(`batch ${i}`)
      yield* group.publishPending
      const all = ["one", "two", ...Array.from({ length: 10 }, (_, i) => `batch ${i}`)]
      expect(yield* texts(alice, group.id)).toEqual(all.map((t) => [t, "published"]))

      const ids = (yield* landedAt(net, alice, group.id)).map(([, id]) => id)
      const page = yield* net.delivery.queryGroupMessages({ groupId: group.id as unknown as GroupId, afterSequenceId: 0n, limit: 100 })
      expect(ids).toEqual(page.items.slice(1).map((e) => e.sequenceId))
      yield* bob.syncAll
      expect(yield* landedAt(net, bob, group.id)).toEqual(yield* landedAt(net, alice, group.id))
      // Alice's cursor is at the topic's end: her next sync reads nothing again.
      const again = yield* alice.syncAll
      expect(again.messages).toBe(0)
    })))

  it.live("Bob's message lands between Alice's write-ahead and her send: she reads it, before her own", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const interleave = hook()
      const alice = yield* net.client("alice", { crashPoint: interleave.crashPoint })
      const bob = yield* net.client("bob")
      const group = yield* alice.createGroup([bob.inboxId])
      yield* group.send("hello")
      yield* bob.syncAll
      const atBob = yield* bob.conversation(group.id)

      yield* group.sendOptimistic("first")
      yield* group.sendOptimistic("second")
      yield* interleave.arm("publish.afterWriteAheadBeforeSend", atBob.send("bob, in between"))
      yield* group.publishPending

      const expected = [["hello", "published"], ["bob, in between", "published"], ["first", "published"], ["second", "published"]]
      expect(yield* texts(alice, group.id)).toEqual(expected)
      yield* bob.syncAll
      expect(yield* texts(bob, group.id)).toEqual(expected)
      expect(yield* landedAt(net, bob, group.id)).toEqual(yield* landedAt(net, alice, group.id))
    })))

  it.live("Bob removes Carol while Alice's send is written ahead: it goes out once, at the new epoch, and Bob reads it", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const interleave = hook()
      const alice = yield* net.client("alice", { crashPoint: interleave.crashPoint })
      const [bob, carol] = [yield* net.client("bob"), yield* net.client("carol")]
      const group = yield* alice.createGroup([bob.inboxId, carol.inboxId])
      const groupId = group.id as unknown as GroupId
      yield* group.send("hello")
      yield* bob.syncAll
      yield* carol.syncAll
      const atBob = yield* bob.conversation(group.id)
      const topicBefore = (yield* net.delivery.queryGroupMessages({ groupId, afterSequenceId: 0n, limit: 100 })).items

      // Alice's message is encrypted and stored (written ahead) at the epoch she holds; before
      // it goes out, Bob's removal of Carol lands.
      yield* interleave.arm("publish.afterWriteAheadBeforeSend", atBob.removeMembers([carol.inboxId]))
      yield* group.send("after carol left")

      const added = (yield* net.delivery.queryGroupMessages({ groupId, afterSequenceId: 0n, limit: 100 })).items
        .slice(topicBefore.length)
      expect(added).toHaveLength(2)
      const [removal, message] = yield* Effect.forEach(added, (e) => net.crypto.inspect(e.payload))
      expect(removal!.kind).toBe("commit")
      // Not the bytes written ahead at Carol's last epoch: derived again after the removal.
      expect(message).toEqual({ kind: "application", groupId, epoch: removal!.epoch + 1n })

      const expected = [["hello", "published"], ["after carol left", "published"]]
      expect(yield* texts(alice, group.id)).toEqual(expected)
      yield* bob.syncAll
      expect(yield* texts(bob, group.id)).toEqual(expected)
      yield* carol.syncAll
      expect(yield* texts(carol, group.id)).toEqual([["hello", "published"]])
    })))

  it.live("Bob adds Dave after Alice last read the group: her send does not land before the add, so Dave reads it", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, dave] = [yield* net.client("alice"), yield* net.client("bob"), yield* net.client("dave")]
      const group = yield* alice.createGroup([bob.inboxId])
      const groupId = group.id as unknown as GroupId
      yield* group.send("hello")
      yield* bob.syncAll
      // Alice has read the topic to its end; Bob's add lands after that, and she does not sync.
      yield* (yield* bob.conversation(group.id)).addMembers([dave.inboxId])
      const epochAfterAdd = (yield* (yield* bob.conversation(group.id)).debugInfo).epoch
      yield* group.send("welcome, dave")

      const topic = (yield* net.delivery.queryGroupMessages({ groupId, afterSequenceId: 0n, limit: 100 })).items
      const headers = yield* Effect.forEach(topic, (e) => net.crypto.inspect(e.payload))
      // Sent once, after the add and at its epoch: not at the epoch Alice held when she sent.
      expect(headers.map((h) => h.kind)).toEqual(["commit", "application", "commit", "application"])
      expect(headers[3]!.epoch).toBe(epochAfterAdd)
      yield* dave.syncAll
      expect(yield* texts(dave, group.id)).toEqual([["welcome, dave", "published"]])
      expect(yield* texts(alice, group.id)).toEqual([["hello", "published"], ["welcome, dave", "published"]])
    })))

  it.live("Alice writes and then changes the group four times while Bob's send is on its way: it lands only after all of it, at her last epoch", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const calls: Array<string> = []
      let beforeSecondTry: Effect.Effect<void, unknown> | undefined
      const wrapDelivery = (ds: Delivery): Delivery => ({
        ...ds,
        sendGroupMessagesIf: (messages, ifTopicEndsAt) =>
          Effect.suspend(() => {
            calls.push(`if@${ifTopicEndsAt}`)
            const during = calls.length === 2 ? beforeSecondTry : undefined
            return Effect.zipRight(during === undefined ? Effect.void : Effect.orDie(during), ds.sendGroupMessagesIf(messages, ifTopicEndsAt))
          }),
        sendGroupMessages: (messages) => Effect.zipRight(Effect.sync(() => calls.push("plain")), ds.sendGroupMessages(messages))
      })
      const alice = yield* net.client("alice")
      const bob = yield* net.client("bob", { wrapDelivery })
      const group = yield* alice.createGroup([bob.inboxId])
      const groupId = group.id as unknown as GroupId
      yield* bob.syncAll
      const atBob = yield* bob.conversation(group.id)
      // Bob last read the topic before Alice's message; her key updates land after his read of it.
      yield* group.send("hi bob")
      beforeSecondTry = Effect.forEach([1, 2, 3, 4], () => group.updateKeys, { discard: true })
      yield* atBob.send("hi alice")

      // Refused where he had read to, then where he read to next; the third try lands.
      expect(calls).toEqual(["if@1", "if@2", "if@6"])
      const topic = (yield* net.delivery.queryGroupMessages({ groupId, afterSequenceId: 0n, limit: 100 })).items
      const headers = yield* Effect.forEach(topic, (e) => net.crypto.inspect(e.payload))
      expect(headers.map((h) => h.kind)).toEqual(["commit", "application", "commit", "commit", "commit", "commit", "application"])
      expect(headers[6]!.epoch).toBe((yield* group.debugInfo).epoch)
      yield* alice.syncAll
      const expected = [["hi bob", "published"], ["hi alice", "published"]]
      expect(yield* texts(alice, group.id)).toEqual(expected)
      expect(yield* texts(bob, group.id)).toEqual(expected)
    })))

  it.live("the answer to Alice's send is lost: she reads her message back from the topic, where it is once", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = [yield* net.client("alice"), yield* net.client("bob")]
      const group = yield* alice.createGroup([bob.inboxId])
      const groupId = group.id as unknown as GroupId
      yield* group.send("hello")
      yield* net.faults.loseNextResponse(1, "sendGroupMessagesIf")
      yield* group.send("did this arrive?")
      expect((yield* net.faults.stats).lostResponses).toBe(1)

      const topic = (yield* net.delivery.queryGroupMessages({ groupId, afterSequenceId: 0n, limit: 100 })).items
      expect(topic).toHaveLength(3)
      const expected = [["hello", "published"], ["did this arrive?", "published"]]
      expect(yield* texts(alice, group.id)).toEqual(expected)
      yield* bob.syncAll
      expect(yield* texts(bob, group.id)).toEqual(expected)
      expect(yield* landedAt(net, bob, group.id)).toEqual(yield* landedAt(net, alice, group.id))
    })))

  it.live("Bob changes the group 3 times while Alice's two queued messages are written ahead: they land only after his changes, at his last epoch", () =>
    Effect.scoped(Effect.gen(function*() {
      const calls: Array<string> = []
      const { alice, atBob, bob, epochBefore, group, groupId, interleave, net } = yield* aliceWithBob(recordingSends(calls))

      yield* group.sendOptimistic("are you there?")
      yield* group.sendOptimistic("hello?")
      yield* interleave.arm(
        "publish.afterWriteAheadBeforeSend",
        Effect.forEach(["name 0", "name 1", "name 2"], (name) => atBob.updateMetadata({ name }), { discard: true })
      )
      calls.length = 0
      yield* group.publishPending

      // Refused whole where Alice read to, then derived again after reading Bob's changes.
      expect(calls).toEqual(["2 if@1", "2 if@4"])
      const topic = (yield* net.delivery.queryGroupMessages({ groupId, afterSequenceId: 0n, limit: 100 })).items
      const applications = (yield* Effect.forEach(topic, (e) => net.crypto.inspect(e.payload)))
        .filter((h) => h.kind === "application")
      expect(applications.map((h) => h.epoch)).toEqual([epochBefore + 3n, epochBefore + 3n])
      const both = [["are you there?", "published"], ["hello?", "published"]]
      yield* atBob.sync
      expect(yield* texts(bob, group.id)).toEqual(both)
      expect(yield* texts(alice, group.id)).toEqual(both)
    })))

  it.live("Alice removes and re-adds Bob while his two queued messages are written ahead: nothing of them lands, and he holds them failed", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const interleave = hook()
      const alice = yield* net.client("alice")
      const bob = yield* net.client("bob", { crashPoint: interleave.crashPoint })
      const group = yield* alice.createGroup([bob.inboxId])
      const groupId = group.id as unknown as GroupId
      yield* bob.syncAll
      const atBob = yield* bob.conversation(group.id)

      yield* atBob.sendOptimistic("still here?")
      yield* atBob.sendOptimistic("hello?")
      yield* interleave.arm(
        "publish.afterWriteAheadBeforeSend",
        Effect.zipRight(group.removeMembers([bob.inboxId]), group.addMembers([bob.inboxId]))
      )
      yield* Effect.either(atBob.publishPending)

      // Encrypted before his removal, they would have landed after his return, where Alice reads
      // them while Bob, who read his removal, holds them failed. Refused, they never land.
      const topic = (yield* net.delivery.queryGroupMessages({ groupId, afterSequenceId: 0n, limit: 100 })).items
      const headers = yield* Effect.forEach(topic, (e) => net.crypto.inspect(e.payload))
      expect(headers.map((h) => h.kind)).toEqual(["commit", "commit", "commit"])
      expect(yield* texts(bob, group.id)).toEqual([["still here?", "failed"], ["hello?", "failed"]])
      yield* Effect.all([alice.syncAll, bob.syncAll])
      expect(yield* texts(alice, group.id)).toEqual([])
      const rejoined = yield* bob.conversation(group.id)
      expect(yield* rejoined.state).toBe("active")
    })))

  it.live("Bob adds Dave while Alice's add of Carol is on its way: hers is refused, not stored, and goes again at his epoch", () =>
    Effect.scoped(Effect.gen(function*() {
      const calls: Array<string> = []
      const { alice, atBob, bob, group, groupId, interleave, net } = yield* aliceWithBob(recordingSends(calls))
      const [carol, dave] = [yield* net.client("carol"), yield* net.client("dave")]
      yield* interleave.arm("publish.afterWriteAheadBeforeSend", atBob.addMembers([dave.inboxId]))
      calls.length = 0
      yield* group.addMembers([carol.inboxId])

      // Refused where Alice had read to; derived again after reading Bob's add, it lands.
      expect(calls).toEqual(["1 if@1", "1 if@2"])
      const topic = (yield* net.delivery.queryGroupMessages({ groupId, afterSequenceId: 0n, limit: 100 })).items
      const headers = yield* Effect.forEach(topic, (e) => net.crypto.inspect(e.payload))
      // No commit of an epoch gone for every member to download and skip: each follows the one before.
      expect(headers.map((h) => [h.kind, h.epoch])).toEqual([["commit", 0n], ["commit", 1n], ["commit", 2n]])
      for (const client of [alice, bob, carol, dave]) yield* client.syncAll
      const members = yield* Effect.forEach([alice, bob, carol, dave], (c) =>
        Effect.flatMap(c.conversation(group.id), (g) => g.members).pipe(Effect.map((ms) => ms.map((m) => m.inboxId).sort())))
      for (const list of members) expect(list).toEqual([alice, bob, carol, dave].map((c) => c.inboxId).sort())
    })))

  // The receivers' age rule, for messages from a client that publishes without the condition.
  for (const [changes, story] of [
    [3, "still within maxPastEpochs: Bob reads them in the epoch they were sent in"],
    [4, "too old for every member: they go again at the current epoch, and Bob reads each once"]
  ] as const) {
    it.live(`Bob changes the group ${changes} times while Alice's two messages go without the condition: ${story}`, () =>
      Effect.scoped(Effect.gen(function*() {
        const { alice, atBob, bob, epochBefore, group, groupId, interleave, net } = yield* aliceWithBob(withoutCondition)

        // Encrypted and written ahead at Alice's epoch; Bob's changes land before they go out.
        const renames = Effect.forEach(Array.from({ length: changes }, (_, i) => `name ${i}`), (name) =>
          atBob.updateMetadata({ name }), { discard: true })
        yield* group.sendOptimistic("are you there?")
        yield* group.sendOptimistic("hello?")
        yield* interleave.arm("publish.afterWriteAheadBeforeSend", renames)
        yield* group.publishPending

        const topic = (yield* net.delivery.queryGroupMessages({ groupId, afterSequenceId: 0n, limit: 100 })).items
        const applications = (yield* Effect.forEach(topic, (e) => net.crypto.inspect(e.payload)))
          .filter((h) => h.kind === "application")
        // Every member skips a message more than maxPastEpochs (3) back: then it goes again.
        const late = epochBefore + BigInt(changes)
        expect(applications.map((h) => h.epoch)).toEqual(
          changes <= 3 ? [epochBefore, epochBefore] : [epochBefore, epochBefore, late, late]
        )
        const read = yield* atBob.sync
        expect(read.skippedBy["tooOldApplication"] ?? 0).toBe(changes <= 3 ? 0 : 2)
        const both = [["are you there?", "published"], ["hello?", "published"]]
        expect(yield* texts(bob, group.id)).toEqual(both)
        expect(yield* texts(alice, group.id)).toEqual(both)
        expect(yield* landedAt(net, bob, group.id)).toEqual(yield* landedAt(net, alice, group.id))
      })))
  }
})
