/**
 * WAL checkpoints off the event loop. SQLite copies the write-ahead log into the database file
 * on whichever connection commits past `wal_autocheckpoint` pages: on a server's one connection
 * (better-sqlite3 is synchronous) that is megabytes copied and the database file synced while
 * every request waits, half the time its commits took under load. Here a worker thread with a
 * connection of its own runs PASSIVE checkpoints, which take no lock a writer waits for, and the
 * writer's own are off; the writer starts the log over once a checkpoint has copied all of it.
 *
 * Under a writer that never pauses the worker never copies the whole log. Past `maxWalBytes` it
 * stops and asks the writer's connection for one PASSIVE checkpoint between its transactions:
 * that one copies what little is left, and the log starts over (the file cut back to the bound).
 * The writer's own checkpoints are off only once the worker has opened the database, and come
 * back if it stops. Opened by path: settings of a `file:` URI (`nolock`, `vfs`) do not reach the
 * worker's connection.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Effect, type ParseResult, Runtime, Schema, type Scope } from "effect"
import { createRequire } from "node:module"
import { Worker } from "node:worker_threads"
import { walDatabaseFile } from "./SqliteStatements.ts"

export interface CheckpointOptions {
  /** How often the worker checkpoints (default 100 ms). */
  readonly intervalMillis?: number
  /** The log's bound in bytes: past it the writer's connection checkpoints once (default 16 MiB). */
  readonly maxWalBytes?: number
}

/** SQLite's own `wal_autocheckpoint`, in pages: what the writer goes back to without the worker. */
const SQLITE_DEFAULT_AUTOCHECKPOINT = 1000

/**
 * The worker's program, a script (`eval`): a function's source would not survive bundlers and
 * loaders unchanged, and a file would need resolving next to each build. It sees `workerData`
 * only. A checkpoint that fails (busy, out of space) is tried again on the next tick; the first
 * failure of a run of them is reported, not every tick's.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads")
const Database = require(workerData.driver)
const db = new Database(workerData.file, { fileMustExist: true, timeout: 0 })
db.pragma("synchronous = FULL")
parentPort.postMessage({ _tag: "Ready" })
let failing = false
let waiting = false
const timer = setInterval(() => {
  if (waiting) return
  try {
    const [result] = db.pragma("wal_checkpoint(PASSIVE)")
    failing = false
    if (result.log > workerData.boundPages) {
      waiting = true
      parentPort.postMessage({ _tag: "OverBound" })
    }
  } catch (error) {
    if (!failing) parentPort.postMessage({ _tag: "Failed", detail: String(error) })
    failing = true
  }
}, workerData.intervalMillis)
parentPort.on("message", (message) => {
  if (message === "checkpointed") {
    waiting = false
    return
  }
  clearInterval(timer)
  db.close()
  parentPort.close()
})
`

/** An error as a line (better-sqlite3's errors reach this thread as plain objects with a `code`). */
const describe = (error: unknown): string => {
  if (typeof error !== "object" || error === null) return String(error)
  if ("message" in error && typeof error.message === "string") return error.message
  return "code" in error ? String(error.code) : String(error)
}

type WorkerMessage = { readonly _tag: "Ready" } | { readonly _tag: "OverBound" } | { readonly _tag: "Failed"; readonly detail: string }

const PageSize = Schema.Array(Schema.Struct({ page_size: Schema.Number }))

/**
 * Moves the connection's checkpoints to a worker thread for the life of the scope. A database
 * not in WAL mode, or not in a file, is left as it is; so is one whose worker cannot start.
 */
export const make = (
  sql: SqlClient.SqlClient,
  options: CheckpointOptions = {}
): Effect.Effect<void, SqlError | ParseResult.ParseError, Scope.Scope> =>
  Effect.gen(function*() {
    const file = yield* walDatabaseFile(sql)
    if (file === undefined) return
    const [page] = yield* sql`PRAGMA page_size`.pipe(Effect.flatMap(Schema.decodeUnknown(PageSize)))
    const maxWalBytes = options.maxWalBytes ?? 16 * 1024 * 1024
    // After the log starts over, its file is cut back to the bound.
    yield* sql.unsafe(`PRAGMA journal_size_limit = ${maxWalBytes}`)
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    const autocheckpoint = (pages: number) => sql.unsafe(`PRAGMA wal_autocheckpoint = ${pages}`).pipe(Effect.ignore)
    let stopping = false
    const backToDefault = (reason: string) =>
      Effect.logWarning(`WAL checkpointer ${reason}: the writer checkpoints itself again`).pipe(
        Effect.zipRight(autocheckpoint(SQLITE_DEFAULT_AUTOCHECKPOINT))
      )
    const workerData = {
      file,
      intervalMillis: options.intervalMillis ?? 100,
      boundPages: Math.ceil(maxWalBytes / (page?.page_size ?? 4096))
    }
    const onMessage = (worker: Worker) => (message: WorkerMessage) => {
      switch (message._tag) {
        case "Ready":
          return runFork(autocheckpoint(0))
        case "OverBound":
          return runFork(sql`PRAGMA wal_checkpoint(PASSIVE)`.pipe(
            Effect.ignore,
            Effect.ensuring(Effect.sync(() => stopping || worker.postMessage("checkpointed")))
          ))
        case "Failed":
          return runFork(Effect.logWarning("WAL checkpoint failed", message.detail))
      }
    }
    const started = yield* Effect.acquireRelease(
      Effect.try(() => {
        const driver = createRequire(import.meta.url).resolve("better-sqlite3")
        const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { ...workerData, driver } })
        const exited = new Promise<void>((resolve) => worker.once("exit", () => resolve()))
        worker.on("message", onMessage(worker))
        worker.on("error", (error) => runFork(Effect.logWarning("WAL checkpointer failed", describe(error))))
        worker.once("exit", () => stopping || runFork(backToDefault("stopped")))
        worker.unref()
        return { worker, exited }
      }).pipe(Effect.either),
      (started) =>
        // The worker's connection closes first: the writer's, closing last, checkpoints what is left.
        // Referenced again while it stops: an unreferenced worker is all an ending process may wait
        // for, and Node would exit under the waiting finalizer.
        started._tag === "Left" ? Effect.void : Effect.promise(() => {
          stopping = true
          started.right.worker.ref()
          started.right.worker.postMessage("stop")
          return started.right.exited
        })
    )
    if (started._tag === "Left") yield* backToDefault(`did not start: ${describe(started.left)}`)
  })
