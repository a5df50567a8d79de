/**
 * The delivery server's transport limits, measured at their edges: the HTTP body limit and
 * the WebSocket message limit are the documented value to the byte, and the per-connection
 * caps answer the calls past them with a typed, retryable `LimitExceeded`.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as net from "node:net"
import { serve } from "../src/layers/DeliveryServer.ts"
import { DEFAULT_TRANSPORT_LIMITS } from "../src/layers/ServerLimits.ts"
import { DeliveryService } from "../src/index.ts"
import { overWebSocket } from "./support/RawWebSocket.ts"


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
