/**
 * What idle many-topic subscriptions cost `converge serve` (the Converge face, RPC over
 * WebSocket) on SQLite. Anyone may open 32 subscriptions of 1,000 topics on each of 1,024
 * connections, without signing. Before the fix each subscription read every topic once on
 * opening and polled 100 topics every 5 s, though SQLite's feed announces every commit; now the
 * opening asks the store's heads (one query per 500 topics, in event-loop turns) and SQLite's
 * subscriptions are not polled. Figures before and after beside the bounds, at the end.
 */
import { expect, layer } from "@effect/vitest"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Context, Effect, Layer } from "effect"
import * as ChildProcess from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { monitorEventLoopDelay } from "node:perf_hooks"
import * as v8 from "node:v8"
import * as vm from "node:vm"
import { toHex } from "../src/domain/Bytes.ts"
import { DeliveryService, DeliveryStore, MlsCrypto } from "../src/index.ts"
import { serve } from "../src/layers/DeliveryServer.ts"
import { groupTopic } from "../src/services/DeliveryStore.ts"
import { openWebSocket } from "./support/RawWebSocket.ts"

v8.setFlagsFromString("--expose-gc")
const gc = vm.runInNewContext("gc") as () => void
const MiB = 1024 * 1024
const usedBytes = () => {
  gc()
  const m = process.memoryUsage()
  return m.heapUsed + m.external
}

const tempSqlite = Layer.unwrapScoped(
  Effect.gen(function*() {
    const dir = yield* Effect.acquireRelease(
      Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "converge-attack-subs-"))),
      (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
    )
    return SqliteClient.layer({ filename: path.join(dir, "ds.sqlite") })
  })
)

/** The service and its store, one SQLite database: the test appends behind the server's back. */
class Served extends Context.Tag("test/Served")<Served, { readonly url: string; readonly port: number }>() {}
const served = Layer.scoped(Served, serve({ port: 0 })).pipe(
  Layer.provideMerge(DeliveryService.layerStore()),
  Layer.provideMerge(DeliveryStore.layerSqlite),
  Layer.provide(tempSqlite),
  Layer.provide(MlsCrypto.layer())
)

const randomGroup = () => toHex(crypto.getRandomValues(new Uint8Array(16)))

/**
 * A child process opening `connections` WebSockets, each with `streams` subscriptions
 * (`subscribeGroupMessages`) of `topics` random groups; every subscription of the first
 * connection also follows `known`. Prints "sent" once every request is sent, and "chunk N" for
 * each chunk of N items received (acknowledged, as the RPC protocol asks).
 */
const subscriber = (url: string, connections: number, streams: number, topics: number, known: string) =>
  Effect.acquireRelease(
    Effect.async<{ readonly child: ChildProcess.ChildProcess; readonly received: () => number }>((resume) => {
      const script = `
        const { WebSocket } = require("ws")
        const crypto = require("node:crypto")
        const request = (id, first) => {
          const filters = []
          if (first) filters.push({ groupId: ${JSON.stringify(known)}, afterSequenceId: "0" })
          while (filters.length < ${topics}) filters.push({ groupId: crypto.randomBytes(16).toString("hex"), afterSequenceId: "0" })
          return JSON.stringify({ _tag: "Request", id: String(id), tag: "subscribeGroupMessages", payload: { filters }, headers: [] })
        }
        let open = 0
        for (let c = 0; c < ${connections}; c++) {
          const ws = new WebSocket(${JSON.stringify(url.replace(/^http/, "ws"))})
          ws.on("error", () => {})
          ws.on("open", () => {
            for (let i = 0; i < ${streams}; i++) ws.send(request(i + 1, c === 0))
            if (++open === ${connections}) console.log("sent")
          })
          ws.on("message", (data) => {
            const m = JSON.parse(data.toString())
            if (m._tag === "Chunk") {
              console.log("chunk " + m.values.length)
              ws.send(JSON.stringify({ _tag: "Ack", requestId: m.requestId }))
            } else if (m._tag === "Exit") console.log("exit " + JSON.stringify(m.exit).slice(0, 200))
          })
        }
        setInterval(() => {}, 1000)`
      const child = ChildProcess.spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "inherit"] })
      let received = 0
      let buffered = ""
      child.stdout.setEncoding("utf8")
      child.stdout.on("data", (text: string) => {
        buffered += text
        const lines = buffered.split("\n")
        buffered = lines.pop()!
        for (const line of lines) {
          if (line === "sent") resume(Effect.succeed({ child, received: () => received }))
          else if (line.startsWith("chunk ")) received += Number(line.slice(6))
          else if (line.startsWith("exit ")) console.log(line)
        }
      })
    }),
    ({ child }) => Effect.sync(() => child.kill())
  )

/** This process's CPU time (user + system, ms) and the event loop's worst delay (ms) while `effect` runs. */
const cost = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const histogram = monitorEventLoopDelay({ resolution: 10 })
    histogram.enable()
    const cpu = process.cpuUsage()
    const start = performance.now()
    const result = yield* effect
    const used = process.cpuUsage(cpu)
    histogram.disable()
    return {
      result,
      wallMs: Math.round(performance.now() - start),
      cpuMs: Math.round((used.user + used.system) / 1000),
      maxDelayMs: Math.round(histogram.max / 1e6),
      p99DelayMs: Math.round(histogram.percentile(99) / 1e6)
    }
  })

/** Waits until this process used less than `ms` of CPU in a second, twice in a row (the openings are done). */
const settled = (ms: number) =>
  Effect.gen(function*() {
    let calm = 0
    for (let i = 0; i < 60 && calm < 2; i++) {
      const { cpuMs } = yield* cost(Effect.sleep("1 second"))
      calm = cpuMs < ms ? calm + 1 : 0
    }
  })

/** Waits (up to 10 s) until the subscriber has received `n` messages. */
const receivedAtLeast = (client: { readonly received: () => number }, n: number) =>
  Effect.gen(function*() {
    for (let i = 0; i < 100 && client.received() < n; i++) yield* Effect.sleep("100 millis")
    return client.received()
  })

const append = (groupId: string, tag: string) =>
  Effect.flatMap(DeliveryStore, (store) =>
    store.append([{ topic: groupTopic(groupId), payload: new TextEncoder().encode(`attack ${tag}`) }]))

layer(served, { excludeTestServices: true })("Converge attack: idle many-topic subscriptions", (it) => {
  it.scoped("one connection's 32 subscriptions of 1,000 topics (its allowance) do not stall the event loop for long", () =>
    Effect.gen(function*() {
      const { url } = yield* Served
      // The best of three openings: on a busy machine one spawn or GC pause can pass the bound,
      // while a server that stalls on the opening does so every time.
      const attempts: Array<{ wallMs: number; cpuMs: number; maxDelayMs: number }> = []
      for (let i = 0; i < 3; i++) {
        const known = randomGroup()
        const opened = yield* cost(Effect.scoped(Effect.gen(function*() {
          const client = yield* subscriber(url, 1, 32, 1000, known)
          yield* settled(300)
          // Every subscription is live: one append reaches all 32.
          yield* append(known, "one")
          expect(yield* receivedAtLeast(client, 32)).toBe(32)
        })))
        attempts.push({ wallMs: opened.wallMs, cpuMs: opened.cpuMs, maxDelayMs: opened.maxDelayMs })
        yield* settled(300)
      }
      console.log(JSON.stringify({ oneConnection: attempts }))
      expect(Math.min(...attempts.map((a) => a.maxDelayMs))).toBeLessThan(MAX_OPENING_DELAY_MS)
    }), { timeout: 180_000 })

  it.scoped("8 connections of 32 idle 1,000-topic subscriptions cost neither a core nor hundreds of MiB", () =>
    Effect.gen(function*() {
      const { url } = yield* Served
      const known = randomGroup()
      const before = usedBytes()
      const opened = yield* cost(Effect.gen(function*() {
        const client = yield* subscriber(url, 8, 32, 1000, known)
        yield* settled(400)
        return client
      }))
      const held = usedBytes() - before
      const quiet = yield* cost(Effect.sleep("10 seconds"))
      // A trivial call's latency while they idle.
      const connection = yield* Effect.acquireRelease(Effect.promise(() => openWebSocket(url)), (c) => Effect.sync(c.close))
      const latencies: Array<number> = []
      for (let i = 0; i < 20; i++) {
        const start = performance.now()
        const frame = JSON.stringify({
          _tag: "Request",
          id: String(i + 1),
          tag: "queryGroupMessages",
          payload: { query: { groupId: randomGroup(), afterSequenceId: "0" } },
          headers: []
        })
        yield* Effect.promise(() =>
          connection.exchange(frame, (m) => m.some((x: any) => x._tag === "Exit" && x.requestId === String(i + 1)))
        )
        latencies.push(Math.round(performance.now() - start))
        yield* Effect.sleep("250 millis")
      }
      // Still live: an append reaches the 32 subscriptions following it, once each.
      yield* append(known, "eight")
      const delivered = yield* receivedAtLeast(opened.result, 32)
      yield* Effect.sleep("500 millis")
      console.log(JSON.stringify({
        opening: { wallMs: opened.wallMs, cpuMs: opened.cpuMs, maxDelayMs: opened.maxDelayMs },
        heldMiB: Math.round(held / MiB),
        quiet: { cpuPerSecondMs: Math.round(quiet.cpuMs / 10), maxDelayMs: quiet.maxDelayMs, p99DelayMs: quiet.p99DelayMs },
        trivialCallMs: { max: Math.max(...latencies), median: latencies.sort((a, b) => a - b)[10] },
        delivered: opened.result.received()
      }))
      expect(delivered).toBe(32)
      expect(opened.result.received()).toBe(32)
      expect(quiet.cpuMs / 10).toBeLessThan(MAX_QUIET_CPU_MS_PER_S)
      expect(opened.cpuMs).toBeLessThan(MAX_OPENING_CPU_MS)
      expect(held).toBeLessThan(MAX_HELD_BYTES)
    }), { timeout: 180_000 })
})

// Bounds with room for a loaded 2-core CI host: several times the figures after the fix, well
// under those before it (measured on a shared 2-core host).
/** Worst loop delay of the best of three openings of 32 x 1,000 topics: 1.9-2.2 s before, 96-240 ms after. */
const MAX_OPENING_DELAY_MS = 800
/** CPU per second while 256 such subscriptions idle: 536 ms before (polling), 11-14 ms after. */
const MAX_QUIET_CPU_MS_PER_S = 100
/** CPU to open 8 x 32 x 1,000 topics: 31 s before (a read per topic), 1.4-1.6 s after. */
const MAX_OPENING_CPU_MS = 8_000
/** Memory held by those 256 subscriptions: 161 MiB before, 137-141 MiB after; a guard against growth only. */
const MAX_HELD_BYTES = 256 * MiB
