/**
 * When the client's SQLite commits reach the disk.
 *
 * Every commit is atomic and survives a crash of the process as soon as it returns (it is in
 * the WAL file, in the OS's cache). What a power loss may undo is the question, and one
 * answer matters for safety: nothing may leave the device ahead of the record it depends on.
 * A write-ahead record undone after its message went out would have the message sent again
 * with the same key and nonce; a key package undone after its upload would leave welcomes
 * nobody can open.
 *
 * - `"publish"` (the default, libxmtp's choice too): commits use `synchronous=NORMAL`, and the
 *   engine calls `flush` before every request that writes to the delivery service. `flush`
 *   syncs the WAL file on libuv's thread pool, so every commit so far survives a power loss
 *   before anything that depends on it leaves. A power loss can undo only what never left:
 *   received pages and confirmations since (fetched and derived again on the next sync) and
 *   messages queued with `sendOptimistic` but not yet published.
 * - `"commit"`: every commit is synced before it returns (`synchronous=FULL`); `flush` has
 *   nothing left to do.
 *
 * A database that is not a file in WAL mode always gets `"commit"`'s behaviour: with a rollback
 * journal, `synchronous=NORMAL` can corrupt the file on a power loss, and a memory database has
 * no disk to reach.
 */
import type { SqlClient } from "@effect/sql"
import { Effect, Schema } from "effect"
import fs from "node:fs/promises"
import path from "node:path"
import { StorageError } from "../domain/Errors.ts"

export const Durability = Schema.Literal("publish", "commit")
export type Durability = typeof Durability.Type

export interface DurabilityControl {
  /** Makes every write so far survive a power loss. */
  readonly flush: Effect.Effect<void, StorageError>
  /** How many row writes a power loss could still undo (0 right after `flush`). */
  readonly unflushedWrites: Effect.Effect<number, StorageError>
}

const PragmaValue = Schema.Array(Schema.Struct({ journal_mode: Schema.String }))
const DatabaseList = Schema.Array(Schema.Struct({ name: Schema.String, file: Schema.String }))
const TotalChanges = Schema.Array(Schema.Struct({ changes: Schema.Number }))

const failed = (operation: string) => (error: { readonly message: string }) =>
  new StorageError({ operation, detail: error.message })

const alwaysDurable: DurabilityControl = { flush: Effect.void, unflushedWrites: Effect.succeed(0) }

/** Sets the connection's `synchronous` level for `durability` and returns its `flush`. */
export const make = (sql: SqlClient.SqlClient, durability: Durability) =>
  Effect.gen(function*() {
    const [mode] = yield* sql`PRAGMA journal_mode`.pipe(Effect.flatMap(Schema.decodeUnknown(PragmaValue)))
    const databases = yield* sql`PRAGMA database_list`.pipe(Effect.flatMap(Schema.decodeUnknown(DatabaseList)))
    const file = databases.find((database) => database.name === "main")?.file ?? ""
    if (durability === "commit" || mode?.journal_mode.toLowerCase() !== "wal" || file === "") {
      yield* sql`PRAGMA synchronous = FULL`
      return alwaysDurable
    }
    yield* sql`PRAGMA synchronous = NORMAL`
    return makeWalFlush(sql, file)
  }).pipe(Effect.mapError(failed("open")))

/** Rows changed on this connection since it opened (only ever grows). */
const totalChanges = (sql: SqlClient.SqlClient) =>
  sql`SELECT total_changes() AS changes`.pipe(
    Effect.flatMap(Schema.decodeUnknown(TotalChanges)),
    Effect.map((rows) => rows[0]?.changes ?? 0)
  )

/** Syncs a file (or directory) on libuv's thread pool. */
const syncFile = (file: string) =>
  Effect.tryPromise({
    try: async () => {
      const handle = await fs.open(file, "r")
      try {
        await handle.datasync()
      } finally {
        await handle.close()
      }
    },
    catch: (cause) => new StorageError({ operation: "flush", detail: `cannot sync ${file}: ${String(cause)}` })
  })

const makeWalFlush = (sql: SqlClient.SqlClient, databaseFile: string): DurabilityControl => {
  const wal = `${databaseFile}-wal`
  const lock = Effect.unsafeMakeSemaphore(1)
  let flushedAt = -1
  // The WAL file's own name must survive too: SQLite syncs its directory once, and so do we.
  let directorySynced = false
  const flush = lock.withPermits(1)(Effect.gen(function*() {
    const changes = yield* totalChanges(sql).pipe(Effect.mapError(failed("flush")))
    if (changes === flushedAt) return
    yield* syncFile(wal)
    if (!directorySynced) {
      yield* syncFile(path.dirname(wal))
      directorySynced = true
    }
    // Writes that landed while the sync ran may or may not be on disk: they count as unflushed.
    flushedAt = changes
  }))
  const unflushedWrites = totalChanges(sql).pipe(
    Effect.map((changes) => Math.max(0, changes - Math.max(flushedAt, 0))),
    Effect.mapError(failed("unflushedWrites"))
  )
  return { flush: Effect.withSpan(flush, "Storage.flush"), unflushedWrites }
}
