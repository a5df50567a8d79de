/**
 * A program that opens the SQLite delivery store (with its checkpointer), appends, closes it, and
 * then goes on: prints "closed" after the store's scope ended. `test/SqliteCheckpointer.test.ts`
 * runs it in its own process, where nothing else keeps Node's event loop alive.
 */
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Effect, Layer } from "effect"
import * as path from "node:path"
import * as SqlDeliveryStore from "../../src/layers/SqlDeliveryStore.ts"
import { DeliveryStore, groupTopic } from "../../src/services/DeliveryStore.ts"

const dir = process.argv[2]!
const program = Effect.gen(function*() {
  const store = yield* DeliveryStore
  yield* store.append([{ topic: groupTopic("0".repeat(32)), payload: new Uint8Array([1, 2, 3]) }])
}).pipe(
  Effect.provide(SqlDeliveryStore.layerSqlite.pipe(Layer.provide(SqliteClient.layer({ filename: path.join(dir, "ds.sqlite") })))),
  Effect.scoped
)
await Effect.runPromise(program)
console.log("closed")
