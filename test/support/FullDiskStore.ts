/**
 * A program that writes to a store until the disk refuses a commit, and prints what the caller
 * got as one JSON line. `test/FailedCommit.test.ts` runs it in its own process under a file-size
 * limit (`ulimit -f`), where a write past the limit fails with EFBIG as on a full disk.
 *
 * - `storage`: the client's `SqliteStorage`, a transaction of 256 KiB at a time.
 * - `storage-lane`: the same over `SqliteConnection` (its own outermost transactions), as clients open it.
 * - `delivery`: the SQLite delivery store, appends of 64 KiB payloads.
 */
import { SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Cause, Effect, Exit, Layer } from "effect"
import * as path from "node:path"
import * as SqliteConnection from "../../src/layers/SqliteConnection.ts"
import * as SqlDeliveryStore from "../../src/layers/SqlDeliveryStore.ts"
import * as SqliteStorage from "../../src/layers/SqliteStorage.ts"
import { DeliveryStore, groupTopic } from "../../src/services/DeliveryStore.ts"
import { Storage } from "../../src/services/Storage.ts"

// With a handler, a write past the limit fails with EFBIG instead of the signal ending the process.
process.on("SIGXFSZ", () => {})

const [dir, kind] = [process.argv[2]!, process.argv[3]!]
const MAX_ATTEMPTS = 400

/** The first failure of `write` (attempt i), as the caller saw it. */
const untilRefused = <E>(write: (i: number) => Effect.Effect<unknown, E>) =>
  Effect.gen(function*() {
    for (let i = 0; i < MAX_ATTEMPTS; i++) {
      const exit = yield* Effect.exit(write(i))
      if (Exit.isSuccess(exit)) continue
      const failure = Cause.failureOption(exit.cause)
      return {
        attempt: i,
        defect: Cause.isDie(exit.cause),
        tag: failure._tag === "Some" ? (failure.value as { _tag?: string })._tag : undefined,
        message: String(Cause.squash(exit.cause)).slice(0, 300)
      }
    }
    return { attempt: MAX_ATTEMPTS, defect: false, tag: "never refused", message: "" }
  })

const storageWrites = Effect.gen(function*() {
  const storage = yield* Storage
  const sql = yield* SqlClient.SqlClient
  yield* sql`CREATE TABLE scratch (id INTEGER PRIMARY KEY, body BLOB NOT NULL)`
  const refused = yield* untilRefused((i) =>
    storage.transaction(sql`INSERT INTO scratch (id, body) VALUES (${i}, ${new Uint8Array(256 * 1024).fill(i & 255)})`)
  )
  // What the refused transaction wrote is not there, and the storage still answers.
  const [row] = yield* sql<{ n: number }>`SELECT count(*) AS n FROM scratch WHERE id = ${refused.attempt}`
  return { ...refused, refusedRowStored: Number(row?.n ?? -1) > 0 }
})
const clientFile = path.join(dir, "client.sqlite")
const storageRun = storageWrites.pipe(
  Effect.provide(SqliteStorage.layerWith({}).pipe(Layer.provideMerge(SqliteClient.layer({ filename: clientFile }))))
)
const storageLaneRun = storageWrites.pipe(
  Effect.provide(SqliteStorage.layerWith({}).pipe(Layer.provideMerge(Layer.orDie(SqliteConnection.layer({ filename: clientFile })))))
)

const deliveryRun = Effect.gen(function*() {
  const store = yield* DeliveryStore
  const topic = groupTopic("0".repeat(32))
  const refused = yield* untilRefused((i) => store.append([{ topic, payload: new Uint8Array(64 * 1024).fill(i & 255) }]))
  return refused
}).pipe(
  Effect.provide(SqlDeliveryStore.layerSqlite.pipe(Layer.provide(SqliteClient.layer({ filename: path.join(dir, "ds.sqlite") }))))
)

const run: Effect.Effect<object, unknown> = kind === "storage" ? storageRun : kind === "storage-lane" ? storageLaneRun : deliveryRun
console.log(JSON.stringify(await Effect.runPromise(Effect.scoped(run))))
