/**
 * WAL checkpoints off the event loop. SQLite copies the write-ahead log into the database file
 * on whichever connection commits past `wal_autocheckpoint` pages: on a server's one connection
 * (better-sqlite3 is synchronous) that is megabytes copied and the database file synced while
 * every request waits, a third of the time its commits took under load. Here a worker thread
 * with a connection of its own runs PASSIVE checkpoints (which never block the writer) and the
 * writer's own are off. The writer starts the log over once a checkpoint has copied all of it,
 * as it always did; if the log outgrows `maxWalBytes` anyway (a writer that never pauses), the
 * worker runs one RESTART checkpoint, which makes the next writer wait for it, as before.
 */
import { SqlClient } from "@effect/sql"
import { Effect, Runtime, Schema, type Scope } from "effect"
import { createRequire } from "node:module"
import { Worker } from "node:worker_threads"

export interface CheckpointOptions {
  /** How often the worker checkpoints (default 100 ms). */
  readonly intervalMillis?: number
  /** A log this big (bytes) is checkpointed with RESTART (default 64 MiB). */
  readonly maxWalBytes?: number
}

interface WorkerData {
  readonly driver: string
  readonly file: string
  readonly intervalMillis: number
  readonly maxWalBytes: number
}

/**
 * The worker's program, a script (`eval`): a function's source would not survive bundlers and
 * loaders unchanged, and a file would need resolving next to each build. It sees `workerData` only.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads")
const fs = require("node:fs")
const Database = require(workerData.driver)
const db = new Database(workerData.file, { fileMustExist: true, timeout: 5000 })
db.pragma("synchronous = FULL")
const walSize = () => { try { return fs.statSync(workerData.file + "-wal").size } catch { return 0 } }
const timer = setInterval(() => {
  try {
    db.pragma(walSize() > workerData.maxWalBytes ? "wal_checkpoint(RESTART)" : "wal_checkpoint(PASSIVE)")
  } catch (error) {
    // Busy, or out of space: the next tick tries again; nothing written is at stake.
    parentPort.postMessage(String(error))
  }
}, workerData.intervalMillis)
parentPort.once("message", () => {
  clearInterval(timer)
  db.close()
  parentPort.close()
})
`

const JournalMode = Schema.Array(Schema.Struct({ journal_mode: Schema.String }))
const DatabaseList = Schema.Array(Schema.Struct({ name: Schema.String, file: Schema.String }))

/**
 * Moves the connection's checkpoints to a worker thread for the life of the scope. A database
 * not in WAL mode, or not in a file, is left as it is.
 */
export const make = (
  sql: SqlClient.SqlClient,
  options: CheckpointOptions = {}
): Effect.Effect<void, unknown, Scope.Scope> =>
  Effect.gen(function*() {
    const [mode] = yield* sql`PRAGMA journal_mode`.pipe(Effect.flatMap(Schema.decodeUnknown(JournalMode)))
    const databases = yield* sql`PRAGMA database_list`.pipe(Effect.flatMap(Schema.decodeUnknown(DatabaseList)))
    const file = databases.find((database) => database.name === "main")?.file ?? ""
    if (mode?.journal_mode.toLowerCase() !== "wal" || file === "") return
    const workerData: WorkerData = {
      driver: createRequire(import.meta.url).resolve("better-sqlite3"),
      file,
      intervalMillis: options.intervalMillis ?? 100,
      maxWalBytes: options.maxWalBytes ?? 64 * 1024 * 1024
    }
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    yield* Effect.acquireRelease(
      Effect.sync(() => {
        const worker = new Worker(WORKER_SOURCE, { eval: true, workerData })
        const exited = new Promise<void>((resolve) => worker.once("exit", () => resolve()))
        worker.on("message", (problem) => runFork(Effect.logWarning("WAL checkpoint failed", problem)))
        worker.on("error", (error) => runFork(Effect.logError("WAL checkpointer stopped", error)))
        worker.unref()
        return { worker, exited }
      }),
      ({ exited, worker }) =>
        // The worker's connection closes first: the writer's, closing last, checkpoints what is left.
        Effect.promise(() => {
          worker.postMessage("stop")
          return exited
        })
    )
    yield* sql`PRAGMA wal_autocheckpoint = 0`
  })
