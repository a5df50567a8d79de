/**
 * Stories of optimistic sends: messages queued with `sendOptimistic` are stored at once (each in
 * its own transaction), then `publishPending` writes the whole batch ahead in one
 * transaction and sends it in one delivery call. Restarts and crashes around that may delay a
 * message, never lose it, send it twice or change its order.
 */
import { SqliteClient } from "@effect/sql-sqlite-node"
import { describe, expect, it } from "@effect/vitest"
import { type Context, Effect, Exit, Layer } from "effect"
import type { ConversationId, GroupId } from "../src/domain/Ids.ts"
import type { DeliveryService } from "../src/services/DeliveryService.ts"
import { simulatedCrashOf, type TestClient, TestNetwork } from "../src/testing.ts"

type Delivery = Context.Tag.Service<DeliveryService>

const textsWithStatus = (client: TestClient, id: ConversationId) =>
  client.conversation(id).pipe(
    Effect.flatMap((c) => c.messages()),
    Effect.map((ms) => ms.filter((m) => m.kind === "text").map((m) => [m.text, m.deliveryStatus] as const))
  )

const texts = (client: TestClient, id: ConversationId) =>
  Effect.map(textsWithStatus(client, id), (ms) => ms.map(([text]) => text))

/** How many envelopes the group's topic holds. */
const topicLength = (net: TestNetwork, id: ConversationId) =>
  net.delivery.queryGroupMessages({ groupId: id as unknown as GroupId, afterSequenceId: 0n, limit: 100 }).pipe(
    Effect.map((page) => page.items.length)
  )

/** Counts Alice's calls that publish group messages, and the messages in each. */
/** The size of every publish, conditional or not. */
const countingSends = (calls: Array<number>) => (ds: Delivery): Delivery => ({
  ...ds,
  sendGroupMessages: (messages) => Effect.suspend(() => (calls.push(messages.length), ds.sendGroupMessages(messages))),
  sendGroupMessagesIf: (messages, ifTopicEndsAt) =>
    Effect.suspend(() => (calls.push(messages.length), ds.sendGroupMessagesIf(messages, ifTopicEndsAt)))
})

const batch = ["one", "two", "three", "four", "five"]

describe("optimistic batch", () => {
  it.live("a queued message whose stored row was damaged fails alone: the ones queued after it still go out", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = [yield* net.client("alice"), yield* net.client("bob")]
      const group = yield* alice.createGroup([bob.inboxId])
      for (const text of ["damaged", "intact one", "intact two"]) yield* group.sendOptimistic(text)
      // Another connection damages the first queued intent's row, as a bad disk or a bug would.
      yield* Effect.gen(function*() {
        const raw = yield* SqliteClient.SqliteClient
        yield* raw`UPDATE converge_intents SET data = substr(data, 1, length(data) - 5)
          WHERE id = (SELECT MIN(id) FROM converge_intents WHERE state = 'ToPublish')`
      }).pipe(Effect.provide(Layer.orDie(SqliteClient.layer({ filename: alice.filename }))))

      yield* group.publishPending
      yield* bob.syncAll
      expect(yield* texts(bob, group.id)).toEqual(["intact one", "intact two"])
      expect(yield* textsWithStatus(alice, group.id)).toEqual([
        ["damaged", "failed"],
        ["intact one", "published"],
        ["intact two", "published"]
      ])
    })))

  it.live("Alice queues five messages and restarts before publishing: they go out once, in order, in one call", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const calls: Array<number> = []
      const [alice, bob] = [yield* net.client("alice", { wrapDelivery: countingSends(calls) }), yield* net.client("bob")]
      const group = yield* alice.createGroup([bob.inboxId])
      const before = yield* topicLength(net, group.id)
      calls.length = 0
      for (const text of batch) yield* group.sendOptimistic(text)
      expect(calls).toEqual([])

      yield* net.restart(alice)
      expect(yield* textsWithStatus(alice, group.id)).toEqual(batch.map((text) => [text, "unpublished"]))
      yield* (yield* alice.conversation(group.id)).publishPending
      expect(calls).toEqual([batch.length])
      expect(yield* textsWithStatus(alice, group.id)).toEqual(batch.map((text) => [text, "published"]))
      expect(yield* (yield* net.storage(alice)).intents.byState(["ToPublish", "Published", "Committed"])).toEqual([])

      yield* bob.syncAll
      expect(yield* texts(bob, group.id)).toEqual(batch)
      expect(yield* topicLength(net, group.id)).toBe(before + batch.length)
      // Nothing is left to send: another publish sends nothing.
      yield* (yield* alice.conversation(group.id)).publishPending
      expect(calls).toEqual([batch.length])
    })))

  it.live("a crash after the batch is written ahead: after the restart the same batch goes out once, in order", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = [yield* net.client("alice"), yield* net.client("bob")]
      const group = yield* alice.createGroup([bob.inboxId])
      const before = yield* topicLength(net, group.id)
      for (const text of batch) yield* group.sendOptimistic(text)
      yield* net.crashAt(alice, "publish.afterWriteAheadBeforeSend")
      const crashed = yield* Effect.exit(group.publishPending)
      expect(Exit.isFailure(crashed) && simulatedCrashOf(crashed.cause)?.point).toBe("publish.afterWriteAheadBeforeSend")
      expect(yield* topicLength(net, group.id)).toBe(before)

      yield* net.restart(alice)
      const written = yield* (yield* net.storage(alice)).intents.byState(["Published"])
      expect(written).toHaveLength(batch.length)
      yield* (yield* alice.conversation(group.id)).publishPending
      yield* bob.syncAll
      expect(yield* texts(bob, group.id)).toEqual(batch)
      expect(yield* textsWithStatus(alice, group.id)).toEqual(batch.map((text) => [text, "published"]))
      // The topic holds each written-ahead payload exactly once.
      const page = yield* net.delivery.queryGroupMessages({ groupId: group.id as unknown as GroupId, afterSequenceId: 0n, limit: 100 })
      const same = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((x, i) => x === b[i])
      for (const intent of written) expect(page.items.filter((e) => same(e.payload, intent.payload!))).toHaveLength(1)
    })))

  it.live("a crash after the batch is sent, before it is read back: the restarted sender confirms it without sending again", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = [yield* net.client("alice"), yield* net.client("bob")]
      const group = yield* alice.createGroup([bob.inboxId])
      const before = yield* topicLength(net, group.id)
      for (const text of batch) yield* group.sendOptimistic(text)
      yield* net.crashAt(alice, "publish.afterSendBeforeSync")
      const crashed = yield* Effect.exit(group.publishPending)
      expect(Exit.isFailure(crashed) && simulatedCrashOf(crashed.cause)?.point).toBe("publish.afterSendBeforeSync")

      yield* net.restart(alice)
      yield* alice.syncAll
      yield* (yield* alice.conversation(group.id)).publishPending
      expect(yield* textsWithStatus(alice, group.id)).toEqual(batch.map((text) => [text, "published"]))
      expect(yield* topicLength(net, group.id)).toBe(before + batch.length)
      yield* bob.syncAll
      expect(yield* texts(bob, group.id)).toEqual(batch)
    })))

  it.live("Bob writes while Alice's batch waits: both read everything once, in the topic's order", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = [yield* net.client("alice"), yield* net.client("bob")]
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      yield* group.sendOptimistic("alice 1")
      yield* (yield* bob.conversation(group.id)).send("bob, meanwhile")
      yield* group.sendOptimistic("alice 2")
      yield* group.publishPending
      yield* bob.syncAll
      const order = ["bob, meanwhile", "alice 1", "alice 2"]
      expect(yield* texts(bob, group.id)).toEqual(order)
      expect(yield* texts(alice, group.id)).toEqual(order)
      expect(yield* textsWithStatus(alice, group.id)).toEqual(order.map((text) => [text, "published"]))
    })))

  it.live("Bob renames the group between the two calls of Alice's 55 queued messages: 50 land, 5 go again at his epoch", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const calls: Array<number> = []
      let betweenCalls: Effect.Effect<void, unknown> | undefined
      // Bob's rename lands as Alice's second call leaves.
      const wrapDelivery = (ds: Delivery): Delivery =>
        countingSends(calls)({
          ...ds,
          sendGroupMessagesIf: (messages, ifTopicEndsAt) =>
            Effect.suspend(() => {
              const during = calls.length === 2 ? betweenCalls : undefined
              return Effect.zipRight(during === undefined ? Effect.void : Effect.orDie(during), ds.sendGroupMessagesIf(messages, ifTopicEndsAt))
            })
        })
      const alice = yield* net.client("alice", { wrapDelivery })
      const bob = yield* net.client("bob")
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      const atBob = yield* bob.conversation(group.id)
      const many = Array.from({ length: 55 }, (_, i) => `queued ${i}`)
      for (const text of many) yield* group.sendOptimistic(text)
      betweenCalls = atBob.updateMetadata({ name: "renamed" })
      calls.length = 0
      yield* group.publishPending

      // 50, then 5 refused behind the rename, then the 5 derived again at its epoch.
      expect(calls).toEqual([50, 5, 5])
      const groupId = group.id as unknown as GroupId
      const topic = (yield* net.delivery.queryGroupMessages({ groupId, afterSequenceId: 0n, limit: 100 })).items
      const headers = yield* Effect.forEach(topic, (e) => net.crypto.inspect(e.payload))
      const epoch = headers[0]!.epoch
      expect(headers.slice(1, 51).every((h) => h.kind === "application" && h.epoch === epoch + 1n)).toBe(true)
      expect(headers[51]).toMatchObject({ kind: "commit", epoch: epoch + 1n })
      expect(headers.slice(52).map((h) => [h.kind, h.epoch])).toEqual(Array.from({ length: 5 }, () => ["application", epoch + 2n]))
      yield* bob.syncAll
      expect(yield* textsWithStatus(alice, group.id)).toEqual(many.map((text) => [text, "published"]))
      expect(yield* texts(bob, group.id)).toEqual(many)
    })))

  it.live("a queued message moves its conversation to the top of Alice's list before it is published", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = [yield* net.client("alice"), yield* net.client("bob"), yield* net.client("carol")]
      const older = yield* alice.createGroup([bob.inboxId])
      const newer = yield* alice.createGroup([carol.inboxId])
      yield* newer.send("hello carol")
      expect((yield* alice.conversations()).map((c) => c.id)).toEqual([newer.id, older.id])
      yield* older.sendOptimistic("hello bob")
      expect((yield* alice.conversations()).map((c) => c.id)).toEqual([older.id, newer.id])
      yield* net.restart(alice)
      expect((yield* alice.conversations()).map((c) => c.id)).toEqual([older.id, newer.id])
    })))
})
