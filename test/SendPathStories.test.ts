/**
 * Stories of `send`: with nothing queued ahead, a message is stored already written ahead (one
 * transaction), and a state is written without re-encoding the parts that did not change. Neither
 * may change what members read: restarts, crashes at each publish step and big groups included.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Option } from "effect"
import { decodeGroupState, encodeGroupState } from "ts-mls"
import type { ConversationId, GroupId } from "../src/domain/Ids.ts"
import { decodeStoredState, encodeStoredState } from "../src/layers/TsMlsStoredState.ts"
import { simulatedCrashOf, type TestClient, TestNetwork } from "../src/testing.ts"

const texts = (client: TestClient, id: ConversationId) =>
  Effect.map(textsWithStatus(client, id), (ms) => ms.map(([text]) => text))

const textsWithStatus = (client: TestClient, id: ConversationId) =>
  client.conversation(id).pipe(
    Effect.flatMap((c) => c.messages()),
    Effect.map((ms) => ms.filter((m) => m.kind === "text").map((m) => [m.text, m.deliveryStatus] as const))
  )

/**
 * The stored state is exactly what the stored format writes for the state it decodes to, encoded
 * afresh: through ts-mls's own bytes, so no part's remembered bytes are reused.
 */
const expectCanonicalState = (net: TestNetwork, client: TestClient, groupId: GroupId) =>
  Effect.gen(function*() {
    const row = Option.getOrThrow(yield* (yield* net.storage(client)).groups.get(groupId))
    const [decoded, length] = decodeStoredState(row.mlsState, 0)!
    expect(length).toBe(row.mlsState.length)
    const fresh = decodeGroupState(encodeGroupState(decoded as Parameters<typeof encodeGroupState>[0]), 0)![0]
    expect(encodeStoredState(fresh)).toEqual(row.mlsState)
  })

describe("send path", () => {
  it.live("Alice restarts in the middle of an epoch: what she sends next is read, and she reads the others", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = [yield* net.client("alice"), yield* net.client("bob"), yield* net.client("carol")]
      const group = yield* alice.createGroup([bob.inboxId, carol.inboxId])
      yield* group.updateKeys
      yield* group.send("before the restart")
      yield* bob.syncAll
      yield* carol.syncAll
      yield* (yield* bob.conversation(group.id)).send("bob, before")

      yield* net.restart(alice)
      const again = yield* alice.conversation(group.id)
      yield* again.send("after the restart")
      yield* again.send("and once more")
      yield* expectCanonicalState(net, alice, group.id as unknown as GroupId)
      yield* bob.syncAll
      yield* carol.syncAll
      yield* (yield* carol.conversation(group.id)).send("carol, after")
      yield* alice.syncAll
      yield* bob.syncAll

      const everyone = ["before the restart", "bob, before", "after the restart", "and once more", "carol, after"]
      expect(yield* texts(alice, group.id)).toEqual(everyone)
      expect(yield* texts(bob, group.id)).toEqual(everyone)
      expect(yield* texts(carol, group.id)).toEqual(everyone)
    })))

  it.live("Bob's new phone appears while Alice sends with the device check due: the same send adds it, after her message", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const fast = { installationCheckInterval: "0 millis" } as const
      const [alice, bob] = [yield* net.client("alice", fast), yield* net.client("bob", fast)]
      const group = yield* alice.createGroup([bob.inboxId])
      yield* group.send("before the phone")
      const phone = yield* net.client("bob-phone", { ...fast, sameInboxAs: bob })
      yield* group.send("to both of bob's devices")
      // No sync of Alice's since: the send itself queued and published the add.
      const members = yield* group.members
      expect(members.find((m) => m.inboxId === bob.inboxId)?.installationIds.length).toBe(2)
      yield* phone.syncAll
      yield* group.send("after the phone")
      yield* phone.syncAll
      yield* bob.syncAll
      expect(yield* texts(phone, group.id)).toEqual(["after the phone"])
      expect(yield* texts(bob, group.id)).toEqual(["before the phone", "to both of bob's devices", "after the phone"])
      const storage = yield* net.storage(alice)
      expect(yield* storage.intents.byState(["ToPublish", "Published", "Committed"])).toEqual([])
    })))

  it.live("a message queued ahead goes first: send waits its turn behind an optimistic message", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = [yield* net.client("alice"), yield* net.client("bob")]
      const group = yield* alice.createGroup([bob.inboxId])
      yield* group.sendOptimistic("queued first")
      yield* group.send("sent second")
      yield* bob.syncAll
      expect(yield* texts(bob, group.id)).toEqual(["queued first", "sent second"])
      expect(yield* textsWithStatus(alice, group.id)).toEqual([
        ["queued first", "published"],
        ["sent second", "published"]
      ])
      const storage = yield* net.storage(alice)
      expect(yield* storage.intents.byState(["ToPublish", "Published", "Committed"])).toEqual([])
    })))

  it.live("a crash before the write-ahead of a send: nothing was stored, nothing sent; the group goes on", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = [yield* net.client("alice"), yield* net.client("bob")]
      const group = yield* alice.createGroup([bob.inboxId])
      yield* group.send("first")
      yield* net.crashAt(alice, "publish.beforeWriteAhead")
      const crashed = yield* Effect.exit(group.send("lost in the crash"))
      expect(Exit.isFailure(crashed) && simulatedCrashOf(crashed.cause)?.point).toBe("publish.beforeWriteAhead")
      yield* net.restart(alice)
      const again = yield* alice.conversation(group.id)
      expect(yield* texts(alice, group.id)).toEqual(["first"])
      yield* again.send("after the crash")
      yield* bob.syncAll
      expect(yield* texts(bob, group.id)).toEqual(["first", "after the crash"])
      expect(yield* texts(alice, group.id)).toEqual(["first", "after the crash"])
    })))

  it.live("a crash after the write-ahead of a send: after the restart the same bytes go out, once", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = [yield* net.client("alice"), yield* net.client("bob")]
      const group = yield* alice.createGroup([bob.inboxId])
      yield* net.crashAt(alice, "publish.afterWriteAheadBeforeSend")
      const crashed = yield* Effect.exit(group.send("written ahead"))
      expect(Exit.isFailure(crashed) && simulatedCrashOf(crashed.cause)?.point).toBe("publish.afterWriteAheadBeforeSend")
      yield* net.restart(alice)
      const storage = yield* net.storage(alice)
      const [pending] = yield* storage.intents.byState(["Published"])
      expect(pending?.payload).not.toBeNull()
      const again = yield* alice.conversation(group.id)
      expect(yield* textsWithStatus(alice, group.id)).toEqual([["written ahead", "unpublished"]])
      yield* again.publishPending
      yield* again.send("next")
      yield* bob.syncAll
      expect(yield* texts(bob, group.id)).toEqual(["written ahead", "next"])
      // The topic holds the written-ahead bytes exactly once.
      const page = yield* net.delivery.queryGroupMessages({ groupId: group.id as unknown as GroupId, afterSequenceId: 0n, limit: 100 })
      expect(page.items.filter((e) => e.payload.length === pending!.payload!.length && e.payload.every((b, i) => b === pending!.payload![i])))
        .toHaveLength(1)
    })))

  it.live("a crash after sending, before reading it back: the restarted sender confirms it without sending again", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = [yield* net.client("alice"), yield* net.client("bob")]
      const group = yield* alice.createGroup([bob.inboxId])
      yield* net.crashAt(alice, "publish.afterSendBeforeSync")
      const crashed = yield* Effect.exit(group.send("sent, then crashed"))
      expect(Exit.isFailure(crashed) && simulatedCrashOf(crashed.cause)?.point).toBe("publish.afterSendBeforeSync")
      yield* net.restart(alice)
      yield* alice.syncAll
      expect(yield* textsWithStatus(alice, group.id)).toEqual([["sent, then crashed", "published"]])
      yield* bob.syncAll
      expect(yield* texts(bob, group.id)).toEqual(["sent, then crashed"])
    })))

  it.live("a bigger group with past epochs kept: the creator restarts and sends; every member reads it", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const members = yield* Effect.forEach(Array.from({ length: 19 }), (_, i) => net.client(`member-${i}`), { concurrency: 4 })
      const alice = yield* net.client("alice")
      const group = yield* alice.createGroup(members.map((m) => m.inboxId))
      for (let i = 0; i < 3; i++) yield* group.updateKeys
      yield* group.send("before")
      yield* net.restart(alice)
      yield* (yield* alice.conversation(group.id)).send("after the restart")
      yield* expectCanonicalState(net, alice, group.id as unknown as GroupId)
      for (const member of members) yield* member.syncAll
      for (const member of members) expect(yield* texts(member, group.id)).toEqual(["before", "after the restart"])
      // A member answers; the restarted creator reads it.
      yield* (yield* members[7]!.conversation(group.id)).send("answer")
      yield* alice.syncAll
      expect(yield* texts(alice, group.id)).toEqual(["before", "after the restart", "answer"])
    })), 120_000)
})
