/**
 * The SQLite delivery store copies its write-ahead log into the database from a worker thread:
 * appends only write and sync the log, and the log is still bounded.
 */
import { describe, expect, it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Effect, Layer, Schema } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as SqlDeliveryStore from "../src/layers/SqlDeliveryStore.ts"
import * as SqliteCheckpointer from "../src/layers/SqliteCheckpointer.ts"
import { DeliveryStore, groupTopic } from "../src/services/DeliveryStore.ts"
import { newGroupId, randomBytes } from "./support/DeliveryFixtures.ts"

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
  it.live("the writer never checkpoints, yet the database file takes the log; closing folds in the rest", () =>
    Effect.gen(function*() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-checkpoint-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true })))
      const file = path.join(dir, "ds.sqlite")
      const topic = groupTopic(newGroupId())
      const run = Effect.gen(function*() {
        const store = yield* DeliveryStore
        const sql = yield* SqlClient.SqlClient
        const [setting] = yield* sql`PRAGMA wal_autocheckpoint`.pipe(Effect.flatMap(Schema.decodeUnknown(AutoCheckpoint)))
        expect(setting?.wal_autocheckpoint).toBe(0)
        // 8 MiB appended, twice the log SQLite's own checkpoints would let grow.
        yield* Effect.forEach(Array.from({ length: 64 }), () =>
          store.append(Array.from({ length: 128 }, () => ({ topic, payload: randomBytes(1024) }))), { discard: true })
        expect(yield* eventually(() => sizeOf(file) > 8 * MiB, 5_000)).toBe(true)
        const page = yield* store.read(topic, 8_191n, 10)
        expect(page.map((e) => e.sequenceId)).toEqual([8_192n])
      })
      yield* run.pipe(
        Effect.provide(SqlDeliveryStore.layerSqlite.pipe(Layer.provideMerge(SqliteClient.layer({ filename: file })))),
        Effect.scoped
      )
      // The worker stopped first, so the writer's connection closed last and folded the log in.
      expect(fs.existsSync(`${file}-wal`)).toBe(false)
    }).pipe(Effect.scoped), 30_000)

  it.live("under a writer that never pauses, the log is started over at its bound instead of growing", () =>
    Effect.gen(function*() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-checkpoint-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true })))
      const file = path.join(dir, "busy.sqlite")
      const run = Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`CREATE TABLE blobs (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)`
        yield* SqliteCheckpointer.make(sql, { intervalMillis: 20, maxWalBytes: 2 * MiB })
        // 32 MiB in commits of 64 KiB, one after another.
        for (let i = 0; i < 512; i++) {
          const rows = Array.from({ length: 64 }, () => ({ payload: randomBytes(1024) }))
          yield* sql`INSERT INTO blobs ${sql.insert(rows)}`
        }
        expect(yield* eventually(() => sizeOf(file) > 32 * MiB, 5_000)).toBe(true)
        // Bounded by what the writer adds between two of the worker's checks, not by what it wrote.
        expect(sizeOf(`${file}-wal`)).toBeLessThan(12 * MiB)
      })
      yield* run.pipe(Effect.provide(SqliteClient.layer({ filename: file })), Effect.scoped)
    }).pipe(Effect.scoped), 30_000)
})
