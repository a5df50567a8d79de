/**
 * Two clients over one in-memory delivery service, in one process: Alice creates a group with
 * Bob, both send, both read the same history.
 *
 *   node dist/two-clients.js
 *
 * The delivery service is built once and shared: each client gets its own SQLite file and its
 * own `Client` layer, but both talk to the same `DeliveryService` (two `layerMemory` layers
 * would be two separate networks).
 */
import { Client, DeliveryService, MlsCrypto, SqliteConnection } from "converge"
import { Context, Effect, Layer } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

/** A client with its own database, on the given delivery service. */
const clientOn = (delivery: DeliveryService["Type"], filename: string) =>
  Layer.build(
    Client.layer().pipe(
      // Its SqlClient and the lane its storage runs hot statements on (SqliteClient.layer works too).
      Layer.provide(SqliteConnection.layer({ filename })),
      Layer.provide(Layer.succeed(DeliveryService, delivery)),
      Layer.provide(MlsCrypto.layer())
    )
  ).pipe(Effect.map(Context.get(Client)))

const scratchFolder = Effect.acquireRelease(
  Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "converge-example-"))),
  (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
)

const program = Effect.gen(function*() {
  const dir = yield* scratchFolder
  const delivery = yield* DeliveryService
  const alice = yield* clientOn(delivery, path.join(dir, "alice.sqlite"))
  const bob = yield* clientOn(delivery, path.join(dir, "bob.sqlite"))

  const group = yield* alice.createGroup([bob.inboxId], { name: "team" })
  yield* group.send("hello Bob") // resolves once published and seen on the group topic

  const summary = yield* bob.syncAll // welcomes first, then every group with news
  const bobsGroup = yield* bob.conversation(group.id)
  yield* bobsGroup.send("hello Alice")
  yield* group.sync

  const history = yield* group.messages({ direction: "asc" })
  const texts = history.filter((m) => m.kind === "text").map((m) => m.text)
  yield* Effect.log(`Bob joined ${summary.joined} group(s); Alice reads: ${texts.join(" | ")}`)
  if (texts.join("|") !== "hello Bob|hello Alice") {
    return yield* Effect.dieMessage(`unexpected history: ${texts.join("|")}`)
  }
}).pipe(
  Effect.scoped,
  Effect.provide(DeliveryService.layerMemory),
  Effect.catchTags({
    InboxNotFound: (e) => Effect.logError(`no such inbox ${e.inboxId}`),
    IntentFailed: (e) => Effect.logError(e.message)
  })
)

Effect.runPromise(program).then(
  () => console.log("two-clients: ok"),
  (error: unknown) => {
    console.error(error)
    process.exitCode = 1
  }
)
