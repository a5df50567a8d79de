/**
 * Where the client's WAL sync runs. Quick syncs stay on the calling thread (cheapest); a slow one
 * moves the next ones to libuv's pool so a slow disk cannot stall every fiber, with a try on the
 * thread now and then to come back. The rule is table-tested, then driven through a real storage
 * on a WAL file whose syncs are scripted (their duration told by the TestClock).
 */
import { SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, TestClock } from "effect"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import * as SqliteDurability from "../src/layers/SqliteDurability.ts"
import {
  initial,
  next,
  observe,
  type Placement,
  type PlacementState,
  PROBE_EVERY,
  STALL_MILLIS
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

const times = <A>(n: number, a: A): Array<A> => Array.from({ length: n }, () => a)

describe("WalSyncPlacement", () => {
  it.each([
    { story: "quick syncs stay on the thread", durations: times(40, 0.5), expected: times(40, "thread") },
    { story: "a sync just at the bound is still quick", durations: [STALL_MILLIS, 0.5], expected: ["thread", "thread"] },
    {
      story: "a slow sync sends the next ones to the pool, until a try on the thread",
      durations: [20, ...times(PROBE_EVERY - 1, 20), 0.5, 0.5],
      expected: ["thread", ...times(PROBE_EVERY - 1, "pool"), "thread", "thread"]
    },
    {
      story: "a try on the thread that is slow again goes back to the pool for another round",
      durations: [20, ...times(PROBE_EVERY - 1, 0.5), 20, ...times(PROBE_EVERY - 1, 0.5), 0.5],
      expected: ["thread", ...times(PROBE_EVERY - 1, "pool"), "thread", ...times(PROBE_EVERY - 1, "pool"), "thread"]
    }
  ])("$story", ({ durations, expected }) => {
    expect(placements(durations)).toEqual(expected)
  })

  it("on a disk that stays slow, at most one sync in PROBE_EVERY waits on the thread", () => {
    const ran = placements(times(10 * PROBE_EVERY, 30))
    expect(ran.filter((where) => where === "thread").length).toBe(10)
  })
})

/** A WAL database in a temporary folder. */
const walDatabase = Layer.unwrapScoped(
  Effect.map(
    Effect.acquireRelease(
      Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "converge-walsync-"))),
      (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
    ),
    (dir) => SqliteClient.layer({ filename: path.join(dir, "client.sqlite") })
  )
)

describe("the storage's WAL sync", () => {
  it.scoped("moves to the pool while the disk is slow, and back once it is quick", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql`CREATE TABLE notes (n INTEGER NOT NULL)`
      // The disk: each sync on the thread takes the next scripted time; the pool's are real syncs.
      const threadMillis = [1, 25, 1, 1]
      const ran: Array<Placement> = []
      const durability = yield* SqliteDurability.make(sql, "publish", {
        onThread: (fd) =>
          Effect.gen(function*() {
            ran.push("thread")
            yield* SqliteDurability.nodeWalSyncs.onThread(fd)
            yield* TestClock.adjust(`${threadMillis.shift() ?? 1} millis`)
          }),
        onPool: (fd) => Effect.zipRight(Effect.sync(() => ran.push("pool")), SqliteDurability.nodeWalSyncs.onPool(fd))
      })
      const writeAndFlush = (n: number) =>
        Effect.zipRight(sql`INSERT INTO notes (n) VALUES (${n})`, durability.flush)
      for (let n = 0; n < 2 + PROBE_EVERY + 1; n++) yield* writeAndFlush(n)
      // Quick, then slow (25 ms): the pool until the try on the thread, quick again: the thread.
      expect(ran).toEqual(["thread", "thread", ...times(PROBE_EVERY - 1, "pool"), "thread", "thread"])
      // Wherever it ran, each flush left nothing unsynced behind it.
      expect(yield* durability.unflushedWrites).toBe(0)
    }).pipe(Effect.provide(walDatabase)))
})
