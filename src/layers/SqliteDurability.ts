/**
 * When the client's SQLite commits reach the disk.
 *
 * Every commit is atomic and survives a crash of the process as soon as it returns (it is in
 * the WAL file, in the OS's cache). What a power loss may undo is the question, and one
 * answer matters for safety: nothing may leave the device ahead of the record it depends on.
 * A write-ahead record undone after its message went out would have the message sent again
 * with the same key and nonce; a key package undone after its upload would leave welcomes
 * nobody can open; a device key undone after another device signed it in would leave the
 * inbox listing a key nobody holds.
 *
 * - `"publish"` (the default, libxmtp's choice too): commits use `synchronous=NORMAL`, and the
 *   engine calls `flush` before every request that writes to the delivery service (and before
 *   another device signs this one in), welcomes excepted. `flush` syncs the WAL file, so every
 *   commit so far survives a power loss before anything that depends on it leaves. A power loss
 *   can undo only local changes made since the last such request: received pages and
 *   confirmations (fetched and derived again on the next sync), messages queued with
 *   `sendOptimistic` and not yet published, and local-only decisions (consent not yet sent,
 *   deletions, expiries, pruned keys, which then come back until done again).
 *   Welcomes go without a flush of their own: they carry what their commit wrote ahead (the
 *   welcomes themselves, the key packages they are sealed to), flushed before the commit went
 *   out, and the commit's sequence id, which reading the topic again gives back; nothing of the
 *   confirmation written since. A power loss that undoes that confirmation has the commit
 *   confirmed again from the topic and its welcomes sealed and sent again; the joiner takes the
 *   group once. In a 100-member group that sync (the new state) cost about 1 ms of a 30 ms add.
 * - `"commit"`: every commit is synced before it returns (`synchronous=FULL`); `flush` has
 *   nothing left to do.
 *
 * A database that is not a file in WAL mode always gets `"commit"`'s behaviour: with a rollback
 * journal, `synchronous=NORMAL` can corrupt the file on a power loss, and a memory database has
 * no disk to reach.
 *
 * `flush` skips the sync when `total_changes()` has not moved since the last one. Writes that
 * do not count there (`CREATE INDEX`, `ANALYZE`, `PRAGMA user_version`) happen only while the
 * storage opens (migrations), before its first flush, which always syncs.
 */
import { SqlClient } from "@effect/sql"
import { Effect, Metric, Option, Schema, type Scope } from "effect"
import fs from "node:fs"
import { StorageError } from "../domain/Errors.ts"
import * as EngineMetrics from "../services/EngineMetrics.ts"
import { Int } from "./SqliteColumns.ts"
import { SqliteLane } from "./SqliteConnection.ts"
import { execOn, type Run, toStorageError, walDatabaseFile } from "./SqliteStatements.ts"
import * as WalSyncPlacement from "./WalSyncPlacement.ts"

export const Durability = Schema.Literal("publish", "commit")
export type Durability = typeof Durability.Type

export interface DurabilityControl {
  /** Makes every write so far survive a power loss. Not inside a transaction (a defect there). */
  readonly flush: Effect.Effect<void, StorageError>
  /** How many row writes a power loss could still undo (0 right after `flush`). */
  readonly unflushedWrites: Effect.Effect<number, StorageError>
}

// An integer however the connection hands it out (number, or bigint under `SafeIntegers`).
const TotalChanges = Schema.Array(Schema.Struct({ changes: Int }))

const countedOnThread = Metric.increment(EngineMetrics.walSyncsOnThread)
const countedOnPool = Metric.increment(EngineMetrics.walSyncsOnPool)

const alwaysDurable: DurabilityControl = { flush: Effect.void, unflushedWrites: Effect.succeed(0) }

/** Sets the connection's `synchronous` level for `durability` and returns its `flush`. */
export const make = (
  sql: SqlClient.SqlClient,
  durability: Durability,
  syncs: WalSyncs = nodeWalSyncs
): Effect.Effect<DurabilityControl, StorageError, Scope.Scope> =>
  Effect.gen(function*() {
    const file = yield* walDatabaseFile(sql)
    if (durability === "commit" || file === undefined) {
      yield* sql`PRAGMA synchronous = FULL`
      return alwaysDurable
    }
    yield* sql`PRAGMA synchronous = NORMAL`
    return yield* makeWalFlush(sql, `${file}-wal`, syncs)
  }).pipe(Effect.mapError(toStorageError("open")))

/** Rows changed on this connection since it opened (only ever grows). */
const totalChanges = (sql: SqlClient.SqlClient, exec: Run["exec"]) =>
  exec(sql`SELECT total_changes() AS changes`).pipe(
    Effect.flatMap(Schema.decodeUnknown(TotalChanges)),
    Effect.map((rows) => rows[0]?.changes ?? 0)
  )

/**
 * The two ways to sync the WAL's descriptor: on the calling thread, timed (milliseconds), or on
 * libuv's thread pool. Tests give scripted ones.
 */
export interface WalSyncs {
  readonly onThread: (fd: number) => Effect.Effect<number, unknown>
  readonly onPool: (fd: number) => Effect.Effect<void, unknown>
}

/**
 * `fdatasync` itself. Timed with the process's monotonic clock, not Effect's `Clock`: a test or
 * simulation clock says nothing about how long the disk took.
 */
export const nodeWalSyncs: WalSyncs = {
  onThread: (fd) =>
    Effect.try({
      try: () => {
        const start = performance.now()
        fs.fdatasyncSync(fd)
        return performance.now() - start
      },
      catch: (cause) => cause
    }),
  onPool: (fd) =>
    Effect.async<void, NodeJS.ErrnoException>((resume) => {
      fs.fdatasync(fd, (error) => resume(error ? Effect.fail(error) : Effect.void))
    })
}

/**
 * Syncs the WAL through one handle kept open for the storage's life: a write error the kernel
 * reports once is seen here, not consumed by a handle opened and closed before. SQLite keeps
 * the same file while its connection is open, and syncs its directory entry when it creates it.
 *
 * The sync runs on the calling thread while the disk is quick, as SQLite's own
 * `synchronous=FULL` commits do. On the thread pool it cost a `send` more than the sync itself on
 * this machine kind (2 vCPUs): the same `fdatasync` (about 0.5-0.6 ms median), yet 4.0-4.8
 * against 3.9-4.0 ms per `send`, old and new code taken in turn. On slow storage it moves to the
 * pool, so it does not stall the process (`WalSyncPlacement`). The caller overlaps what it can
 * with a request already on its way (`PublishRound`).
 */
const makeWalFlush = (sql: SqlClient.SqlClient, wal: string, syncs: WalSyncs) =>
  Effect.gen(function*() {
    // Every send reads the count: in one step when the connection has a lane.
    const exec = execOn(Option.getOrUndefined(yield* Effect.serviceOption(SqliteLane)))
    const lock = yield* Effect.makeSemaphore(1)
    let walFd: number | undefined
    // Closed under the lock, after any sync in flight; forgotten as it closes, so a late flush
    // opens the file again instead of syncing a number the process may have reused.
    yield* Effect.addFinalizer(() =>
      lock.withPermits(1)(Effect.ignore(Effect.try(() => {
        const open = walFd
        walFd = undefined
        if (open !== undefined) fs.closeSync(open)
      })))
    )
    let placement = WalSyncPlacement.initial
    const syncWal = Effect.gen(function*() {
      // Read and write: Windows syncs only a handle opened for writing. Nothing is written.
      walFd ??= yield* Effect.try({ try: () => fs.openSync(wal, "r+"), catch: (cause) => cause })
      const where = WalSyncPlacement.next(placement)
      // A sync handed to the pool runs to its end whatever happens to the flush: the flush waits
      // for it, holding the lock, so the descriptor is not closed (and its number reused) under it.
      const millis = where === "thread"
        ? yield* syncs.onThread(walFd)
        : yield* Effect.as(Effect.uninterruptible(syncs.onPool(walFd)), 0)
      placement = WalSyncPlacement.observe(placement, where, millis)
      yield* where === "thread" ? countedOnThread : countedOnPool
    }).pipe(
      Effect.mapError((cause) => new StorageError({ operation: "flush", detail: `cannot sync ${wal}: ${String(cause)}` }))
    )
    let flushedAt = -1
    const flush = lock.withPermits(1)(Effect.gen(function*() {
      // Inside a transaction its own writes would count as flushed before they commit.
      if (Option.isSome(yield* Effect.serviceOption(SqlClient.TransactionConnection))) {
        return yield* Effect.dieMessage("Storage.flush inside a transaction")
      }
      const changes = yield* totalChanges(sql, exec).pipe(Effect.mapError(toStorageError("flush")))
      if (changes === flushedAt) return
      yield* syncWal
      // Writes that landed while the sync ran may or may not be on disk: they count as unflushed.
      flushedAt = changes
    }))
    const unflushedWrites = totalChanges(sql, exec).pipe(
      Effect.map((changes) => Math.max(0, changes - Math.max(flushedAt, 0))),
      Effect.mapError(toStorageError("unflushedWrites"))
    )
    return { flush: Effect.withSpan(flush, "Storage.flush"), unflushedWrites } satisfies DurabilityControl
  })
