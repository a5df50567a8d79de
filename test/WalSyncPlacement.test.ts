/**
 * Where the client's WAL sync runs. Quick syncs stay on the calling thread (cheapest); once slow
 * ones repeat, the next go to libuv's pool so a slow disk cannot stall every fiber, with a try on
 * the thread now and then to come back. The rule is table-tested, then driven through a real
 * storage on a WAL file whose syncs are scripted.
 */
import { SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Layer, Metric, Option } from "effect"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import * as SqliteDurability from "../src/layers/SqliteDurability.ts"
import * as EngineMetrics from "../src/services/EngineMetrics.ts"
import {
  initial,
  next,
  observe,
  type Placement,
  type PlacementState,
  PROBE_EVERY,
  SLOW_TO_MOVE,
  STALL_MILLIS,
  WINDOW
} from "../src/layers/WalSyncPlacement.ts"

/** Runs syncs of the given durations from `state`; where each ran. */
const placements = (durations: ReadonlyArray<number>, state: PlacementState = initial): Array<Placement> => {
  const ran: Array<Placement> = []
  for (const millis of durations) {
    const where = next(state)
    ran.push(where)
    state = observe(state, where, millis)
  }
  return ran
}

/** A descriptor number no test process has open. */
const NOT_OPEN = 1_999_999

const times = <A>(n: number, a: A): Array<A> => Array.from({ length: n }, () => a)
const SLOW = 20
const QUICK = 0.5

describe("WalSyncPlacement", () => {
  it.each([
    { story: "quick syncs stay on the thread", durations: times(40, QUICK), expected: times(40, "thread") },
    {
      story: "a slow sync now and then, as on a busy machine, moves nothing",
      durations: [SLOW, ...times(WINDOW - SLOW_TO_MOVE, QUICK), SLOW, ...times(WINDOW, QUICK), SLOW, QUICK],
      expected: times(2 + WINDOW - SLOW_TO_MOVE + WINDOW + 2, "thread")
    },
    {
      story: "a sync just at the bound is quick",
      durations: times(WINDOW, STALL_MILLIS),
      expected: times(WINDOW, "thread")
    },
    {
      story: "repeated slow syncs send the next ones to the pool, until a quick try on the thread",
      durations: [...times(SLOW_TO_MOVE, SLOW), ...times(PROBE_EVERY - 1, SLOW), QUICK, QUICK],
      expected: [...times(SLOW_TO_MOVE, "thread"), ...times(PROBE_EVERY - 1, "pool"), "thread", "thread"]
    },
    {
      story: "a try that is slow again keeps them on the pool for another round",
      durations: [...times(SLOW_TO_MOVE, SLOW), ...times(PROBE_EVERY - 1, QUICK), SLOW, ...times(PROBE_EVERY - 1, QUICK), QUICK],
      expected: [
        ...times(SLOW_TO_MOVE, "thread"),
        ...times(PROBE_EVERY - 1, "pool"),
        "thread",
        ...times(PROBE_EVERY - 1, "pool"),
        "thread"
      ]
    },
    {
      story: "back on the thread the record starts clean: one slow sync does not send them back",
      durations: [...times(SLOW_TO_MOVE, SLOW), ...times(PROBE_EVERY - 1, QUICK), QUICK, SLOW, QUICK],
      expected: [...times(SLOW_TO_MOVE, "thread"), ...times(PROBE_EVERY - 1, "pool"), "thread", "thread", "thread"]
    }
  ])("$story", ({ durations, expected }) => {
    expect(placements(durations)).toEqual(expected)
  })

  it("on a disk that stays slow, at most one sync in PROBE_EVERY waits on the thread", () => {
    const ran = placements(times(SLOW_TO_MOVE + 10 * PROBE_EVERY, 30))
    expect(ran.filter((where) => where === "thread").length).toBe(SLOW_TO_MOVE + 10)
  })
})

/** A WAL database in a temporary folder; its file name. */
const walDatabase = Layer.unwrapScoped(
  Effect.map(
    Effect.acquireRelease(
      Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "converge-walsync-"))),
      (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
    ),
    (dir) => SqliteClient.layer({ filename: path.join(dir, "client.sqlite") })
  )
)

/** A client database's durability with `syncs`, and a write that leaves something to flush. */
const storageWith = (syncs: SqliteDurability.WalSyncs) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql`CREATE TABLE notes (n INTEGER NOT NULL)`
    const durability = yield* SqliteDurability.make(sql, "publish", syncs)
    let n = 0
    return { durability, write: Effect.asVoid(sql`INSERT INTO notes (n) VALUES (${n++})`) }
  })

/** Syncs that really sync; `onThread` reports the scripted durations instead of its own. */
const scripted = (threadMillis: Array<number>, ran: Array<Placement>): SqliteDurability.WalSyncs => ({
  onThread: (fd) =>
    Effect.map(SqliteDurability.nodeWalSyncs.onThread(fd), () => {
      ran.push("thread")
      return threadMillis.shift() ?? QUICK
    }),
  onPool: (fd) => Effect.zipRight(Effect.sync(() => ran.push("pool")), SqliteDurability.nodeWalSyncs.onPool(fd))
})

describe("the storage's WAL sync", () => {
  it.scoped("moves to the pool while the disk is slow, and back once it is quick", () =>
    Effect.gen(function*() {
      const ran: Array<Placement> = []
      const synced = Effect.all([Metric.value(EngineMetrics.walSyncsOnThread), Metric.value(EngineMetrics.walSyncsOnPool)])
      const [threadBefore, poolBefore] = yield* synced
      const { durability, write } = yield* storageWith(scripted([QUICK, ...times(SLOW_TO_MOVE, 25)], ran))
      for (let i = 0; i < 1 + SLOW_TO_MOVE + PROBE_EVERY + 1; i++) yield* Effect.zipRight(write, durability.flush)
      expect(ran).toEqual([...times(1 + SLOW_TO_MOVE, "thread"), ...times(PROBE_EVERY - 1, "pool"), "thread", "thread"])
      expect(yield* durability.unflushedWrites).toBe(0)
      // An operator sees where they ran: converge_wal_syncs_total{placement}.
      const [threadAfter, poolAfter] = yield* synced
      expect(threadAfter.count - threadBefore.count).toBe(1 + SLOW_TO_MOVE + 2)
      expect(poolAfter.count - poolBefore.count).toBe(PROBE_EVERY - 1)
    }).pipe(Effect.provide(walDatabase)))

  it.scoped("a flush on the pool returns only once its sync is done, even when interrupted", () =>
    Effect.gen(function*() {
      const release = yield* Deferred.make<void>()
      const started = yield* Deferred.make<void>()
      let synced = false
      const { durability, write } = yield* storageWith({
        // Slow every time: after SLOW_TO_MOVE syncs the next one goes to the pool, and waits there.
        onThread: (fd) => Effect.as(SqliteDurability.nodeWalSyncs.onThread(fd), 25),
        onPool: (fd) =>
          Deferred.succeed(started, undefined).pipe(
            Effect.zipRight(Deferred.await(release)),
            Effect.zipRight(SqliteDurability.nodeWalSyncs.onPool(fd)),
            Effect.tap(() => (synced = true))
          )
      })
      for (let i = 0; i < SLOW_TO_MOVE; i++) yield* Effect.zipRight(write, durability.flush)
      yield* write
      const flushing = yield* Effect.fork(durability.flush)
      yield* Deferred.await(started)
      yield* Effect.yieldNow()
      expect(Option.isNone(yield* Fiber.poll(flushing))).toBe(true)
      expect(yield* durability.unflushedWrites).toBe(1)
      // Interrupted mid-sync, it still waits for the sync it handed over.
      const interrupting = yield* Effect.fork(Fiber.interrupt(flushing))
      yield* Effect.repeatN(Effect.yieldNow(), 100)
      expect(Option.isNone(yield* Fiber.poll(interrupting))).toBe(true)
      yield* Deferred.succeed(release, undefined)
      expect(Exit.isInterrupted(yield* Fiber.join(interrupting))).toBe(true)
      expect(synced).toBe(true)
      // It did not count as flushed: the write is still unflushed, and the next flush syncs it.
      expect(yield* durability.unflushedWrites).toBe(1)
      yield* durability.flush
      expect(yield* durability.unflushedWrites).toBe(0)
    }).pipe(Effect.provide(walDatabase)))

  it.scoped("a failed sync is a StorageError that says what the system said", () =>
    Effect.gen(function*() {
      const { durability, write } = yield* storageWith({
        // The real calls, on a descriptor that is not open.
        onThread: () => SqliteDurability.nodeWalSyncs.onThread(NOT_OPEN),
        onPool: () => SqliteDurability.nodeWalSyncs.onPool(NOT_OPEN)
      })
      yield* write
      const error = yield* Effect.flip(durability.flush)
      expect(error._tag).toBe("StorageError")
      expect(error.message).toMatch(/EBADF/)
      expect(yield* durability.unflushedWrites).toBe(1)
    }).pipe(Effect.provide(walDatabase)))
})
