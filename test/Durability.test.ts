/**
 * A commit that returned is on disk. SQLite reopens a database already in WAL mode with
 * synchronous=NORMAL, where a power loss may undo the last commits: on a client, a write-ahead
 * record whose message went out (sent again after the restart, it would reuse its key and nonce);
 * on the server, an acknowledged append (whose id could go to another message). Both stores set
 * synchronous=FULL on the connection they are given, however it was opened.
 */
import { SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import * as SqlDeliveryStore from "../src/layers/SqlDeliveryStore.ts"
import * as SqliteStorage from "../src/layers/SqliteStorage.ts"

const synchronousLevel = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const rows = yield* sql<{ readonly synchronous: number }>`PRAGMA synchronous`
  return rows[0]?.synchronous
})

/** A database file that has been opened once (so it is in WAL mode), and its directory. */
const walFile = Effect.acquireRelease(
  Effect.gen(function*() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-durability-"))
    const filename = path.join(dir, "db.sqlite")
    yield* synchronousLevel.pipe(Effect.provide(SqliteClient.layer({ filename })), Effect.orDie)
    return { dir, filename }
  }),
  ({ dir }) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
).pipe(Effect.map(({ filename }) => filename))

const NORMAL = 1
const FULL = 2

describe("durability of commits", () => {
  it.scoped("a reopened WAL database alone would commit with synchronous=NORMAL", () =>
    Effect.gen(function*() {
      const filename = yield* walFile
      expect(yield* synchronousLevel.pipe(Effect.provide(SqliteClient.layer({ filename })))).toBe(NORMAL)
    }))

  it.scoped("the client's storage commits with synchronous=FULL on a reopened database", () =>
    Effect.gen(function*() {
      const filename = yield* walFile
      const level = yield* synchronousLevel.pipe(
        Effect.provide(SqliteStorage.layer.pipe(Layer.provideMerge(SqliteClient.layer({ filename }))))
      )
      expect(level).toBe(FULL)
    }))

  it.scoped("the delivery service's SQLite store commits with synchronous=FULL on a reopened database", () =>
    Effect.gen(function*() {
      const filename = yield* walFile
      const level = yield* synchronousLevel.pipe(
        Effect.provide(SqlDeliveryStore.layerSqlite.pipe(Layer.provideMerge(SqliteClient.layer({ filename }))))
      )
      expect(level).toBe(FULL)
    }))
})
