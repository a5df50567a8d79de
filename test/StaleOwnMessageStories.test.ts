/**
 * Stories of an own message that lands after a commit it was not encrypted for: someone's commit
 * landed between the sender's read of the topic and its send. Whom that commit added cannot open
 * it (and past `maxPastEpochs` nobody can), so it goes out again at the current epoch; members
 * that read both copies keep one, by its message id.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import type { ConversationId, GroupId } from "../src/domain/Ids.ts"
import type { DeliveryService } from "../src/services/DeliveryService.ts"
import { type TestClient, TestNetwork } from "../src/testing.ts"

type Delivery = DeliveryService["Type"]

/** A delivery service that runs `armed` (once) right before its client's next send goes out. */
const interleaving = () => {
  let armed: Effect.Effect<unknown, unknown> | undefined
  const wrap = (ds: Delivery): Delivery => ({
    ...ds,
    sendGroupMessages: (messages) =>
      Effect.suspend(() => {
        const first = armed
        armed = undefined
        return Effect.zipRight(first === undefined ? Effect.void : Effect.orDie(first), ds.sendGroupMessages(messages))
      })
  })
  return { wrap, arm: (effect: Effect.Effect<unknown, unknown>) => Effect.sync(() => void (armed = effect)) }
}

const texts = (client: TestClient, id: ConversationId) =>
  client.conversation(id).pipe(
    Effect.flatMap((c) => c.messages()),
    Effect.map((ms) => ms.filter((m) => m.kind === "text").map((m) => `${m.text} (${m.deliveryStatus})`))
  )

const topicLength = (net: TestNetwork, groupId: ConversationId) =>
  net.delivery.queryGroupMessages({ groupId: groupId as unknown as GroupId, afterSequenceId: 0n, limit: 100 }).pipe(
    Effect.map((page) => page.items.length)
  )

describe("an own message that lands after a commit it was not encrypted for", () => {
  it.live("Dave's add lands between Bob's read and his send: Bob's message goes out again for Dave, Alice keeps one copy", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const interleave = interleaving()
      const alice = yield* net.client("alice")
      const bob = yield* net.client("bob", { wrapDelivery: interleave.wrap })
      const dave = yield* net.client("dave")
      const group = yield* alice.createGroup([bob.inboxId])
      yield* group.send("first")
      yield* bob.syncAll
      const bobs = yield* bob.conversation(group.id)
      const before = yield* topicLength(net, group.id)

      yield* interleave.arm(group.addMembers([dave.inboxId]))
      yield* bobs.send("bob, as dave is added")
      // The add, Bob's copy for the epoch before it, and his copy for Dave's epoch.
      expect((yield* topicLength(net, group.id)) - before).toBe(3)
      expect(yield* texts(bob, group.id)).toEqual(["first (published)", "bob, as dave is added (published)"])
      expect((yield* dave.syncAll).joined).toBe(1)
      expect(yield* texts(dave, group.id)).toEqual(["bob, as dave is added (published)"])
      yield* alice.syncAll
      expect(yield* texts(alice, group.id)).toEqual(["first (published)", "bob, as dave is added (published)"])
    })))

  it.live("Bob rekeys four times between Alice's read and her send: her first copy is too old for anyone, the second is read once by all", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const interleave = interleaving()
      const alice = yield* net.client("alice", { wrapDelivery: interleave.wrap })
      const [bob, carol] = [yield* net.client("bob"), yield* net.client("carol")]
      const group = yield* alice.createGroup([bob.inboxId, carol.inboxId])
      yield* group.send("first")
      yield* bob.syncAll
      yield* carol.syncAll
      const bobs = yield* bob.conversation(group.id)
      const before = yield* topicLength(net, group.id)

      // maxPastEpochs is 3: an application message four epochs behind has no keys left anywhere.
      yield* interleave.arm(Effect.repeatN(bobs.updateKeys, 3))
      yield* group.send("late")
      expect((yield* topicLength(net, group.id)) - before).toBe(6)
      expect(yield* texts(alice, group.id)).toEqual(["first (published)", "late (published)"])
      for (const member of [bob, carol]) {
        expect((yield* member.syncAll).skippedBy.tooOldApplication).toBe(1)
        expect(yield* texts(member, group.id)).toEqual(["first (published)", "late (published)"])
      }
    })))
})
