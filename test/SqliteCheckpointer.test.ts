/**
 * The SQLite delivery store copies its write-ahead log into the database from a worker thread:
 * appends only write and sync the log, and the log is still bounded.
 */
import { describe, expect, it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Deferred, Effect, Fiber, Layer, Schema } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as SqlDeliveryStore from "../src/layers/SqlDeliveryStore.ts"
import * as SqliteCheckpointer from "../src/layers/SqliteCheckpointer.ts"
import { DeliveryStore, groupTopic } from "../src/services/DeliveryStore.ts"
import { newGroupId, randomBytes } from "./support/DeliveryFixtures.ts"
import { runTestProgram } from "./support/TestProgram.ts"

const sizeOf = (file: string) => (fs.existsSync(file) ? fs.statSync(file).size : 0)
const MiB = 1024 * 1024

/** Waits (real time) until `done` holds, up to `millis`. */
const eventually = (done: () => boolean, millis: number) =>
  Effect.gen(function*() {
    const until = Date.now() + millis
    while (!done() && Date.now() < until) yield* Effect.sleep("20 millis")
    return done()
  })

const AutoCheckpoint = Schema.Array(Schema.Struct({ wal_autocheckpoint: Schema.Number }))

describe("SQLite delivery store: checkpoints off the request path", () => {
  it.live("the worker copies the log into the database file while appends go on; closing folds in the rest", () =>
    Effect.gen(function*() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-checkpoint-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true })))
      const file = path.join(dir, "ds.sqlite")
      const topic = groupTopic(newGroupId())
      const run = Effect.gen(function*() {
        const store = yield* DeliveryStore
        const sql = yield* SqlClient.SqlClient
        // Once the worker has opened the database, the writer's own checkpoints are off.
        let setting = -1
        const readSetting = sql`PRAGMA wal_autocheckpoint`.pipe(
          Effect.flatMap(Schema.decodeUnknown(AutoCheckpoint)),
          Effect.map((rows) => (setting = rows[0]?.wal_autocheckpoint ?? -1))
        )
        for (let i = 0; i < 100 && (yield* readSetting) !== 0; i++) yield* Effect.sleep("20 millis")
        expect(setting).toBe(0)
        // 2 MiB appended (about 9 MiB of log, under the writer's bound): only the worker copies it.
        yield* Effect.forEach(Array.from({ length: 16 }), () =>
          store.append(Array.from({ length: 128 }, () => ({ topic, payload: randomBytes(1024) }))), { discard: true })
        expect(yield* eventually(() => sizeOf(file) > 2 * MiB, 5_000)).toBe(true)
        const page = yield* store.read(topic, 2_047n, 10)
        expect(page.map((e) => e.sequenceId)).toEqual([2_048n])
      })
      yield* run.pipe(
        Effect.provide(SqlDeliveryStore.layerSqlite.pipe(Layer.provideMerge(SqliteClient.layer({ filename: file })))),
        Effect.scoped
      )
      // The worker stopped first, so the writer's connection closed last and folded the log in.
      expect(fs.existsSync(`${file}-wal`)).toBe(false)
    }).pipe(Effect.scoped), 30_000)

  it("a program that closes the store goes on afterwards (the worker it waits for keeps the process alive)", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-checkpoint-"))
    try {
      const ran = await runTestProgram("CheckpointedStoreLifetime.ts", [dir])
      const run = { code: ran.code, output: (ran.stdout + ran.stderr).trim() }
      // Before the fix Node exited while the finalizer waited for the worker (13: a top-level await left
      // unsettled; `npm run simulate` exited 0 without its totals), printing nothing.
      expect(run).toEqual({ code: 0, output: "closed" })
      expect(fs.existsSync(path.join(dir, "ds.sqlite-wal"))).toBe(false)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }, 90_000)

  /** A table on a fresh file with the checkpointer (bound `maxWalBytes`), and 64 KiB commits of it. */
  const withBlobs = <A, E>(maxWalBytes: number, f: (file: string, insert: Effect.Effect<unknown, unknown>) => Effect.Effect<A, E>) =>
    Effect.gen(function*() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-checkpoint-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true })))
      const file = path.join(dir, "busy.sqlite")
      return yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`CREATE TABLE blobs (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)`
        yield* SqliteCheckpointer.make(sql, { intervalMillis: 20, maxWalBytes })
        const insert = sql`INSERT INTO blobs ${sql.insert(Array.from({ length: 64 }, () => ({ payload: randomBytes(1024) })))}`
        return yield* f(file, insert)
      }).pipe(Effect.provide(SqliteClient.layer({ filename: file })), Effect.scoped)
    }).pipe(Effect.scoped)

  it.live("under a writer that never pauses, the log starts over at its bound instead of growing", () =>
    withBlobs(8 * MiB, (file, insert) =>
      Effect.gen(function*() {
        // 32 MiB in commits of 64 KiB, one after another: the worker never catches up whole.
        for (let i = 0; i < 512; i++) yield* insert
        expect(yield* eventually(() => sizeOf(file) > 32 * MiB, 5_000)).toBe(true)
        // The bound, and what the writer added before its checkpoint's turn came (without the bound: 52 MiB).
        // That share grows with the worker's lag: 8 MiB over the bound was passed (19.1 MiB) on a host
        // with a load of 5 on its two cores.
        expect(sizeOf(`${file}-wal`)).toBeLessThan(24 * MiB)
      })), 30_000)

  it.live("a reader holding a snapshot never stalls the writer: its commits stay quick and all land", () =>
    withBlobs(1 * MiB, (file, insert) =>
      Effect.gen(function*() {
        const reader = yield* SqlClient.SqlClient
        const snapshotTaken = yield* Deferred.make<void>()
        const writerDone = yield* Deferred.make<void>()
        // Another connection reads, and holds its snapshot while the writer writes 8 MiB.
        const readerRun = yield* reader.withTransaction(Effect.gen(function*() {
          const before = yield* reader`SELECT count(*) AS n FROM blobs`
          yield* Deferred.succeed(snapshotTaken, undefined)
          yield* Deferred.await(writerDone)
          return { before, after: yield* reader`SELECT count(*) AS n FROM blobs` }
        })).pipe(Effect.fork)
        yield* Deferred.await(snapshotTaken)
        let slowest = 0
        for (let i = 0; i < 128; i++) {
          const started = performance.now()
          yield* insert
          slowest = Math.max(slowest, performance.now() - started)
        }
        yield* Deferred.succeed(writerDone, undefined)
        const seen = yield* Fiber.join(readerRun)
        expect(seen).toEqual({ before: [{ n: 0 }], after: [{ n: 0 }] })
        expect(slowest).toBeLessThan(1_000)
        expect(yield* reader`SELECT count(*) AS n FROM blobs`).toEqual([{ n: 128 * 64 }])
      }).pipe(Effect.provide(SqliteClient.layer({ filename: file })), Effect.scoped)), 30_000)

  it.live("a worker that cannot open the database leaves SQLite's own checkpoints: the log stays bounded", () =>
    Effect.gen(function*() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-checkpoint-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true })))
      const file = path.join(dir, "gone.sqlite")
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`CREATE TABLE blobs (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)`
        // Unlinked under the open connection: the worker's open by path fails.
        fs.unlinkSync(file)
        yield* SqliteCheckpointer.make(sql, { intervalMillis: 20 })
        for (let i = 0; i < 256; i++) {
          yield* sql`INSERT INTO blobs ${sql.insert(Array.from({ length: 64 }, () => ({ payload: randomBytes(1024) })))}`
        }
        const [setting] = yield* sql`PRAGMA wal_autocheckpoint`.pipe(Effect.flatMap(Schema.decodeUnknown(AutoCheckpoint)))
        expect(setting?.wal_autocheckpoint).toBe(1000)
        // 16 MiB written; SQLite's 1,000 pages and a commit (with the writer's own off: 17 MiB).
        expect(sizeOf(`${file}-wal`)).toBeLessThan(6 * MiB)
      }).pipe(Effect.provide(SqliteClient.layer({ filename: file })), Effect.scoped)
    }).pipe(Effect.scoped), 30_000)
})
