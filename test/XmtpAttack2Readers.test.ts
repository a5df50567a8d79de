/**
 * Second attack round on the XMTP V3 face: unary answers to clients that never read them.
 * The Converge face bounds this (an HTTP connection has at most 4 calls at once); here each
 * connection may have 64 calls at once, each holding its whole serialized answer until read.
 */
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import * as ChildProcess from "node:child_process"
import * as v8 from "node:v8"
import * as vm from "node:vm"
import { codecs, encode } from "../src/xmtp/Proto.ts"
import { call, Xmtp } from "./support/XmtpHarness.ts"
import * as XmtpHarness from "./support/XmtpHarness.ts"

v8.setFlagsFromString("--expose-gc")
const gc = vm.runInNewContext("gc") as () => void
const MiB = 1024 * 1024
const liveBytes = () => {
  gc()
  const m = process.memoryUsage()
  // `external` includes `arrayBuffers`.
  return m.external
}

/**
 * A child process opening `connections` HTTP/2 connections with a stream window of 0 (it reads
 * nothing: the server can send headers, never data), each with `streams` complete unary calls
 * of `method` with `body` (a protobuf request). Prints "sent" once all are written.
 */
export const nonReadingClient = (port: number, connections: number, streams: number, method: string, body: Uint8Array) =>
  Effect.acquireRelease(
    Effect.async<{ readonly child: ChildProcess.ChildProcess; readonly statuses: () => Array<string> }>((resume) => {
      const script = `
        const http2 = require("node:http2")
        const body = Buffer.from(${JSON.stringify(Buffer.from(body).toString("base64"))}, "base64")
        const framed = Buffer.alloc(5 + body.length); framed.writeUInt32BE(body.length, 1); body.copy(framed, 5)
        let written = 0
        for (let c = 0; c < ${connections}; c++) {
          const session = http2.connect("http://127.0.0.1:${port}", { settings: { initialWindowSize: 0 } })
          session.on("error", () => {})
          for (let i = 0; i < ${streams}; i++) {
            const stream = session.request({ ":method": "POST", ":path": "${method}",
              "content-type": "application/grpc", te: "trailers" })
            stream.on("error", () => {})
            // A call ends with a status (in trailers, or a trailers-only response) or a reset.
            let ended = false
            const end = (line) => { if (!ended) { ended = true; console.log(line) } }
            const status = (h) => { if (h["grpc-status"] !== undefined) end("status " + h["grpc-status"] + " " + (h["grpc-message"] || "")) }
            stream.on("response", status)
            stream.on("trailers", status)
            stream.on("close", () => end("status reset " + stream.rstCode))
            stream.pause()
            stream.end(framed, () => { if (++written === ${connections * streams}) console.log("sent") })
          }
        }
        setInterval(() => {}, 1000)`
      const child = ChildProcess.spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "inherit"] })
      const statuses: Array<string> = []
      let buffered = ""
      child.stdout.setEncoding("utf8")
      child.stdout.on("data", (text: string) => {
        buffered += text
        const lines = buffered.split("\n")
        buffered = lines.pop()!
        for (const line of lines) {
          if (line === "sent") resume(Effect.succeed({ child, statuses: () => statuses }))
          else if (line.startsWith("status ")) statuses.push(line)
        }
      })
    }),
    ({ child }) => Effect.sync(() => child.kill())
  )

layer(XmtpHarness.layer({ requestTimeoutMillis: 5000, slowReaderTimeoutMillis: 10_000 }), { excludeTestServices: true })("XMTP attack 2: readers that do not read unary answers", (it) => {
  it.scoped("64 QueryGroupMessages of a 4 MiB page on each of 2 connections, never read, are not held forever", () =>
    Effect.gen(function*() {
      const { mls, port } = yield* Xmtp
      const group = XmtpHarness.newGroupId()
      // Four ~1 MiB messages: one page of 4 MiB. Anyone may post them (no authentication).
      for (let i = 0; i < 4; i++) {
        yield* call(mls, "SendGroupMessages", {
          messages: [XmtpHarness.groupInput(XmtpHarness.privateMessage(group, "application", String(i).repeat(1_000_000)))]
        })
      }
      const before = liveBytes()
      const rssBefore = process.memoryUsage().rss
      const body = encode(codecs.queryGroupMessagesRequest, { groupId: group, pagingInfo: { limit: 100 } })
      const client = yield* nonReadingClient(port, 2, 64, "/xmtp.mls.api.v1.MlsApi/QueryGroupMessages", body)
      let peak = 0
      for (let i = 0; i < 20; i++) {
        yield* Effect.sleep("500 millis")
        peak = Math.max(peak, liveBytes() - before)
      }
      // Well past --request-timeout (5 s here) and --slow-reader-timeout (10 s here).
      yield* Effect.sleep("15 seconds")
      const held = liveBytes() - before
      const rss = process.memoryUsage().rss - rssBefore
      console.log(`peak ${Math.round(peak / MiB)} MiB, still held after 25 s ${Math.round(held / MiB)} MiB live buffers, rss +${Math.round(rss / MiB)} MiB; calls ended ${client.statuses().length} of 128`)
      // 128 calls, ~35 KB of requests in all: the Converge face bounds a connection's unread answers to 4 calls.
      expect(held).toBeLessThan(64 * MiB)
      // None is left holding a stream: refused at once (RESOURCE_EXHAUSTED, saying why), or cut at the slow-reader timeout.
      expect(client.statuses().length).toBe(128)
      expect(client.statuses().filter((s) => s.startsWith("status 8 more%20than")).length).toBeGreaterThan(0)
    }), { timeout: 60_000 })
})

layer(XmtpHarness.layer({ slowReaderTimeoutMillis: 10_000 }), { excludeTestServices: true })("XMTP attack 2: subscribers that do not read", (it) => {
  it.scoped("32 subscriptions on each of 2 connections to a group of 4 MiB, never read, are let go after the slow-reader timeout", () =>
    Effect.gen(function*() {
      const { mls, port } = yield* Xmtp
      const group = XmtpHarness.newGroupId()
      for (let i = 0; i < 4; i++) {
        yield* call(mls, "SendGroupMessages", {
          messages: [XmtpHarness.groupInput(XmtpHarness.privateMessage(group, "application", String(i).repeat(1_000_000)))]
        })
      }
      const before = liveBytes()
      const body = encode(codecs.subscribeGroupMessagesRequest, { filters: [{ groupId: group, idCursor: 0 }] })
      const client = yield* nonReadingClient(port, 2, 32, "/xmtp.mls.api.v1.MlsApi/SubscribeGroupMessages", body)
      let peak = 0
      for (let i = 0; i < 16; i++) {
        yield* Effect.sleep("500 millis")
        peak = Math.max(peak, liveBytes() - before)
      }
      yield* Effect.sleep("15 seconds")
      // The least of three samples a second apart: what is held forever shows in all three, a
      // collection the busy machine had not finished yet in one.
      let after = Infinity
      for (let i = 0; i < 3; i++) {
        yield* Effect.sleep("1 second")
        after = Math.min(after, liveBytes() - before)
      }
      console.log(`subscribers: peak ${Math.round(peak / MiB)} MiB in the first 8 s, ${Math.round(after / MiB)} MiB at 25 s (slow-reader timeout 10 s); ended ${client.statuses().length} of 64`)
      // The README: a reader that stops reading holds its page and one message, until the slow-reader timeout cuts it.
      expect(after).toBeLessThan(16 * MiB)
      // Cut streams are reset, not left holding their slot behind a status that cannot arrive.
      expect(client.statuses().length).toBe(64)
    }), { timeout: 60_000 })
})
