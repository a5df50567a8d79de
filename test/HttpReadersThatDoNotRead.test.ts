/**
 * HTTP clients that ask for much and read nothing (from an attack round on the Converge face).
 * @effect/rpc collects a POST's answers before its response starts, so a slow-reader guard that
 * waits on the response never saw them: one POST of 60 small queries, never read, made the
 * server hold every 5.4 MB answer (690-953 MiB). Now one HTTP connection has at most
 * `MAX_CALLS_PER_HTTP_CONNECTION` calls at once across its requests; the rest are refused with
 * a retryable `LimitExceeded` at once. Own file: resident memory is measured.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Http from "node:http"
import * as Net from "node:net"
import { serve } from "../src/layers/DeliveryServer.ts"
import { MAX_CALLS_PER_HTTP_CONNECTION } from "../src/layers/ServerLimits.ts"
import { DeliveryService } from "../src/index.ts"
import { newGroupId, topicOfBigMessages } from "./support/DeliveryFixtures.ts"

const MiB = 1024 * 1024
const request = (id: number, tag: string, payload: unknown) =>
  JSON.stringify({ _tag: "Request", id: String(id), tag, payload, headers: [] })
const query = (id: number, groupId: string) =>
  request(id, "queryGroupMessages", { query: { groupId, afterSequenceId: "0" } })
const post = (body: string) =>
  `POST /rpc HTTP/1.1\r\nhost: x\r\ncontent-type: application/ndjson\r\n` +
  `content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`

/** Opens a TCP connection that never reads, writes `bytes`, and gives the server time to answer. */
const writeAndNeverRead = (port: number, bytes: string) =>
  Effect.acquireRelease(
    Effect.async<Net.Socket>((resume) => {
      const socket = Net.connect(port, "127.0.0.1", () => {
        socket.pause()
        socket.write(bytes)
        resume(Effect.succeed(socket))
      })
      socket.on("error", () => {})
    }),
    (socket) => Effect.sync(() => socket.destroy())
  ).pipe(Effect.zipLeft(Effect.sleep("3 seconds")))

/** The exits in an ndjson response body so far. */
const exitsIn = (text: string): Array<any> =>
  text.split("\n").filter((line) => line.length > 0).map((line) => JSON.parse(line)).filter((m) => m._tag === "Exit")

describe("an HTTP reader that reads nothing", () => {
  it.scopedLive("cannot make the server hold an answer for every query of one POST", () =>
    Effect.gen(function*() {
      const service = yield* DeliveryService
      const groupId = yield* topicOfBigMessages(service)
      const { port } = yield* serve({ port: 0 }).pipe(Effect.provideService(DeliveryService, service))
      const before = process.memoryUsage().rss
      const body = Array.from({ length: 60 }, (_, i) => query(i + 1, groupId)).join("\n") + "\n"
      yield* writeAndNeverRead(port, post(body))
      // Before, 690-953 MiB: 60 answers of 5.4 MB, each held more than once.
      expect((process.memoryUsage().rss - before) / MiB).toBeLessThan(128)
    }).pipe(Effect.provide(DeliveryService.layerMemory)), 60_000)

  it.scopedLive("nor by pipelining one query per POST on one connection", () =>
    Effect.gen(function*() {
      const service = yield* DeliveryService
      const groupId = yield* topicOfBigMessages(service)
      const { port } = yield* serve({ port: 0 }).pipe(Effect.provideService(DeliveryService, service))
      const before = process.memoryUsage().rss
      const pipelined = Array.from({ length: 60 }, (_, i) => post(query(i + 1, groupId) + "\n")).join("")
      yield* writeAndNeverRead(port, pipelined)
      expect((process.memoryUsage().rss - before) / MiB).toBeLessThan(128)
    }).pipe(Effect.provide(DeliveryService.layerMemory)), 60_000)
})

describe("calls at once on one HTTP connection", () => {
  it.scopedLive("past the cap, a POST's further calls are refused at once with a retryable LimitExceeded", () =>
    Effect.gen(function*() {
      const { url } = yield* serve({ port: 0 }).pipe(Effect.provide(DeliveryService.layerMemory))
      const groupId = newGroupId()
      // Subscriptions stay in flight, so which calls are past the cap does not depend on timing.
      const subscriptions = Array.from({ length: MAX_CALLS_PER_HTTP_CONNECTION + 2 }, (_, i) =>
        request(i + 1, "subscribeGroupMessages", { filters: [{ groupId, afterSequenceId: "0" }] }))
      const body = [...subscriptions, query(100, groupId)].join("\n") + "\n"
      const controller = new AbortController()
      yield* Effect.addFinalizer(() => Effect.sync(() => controller.abort()))
      const refused = yield* Effect.promise(async () => {
        const response = await fetch(url, {
          method: "POST",
          headers: { "content-type": "application/ndjson" },
          body,
          signal: controller.signal
        })
        const reader = response.body!.getReader()
        let text = ""
        while (exitsIn(text).length < 3) {
          const { done, value } = await reader.read()
          if (done) break
          text += Buffer.from(value).toString()
        }
        return exitsIn(text)
      })
      const first = MAX_CALLS_PER_HTTP_CONNECTION + 1
      expect(refused.map((m) => m.requestId).sort()).toEqual([String(first), String(first + 1), "100"].sort())
      for (const exit of refused) {
        expect(exit).toMatchObject({
          exit: { cause: { error: { _tag: "DeliveryError", reason: "LimitExceeded", retryable: true } } }
        })
        expect(exit.exit.cause.error.detail).toContain("one call per request")
      }
    }))

  it.scopedLive("a client that makes one call at a time on a kept-alive connection is never refused", () =>
    Effect.gen(function*() {
      const { port } = yield* serve({ port: 0 }).pipe(Effect.provide(DeliveryService.layerMemory))
      const agent = new Http.Agent({ keepAlive: true, maxSockets: 1 })
      yield* Effect.addFinalizer(() => Effect.sync(() => agent.destroy()))
      const groupId = newGroupId()
      const answers = []
      for (let i = 1; i <= 3 * MAX_CALLS_PER_HTTP_CONNECTION; i++) {
        answers.push(yield* Effect.promise(() =>
          new Promise<{ reused: boolean; text: string }>((resolve, reject) => {
            const body = query(i, groupId) + "\n"
            const sent = Http.request({
              agent,
              port,
              host: "127.0.0.1",
              method: "POST",
              path: "/rpc",
              headers: { "content-type": "application/ndjson", "content-length": Buffer.byteLength(body) }
            }, (response) => {
              let text = ""
              response.on("data", (chunk) => (text += chunk))
              response.on("end", () => resolve({ reused: sent.reusedSocket, text }))
            })
            sent.on("error", reject)
            sent.end(body)
          })
        ))
      }
      // One connection throughout, and every call answered.
      expect(answers.slice(1).every((answer) => answer.reused)).toBe(true)
      for (const answer of answers) expect(exitsIn(answer.text)[0]).toMatchObject({ exit: { _tag: "Success" } })
    }))
})
