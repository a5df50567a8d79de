/**
 * Server throughput shortcuts that must not change what anyone sees:
 * - a subscriber hands on the entries its store announces with a commit instead of reading
 *   them back, but only when they follow what it delivered without a gap; and
 * - the authentication lookups of one event-loop turn share one store query.
 */
import type { SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Either, Fiber, Layer, Queue, Stream } from "effect"
import * as SqlDeliveryStore from "../src/layers/SqlDeliveryStore.ts"
import * as StoreDeliveryService from "../src/layers/StoreDeliveryService.ts"
import * as TsMlsCrypto from "../src/layers/TsMlsCrypto.ts"
import { makeTurnBatcher } from "../src/layers/TurnBatcher.ts"
import { DeliveryService } from "../src/services/DeliveryService.ts"
import { DeliveryStore, type TopicChange } from "../src/services/DeliveryStore.ts"
import { mlsMessage, newGroupId, registerInstallation, textOf } from "./support/DeliveryFixtures.ts"

/** Reads of topics from the store, by every subscriber of the test that runs. */
let reads = 0

/** A SQLite store whose announcements pass through `rewrite` on their way to subscribers. */
const storeAnnouncing = (rewrite: (change: TopicChange, index: number) => TopicChange) =>
  Layer.effect(
    DeliveryStore,
    Effect.map(DeliveryStore, (store) => ({
      ...store,
      read: (...args: Parameters<typeof store.read>) => Effect.suspend(() => {
        reads++
        return store.read(...args)
      }),
      changes: Effect.gen(function*() {
        const inner = yield* store.changes
        const outer = yield* Queue.unbounded<TopicChange>()
        let index = 0
        yield* Queue.take(inner).pipe(
          Effect.flatMap((change) => Queue.offer(outer, rewrite(change, index++))),
          Effect.forever,
          Effect.forkScoped
        )
        return outer
      })
    }))
  ).pipe(Layer.provide(SqlDeliveryStore.layerSqlite))

const serviceOver = (store: Layer.Layer<DeliveryStore, unknown, SqlClient.SqlClient>) =>
  StoreDeliveryService.layer().pipe(
    Layer.provide(store),
    Layer.provide(SqliteClient.layer({ filename: ":memory:" })),
    Layer.provide(TsMlsCrypto.layer())
  )

/** Alice sends 30 messages one by one while Bob follows the group: what Bob sees, in order. */
const bobFollowsAlice = Effect.gen(function*() {
  reads = 0
  const ds = yield* DeliveryService
  const { ds: alice } = yield* registerInstallation(ds)
  const groupId = newGroupId()
  const bob = yield* ds.subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]).pipe(
    Stream.take(30),
    Stream.runCollect,
    Effect.fork
  )
  yield* Effect.sleep("50 millis")
  for (let i = 1; i <= 30; i++) yield* alice.sendGroupMessages([mlsMessage(groupId, `m${i}`)])
  const seen = Chunk.toReadonlyArray(yield* Fiber.join(bob).pipe(Effect.timeout("10 seconds")))
  return seen.map((e) => [e.sequenceId, textOf(e.payload)] as const)
})

const everyMessageOnce = Array.from({ length: 30 }, (_, i) => [BigInt(i + 1), `m${i + 1}`] as const)

describe("a subscriber handed the entries of a commit", () => {
  it.live("sees every message once, in order, when the store announces them, reading only the backlog", () =>
    bobFollowsAlice.pipe(
      Effect.map((seen) => {
        expect(seen).toEqual(everyMessageOnce)
        expect(reads).toBe(1)
      }),
      Effect.provide(serviceOver(storeAnnouncing((change) => change)))
    ))

  it.live("reads the store instead when an announcement comes without its entries", () =>
    bobFollowsAlice.pipe(
      Effect.map((seen) => {
        expect(seen).toEqual(everyMessageOnce)
        expect(reads).toBeGreaterThan(1)
      }),
      Effect.provide(serviceOver(storeAnnouncing((change, i) =>
        i % 3 === 0 ? { topic: change.topic, sequenceId: change.sequenceId } : change
      )))
    ))

  it.live("reads the store instead when the announced entries skip some (another writer's)", () =>
    bobFollowsAlice.pipe(
      Effect.map((seen) => {
        expect(seen).toEqual(everyMessageOnce)
        expect(reads).toBeGreaterThan(1)
      }),
      // Some commits' announcements go elsewhere; the next one's entries then leave a gap.
      Effect.provide(serviceOver(storeAnnouncing((change, i) =>
        i % 2 === 1 && i < 28 ? { ...change, topic: "nobody" as TopicChange["topic"] } : change
      )))
    ))
})

describe("lookups gathered per event-loop turn", () => {
  it.live("the lookups of one turn share one load, a key asked twice is loaded once", () =>
    Effect.gen(function*() {
      const loads: Array<ReadonlyArray<string>> = []
      const lookup = makeTurnBatcher((keys: ReadonlyArray<string>) =>
        Effect.sync(() => {
          loads.push(keys)
          return new Map(keys.filter((k) => k !== "unknown").map((k) => [k, k.toUpperCase()]))
        })
      )
      const together = yield* Effect.all([lookup("alice"), lookup("bob"), lookup("alice"), lookup("unknown")], {
        concurrency: "unbounded"
      })
      expect(together).toEqual(["ALICE", "BOB", "ALICE", undefined])
      expect(loads).toEqual([["alice", "bob", "unknown"]])
      // A later turn loads again: nothing is cached.
      expect(yield* lookup("alice")).toBe("ALICE")
      expect(loads).toHaveLength(2)
    }))

  it.live("a failed load fails every lookup of its turn, and the next turn tries again", () =>
    Effect.gen(function*() {
      let down = true
      const lookup = makeTurnBatcher((keys: ReadonlyArray<string>) =>
        down ? Effect.fail("store unavailable") : Effect.succeed(new Map(keys.map((k) => [k, k.length])))
      )
      const failed = yield* Effect.all([Effect.either(lookup("alice")), Effect.either(lookup("bob"))], {
        concurrency: "unbounded"
      })
      expect(failed).toEqual([Either.left("store unavailable"), Either.left("store unavailable")])
      down = false
      expect(yield* lookup("carol")).toBe(5)
    }))
})
