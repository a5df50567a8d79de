/**
 * Second attack round on the XMTP V3 face: what idle subscriptions cost the server. Anyone may
 * open 32 subscriptions of 1,000 topics on each of 1,024 connections; each is polled (100 reads
 * per 5 s when quiet), each hears every append of the whole server, and each holds its topics.
 */
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import * as ChildProcess from "node:child_process"
import { monitorEventLoopDelay } from "node:perf_hooks"
import * as v8 from "node:v8"
import * as vm from "node:vm"
import { call, Xmtp } from "./support/XmtpHarness.ts"
import * as XmtpHarness from "./support/XmtpHarness.ts"

v8.setFlagsFromString("--expose-gc")
const gc = vm.runInNewContext("gc") as () => void
const MiB = 1024 * 1024
const usedBytes = () => {
  gc()
  const m = process.memoryUsage()
  return m.heapUsed + m.external
}

/**
 * A child process opening `connections` HTTP/2 connections, each with `streams` subscriptions
 * (`SubscribeGroupMessages`) of `topics` random 64-byte group ids. It reads what comes. Prints
 * "open" once every stream has its headers; counts streams ended (with their grpc-status).
 */
const subscriber = (port: number, connections: number, streams: number, topics: number) =>
  Effect.acquireRelease(
    Effect.async<{ readonly child: ChildProcess.ChildProcess; readonly ended: () => Array<string> }>((resume) => {
      const script = `
        const http2 = require("node:http2")
        const crypto = require("node:crypto")
        const framedRequest = () => {
          const parts = []
          for (let i = 0; i < ${topics}; i++) {
            // filters (1) { group_id (1): 64 bytes, id_cursor (2): 0 }
            const filter = Buffer.concat([Buffer.from([0x0a, 64]), crypto.randomBytes(64)])
            parts.push(Buffer.from([0x0a, filter.length]), filter)
          }
          const body = Buffer.concat(parts)
          const framed = Buffer.alloc(5 + body.length); framed.writeUInt32BE(body.length, 1); body.copy(framed, 5)
          return framed
        }
        let open = 0
        for (let c = 0; c < ${connections}; c++) {
          const session = http2.connect("http://127.0.0.1:${port}")
          session.on("error", () => {})
          for (let i = 0; i < ${streams}; i++) {
            const stream = session.request({ ":method": "POST", ":path": "/xmtp.mls.api.v1.MlsApi/SubscribeGroupMessages",
              "content-type": "application/grpc", te: "trailers" })
            stream.on("error", () => {})
            stream.on("response", () => { if (++open === ${connections * streams}) console.log("open") })
            stream.on("trailers", (t) => console.log("ended " + t["grpc-status"] + " " + (t["grpc-message"] || "")))
            stream.resume()
            stream.end(framedRequest())
          }
        }
        setInterval(() => {}, 1000)`
      const child = ChildProcess.spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "inherit"] })
      const ended: Array<string> = []
      let buffered = ""
      child.stdout.setEncoding("utf8")
      child.stdout.on("data", (text: string) => {
        buffered += text
        const lines = buffered.split("\n")
        buffered = lines.pop()!
        for (const line of lines) {
          if (line === "open") resume(Effect.succeed({ child, ended: () => ended }))
          else if (line.startsWith("ended ")) ended.push(line)
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

/** Waits until this process used less than `ms` of CPU in a second, twice in a row (the opening's reads are done). */
const settled = (ms: number) =>
  Effect.gen(function*() {
    let calm = 0
    for (let i = 0; i < 40 && calm < 2; i++) {
      const { cpuMs } = yield* cost(Effect.sleep("1 second"))
      calm = cpuMs < ms ? calm + 1 : 0
    }
  })

layer(XmtpHarness.layer(), { excludeTestServices: true })("XMTP attack 2: idle subscriptions", (it) => {
  it.scoped("one connection's 32 subscriptions of 1,000 topics (its allowance) do not stall the event loop for long", () =>
    Effect.gen(function*() {
      const { port } = yield* Xmtp
      // The best of three openings: on a busy machine one spawn or GC pause can exceed the bound,
      // while a server that stalls on the opening (2.5 s here before the fix) does so every time.
      const attempts: Array<{ wallMs: number; cpuMs: number; maxDelayMs: number; p99DelayMs: number }> = []
      for (let i = 0; i < 3; i++) {
        const opened = yield* cost(Effect.scoped(Effect.gen(function*() {
          yield* subscriber(port, 1, 32, 1000)
          yield* settled(300)
        })))
        attempts.push({ wallMs: opened.wallMs, cpuMs: opened.cpuMs, maxDelayMs: opened.maxDelayMs, p99DelayMs: opened.p99DelayMs })
        yield* settled(300)
      }
      console.log(JSON.stringify({ oneConnection: attempts }))
      // Before: 668 ms at best of three (up to 3.7 s); now 35-99 ms. Room for a loaded CI host.
      expect(Math.min(...attempts.map((a) => a.maxDelayMs))).toBeLessThan(300)
    }), { timeout: 120_000 })

  it.scoped("8 connections of 32 idle 1,000-topic subscriptions (~17 MB of requests) cost neither a core nor hundreds of MiB", () =>
    Effect.gen(function*() {
      const { mls, port } = yield* Xmtp
      const idle = yield* cost(Effect.sleep("3 seconds"))
      const before = usedBytes()
      const opened = yield* cost(Effect.gen(function*() {
        const client = yield* subscriber(port, 8, 32, 1000)
        // The first reads: every topic of every subscription once.
        yield* settled(400)
        return client
      }))
      const held = usedBytes() - before
      const quiet = yield* cost(Effect.sleep("10 seconds"))
      // A trivial call's latency while they idle.
      const latencies: Array<number> = []
      for (let i = 0; i < 20; i++) {
        const start = performance.now()
        yield* call(mls, "QueryGroupMessages", { groupId: XmtpHarness.newGroupId() })
        latencies.push(Math.round(performance.now() - start))
        yield* Effect.sleep("250 millis")
      }
      console.log(JSON.stringify({
        idleCpuPerSecondMs: Math.round(idle.cpuMs / 3),
        opening: { wallMs: opened.wallMs, cpuMs: opened.cpuMs, maxDelayMs: opened.maxDelayMs },
        heldMiB: Math.round(held / MiB),
        heldPerSubscriptionKiB: Math.round(held / 256 / 1024),
        quiet: { cpuPerSecondMs: Math.round(quiet.cpuMs / 10), maxDelayMs: quiet.maxDelayMs, p99DelayMs: quiet.p99DelayMs },
        trivialCallMs: { max: Math.max(...latencies), median: latencies.sort((a, b) => a - b)[10] },
        ended: opened.result.ended().length
      }))
      // An idle server with idle subscribers should stay idle (well under a tenth of a core).
      expect(quiet.cpuMs / 10).toBeLessThan(100)
      // Before: 138-140 MiB; now 54-61 MiB.
      expect(held).toBeLessThan(96 * MiB)
    }), { timeout: 90_000 })
})
