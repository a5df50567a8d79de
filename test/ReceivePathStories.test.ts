/**
 * Catch-up stories: a page's run of someone's application messages is decrypted in one call and
 * applied in a loop (PageApplier.applyAll); commits, own messages and anything odd go one by one.
 * Whatever the mix, every receiver check holds and a bad envelope costs only itself.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import type { ConversationId, GroupId } from "../src/domain/Ids.ts"
import { GroupMessageInput } from "../src/domain/Wire.ts"
import type { Conversation } from "../src/services/Client.ts"
import { type TestClient, TestNetwork } from "../src/testing.ts"

const texts = (conversation: Conversation) =>
  conversation.messages().pipe(Effect.map((messages) => messages.filter((m) => m.kind === "text").map((m) => m.text)))

const open = (client: TestClient, id: ConversationId) => client.conversation(id)

describe("Catching up", () => {
  it.scoped("a tampered copy and a key update amid a long page: the texts land in order, the copy alone is skipped", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.makeWith({ clientDefaults: { pageSize: 100 } })
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      const groupId = group.id as unknown as GroupId

      // Bob is away while Alice writes, updates her keys (a commit mid-page), and writes on.
      for (let i = 0; i < 3; i++) yield* group.sendOptimistic(`before ${i}`)
      yield* group.publishPending
      // Someone with an account replays one of them with its tag flipped: well-formed, unreadable.
      const sent = yield* net.inspect.groupMessages(groupId)
      const tampered = sent[sent.length - 2]!.payload.slice()
      for (let i = tampered.length - 16; i < tampered.length; i++) tampered[i] = tampered[i]! ^ 0xff
      const intruder = yield* net.intruder
      yield* intruder.sendGroupMessages([GroupMessageInput.make({ groupId, payload: tampered })])
      for (let i = 3; i < 5; i++) yield* group.sendOptimistic(`before ${i}`)
      yield* group.publishPending
      yield* group.updateKeys
      for (let i = 0; i < 5; i++) yield* group.sendOptimistic(`after ${i}`)
      yield* group.publishPending

      const summary = yield* bob.syncAll
      expect(summary.messages).toBe(10)
      expect(summary.skippedBy).toEqual({ unprocessable: 1 })
      const atBob = yield* open(bob, group.id)
      expect(yield* texts(atBob)).toEqual([0, 1, 2, 3, 4].map((i) => `before ${i}`).concat([0, 1, 2, 3, 4].map((i) => `after ${i}`)))
      // The state the page left reads what comes next, both ways.
      yield* group.send("still there?")
      yield* bob.syncAll
      yield* atBob.send("yes")
      yield* alice.syncAll
      expect((yield* texts(group)).slice(-2)).toEqual(["still there?", "yes"])
    }))

  it.scoped("a page that mixes our own messages with the other member's: each stored once, ours published", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.makeWith({ clientDefaults: { pageSize: 100 } })
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      const atBob = yield* open(bob, group.id)
      for (let i = 0; i < 3; i++) {
        yield* group.sendOptimistic(`alice ${i}`)
        yield* group.publishPending
        yield* atBob.sendOptimistic(`bob ${i}`)
        yield* atBob.publishPending
      }
      yield* bob.syncAll
      yield* alice.syncAll
      const order = [0, 1, 2].flatMap((i) => [`alice ${i}`, `bob ${i}`])
      expect(yield* texts(atBob)).toEqual(order)
      expect(yield* texts(group)).toEqual(order)
      const statuses = (yield* atBob.messages()).filter((m) => m.kind === "text").map((m) => m.deliveryStatus)
      expect(statuses).toEqual(order.map(() => "published"))
    }))
})
