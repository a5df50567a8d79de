/**
 * Stories of a client that keeps sending: what it has sent stays in its messages, while the
 * intents that carried it are deleted some minutes after they settle, so the intents table
 * holds only what is in flight.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, TestClock } from "effect"
import type { GroupId } from "../src/domain/Ids.ts"
import { RETENTION } from "../src/services/SettledIntents.ts"
import { type TestClient, TestNetwork } from "../src/testing.ts"

const intentStates = (net: TestNetwork, client: TestClient) =>
  Effect.gen(function*() {
    const intents = yield* (yield* net.storage(client)).intents.byState(["ToPublish", "Published", "Committed", "Processed", "Error"])
    return intents.map((i) => `${i.kind} ${i.state}`)
  })

describe("settled intents", () => {
  it.scoped("what alice sent stays readable while its intents go once settled for ten minutes; a later one waits its turn", () =>
    Effect.gen(function*() {
      expect(Duration.toMinutes(RETENTION)).toBe(10)
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* group.send("one")
      yield* group.send("two")
      expect(yield* intentStates(net, alice)).toEqual(["AddMembers Processed", "SendMessage Processed", "SendMessage Processed"])

      // Five minutes on: nothing has been settled long enough.
      yield* TestClock.adjust("5 minutes")
      yield* group.send("three")
      expect((yield* intentStates(net, alice)).length).toBe(4)

      // Past twenty minutes the pruner has run twice: everything settled before minute ten is gone.
      yield* TestClock.adjust("16 minutes")
      expect(yield* intentStates(net, alice)).toEqual([])
      yield* group.send("four")
      expect(yield* intentStates(net, alice)).toEqual(["SendMessage Processed"])

      // The messages themselves are untouched, for alice and for bob.
      yield* bob.syncAll
      for (const client of [alice, bob]) {
        const messages = yield* (yield* client.conversation(group.id)).messages()
        expect(messages.filter((m) => m.kind === "text").map((m) => [m.text, m.deliveryStatus])).toEqual([
          ["one", "published"],
          ["two", "published"],
          ["three", "published"],
          ["four", "published"]
        ])
      }
    }))

  it.scoped("a client told to keep settled intents a minute prunes them every minute instead", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([
        net.client("alice", { settledIntentRetention: "1 minute" }),
        net.client("bob")
      ])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* group.send("one")
      expect((yield* intentStates(net, alice)).length).toBe(2)
      // Past two minutes the pruner has run twice: both settled more than a minute ago.
      yield* TestClock.adjust("2 minutes")
      expect(yield* intentStates(net, alice)).toEqual([])
      yield* group.send("two")
      expect(yield* intentStates(net, alice)).toEqual(["SendMessage Processed"])
    }))

  it.scoped("a failed intent stays, saying why its message failed", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* alice.createGroup([bob.inboxId])
      const storage = yield* net.storage(alice)
      yield* group.sendOptimistic("never published")
      const [intent] = yield* storage.intents.byGroup(group.id as unknown as GroupId, ["ToPublish"])
      yield* storage.intents.markError(intent!.id, "refused for the story")
      yield* TestClock.adjust("21 minutes")
      expect(yield* intentStates(net, alice)).toEqual(["SendMessage Error"])
    }))
})
