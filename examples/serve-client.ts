/**
 * A client of a running `converge serve`: it creates an inbox, opens a group with a second
 * inbox of its own making, and sends a message through the server.
 *
 *   converge serve --port 5555 --db ./ds.sqlite &
 *   CONVERGE_SERVER=http://127.0.0.1:5555 node dist/serve-client.js
 *
 * Each client is `Client.layer()` over its own SQLite file and its own RPC connection.
 */
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Client, DeliveryService, MlsCrypto } from "converge"
import { Config, Context, Effect, Layer } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

const serverUrl = Config.string("CONVERGE_SERVER").pipe(Config.withDefault("http://127.0.0.1:5555"))

/** A client with its own database and connection to the server's RPC endpoint. */
const connect = (server: string, filename: string) =>
  Layer.build(
    Client.layer().pipe(
      Layer.provide(SqliteClient.layer({ filename })),
      Layer.provide(DeliveryService.layerRpc({ url: `${server.replace(/\/+$/, "")}/rpc`, timeout: "5 seconds" })),
      Layer.provide(MlsCrypto.layer())
    )
  ).pipe(Effect.map(Context.get(Client)))

const scratchFolder = Effect.acquireRelease(
  Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "converge-example-"))),
  (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
)

const program = Effect.gen(function*() {
  const server = yield* serverUrl
  const dir = yield* scratchFolder
  const carol = yield* connect(server, path.join(dir, "carol.sqlite"))
  const dave = yield* connect(server, path.join(dir, "dave.sqlite"))
  yield* Effect.log(`connected to ${server} as ${carol.inboxId}`)

  const dm = yield* carol.findOrCreateDm(dave.inboxId)
  const messageId = yield* dm.send("hello over the network")
  yield* dave.syncAll
  const received = yield* (yield* dave.conversation(dm.id)).messages()
  const texts = received.filter((m) => m.kind === "text").map((m) => m.text)
  yield* Effect.log(`sent ${messageId}; Dave reads: ${texts.join(" | ")}`)
  if (!texts.includes("hello over the network")) return yield* Effect.dieMessage("Dave did not receive the message")
}).pipe(
  Effect.scoped,
  Effect.catchTag("DeliveryError", (e) => Effect.fail(`cannot reach the server: ${e.message}`))
)

Effect.runPromise(program).then(
  () => console.log("serve-client: ok"),
  (error: unknown) => {
    console.error(error)
    process.exitCode = 1
  }
)
