/**
 * The delivery server's transport limits, measured at their edges: the HTTP body limit and
 * the WebSocket message limit are the documented value to the byte, and the per-connection
 * caps answer the calls past them with a typed, retryable `LimitExceeded`.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import * as net from "node:net"
import { serve } from "../src/layers/DeliveryServer.ts"
import { DEFAULT_TRANSPORT_LIMITS } from "../src/layers/ServerLimits.ts"
import { DeliveryService } from "../src/index.ts"
import { openWebSocket, overWebSocket } from "./support/RawWebSocket.ts"


const MiB = 1024 * 1024

const groupId = "0".repeat(32)
const request = (id: number, tag: string, payload: unknown) =>
  JSON.stringify({ _tag: "Request", id: String(id), tag, payload, headers: [] })
const query = (id: number) => request(id, "queryGroupMessages", { query: { groupId, afterSequenceId: "0" } })

/** An ndjson body of exactly `size` bytes: one query, padded with spaces before its newline. */
const bodyOf = (size: number) => {
  const line = query(1)
  return line + " ".repeat(size - line.length - 1) + "\n"
}

/** Sends `body` over raw HTTP (declared length, or chunked) and returns the status line's code. */
const rawPost = (port: number, body: string, chunked: boolean) =>
  new Promise<number>((resolve) => {
    const socket = net.connect(port, "127.0.0.1", () => {
      const head = `POST /rpc HTTP/1.1\r\nhost: x\r\ncontent-type: application/ndjson\r\nconnection: close\r\n`
      if (chunked) {
        socket.write(`${head}transfer-encoding: chunked\r\n\r\n`)
        socket.write(`${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n0\r\n\r\n`)
      } else {
        socket.write(`${head}content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`)
      }
    })
    let answer = ""
    socket.on("data", (chunk) => answer += chunk.toString())
    socket.on("error", () => {})
    socket.on("close", () => resolve(Number(/^HTTP\/1\.1 (\d+)/.exec(answer)?.[1] ?? 0)))
  })


const exitsOf = (messages: ReadonlyArray<any>) => messages.filter((m) => m._tag === "Exit")
const limitExceeded = (messages: ReadonlyArray<any>) =>
  exitsOf(messages).filter((m) => m.exit?.cause?.error?.reason === "LimitExceeded")

describe("body and message limits", () => {
  it.scopedLive("the default HTTP body limit is 8 MiB to the byte; a body of unknown length is refused", () =>
    Effect.gen(function*() {
      const { port } = yield* serve({ port: 0 }).pipe(Effect.provide(DeliveryService.layerMemory))
      const limit = DEFAULT_TRANSPORT_LIMITS.maxBodyBytes
      expect(limit).toBe(8 * MiB)
      expect(yield* Effect.promise(() => rawPost(port, bodyOf(limit), false))).toBe(200)
      expect(yield* Effect.promise(() => rawPost(port, bodyOf(limit + 1), false))).toBe(413)
      expect(yield* Effect.promise(() => rawPost(port, bodyOf(1000), true))).toBe(411)
    }))

  it.scopedLive("a WebSocket message of the limit is served; one byte more closes the connection with 1009", () =>
    Effect.gen(function*() {
      const maxBodyBytes = MiB
      const { url } = yield* serve({ port: 0, maxBodyBytes }).pipe(Effect.provide(DeliveryService.layerMemory))
      const at = query(1) + " ".repeat(maxBodyBytes - query(1).length)
      const served = yield* Effect.promise(() => overWebSocket(url, [at], (m) => exitsOf(m).length === 1))
      expect(exitsOf(served.messages)[0]).toMatchObject({ exit: { _tag: "Success" } })
      const refused = yield* Effect.promise(() => overWebSocket(url, [at + " "], () => false))
      expect(refused.closeCode).toBe(1009)
    }))
})

describe("per-connection caps", () => {
  const subscribe = (id: number) =>
    request(id, "subscribeGroupMessages", { filters: [{ groupId, afterSequenceId: "0" }] })

  it.scopedLive("calls past the in-flight cap on one connection get a retryable LimitExceeded", () =>
    Effect.gen(function*() {
      const { url } = yield* serve({ port: 0, maxInFlightPerConnection: 3 }).pipe(
        Effect.provide(DeliveryService.layerMemory)
      )
      // Subscriptions stay in flight: the fourth call, and any after it, is past the cap.
      const frames = [subscribe(1), subscribe(2), subscribe(3), subscribe(4), query(5)]
      const { messages } = yield* Effect.promise(() => overWebSocket(url, frames, (m) => exitsOf(m).length === 2))
      const refused = limitExceeded(messages)
      expect(refused.map((m) => m.requestId).sort()).toEqual(["4", "5"])
      expect(refused[0]).toMatchObject({ exit: { cause: { error: { _tag: "DeliveryError", retryable: true } } } })
    }))

  it.scopedLive("subscriptions past their cap are refused while other calls still run", () =>
    Effect.gen(function*() {
      const { url } = yield* serve({ port: 0, maxSubscriptionsPerConnection: 2 }).pipe(
        Effect.provide(DeliveryService.layerMemory)
      )
      const frames = [subscribe(1), subscribe(2), subscribe(3), query(4)]
      const { messages } = yield* Effect.promise(() => overWebSocket(url, frames, (m) => exitsOf(m).length === 2))
      expect(limitExceeded(messages).map((m) => m.requestId)).toEqual(["3"])
      expect(exitsOf(messages).find((m) => m.requestId === "4")).toMatchObject({ exit: { _tag: "Success" } })
    }))
})

describe("a call's slot is freed however the call ends", () => {
  const connect = (url: string) => Effect.acquireRelease(Effect.promise(() => openWebSocket(url)), (c) => Effect.sync(c.close))
  /** The answer to request `id` (an Exit under any spelling of the id), or undefined. */
  const answerTo = (id: number) => (messages: ReadonlyArray<any>) =>
    exitsOf(messages).find((m) => Number(m.requestId) === id)
  const defects = (messages: ReadonlyArray<any>) => messages.filter((m) => m._tag === "Defect")
  /** Sends `frame` and waits for the answer to request `id`. */
  const answerOf = (connection: Effect.Effect.Success<ReturnType<typeof connect>>, frame: string, id: number) =>
    Effect.promise(() => connection.exchange(frame, (m) => answerTo(id)(m) !== undefined)).pipe(Effect.map(answerTo(id)))

  // @effect/rpc answers a request for an RPC it does not have with a Defect that names no
  // request: a connection that sent as many as its in-flight cap could make no more calls.
  it.scopedLive("requests for unknown RPCs, or with a payload that does not decode, leave the cap to real calls", () =>
    Effect.gen(function*() {
      const { url } = yield* serve({ port: 0, maxInFlightPerConnection: 2 }).pipe(
        Effect.provide(DeliveryService.layerMemory)
      )
      const connection = yield* connect(url)
      for (let i = 1; i <= 4; i++) {
        const answered = yield* Effect.promise(() =>
          connection.exchange(request(i, "noSuchRpc", {}), (m) => defects(m).length === i || answerTo(i)(m) !== undefined)
        )
        // Answered as @effect/rpc answers it, not refused as one call too many.
        expect(answerTo(i)(answered)).toBeUndefined()
        expect(defects(answered)[i - 1].defect).toContain("Unknown request tag")
      }
      for (let i = 5; i <= 8; i++) {
        const answer = yield* answerOf(connection, request(i, "queryGroupMessages", { query: 42 }), i)
        expect(answer).toMatchObject({ exit: { _tag: "Failure", cause: { _tag: "Die" } } })
      }
      expect(yield* answerOf(connection, query(9), 9)).toMatchObject({ exit: { _tag: "Success" } })
    }))

  // The server answers "007" as "7" (it parses every id to a BigInt): the slot was kept
  // under "007" and never freed.
  it.scopedLive("a request id written with leading zeros is freed by its answer under the plain id", () =>
    Effect.gen(function*() {
      const { url } = yield* serve({ port: 0, maxInFlightPerConnection: 2 }).pipe(
        Effect.provide(DeliveryService.layerMemory)
      )
      const connection = yield* connect(url)
      for (let i = 1; i <= 4; i++) {
        const frame = query(i).replace(`"id":"${i}"`, `"id":"00${i}"`)
        expect(yield* answerOf(connection, frame, i)).toMatchObject({ exit: { _tag: "Success" } })
      }
    }))

  // A handler's defect went out as a Defect naming no request (failing every call of the
  // connection at the client), so its slot was never freed either.
  it.scopedLive("a call whose handler dies frees its slot and fails alone", () =>
    Effect.gen(function*() {
      const dying = "f".repeat(32)
      const service = Layer.effect(
        DeliveryService,
        Effect.map(DeliveryService, (ds) => ({
          ...ds,
          queryGroupMessages: (q: Parameters<typeof ds.queryGroupMessages>[0]) =>
            q.groupId === dying ? Effect.die("a bug in the handler") : ds.queryGroupMessages(q)
        }))
      ).pipe(Layer.provide(DeliveryService.layerMemory))
      const { url } = yield* serve({ port: 0, maxInFlightPerConnection: 2 }).pipe(Effect.provide(service))
      const connection = yield* connect(url)
      for (let i = 1; i <= 4; i++) {
        const frame = request(i, "queryGroupMessages", { query: { groupId: dying, afterSequenceId: "0" } })
        expect(yield* answerOf(connection, frame, i)).toMatchObject({ exit: { _tag: "Failure", cause: { _tag: "Die" } } })
      }
      expect(yield* answerOf(connection, query(5), 5)).toMatchObject({ exit: { _tag: "Success" } })
    }))

  // A second request under a running request's id waited for it uncounted (any number of
  // them), and took over its entry: a subscription's slot ended under the query's kind and
  // was never given back.
  it.scopedLive("a request id already in flight is refused at once and the subscription keeps its own slot", () =>
    Effect.gen(function*() {
      const { url } = yield* serve({ port: 0, maxSubscriptionsPerConnection: 1 }).pipe(
        Effect.provide(DeliveryService.layerMemory)
      )
      const connection = yield* connect(url)
      const subscribe = (id: number) =>
        request(id, "subscribeGroupMessages", { filters: [{ groupId, afterSequenceId: "0" }] })
      yield* Effect.promise(() => connection.exchange(subscribe(1), () => false, 200))
      for (let n = 1; n <= 3; n++) {
        const answered = yield* Effect.promise(() =>
          connection.exchange(query(1), (m) => exitsOf(m).length === n, 2_000)
        )
        expect(exitsOf(answered)).toHaveLength(n)
        expect(exitsOf(answered)[n - 1]).toMatchObject({
          requestId: "1",
          exit: { cause: { error: { reason: "InvalidRequest", retryable: false } } }
        })
      }
      // The subscription ends; its slot is free for another.
      const interrupt = JSON.stringify({ _tag: "Interrupt", requestId: "1" })
      yield* Effect.promise(() => connection.exchange(interrupt, (m) => exitsOf(m).length === 4, 2_000))
      yield* Effect.promise(() => connection.exchange(subscribe(2), () => false, 200))
      const last = yield* Effect.promise(() => connection.exchange(query(3), (m) => answerTo(3)(m) !== undefined))
      expect(answerTo(3)(last)).toMatchObject({ exit: { _tag: "Success" } })
      expect(answerTo(2)(last)).toBeUndefined()
    }))
})
