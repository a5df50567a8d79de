/**
 * The Converge half of `npm run bench:xmtp` (`e2e/xmtp/bench.mjs` starts the server and runs the
 * SDK half): Converge's own client over the network against the running `converge serve`, the
 * same cases as the XMTP SDK's, and the raw publish and query throughput of both server faces
 * (the Converge face over both of its transports). Prints one
 * JSON line of figures (milliseconds) on stdout.
 *
 * Env: CONVERGE_RPC_URL (the Converge face), XMTP_ADDR (host:port of the V3 face), BENCH_SCALE.
 */
import { SqliteClient } from "@effect/sql-sqlite-node"
import * as Grpc from "@grpc/grpc-js"
import { Context, Effect, Layer, Logger, LogLevel, Schedule } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as RpcDeliveryService from "../src/layers/RpcDeliveryService.ts"
import * as SqliteStorage from "../src/layers/SqliteStorage.ts"
import * as TsMlsCrypto from "../src/layers/TsMlsCrypto.ts"
import { Client } from "../src/services/Client.ts"
import { DeliveryService } from "../src/services/DeliveryService.ts"
import { MLS_API } from "../src/xmtp/Proto.ts"
import { mlsMessage, newGroupId, registerInstallation } from "../test/support/DeliveryFixtures.ts"
import { groupInput, privateMessage, newGroupId as newXmtpGroupId } from "../test/support/XmtpHarness.ts"

const SCALE = Math.max(0.05, Number(process.env["BENCH_SCALE"] ?? "1") || 1)
const n = (count: number, min = 2) => Math.max(min, Math.round(count * SCALE))
const rpcUrl = process.env["CONVERGE_RPC_URL"]!
const xmtpAddr = process.env["XMTP_ADDR"]!
const TEXT = "m".repeat(100)

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length === 0 ? Number.NaN : (s[Math.floor((s.length - 1) / 2)]! + s[Math.ceil((s.length - 1) / 2)]!) / 2
}
const timed = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.map(Effect.all([Effect.sync(() => performance.now()), effect]), ([t0]) => performance.now() - t0)
const samples = <E, R>(count: number, effect: Effect.Effect<unknown, E, R>) =>
  Effect.forEach(Array.from({ length: count }), () => timed(effect))

const deliveryOver = (transport: "websocket" | "http") =>
  RpcDeliveryService.layer({
    url: rpcUrl,
    transport,
    timeout: "30 seconds",
    retrySchedule: Schedule.exponential("50 millis").pipe(Schedule.intersect(Schedule.recurs(3)))
  })
const delivery = deliveryOver("websocket")

/** A Converge client with its own SQLite file, over the network. */
const newClient = (name: string) =>
  Effect.gen(function*() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `converge-bench-${name}-`))
    yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true })))
    const layer = Client.layerWithStorage().pipe(
      Layer.provide(SqliteStorage.layer),
      Layer.provide(SqliteClient.layer({ filename: path.join(dir, "client.sqlite") })),
      Layer.provide(delivery),
      Layer.provide(TsMlsCrypto.layer())
    )
    return Context.get(yield* Layer.build(layer), Client)
  })

const clientCases = Effect.gen(function*() {
  const [alice, bob] = yield* Effect.all([newClient("alice"), newClient("bob")])
  const group = yield* alice.createGroup([bob.inboxId])
  yield* bob.syncAll
  const bobGroup = yield* bob.conversation(group.id)
  // As many warm-up rounds as measured sends: the first few dozen sends (and receives) of a fresh
  // process run at 3-5 times the steady cost while V8 warms up (the SDK is native code).
  yield* Effect.forEach(Array.from({ length: n(40) }), () => Effect.zipRight(group.send("warm up"), bobGroup.sync), {
    discard: true
  })
  const send = yield* samples(n(40), group.send(TEXT))
  yield* bobGroup.sync
  const endToEnd = yield* samples(n(20), Effect.zipRight(group.send(TEXT), bobGroup.sync))
  const batch = n(50, 10)
  const optimistic = yield* samples(n(4), Effect.zipRight(
    Effect.forEach(Array.from({ length: batch }), () => group.sendOptimistic(TEXT), { discard: true }),
    group.publishPending
  ))
  yield* bobGroup.sync
  const catchUpCount = n(500, 50)
  for (let i = 0; i < catchUpCount; i += 50) {
    yield* Effect.forEach(Array.from({ length: Math.min(50, catchUpCount - i) }), () => group.sendOptimistic(TEXT), { discard: true })
    yield* group.publishPending
  }
  const catchUp = yield* timed(bobGroup.sync)
  const groups = n(50, 5)
  for (let i = 0; i < groups; i++) yield* alice.createGroup([bob.inboxId])
  yield* Effect.repeatN(bob.syncAll, n(10, 3))
  const syncAll = yield* samples(n(10, 3), bob.syncAll)
  return {
    send: median(send),
    endToEnd: median(endToEnd),
    optimisticBatch: median(optimistic) / batch,
    catchUp,
    catchUpCount,
    syncAllIdle: median(syncAll),
    groups
  }
})

const PUBLISH_BATCH = 50

/**
 * The Converge face's sendGroupMessages, one message a call and 50 a call (messages per second),
 * and a one-message query a call (round trips per second), over `transport`.
 */
const convergeFacePublish = (transport: "websocket" | "http") => Effect.gen(function*() {
  const ds = yield* DeliveryService
  const { ds: signedIn } = yield* registerInstallation(ds)
  const groupId = newGroupId()
  const count = n(500, 50)
  let i = 0
  const single = yield* timed(Effect.forEach(Array.from({ length: count }), () =>
    signedIn.sendGroupMessages([mlsMessage(groupId, `single ${i++}`)]), { discard: true }))
  const batched = yield* timed(Effect.forEach(Array.from({ length: count / PUBLISH_BATCH }), () =>
    signedIn.sendGroupMessages(Array.from({ length: PUBLISH_BATCH }, () => mlsMessage(groupId, `batch ${i++}`))), { discard: true }))
  const query = yield* timed(Effect.forEach(Array.from({ length: count }), () =>
    ds.queryGroupMessages({ groupId, afterSequenceId: 0n, limit: 1 }), { discard: true }))
  return {
    single: (count / single) * 1000,
    batched: (Math.floor(count / PUBLISH_BATCH) * PUBLISH_BATCH / batched) * 1000,
    query: (count / query) * 1000
  }
}).pipe(Effect.provide(deliveryOver(transport)))

type Callback = (error: Grpc.ServiceError | null) => void

/** The V3 face's SendGroupMessages over gRPC, the same way. */
const xmtpFacePublish = Effect.gen(function*() {
  const client = new (Grpc.makeClientConstructor(MLS_API, "MlsApi"))(xmtpAddr, Grpc.credentials.createInsecure()) as
    & Grpc.Client
    & Record<string, (request: unknown, callback: Callback) => void>
  yield* Effect.addFinalizer(() => Effect.sync(() => client.close()))
  const send = (messages: ReadonlyArray<unknown>) =>
    Effect.async<void, Grpc.ServiceError>((resume) =>
      client["SendGroupMessages"]!({ messages }, (e) => resume(e ? Effect.fail(e) : Effect.void)))
  const group = newXmtpGroupId()
  const count = n(500, 50)
  let i = 0
  const single = yield* timed(Effect.forEach(Array.from({ length: count }), () =>
    send([groupInput(privateMessage(group, "application", `single ${i++}`))]), { discard: true }))
  const batched = yield* timed(Effect.forEach(Array.from({ length: count / PUBLISH_BATCH }), () =>
    send(Array.from({ length: PUBLISH_BATCH }, () => groupInput(privateMessage(group, "application", `batch ${i++}`)))), { discard: true }))
  const query = yield* timed(Effect.forEach(Array.from({ length: count }), () =>
    Effect.async<void, Grpc.ServiceError>((resume) =>
      client["QueryGroupMessages"]!({ groupId: group, pagingInfo: { limit: 1 } }, (e) =>
        resume(e ? Effect.fail(e) : Effect.void))), { discard: true }))
  return {
    single: (count / single) * 1000,
    batched: (Math.floor(count / PUBLISH_BATCH) * PUBLISH_BATCH / batched) * 1000,
    query: (count / query) * 1000
  }
})

const main = Effect.gen(function*() {
  // The faces first, alone: the clients' background work would share this process's time.
  const xmtpFace = yield* Effect.scoped(xmtpFacePublish)
  const convergeFace = yield* Effect.scoped(convergeFacePublish("websocket"))
  const convergeFaceHttp = yield* Effect.scoped(convergeFacePublish("http"))
  const client = yield* Effect.scoped(clientCases)
  process.stdout.write(`${JSON.stringify({ client, convergeFace, convergeFaceHttp, xmtpFace })}\n`)
}).pipe(Effect.scoped, Logger.withMinimumLogLevel(LogLevel.Warning))

Effect.runPromise(main).then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})
