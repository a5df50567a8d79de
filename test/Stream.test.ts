import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Fiber, Stream } from "effect"
import { TestNetwork } from "../src/testing.ts"

describe("streamMessages", () => {
  it.scoped("streams new messages across conversations, including a group joined while streaming", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("carol")])
      const early = yield* carol.createGroup([bob.inboxId])
      yield* bob.syncAll

      const texts = bob.streamMessages.pipe(
        Stream.filter((m) => m.kind === "text"),
        Stream.take(4),
        Stream.runCollect,
        Effect.map(Chunk.toReadonlyArray)
      )
      const streaming = yield* Effect.fork(texts)
      yield* early.send("from carol, in a group bob is already in")
      const joinedLater = yield* alice.createGroup([bob.inboxId])
      yield* joinedLater.send("from alice, in a group bob joins while streaming")
      yield* joinedLater.send("and another")
      yield* early.send("carol again")

      const received = yield* Fiber.join(streaming)
      expect(received.map((m) => m.text).sort()).toEqual([
        "and another",
        "carol again",
        "from alice, in a group bob joins while streaming",
        "from carol, in a group bob is already in"
      ])
      expect(received.find((m) => m.text === "and another")?.conversationId).toBe(joinedLater.id)
      expect(received.find((m) => m.text === "carol again")?.senderInboxId).toBe(carol.inboxId)
    }))

  it.scoped("a resubscribe loses nothing and repeats nothing", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      const take = (n: number) =>
        bob.streamMessages.pipe(
          Stream.filter((m) => m.kind === "text"),
          Stream.take(n),
          Stream.runCollect,
          Effect.map((c) => Chunk.toReadonlyArray(c).map((m) => m.text))
        )

      const first = yield* Effect.fork(take(2))
      yield* group.send("one")
      yield* group.send("two")
      expect(yield* Fiber.join(first)).toEqual(["one", "two"])

      // Sent while bob is not streaming; the next subscription picks them up, once.
      yield* group.send("three")
      yield* group.send("four")
      const second = yield* Effect.fork(take(3))
      yield* group.send("five")
      expect(yield* Fiber.join(second)).toEqual(["three", "four", "five"])
    }))
})
