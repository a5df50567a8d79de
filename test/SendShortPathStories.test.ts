/**
 * Stories of `send`'s short path: with nothing queued ahead, the message is written ahead at once
 * and its round skips what it knows is done (it reads the topic first only when the topic moved
 * since the group was last read). What it skips must really be done: welcomes still owed go out,
 * every local write is on disk before the message leaves, and a refused send answers with the
 * same error as the usual path, in the same order.
 */
import { describe, expect, it } from "@effect/vitest"
import { type Context, Effect, Fiber, Queue } from "effect"
import { DeliveryError } from "../src/domain/Errors.ts"
import type { DeliveryService } from "../src/services/DeliveryService.ts"
import type { Storage } from "../src/services/Storage.ts"
import { TestNetwork } from "../src/testing.ts"

type Delivery = Context.Tag.Service<DeliveryService>

describe("send's short path", () => {
  it.live("Alice's add of Carol could not send its welcome; her next message sends it, and Carol reads the message", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      let welcomesDown = false
      const wrapDelivery = (ds: Delivery): Delivery => ({
        ...ds,
        sendWelcomeMessages: (messages) =>
          welcomesDown
            ? Effect.fail(new DeliveryError({ reason: "Unavailable", retryable: true, detail: "welcomes down" }))
            : ds.sendWelcomeMessages(messages)
      })
      const alice = yield* net.client("alice", { wrapDelivery })
      const [bob, carol] = [yield* net.client("bob"), yield* net.client("carol")]
      const group = yield* alice.createGroup([bob.inboxId])
      welcomesDown = true
      yield* group.addMembers([carol.inboxId]).pipe(Effect.exit)
      welcomesDown = false
      const storage = yield* net.storage(alice)
      expect((yield* storage.intents.byState(["Committed"])).map((i) => i.kind)).toEqual(["AddMembers"])

      yield* group.send("after the add")

      expect(yield* storage.intents.byState(["Committed"])).toEqual([])
      yield* carol.syncAll
      const atCarol = yield* carol.conversation(group.id)
      expect((yield* atCarol.messages()).filter((m) => m.kind === "text").map((m) => m.text)).toEqual(["after the add"])
    })))

  it.live("another fiber writes while Alice's send reads the topic: that write too is on disk before the message leaves", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      let storage: Context.Tag.Service<Storage> | undefined
      let armed = false
      const unflushedAtSend: Array<number> = []
      const wrapDelivery = (ds: Delivery): Delivery => ({
        ...ds,
        // A consent change or another group's page, committed while the topic is read.
        queryGroupMessages: (query) =>
          Effect.zipLeft(
            ds.queryGroupMessages(query),
            armed && storage !== undefined
              ? Effect.zipRight(Effect.sleep("50 millis"), Effect.orDie(storage.cursors.set("another-fiber", 1n)))
              : Effect.void
          ),
        sendGroupMessagesIf: (messages, ifTopicEndsAt) =>
          Effect.gen(function*() {
            if (armed && storage !== undefined) unflushedAtSend.push(yield* Effect.orDie(storage.unflushedWrites))
            return yield* ds.sendGroupMessagesIf(messages, ifTopicEndsAt)
          }),
        sendGroupMessages: (messages) =>
          Effect.gen(function*() {
            if (armed && storage !== undefined) unflushedAtSend.push(yield* Effect.orDie(storage.unflushedWrites))
            return yield* ds.sendGroupMessages(messages)
          })
      })
      const alice = yield* net.client("alice", { wrapDelivery, durability: "publish" })
      const bob = yield* net.client("bob")
      storage = yield* net.storage(alice)
      const group = yield* alice.createGroup([bob.inboxId])
      // Bob writes after Alice's last read: her send, sent on the condition that the topic ends
      // where she read, is refused, and she reads the topic before she sends again.
      yield* bob.syncAll
      yield* (yield* bob.conversation(group.id)).send("hi")
      armed = true
      yield* group.send("hello")
      armed = false
      // The conditional send and the send after the read: both found the disk synced.
      expect(unflushedAtSend).toEqual([0, 0])
    })))

  it.live("Alice's send is interrupted while it reads the topic: its read is over before her next send takes the group", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      let held = false
      let readsInFlight = 0
      /** Per held read, how many other reads were still running as it began. */
      const alongside: Array<number> = []
      const started = yield* Queue.unbounded<void>()
      const wrapDelivery = (ds: Delivery): Delivery => ({
        ...ds,
        // While held, a read never answers (a network gone quiet) until it is interrupted.
        queryGroupMessages: (query) =>
          held
            ? Effect.gen(function*() {
              alongside.push(readsInFlight)
              readsInFlight++
              yield* Queue.offer(started, undefined)
              return yield* Effect.never
            }).pipe(Effect.ensuring(Effect.sync(() => readsInFlight--)))
            : ds.queryGroupMessages(query)
      })
      const alice = yield* net.client("alice", { wrapDelivery })
      const bob = yield* net.client("bob")
      const group = yield* alice.createGroup([bob.inboxId])
      // Bob writes after Alice's last read: her sends go only after reading the topic.
      yield* bob.syncAll
      yield* (yield* bob.conversation(group.id)).send("hi")
      held = true
      const first = yield* Effect.fork(group.send("first"))
      yield* Queue.take(started)
      // The second send waits for the group's lock, which the first holds while it reads.
      const second = yield* Effect.fork(group.send("second"))
      yield* Effect.sleep("50 millis")
      yield* Fiber.interrupt(first)
      yield* Queue.take(started)
      // The first read would otherwise still write the group's state and cursor beside the second.
      expect(alongside).toEqual([0, 0])
      yield* Fiber.interrupt(second)
      held = false
      yield* group.send("third")
      yield* bob.syncAll
      const atBob = yield* bob.conversation(group.id)
      expect((yield* atBob.messages()).filter((m) => m.kind === "text").map((m) => m.text)).toContain("third")
    })))

  it.live("Carol, removed, sends: GroupInactive, whether her text is acceptable or too long", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = [yield* net.client("alice"), yield* net.client("bob"), yield* net.client("carol")]
      const group = yield* alice.createGroup([bob.inboxId, carol.inboxId])
      yield* carol.syncAll
      yield* group.removeMembers([carol.inboxId])
      yield* carol.syncAll
      const atCarol = yield* carol.conversation(group.id)
      expect((yield* atCarol.send("x".repeat(64 * 1024 + 1)).pipe(Effect.flip))._tag).toBe("GroupInactive")
      expect((yield* atCarol.send("ok").pipe(Effect.flip))._tag).toBe("GroupInactive")
    })))

  it.live("Bob's client is below the group's version floor: a too-long text is InvalidInput, a fine one ProtocolVersionTooOld", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const alice = yield* net.client("alice", { protocolVersion: 3 })
      const bob = yield* net.client("bob", { protocolVersion: 2 })
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      yield* group.setMinProtocolVersion(3)
      yield* bob.syncAll
      const atBob = yield* bob.conversation(group.id)
      expect((yield* atBob.send("x".repeat(64 * 1024 + 1)).pipe(Effect.flip))._tag).toBe("InvalidInput")
      expect((yield* atBob.send("ok").pipe(Effect.flip))._tag).toBe("ProtocolVersionTooOld")
    })))
})
