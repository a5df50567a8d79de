import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Deferred, Effect, Exit, Fiber, Option } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as Connection from "../src/layers/SqliteConnection.ts"
import { SqliteLane } from "../src/layers/SqliteConnection.ts"

const database = Connection.layer({ filename: ":memory:" })

const setUp = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, at_ns INTEGER)`
  return { sql, lane: yield* SqliteLane }
})

const bodies = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  return (yield* sql<{ body: string }>`SELECT body FROM notes ORDER BY id`).map((row) => row.body)
})

describe("SqliteConnection: the client's SQLite, with a lane for the hot paths", () => {
  it.scoped("a lane statement inside a transaction is part of it: rolled back with it", () =>
    Effect.gen(function*() {
      const { lane, sql } = yield* setUp
      const failed = yield* sql.withTransaction(
        Effect.zipRight(lane.execute(sql`INSERT INTO notes (body) VALUES (${"draft"})`), Effect.fail("changed my mind"))
      ).pipe(Effect.exit)
      expect(Exit.isFailure(failed)).toBe(true)
      yield* sql.withTransaction(lane.execute(sql`INSERT INTO notes (body) VALUES (${"kept"})`))
      expect(yield* bodies).toEqual(["kept"])
    }).pipe(Effect.provide(database)))

  it.scoped("another fiber's lane statement waits for an open transaction to end, and is not undone by it", () =>
    Effect.gen(function*() {
      const { lane, sql } = yield* setUp
      const begun = yield* Deferred.make<void>()
      const finish = yield* Deferred.make<void>()
      const holder = yield* sql.withTransaction(Effect.gen(function*() {
        yield* lane.execute(sql`INSERT INTO notes (body) VALUES (${"in the transaction"})`)
        yield* Deferred.succeed(begun, undefined)
        yield* Deferred.await(finish)
        return yield* Effect.fail("rolled back")
      })).pipe(Effect.exit, Effect.fork)
      yield* Deferred.await(begun)
      const outsider = yield* lane.execute(sql`INSERT INTO notes (body) VALUES (${"outside"})`).pipe(Effect.fork)
      yield* Effect.yieldNow({ priority: 1 })
      // Still waiting: had it run, the holder's rollback would take it along.
      expect(outsider.unsafePoll()).toBeNull()
      yield* Deferred.succeed(finish, undefined)
      yield* Fiber.join(holder)
      yield* Fiber.join(outsider)
      expect(yield* bodies).toEqual(["outside"])
    }).pipe(Effect.provide(database)))

  it.scoped("with no transaction open, a lane statement runs at once and its writes are seen by the client", () =>
    Effect.gen(function*() {
      const { lane, sql } = yield* setUp
      yield* lane.execute(sql`INSERT INTO notes (body) VALUES (${"one"})`)
      yield* sql`INSERT INTO notes (body) VALUES (${"two"})`
      const rows = yield* lane.execute(sql<{ body: string }>`SELECT body FROM notes ORDER BY id`)
      expect(rows.map((row) => row.body)).toEqual(["one", "two"])
    }).pipe(Effect.provide(database)))

  it.scoped("integers come back as the caller's SafeIntegers says: nanosecond times survive as bigint", () =>
    Effect.gen(function*() {
      const { lane, sql } = yield* setUp
      const atNs = 1_763_700_000_123_456_789n
      yield* lane.execute(sql`INSERT INTO notes (body, at_ns) VALUES (${"t"}, ${atNs})`)
      const query = lane.execute(sql<{ at_ns: unknown }>`SELECT at_ns FROM notes`)
      const [safe] = yield* query.pipe(Effect.provideService(SqlClient.SafeIntegers, true))
      expect(safe!.at_ns).toBe(atNs)
      const [plain] = yield* query
      expect(typeof plain!.at_ns).toBe("number")
    }).pipe(Effect.provide(database)))

  it.scoped("a statement SQLite refuses is a SqlError naming the cause, and the connection goes on", () =>
    Effect.gen(function*() {
      const { lane, sql } = yield* setUp
      const error = yield* lane.execute(sql`INSERT INTO missing_table (x) VALUES (${1})`).pipe(Effect.flip)
      expect(error._tag).toBe("SqlError")
      expect(String((error.cause as Error).message)).toContain("missing_table")
      const broken = yield* lane.execute(sql`INSERT INTO notes (body) VALUES (${null})`).pipe(Effect.flip)
      expect(String((broken.cause as Error).message)).toContain("NOT NULL")
      yield* lane.execute(sql`INSERT INTO notes (body) VALUES (${"fine"})`)
      expect(yield* bodies).toEqual(["fine"])
    }).pipe(Effect.provide(database)))

  it.scoped("nested transactions of the client still work over the connection (savepoints)", () =>
    Effect.gen(function*() {
      const { lane, sql } = yield* setUp
      yield* sql.withTransaction(Effect.gen(function*() {
        yield* lane.execute(sql`INSERT INTO notes (body) VALUES (${"outer"})`)
        yield* sql.withTransaction(
          Effect.zipRight(lane.execute(sql`INSERT INTO notes (body) VALUES (${"inner"})`), Effect.fail("undo inner"))
        ).pipe(Effect.ignore)
      }))
      expect(yield* bodies).toEqual(["outer"])
    }).pipe(Effect.provide(database)))

  it.scoped("an interrupted transaction is rolled back and frees the connection", () =>
    Effect.gen(function*() {
      const { lane, sql } = yield* setUp
      const begun = yield* Deferred.make<void>()
      const holder = yield* sql.withTransaction(
        Effect.zipRight(lane.execute(sql`INSERT INTO notes (body) VALUES (${"interrupted"})`), Effect.zipRight(Deferred.succeed(begun, undefined), Effect.never))
      ).pipe(Effect.fork)
      yield* Deferred.await(begun)
      yield* Fiber.interrupt(holder)
      yield* sql.withTransaction(lane.execute(sql`INSERT INTO notes (body) VALUES (${"next"})`))
      expect(yield* bodies).toEqual(["next"])
    }).pipe(Effect.provide(database)))

  it.scoped("a defect inside a transaction rolls it back", () =>
    Effect.gen(function*() {
      const { lane, sql } = yield* setUp
      const exit = yield* sql.withTransaction(
        Effect.zipRight(lane.execute(sql`INSERT INTO notes (body) VALUES (${"lost"})`), Effect.die("bug"))
      ).pipe(Effect.exit)
      expect(Exit.isFailure(exit) && Cause.isDie(exit.cause)).toBe(true)
      expect(yield* bodies).toEqual([])
    }).pipe(Effect.provide(database)))

  it.scoped("a COMMIT SQLite refuses is a defect with its SqlError: nothing of it stays, and the connection goes on", () =>
    Effect.gen(function*() {
      const { lane, sql } = yield* setUp
      // A deferred foreign key is checked at COMMIT, which leaves the transaction open when it fails.
      yield* sql`PRAGMA foreign_keys = ON`
      yield* sql`CREATE TABLE tags (note_id INTEGER REFERENCES notes (id) DEFERRABLE INITIALLY DEFERRED)`
      const exit = yield* sql.withTransaction(Effect.gen(function*() {
        yield* lane.execute(sql`INSERT INTO notes (body) VALUES (${"tagged"})`)
        yield* lane.execute(sql`INSERT INTO tags (note_id) VALUES (${999})`)
      })).pipe(Effect.exit)
      expect(Exit.isFailure(exit)).toBe(true)
      const defect = Exit.isFailure(exit) ? Cause.dieOption(exit.cause) : Option.none()
      expect(Option.getOrUndefined(defect)).toMatchObject({ _tag: "SqlError" })
      expect(String((Option.getOrThrow(defect) as { cause: Error }).cause.message)).toContain("FOREIGN KEY")
      expect(yield* bodies).toEqual([])
      yield* sql.withTransaction(lane.execute(sql`INSERT INTO notes (body) VALUES (${"after"})`))
      expect(yield* bodies).toEqual(["after"])
    }).pipe(Effect.provide(database)))

  it.scoped("closing the layer closes the database: a file opened again holds what was written", () =>
    Effect.gen(function*() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-lane-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true })))
      const filename = path.join(dir, "client.sqlite")
      const file = Connection.layer({ filename })
      const writeOnce = Effect.gen(function*() {
        const { lane, sql } = yield* setUp
        yield* lane.execute(sql`INSERT INTO notes (body) VALUES (${"durable"})`)
      })
      yield* Effect.scoped(Effect.provide(writeOnce, file))
      expect(yield* Effect.provide(bodies, file)).toEqual(["durable"])
    }))
})
