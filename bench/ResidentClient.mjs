/**
 * One client alone in its own process, as a user's app would run it: compiled JavaScript (the
 * package's public API, built by the bench into `.tmp/`), an existing SQLite database, the
 * delivery service over RPC. It runs the first `syncAll` after its restart, reads every group
 * (the conversation list, each group's latest 50 messages, its members, which come from the
 * roster kept beside the state, and its settings, which decode each group's state through the
 * bounded cache), and reports its resident memory and JS heap after a
 * full GC, and its peak RSS, as one JSON line on stdout.
 *
 * Run by `Scale.manyLargeGroups`:
 * `node --expose-gc bench/ResidentClient.mjs <compiled index.js> <database> <rpc url>`.
 */
import { Effect, Layer, Metric, Schedule } from "effect"

const [entry, filename, url] = process.argv.slice(2)
if (entry === undefined || filename === undefined || url === undefined) {
  throw new Error("usage: ResidentClient.mjs <compiled index.js> <database> <rpc url>")
}
const gc = globalThis.gc
if (gc === undefined) throw new Error("run with --expose-gc")
const { Client, DeliveryService, EngineMetrics, MlsCrypto, SqliteConnection } = await import(entry)

const mib = (bytes) => bytes / (1024 * 1024)
/** RSS and the JS heap in use (with buffers outside it) after a full collection, in MiB. */
const settled = () => {
  gc()
  gc()
  const usage = process.memoryUsage()
  return { rss: mib(usage.rss), heap: mib(usage.heapUsed + usage.external) }
}
const cpuMs = (since) => {
  const used = process.cpuUsage(since)
  return (used.user + used.system) / 1000
}
const loaded = settled()

const layer = Client.layer({}).pipe(
  Layer.provide(SqliteConnection.layer({ filename })),
  Layer.provide(DeliveryService.layerRpc({
    url,
    timeout: "30 seconds",
    retrySchedule: Schedule.exponential("50 millis").pipe(Schedule.intersect(Schedule.recurs(3)))
  })),
  Layer.provide(MlsCrypto.layer())
)

const program = Effect.gen(function*() {
  const client = yield* Client
  const opened = settled()
  const decodes = () => Effect.map(Metric.value(EngineMetrics.stateDecodes), (s) => s.count)
  const cpu = process.cpuUsage()
  const started = performance.now()
  const synced = yield* client.syncAll
  const sync = { wallMs: performance.now() - started, cpuMs: cpuMs(cpu), decodes: yield* decodes() }
  const afterSync = settled()
  const readCpu = process.cpuUsage()
  const readStarted = performance.now()
  const conversations = yield* client.conversations()
  let members = 0
  let messages = 0
  for (const conversation of conversations) {
    messages += (yield* conversation.messages({ limit: 50, direction: "desc" })).length
    members += (yield* conversation.members).length
    // The group's settings are read from its state: each state is decoded through the bounded cache.
    yield* conversation.metadata
  }
  const read = { wallMs: performance.now() - readStarted, cpuMs: cpuMs(readCpu), decodes: (yield* decodes()) - sync.decodes }
  const afterRead = settled()
  return {
    groups: conversations.length,
    members,
    messages,
    received: synced.received,
    sync,
    read,
    loaded,
    opened,
    afterSync,
    afterRead,
    // The process's high-water mark (Linux reports it in KiB).
    peakRss: process.resourceUsage().maxRSS / 1024
  }
})

Effect.runPromise(Effect.scoped(Effect.provide(program, layer))).then(
  (result) => {
    process.stdout.write(`${JSON.stringify(result)}\n`)
    process.exit(0)
  },
  (error) => {
    process.stderr.write(`${String(error)}\n`)
    process.exit(1)
  }
)
