/**
 * Stories of the stored group state: a group's MLS state is stored in Converge's compact format
 * (past epochs' trees as changes to the current one, secret trees as their leaves), sealed at rest
 * like before. A database written by an earlier version holds states in ts-mls's own format:
 * those read as they were and are written in the compact format on their next save.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Option, Redacted } from "effect"
import { encodeGroupState } from "ts-mls"
import type { ConversationId, GroupId } from "../src/domain/Ids.ts"
import { decodeStoredState } from "../src/layers/TsMlsStoredState.ts"
import { simulatedCrashOf, type TestClient, TestNetwork } from "../src/testing.ts"

const texts = (client: TestClient, id: ConversationId) =>
  client.conversation(id).pipe(
    Effect.flatMap((c) => c.messages()),
    Effect.map((ms) => ms.filter((m) => m.kind === "text").map((m) => m.text))
  )

const COMPACT_MAGIC = [0x43, 0x56, 0x53, 0x02]
const isCompact = (bytes: Uint8Array) => COMPACT_MAGIC.every((b, i) => bytes[i] === b)

/** The client's stored state of the group (opened with the storage key), and its epoch. */
const storedState = (net: TestNetwork, client: TestClient, id: ConversationId) =>
  Effect.gen(function*() {
    const row = Option.getOrThrow(yield* (yield* net.storage(client)).groups.get(id as unknown as GroupId))
    return { epoch: row.epoch, bytes: row.mlsState }
  })

/** The same state in ts-mls's own encoding, as versions before the compact format stored it. */
const asTsMlsWrote = (bytes: Uint8Array) =>
  encodeGroupState(decodeStoredState(bytes, 0)![0] as Parameters<typeof encodeGroupState>[0])

describe("stored group state", () => {
  it.live("Alice's state stored in ts-mls's format by an earlier version: after a restart she reads, sends and adds Dave; her state is then stored compact", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.makeWith({ storageKey: Redacted.make(new Uint8Array(32).fill(7)) })
      const [alice, bob, carol, dave] = yield* Effect.all([
        net.client("alice"),
        net.client("bob"),
        net.client("carol"),
        net.client("dave")
      ])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* group.send("one")
      yield* group.addMembers([carol.inboxId])
      yield* group.updateKeys
      yield* bob.syncAll

      // An earlier version stored Alice's state in ts-mls's format.
      const before = yield* storedState(net, alice, group.id)
      expect(isCompact(before.bytes)).toBe(true)
      const old = asTsMlsWrote(before.bytes)
      yield* (yield* net.storage(alice)).groups.saveState(group.id as unknown as GroupId, { epoch: before.epoch, mlsState: old })
      yield* net.restart(alice)
      expect(isCompact((yield* storedState(net, alice, group.id)).bytes)).toBe(false)

      yield* (yield* bob.conversation(group.id)).send("two, from Bob")
      yield* alice.syncAll
      const atAlice = yield* alice.conversation(group.id)
      yield* atAlice.send("three, after the upgrade")
      yield* atAlice.addMembers([dave.inboxId])
      yield* atAlice.send("four, with Dave")

      const after = yield* storedState(net, alice, group.id)
      expect(isCompact(after.bytes)).toBe(true)
      expect(after.bytes.length).toBeLessThan(asTsMlsWrote(after.bytes).length)

      for (const member of [bob, carol, dave]) yield* member.syncAll
      expect(yield* texts(bob, group.id)).toEqual(["one", "two, from Bob", "three, after the upgrade", "four, with Dave"])
      expect(yield* texts(carol, group.id)).toEqual(["two, from Bob", "three, after the upgrade", "four, with Dave"])
      expect(yield* texts(dave, group.id)).toEqual(["four, with Dave"])
      yield* net.restart(alice)
      yield* (yield* dave.conversation(group.id)).send("five, from Dave")
      yield* alice.syncAll
      expect(yield* texts(alice, group.id)).toEqual([
        "one",
        "two, from Bob",
        "three, after the upgrade",
        "four, with Dave",
        "five, from Dave"
      ])
    })))

  it.live("in a group of 30 after a few adds, a stored state takes less than half of ts-mls's encoding, and reads back after a restart", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const alice = yield* net.client("alice")
      const others = yield* Effect.forEach(Array.from({ length: 29 }), (_, i) => net.client(`member ${i}`), { concurrency: 4 })
      const newcomers = yield* Effect.forEach(Array.from({ length: 4 }), (_, i) => net.client(`newcomer ${i}`))
      const group = yield* alice.createGroup(others.map((c) => c.inboxId))
      for (const newcomer of newcomers) yield* group.addMembers([newcomer.inboxId])

      const { bytes } = yield* storedState(net, alice, group.id)
      expect(bytes.length * 2).toBeLessThan(asTsMlsWrote(bytes).length)
      yield* net.restart(alice)
      yield* (yield* alice.conversation(group.id)).send("after the restart")
      yield* newcomers[3]!.syncAll
      expect(yield* texts(newcomers[3]!, group.id)).toEqual(["after the restart"])
    })))

  it.live("Alice crashes after sending her add, before reading it back: after the restart her add lands from its written-ahead changes, Dave joins, nothing is lost", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.makeWith({ storageKey: Redacted.make(new Uint8Array(32).fill(9)) })
      const [alice, bob, dave] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("dave")])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* group.send("hello")
      yield* bob.syncAll
      const atBob = yield* bob.conversation(group.id)
      yield* atBob.send("Bob, before the add")

      yield* net.crashAt(alice, "publish.afterSendBeforeSync")
      const crashed = yield* Effect.exit(group.addMembers([dave.inboxId]))
      expect(Exit.isFailure(crashed) && simulatedCrashOf(crashed.cause)?.point).toBe("publish.afterSendBeforeSync")
      const [published] = yield* (yield* net.storage(alice)).intents.byState(["Published"])
      // Written ahead: only what the add changed ("CVSS"), smaller than the state it was made from.
      const stagedBytes = published!.stagedState!
      expect(Buffer.from(stagedBytes.subarray(0, 4)).toString()).toBe("CVSS")
      expect(stagedBytes.length).toBeLessThan((yield* storedState(net, alice, group.id)).bytes.length)
      yield* atBob.send("Bob, meanwhile")

      yield* net.restart(alice)
      yield* alice.syncAll
      expect((yield* dave.syncAll).joined).toBe(1)
      const atAlice = yield* alice.conversation(group.id)
      expect((yield* atAlice.members).map((m) => m.inboxId)).toContain(dave.inboxId)
      yield* atAlice.send("welcome, Dave")
      for (const member of [bob, dave]) yield* member.syncAll
      expect(yield* texts(alice, group.id)).toEqual(["hello", "Bob, before the add", "Bob, meanwhile", "welcome, Dave"])
      expect(yield* texts(bob, group.id)).toEqual(["hello", "Bob, before the add", "Bob, meanwhile", "welcome, Dave"])
      // Bob's message came after the add (he read it first): Dave reads it too.
      expect(yield* texts(dave, group.id)).toEqual(["Bob, meanwhile", "welcome, Dave"])
      expect(isCompact((yield* storedState(net, alice, group.id)).bytes)).toBe(true)
    })))
  it.live("Bob's messages Alice reads while her add is in flight keep their keys used once her add lands, restart or not", () =>
    Effect.gen(function*() {
      /** Alice's message generations, per leaf, of the epoch her add was made in, once it landed. */
      const generationsAfterAdd = (restart: boolean) =>
        Effect.scoped(Effect.gen(function*() {
          const net = yield* TestNetwork.make
          // Bob writes twice between Alice's write-ahead of the add and its sending.
          let bobWrites: Effect.Effect<void, unknown> | undefined
          const alice = yield* net.client("alice", {
            crashPoint: (point) =>
              point === "publish.afterWriteAheadBeforeSend" && bobWrites !== undefined
                ? Effect.suspend(() => {
                  const writes = bobWrites!
                  bobWrites = undefined
                  return Effect.orDie(writes)
                })
                : Effect.void
          })
          const [bob, dave] = yield* Effect.all([net.client("bob"), net.client("dave")])
          const group = yield* alice.createGroup([bob.inboxId])
          yield* bob.syncAll
          const atBob = yield* bob.conversation(group.id)
          const { epoch } = yield* storedState(net, alice, group.id)
          bobWrites = Effect.zipRight(atBob.send("b1"), atBob.send("b2"))
          if (restart) {
            yield* net.crashAt(alice, "publish.afterSendBeforeSync")
            yield* Effect.exit(group.addMembers([dave.inboxId]))
            yield* net.restart(alice)
            yield* alice.syncAll
          } else {
            yield* group.addMembers([dave.inboxId])
          }
          expect(yield* texts(alice, group.id)).toEqual(["b1", "b2"])
          const after = yield* storedState(net, alice, group.id)
          expect(after.epoch).toBe(epoch + 1n)
          const past = decodeStoredState(after.bytes, 0)![0].historicalReceiverData.get(epoch)!
          return past.secretTree.filter((_, i) => i % 2 === 0).map((leaf) => leaf.application.generation)
        }))
      // Alice's leaf sent nothing; Bob's two messages used their keys, and they stay used.
      expect(yield* generationsAfterAdd(false)).toEqual([0, 2])
      expect(yield* generationsAfterAdd(true)).toEqual([0, 2])
    }))
})
