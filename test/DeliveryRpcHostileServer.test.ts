/**
 * The RPC delivery client against servers that answer what no `DeliveryServer` would: fake
 * servers on loopback (a raw `ws` server, a raw node:http server) that speak the wire
 * protocol by hand.
 */
import { describe, expect, it } from "@effect/vitest"
import { type Rpc, RpcSchema, RpcSerialization } from "@effect/rpc"
import { Chunk, Context, type Duration, Effect, Fiber, Layer, Option, Schedule, type SchemaAST, Stream } from "effect"
import * as http from "node:http"
import { createRequire } from "node:module"
import type { AddressInfo } from "node:net"
import { DeliveryRpcs } from "../src/domain/DeliveryRpcs.ts"
import type { GroupId, InstallationId } from "../src/domain/Ids.ts"
import { DeliveryService } from "../src/index.ts"
import { GroupMessageInput } from "../src/domain/Wire.ts"
import { nestingDepth } from "../src/layers/JsonDepth.ts"
import { AnswerTooDeep, depthBoundedJson, MAX_ANSWER_DEPTH } from "../src/layers/RpcAnswerDepth.ts"
import { boundedRequestIds } from "../src/layers/RpcRequestIds.ts"

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

/**
 * A WebSocket server that answers every request with `answers(its id, its RPC)`, one frame each,
 * after `delayMillis(its RPC)` (at once by default).
 */
const wsServerAnswering = (
  answers: (requestId: string, tag: string) => ReadonlyArray<string>,
  delayMillis: (tag: string) => number = () => 0
) =>
  Effect.acquireRelease(
    Effect.async<WsServer>((resume) => {
      const server = new WebSocketServer({ port: 0, host: "127.0.0.1" })
      server.on("connection", (socket) =>
        socket.on("message", (data) => {
          const message = JSON.parse(data.toString())
          if (message._tag !== "Request") return
          const answer = () => answers(String(message.id), message.tag).forEach((frame) => socket.send(frame))
          const delay = delayMillis(message.tag)
          if (delay === 0) answer()
          else setTimeout(answer, delay)
        }))
      server.on("listening", () => resume(Effect.succeed(server)))
    }),
    (server) => Effect.sync(() => server.close())
  )
const wsServer = wsServerAnswering(() => hugeAnswers)

/** An HTTP server that answers every POST with `answers(its request's id, its RPC)` as ndjson, 16 KiB at a time. */
const httpServerAnswering = (answers: (requestId: string, tag: string) => ReadonlyArray<string>) => Effect.acquireRelease(
  Effect.async<http.Server>((resume) => {
    const server = http.createServer((request, response) => {
      const body: Array<Buffer> = []
      request.on("data", (chunk: Buffer) => body.push(chunk))
      request.on("end", () => {
        const message = JSON.parse(Buffer.concat(body).toString().split("\n")[0]!)
        response.writeHead(200, { "content-type": "application/ndjson" })
        const wire = answers(String(message.id), message.tag).map((line) => line + "\n").join("")
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

describe("a server answering with values nested deeper than the client reads", () => {
  // Before (5,000 and 100,000 levels alike, both transports unless said): a page or an error so
  // nested failed its call with a RangeError defect, not a typed error (effect formatting the
  // ParseError's message for `transportErrors` overflowed the stack); over WebSocket a defect or a
  // cause so nested took the connection down: the call waited for its timeout and every other call
  // of the connection failed; a chunk so nested ended its subscription for good with a RangeError
  // (and over WebSocket took the connection down too); a `Defect` message so nested held every
  // call of the connection until its timeout.
  const deep = (levels: number) => "[".repeat(levels) + "]".repeat(levels)
  /** A cause as the server encodes one, `levels` causes deep. */
  const deepCause = (levels: number) =>
    `{"_tag":"Sequential","left":{"_tag":"Empty"},"right":`.repeat(levels) + `{"_tag":"Empty"}` + "}".repeat(levels)
  /** `message` as JSON, with `deepValue` where it has `"DEEP"`. */
  const withDeep = (message: unknown, deepValue: string) => JSON.stringify(message).replace(`"DEEP"`, deepValue)
  const exitWith = (exit: unknown, nested: (levels: number) => string) => (levels: number) => (requestId: string) =>
    withDeep({ _tag: "Exit", requestId, exit }, nested(levels))
  const attacks = [
    ["a page's items", exitWith({ _tag: "Success", value: { items: "DEEP" } }, deep)],
    ["an error", exitWith({ _tag: "Failure", cause: { _tag: "Fail", error: "DEEP" } }, deep)],
    ["a handler's defect", exitWith({ _tag: "Failure", cause: { _tag: "Die", defect: "DEEP" } }, deep)],
    ["a cause", exitWith({ _tag: "Failure", cause: "DEEP" }, deepCause)]
  ] as const
  const transports = ["websocket", "http"] as const
  const cases = transports.flatMap((transport) =>
    attacks.flatMap(([what, answer]) => [5_000, 100_000].map((levels) => [transport, what, levels, answer(levels)] as const))
  )

  const groupId = "0".repeat(32) as GroupId
  const emptyPage = (requestId: string) =>
    JSON.stringify({ _tag: "Exit", requestId, exit: { _tag: "Success", value: { items: [] } } })
  const envelopeChunk = (requestId: string) =>
    JSON.stringify({
      _tag: "Chunk",
      requestId,
      values: [{ groupId, sequenceId: "1", serverTimeNs: "1", payload: "AQID" }]
    })
  const tooDeep = `nested more than ${MAX_ANSWER_DEPTH} levels deep`
  const unavailable = {
    _tag: "Failure",
    cause: { _tag: "Fail", error: { _tag: "DeliveryError", reason: "Unavailable", retryable: true } }
  }

  /**
   * A server of `transport` that answers `answer` to all but `queryWelcomeMessages`: the bystander,
   * answered an empty page (over WebSocket 300 ms late, still waiting when the others are answered).
   */
  const serverAnswering = (
    transport: "websocket" | "http",
    answer: (requestId: string, tag: string) => ReadonlyArray<string>
  ) =>
    Effect.gen(function*() {
      const answers = (requestId: string, tag: string) =>
        tag === "queryWelcomeMessages" ? [emptyPage(requestId)] : answer(requestId, tag)
      if (transport === "http") {
        const server = yield* httpServerAnswering(answers)
        return `http://127.0.0.1:${(server.address() as AddressInfo).port}/rpc`
      }
      const server = yield* wsServerAnswering(answers, (tag) => tag === "queryWelcomeMessages" ? 300 : 0)
      return `http://127.0.0.1:${server.address().port}/rpc`
    })
  const clientAt = (url: string, transport: "websocket" | "http") =>
    Effect.map(
      Layer.build(DeliveryService.layerRpc({
        url,
        transport,
        timeout: "5 seconds",
        retrySchedule: Schedule.recurs(0),
        resubscribeSchedule: Schedule.spaced("50 millis")
      })),
      (context) => Context.get(context, DeliveryService)
    )
  /** The bystander: a call in flight on the same client while another is answered too deep. */
  const bystander = (ds: DeliveryService["Type"]) =>
    Effect.fork(Effect.exit(ds.queryWelcomeMessages({ installationId: "0".repeat(64) as InstallationId, afterSequenceId: 0n })))
  const query = (ds: DeliveryService["Type"]) => Effect.exit(ds.queryGroupMessages({ groupId, afterSequenceId: 0n }))

  it.scopedLive.each(cases)(
    "over %s, %s nested %i levels deep fails its call alone, with a retryable Unavailable, at once",
    ([transport, , , answer]) =>
      Effect.gen(function*() {
        const ds = yield* clientAt(yield* serverAnswering(transport, (requestId) => [answer(requestId)]), transport)
        const beside = yield* bystander(ds)
        yield* Effect.sleep("50 millis")
        const started = performance.now()
        const attacked = yield* query(ds)
        expect(attacked).toMatchObject(unavailable)
        expect(JSON.stringify(attacked)).toContain(tooDeep)
        expect(performance.now() - started).toBeLessThan(2_000)
        expect(yield* Fiber.join(beside)).toMatchObject({ _tag: "Success", value: { items: [] } })
      })
  )

  it.scopedLive.each(transports.flatMap((transport) => [5_000, 100_000].map((levels) => [transport, levels] as const)))(
    "over %s, a subscription whose chunk is nested %i levels deep resubscribes and delivers what comes next; the call beside it is answered",
    ([transport, levels]) =>
      Effect.gen(function*() {
        let subscriptions = 0
        const url = yield* serverAnswering(transport, (requestId, tag) =>
          tag !== "subscribeGroupMessages" ? [] : subscriptions++ === 0
            ? [withDeep({ _tag: "Chunk", requestId, values: ["DEEP"] }, deep(levels))]
            : [envelopeChunk(requestId)])
        const ds = yield* clientAt(url, transport)
        const beside = yield* bystander(ds)
        yield* Effect.sleep("50 millis")
        const delivered = yield* ds.subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]).pipe(
          Stream.take(1),
          Stream.runCollect,
          Effect.timeout("3 seconds")
        )
        expect(Chunk.toReadonlyArray(delivered)).toMatchObject([{ groupId, sequenceId: 1n, payload: new Uint8Array([1, 2, 3]) }])
        expect(subscriptions).toBe(2)
        expect(yield* Fiber.join(beside)).toMatchObject({ _tag: "Success", value: { items: [] } })
      })
  )

  // Only an answer that begins with its tag and id (as @effect/rpc's server writes one) is read
  // for the call it answers; any other gives the client no call to fail alone.
  it.scopedLive("over WebSocket, a message nested too deep that names no call fails the connection's calls at once, retryable; the next call is answered", () =>
    Effect.gen(function*() {
      let answered = 0
      const url = yield* serverAnswering("websocket", (requestId) =>
        answered++ === 0 ? [withDeep({ _tag: "Defect", defect: "DEEP" }, deep(100_000))] : [emptyPage(requestId)])
      const ds = yield* clientAt(url, "websocket")
      const beside = yield* bystander(ds)
      yield* Effect.sleep("50 millis")
      const started = performance.now()
      const attacked = yield* query(ds)
      expect(attacked).toMatchObject(unavailable)
      expect(yield* Fiber.join(beside)).toMatchObject(unavailable)
      expect(performance.now() - started).toBeLessThan(2_000)
      expect(yield* query(ds)).toMatchObject({ _tag: "Success", value: { items: [] } })
    }))

  // Before: the client parsed 15 MiB of brackets before failing with a RangeError: a 3.1 s stall
  // here (now 0.16 s, most of it the fake server building and sending its answer).
  it.scopedLive("over WebSocket, a 15 MiB answer nested 7.8 million levels deep costs the client no stall", () =>
    Effect.gen(function*() {
      const url = yield* serverAnswering("websocket", (requestId) => [
        withDeep({ _tag: "Exit", requestId, exit: { _tag: "Success", value: { items: "DEEP" } } }, deep(15 * 1024 * 1024 / 2))
      ])
      const ds = yield* clientAt(url, "websocket")
      // Ticking on past the answer: a stall that ends the call would otherwise end the ticker first.
      const { longest, result } = yield* longestStall(Effect.zipLeft(query(ds), Effect.sleep("50 millis")))
      expect(longest).toBeLessThan(1_000)
      expect(result).toMatchObject({ _tag: "Right", right: unavailable })
    }))

  it("the WebSocket wire format: an exit or chunk at the bound is parsed; one level deeper ends its call by id; no id at the head is a decoding error", () => {
    const decode = (data: string | Uint8Array) => depthBoundedJson.unsafeMake().decode(data)
    // message, exit, value, then `levels` arrays.
    const page = (levels: number) =>
      withDeep({ _tag: "Exit", requestId: "7", exit: { _tag: "Success", value: "DEEP" } }, deep(levels))
    expect(nestingDepth(page(MAX_ANSWER_DEPTH - 2))).toBe(MAX_ANSWER_DEPTH)
    expect(decode(page(MAX_ANSWER_DEPTH - 2))).toEqual([JSON.parse(page(MAX_ANSWER_DEPTH - 2))])
    const endsCall = (requestId: string) => [
      { _tag: "Exit", requestId, exit: { _tag: "Failure", cause: { _tag: "Die", defect: expect.stringContaining(tooDeep) } } }
    ]
    expect(decode(page(MAX_ANSWER_DEPTH - 1))).toEqual(endsCall("7"))
    expect(decode(withDeep({ _tag: "Chunk", requestId: "12", values: "DEEP" }, deep(1_000)))).toEqual(endsCall("12"))
    expect(decode(new TextEncoder().encode(page(1_000)))).toEqual(endsCall("7"))
    expect(() => decode(withDeep({ _tag: "Defect", defect: "DEEP" }, deep(1_000)))).toThrow(AnswerTooDeep)
    expect(() => decode(withDeep({ requestId: "7", _tag: "Exit", exit: "DEEP" }, deep(1_000)))).toThrow(AnswerTooDeep)
    expect(() => decode(withDeep({ _tag: "Exit", requestId: "9".repeat(21), exit: "DEEP" }, deep(1_000)))).toThrow(AnswerTooDeep)
    expect(() => decode(deep(1_000))).toThrow(AnswerTooDeep)
  })

  it("every answer a DeliveryServer gives nests at most 9 levels, far under the bound", () => {
    const deepest = Math.max(...Array.from(DeliveryRpcs.requests.values(), answerLevels))
    // syncQuery's identity entries: message, exit, value, identities, inbox, updates, entry, update, action.
    expect(deepest).toBe(9)
    expect(deepest * 4).toBeLessThan(MAX_ANSWER_DEPTH)
  })

  it("scanning a 5 MB page for its depth costs less than parsing it", () => {
    const envelope = (i: number) =>
      ({ groupId, sequenceId: String(i), serverTimeNs: "1796431719507552371", payload: "QUJD".repeat(16) })
    const items = Array.from({ length: 30_000 }, (_, i) => envelope(i))
    const text = JSON.stringify({ _tag: "Exit", requestId: "1", exit: { _tag: "Success", value: { items } } })
    expect(text.length).toBeGreaterThan(5_000_000)
    const fastest = (f: () => unknown) =>
      Math.min(...Array.from({ length: 7 }, () => {
        const started = performance.now()
        f()
        return performance.now() - started
      }))
    expect(fastest(() => nestingDepth(text, MAX_ANSWER_DEPTH))).toBeLessThan(fastest(() => JSON.parse(text)))
  })
})

/** How many levels an answer to `rpc` nests at most: its exit's (or chunk's) envelope and what its schemas allow. */
const answerLevels = (rpc: unknown): number => {
  const { errorSchema, successSchema } = rpc as Rpc.AnyWithProps
  const stream = RpcSchema.getStreamSchemas(successSchema.ast)
  const success = Option.isSome(stream) ? stream.value.success.ast : successSchema.ast
  const failure = Option.isSome(stream) ? stream.value.failure.ast : errorSchema.ast
  // A success: message, exit, then the value; a chunk: message, values, then a value; a failure:
  // message, exit, cause, then the error.
  return Math.max(2 + levelsOf(success), 3 + levelsOf(failure))
}

/** The nesting of a schema's encoded side (its JSON); a schema without a fixed one fails the test. */
const levelsOf = (ast: SchemaAST.AST): number => {
  const deepestOf = (asts: ReadonlyArray<SchemaAST.AST>) => Math.max(0, ...asts.map(levelsOf))
  switch (ast._tag) {
    case "TypeLiteral":
      return 1 + deepestOf([...ast.propertySignatures.map((p) => p.type), ...ast.indexSignatures.map((s) => s.type)])
    case "TupleType":
      return 1 + deepestOf([...ast.elements.map((e) => e.type), ...ast.rest.map((r) => r.type)])
    case "Union":
      return deepestOf(ast.types)
    case "Refinement":
    case "Transformation":
      return levelsOf(ast.from)
    case "Declaration":
    case "Suspend":
      throw new Error(`no fixed nesting: ${ast._tag}`)
    default:
      return 0
  }
}
