/**
 * The RPC delivery client against servers that answer what no `DeliveryServer` would: fake
 * servers on loopback (a raw `ws` server, a raw node:http server) that speak the wire
 * protocol by hand.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, type Duration, Effect, Layer, Schedule } from "effect"
import * as http from "node:http"
import { createRequire } from "node:module"
import type { AddressInfo } from "node:net"
import type { GroupId } from "../src/domain/Ids.ts"
import { DeliveryService } from "../src/index.ts"
import { GroupMessageInput } from "../src/domain/Wire.ts"
import { boundedRequestIds } from "../src/layers/RpcRequestIds.ts"
import { RpcSerialization } from "@effect/rpc"

/** The parts of `ws`'s server used here (it ships no types). */
interface WsServer {
  on(event: "connection", listener: (socket: { on(event: "message", f: (data: Buffer) => void): void; send(data: string): void }) => void): void
  on(event: "listening", listener: () => void): void
  address(): AddressInfo
  close(): void
}
const { WebSocketServer } = createRequire(import.meta.url)("ws") as {
  readonly WebSocketServer: new(options: { readonly port: number; readonly host: string }) => WsServer
}

// @effect/rpc's client parses every answer's request id with `BigInt`: 5 million digits took
// about a second each here, 10 million about four (a server could send 100 MiB of them).
const hugeId = "9".repeat(10_000_000)
const hugeAnswers = [
  JSON.stringify({ _tag: "Chunk", requestId: hugeId, values: [] }),
  JSON.stringify({ _tag: "Exit", requestId: hugeId, exit: { _tag: "Success", value: { items: [] } } })
]

/** A WebSocket server that answers every request with `answers(its id)`, one frame each. */
const wsServerAnswering = (answers: (requestId: string) => ReadonlyArray<string>) =>
  Effect.acquireRelease(
    Effect.async<WsServer>((resume) => {
      const server = new WebSocketServer({ port: 0, host: "127.0.0.1" })
      server.on("connection", (socket) =>
        socket.on("message", (data) => {
          const message = JSON.parse(data.toString())
          if (message._tag === "Request") answers(String(message.id)).forEach((frame) => socket.send(frame))
        }))
      server.on("listening", () => resume(Effect.succeed(server)))
    }),
    (server) => Effect.sync(() => server.close())
  )
const wsServer = wsServerAnswering(() => hugeAnswers)

/** An HTTP server that answers every POST with `answers(its request's id)` as ndjson, 16 KiB at a time. */
const httpServerAnswering = (answers: (requestId: string) => ReadonlyArray<string>) => Effect.acquireRelease(
  Effect.async<http.Server>((resume) => {
    const server = http.createServer((request, response) => {
      const body: Array<Buffer> = []
      request.on("data", (chunk: Buffer) => body.push(chunk))
      request.on("end", () => {
        const message = JSON.parse(Buffer.concat(body).toString().split("\n")[0]!)
        response.writeHead(200, { "content-type": "application/ndjson" })
        const wire = answers(String(message.id)).map((line) => line + "\n").join("")
        // One piece per turn of the event loop, so the client reads them as separate chunks.
        const writeFrom = (at: number): void => {
          if (at >= wire.length) return void response.end()
          response.write(wire.slice(at, at + 16 * 1024))
          setImmediate(() => writeFrom(at + 16 * 1024))
        }
        writeFrom(0)
      })
    })
    server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
  }),
  (server) => Effect.sync(() => server.close())
)

const httpServer = httpServerAnswering(() => hugeAnswers)

/** The longest gap between ticks of a 5 ms interval while `effect` runs. */
const longestStall = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    let last = performance.now()
    let longest = 0
    const ticker = setInterval(() => {
      const now = performance.now()
      longest = Math.max(longest, now - last)
      last = now
    }, 5)
    const started = performance.now()
    const result = yield* Effect.either(effect).pipe(Effect.ensuring(Effect.sync(() => clearInterval(ticker))))
    return { result, longest, millis: performance.now() - started }
  })

/** One query through an RPC client of `url` with no retries. */
const queryThrough = (
  url: string,
  transport: "websocket" | "http",
  timeout: Duration.DurationInput,
  bounds: { readonly maxAnswerBytes?: number } = {}
) =>
  Effect.gen(function*() {
    const context = yield* Layer.build(
      DeliveryService.layerRpc({ url, transport, timeout, retrySchedule: Schedule.recurs(0), ...bounds })
    )
    return yield* Context.get(context, DeliveryService).queryGroupMessages({
      groupId: "0".repeat(32) as GroupId,
      afterSequenceId: 0n
    })
  })

describe("a server answering with request ids no call of ours has", () => {
  // What the client reads, whatever the machine's speed: answers under long ids never reach the
  // RPC client; answers under ids it could have sent do.
  it("the client's wire format leaves out answers under ids longer than 20 digits, and only those", () => {
    const decode = (frame: string) => boundedRequestIds(RpcSerialization.json, "drop").unsafeMake().decode(frame)
    for (const frame of hugeAnswers) expect(decode(frame)).toEqual([])
    expect(decode(JSON.stringify({ _tag: "Exit", requestId: "9".repeat(21), exit: {} }))).toEqual([])
    const ours = { _tag: "Exit", requestId: "9".repeat(20), exit: { _tag: "Success", value: null } }
    expect(decode(JSON.stringify(ours))).toEqual([ours])
    expect(decode(JSON.stringify({ _tag: "Pong" }))).toEqual([{ _tag: "Pong" }])
  })

  // Before: the event loop stood still for 1.2-1.3 s (both transports, 5 million digits) while
  // the RPC client parsed the two ids, and answered nothing else meanwhile.
  it.scopedLive("over WebSocket, the answers are dropped: the call times out and the event loop never stalls", () =>
    Effect.gen(function*() {
      const server = yield* wsServer
      const url = `http://127.0.0.1:${server.address().port}/rpc`
      const { longest, millis, result } = yield* longestStall(queryThrough(url, "websocket", "500 millis"))
      expect(result).toMatchObject({ _tag: "Left", left: { _tag: "DeliveryError", reason: "Timeout" } })
      expect(longest).toBeLessThan(1_000)
      expect(millis).toBeLessThan(8_000)
    }))

  it.scopedLive("over HTTP, the answers are dropped: the call ends Unavailable and the event loop never stalls", () =>
    Effect.gen(function*() {
      const server = yield* httpServer
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/rpc`
      const { longest, millis, result } = yield* longestStall(queryThrough(url, "http", "10 seconds"))
      // The response ended without an answer the client could take.
      expect(result).toMatchObject({ _tag: "Left", left: { _tag: "DeliveryError", reason: "Unavailable" } })
      expect(longest).toBeLessThan(1_000)
      expect(millis).toBeLessThan(8_000)
    }))
})

describe("a server answering a call with a defect", () => {
  // The RPC client turns a `Die` over the wire, and an answer it cannot decode, into a defect in
  // this process: a bug of the server's would have been one of ours.
  const answeredWith = (exit: unknown) =>
    Effect.gen(function*() {
      const server = yield* wsServerAnswering((requestId) => [JSON.stringify({ _tag: "Exit", requestId, exit })])
      return yield* Effect.exit(queryThrough(`http://127.0.0.1:${server.address().port}/rpc`, "websocket", "5 seconds"))
    })

  it.scopedLive("a handler's defect fails the call with a retryable Unavailable naming it", () =>
    Effect.gen(function*() {
      const exit = yield* answeredWith({ _tag: "Failure", cause: { _tag: "Die", defect: "a bug in the handler" } })
      expect(exit).toMatchObject({
        _tag: "Failure",
        cause: { _tag: "Fail", error: { _tag: "DeliveryError", reason: "Unavailable", retryable: true } }
      })
      expect(JSON.stringify(exit)).toContain("a bug in the handler")
    }))

  it.scopedLive("an answer that does not decode fails the call the same way", () =>
    Effect.gen(function*() {
      const exit = yield* answeredWith({ _tag: "Success", value: { items: "not a list" } })
      expect(exit).toMatchObject({ _tag: "Failure", cause: { _tag: "Fail", error: { _tag: "DeliveryError", reason: "Unavailable" } } })
    }))
})

describe("a server answering a send with where the messages landed", () => {
  // The answer is one position per message sent; the envelopes are rebuilt from what was sent.
  type Position = { readonly sequenceId: string; readonly serverTimeNs: string }
  const groupId = "0".repeat(32) as GroupId
  const twoMessages = [
    GroupMessageInput.make({ groupId, payload: new Uint8Array([1, 2, 3]) }),
    GroupMessageInput.make({ groupId, payload: new Uint8Array([4, 5]) })
  ]
  /** The client of a server that answers every request with `value`. */
  const clientOfServerAnswering = (value: unknown) =>
    Effect.gen(function*() {
      const server = yield* wsServerAnswering((requestId) => [
        JSON.stringify({ _tag: "Exit", requestId, exit: { _tag: "Success", value } })
      ])
      const context = yield* Layer.build(DeliveryService.layerRpc({
        url: `http://127.0.0.1:${server.address().port}/rpc`,
        transport: "websocket",
        timeout: "5 seconds",
        retrySchedule: Schedule.recurs(0)
      }))
      return Context.get(context, DeliveryService)
    })
  const sendThrough = (positions: ReadonlyArray<Position>) =>
    Effect.flatMap(clientOfServerAnswering(positions), (ds) => Effect.either(ds.sendGroupMessages(twoMessages)))

  it.scopedLive("one position per message: the caller gets its own messages at those ids", () =>
    Effect.gen(function*() {
      const sent = yield* sendThrough([{ sequenceId: "7", serverTimeNs: "100" }, { sequenceId: "8", serverTimeNs: "101" }])
      expect(sent).toMatchObject({
        _tag: "Right",
        right: [
          { sequenceId: 7n, serverTimeNs: 100n, payload: new Uint8Array([1, 2, 3]) },
          { sequenceId: 8n, serverTimeNs: 101n, payload: new Uint8Array([4, 5]) }
        ]
      })
    }))

  it.scopedLive("fewer positions than messages: the call ends Unavailable, saying so", () =>
    Effect.gen(function*() {
      const sent = yield* sendThrough([{ sequenceId: "7", serverTimeNs: "100" }])
      expect(sent).toMatchObject({ _tag: "Left", left: { _tag: "DeliveryError", reason: "Unavailable" } })
      if (sent._tag === "Left") expect(sent.left.detail).toContain("1 positions answered for 2 messages")
    }))

  it.scopedLive("a conditional send answered Stored with fewer positions than messages: Unavailable too", () =>
    Effect.gen(function*() {
      const ds = yield* clientOfServerAnswering({ _tag: "Stored", positions: [{ sequenceId: "7", serverTimeNs: "100" }] })
      const sent = yield* Effect.either(ds.sendGroupMessagesIf(twoMessages, 6n))
      expect(sent).toMatchObject({ _tag: "Left", left: { _tag: "DeliveryError", reason: "Unavailable" } })
      if (sent._tag === "Left") expect(sent.left.detail).toContain("sendGroupMessagesIf: 1 positions answered for 2 messages")
    }))
})

describe("a server answering with more bytes than the client takes", () => {
  // A well-formed answer (no messages) padded to 300 KB: what a server could send 100 MiB of.
  const padded = (requestId: string) => [JSON.stringify({
    _tag: "Exit",
    requestId,
    exit: { _tag: "Success", value: { items: [] } },
    padding: "x".repeat(300_000)
  })]

  it.scopedLive("within the client's bound the answer is taken; over it the connection closes and the call ends Unavailable, long before its timeout", () =>
    Effect.gen(function*() {
      const server = yield* wsServerAnswering(padded)
      const url = `http://127.0.0.1:${server.address().port}/rpc`
      const taken = yield* Effect.either(queryThrough(url, "websocket", "5 seconds"))
      expect(taken).toMatchObject({ _tag: "Right", right: { items: [] } })

      const started = performance.now()
      const refused = yield* Effect.either(queryThrough(url, "websocket", "5 seconds", { maxAnswerBytes: 64 * 1024 }))
      expect(refused).toMatchObject({ _tag: "Left", left: { _tag: "DeliveryError", reason: "Unavailable" } })
      expect(performance.now() - started).toBeLessThan(4_000)
    }))

  it.scopedLive("over HTTP the same bound ends the response: the call ends Unavailable naming it, and the next call is answered", () =>
    Effect.gen(function*() {
      const server = yield* httpServerAnswering(padded)
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/rpc`
      const taken = yield* Effect.either(queryThrough(url, "http", "5 seconds"))
      expect(taken).toMatchObject({ _tag: "Right", right: { items: [] } })

      const started = performance.now()
      const refused = yield* Effect.either(queryThrough(url, "http", "5 seconds", { maxAnswerBytes: 64 * 1024 }))
      expect(refused).toMatchObject({ _tag: "Left", left: { _tag: "DeliveryError", reason: "Unavailable" } })
      expect(JSON.stringify(refused)).toContain("over 65536 characters (maxAnswerBytes)")
      expect(performance.now() - started).toBeLessThan(4_000)
    }))

  // @effect/rpc's own ndjson framing (16 MiB lines) searched the whole line so far on every chunk:
  // this 15 MiB line in 16 KiB pieces cost the client 8.2 s of CPU (0.3 s of test now).
  it.scopedLive("over HTTP a line up to the default bound sent in small pieces costs the client little", () =>
    Effect.gen(function*() {
      const server = yield* httpServerAnswering((requestId) => [JSON.stringify({
        _tag: "Exit",
        requestId,
        exit: { _tag: "Success", value: { items: [] } },
        padding: "x".repeat(15 * 1024 * 1024)
      })])
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/rpc`
      const cpu = process.cpuUsage()
      const { longest, result } = yield* longestStall(queryThrough(url, "http", "20 seconds"))
      expect(result).toMatchObject({ _tag: "Right", right: { items: [] } })
      expect(longest).toBeLessThan(1_000)
      const used = process.cpuUsage(cpu)
      expect((used.user + used.system) / 1000).toBeLessThan(3_000)
    }))

  it.scopedLive("a call that met an oversized answer is retried once the client has reconnected, and answered", () =>
    Effect.gen(function*() {
      let answered = 0
      const server = yield* wsServerAnswering((requestId) =>
        answered++ === 0
          ? padded(requestId)
          : [JSON.stringify({ _tag: "Exit", requestId, exit: { _tag: "Success", value: { items: [] } } })]
      )
      const context = yield* Layer.build(DeliveryService.layerRpc({
        url: `http://127.0.0.1:${server.address().port}/rpc`,
        timeout: "5 seconds",
        retrySchedule: Schedule.spaced("100 millis").pipe(Schedule.intersect(Schedule.recurs(20))),
        maxAnswerBytes: 64 * 1024
      }))
      const page = yield* Context.get(context, DeliveryService).queryGroupMessages({
        groupId: "0".repeat(32) as GroupId,
        afterSequenceId: 0n
      })
      expect(page.items).toEqual([])
      expect(answered).toBe(2)
    }))
})
