/**
 * A reader that takes nothing, asking for a little less than the server lets a connection hold
 * unread (from the last attack round's notes): two or three large answers on a WebSocket (under
 * `MAX_UNREAD_SOCKET_BYTES`, so no answer ever waited and none was cut off), or one answer on an
 * HTTP connection. The server held them for good, up to 16 MiB a connection, 16 GiB over 1,024
 * connections. Now an answer not taken within the slow-reader timeout drops its connection.
 *
 * Each story allows one connection: a second client gets in only once the first is let go.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as net from "node:net"
import { serve } from "../src/layers/DeliveryServer.ts"
import { DeliveryService } from "../src/index.ts"
import { topicOfBigMessages } from "./support/DeliveryFixtures.ts"
import { openWebSocket, type RawConnection, WebSocket } from "./support/RawWebSocket.ts"

const TIMEOUT_MILLIS = 1500

const query = (id: number, groupId: string) =>
  JSON.stringify({ _tag: "Request", id: String(id), tag: "queryGroupMessages", payload: { query: { groupId, afterSequenceId: "0" } }, headers: [] })

/** The server, with one connection allowed, on a topic whose first page is about 5.4 MB. */
const oneConnectionServer = Effect.gen(function*() {
  const service = yield* DeliveryService
  const groupId = yield* topicOfBigMessages(service)
  const { url } = yield* serve({ port: 0, slowReaderTimeoutMillis: TIMEOUT_MILLIS, maxConnections: 1 }).pipe(
    Effect.provideService(DeliveryService, service)
  )
  return { url, groupId }
})

/** Milliseconds from `since` until a second client gets in (the first let go), or undefined within `waitMillis`. */
const secondClientIn = (url: string, since: number, waitMillis: number) =>
  Effect.gen(function*() {
    let second: RawConnection | undefined
    while (second === undefined && performance.now() - since < waitMillis) {
      second = yield* Effect.promise(() => openWebSocket(url).catch(() => undefined))
      if (second === undefined) yield* Effect.sleep("250 millis")
    }
    if (second === undefined) return undefined
    const { close } = second
    yield* Effect.addFinalizer(() => Effect.sync(close))
    // ...and it is answered as usual.
    return { letGo: performance.now() - since, second }
  })

describe("a reader that stops short of the unread bound", () => {
  it.scopedLive("on a WebSocket, three answers it never takes: its connection is let go after the slow-reader timeout", () =>
    Effect.gen(function*() {
      const { url, groupId } = yield* oneConnectionServer
      const ws = new WebSocket(url.replace(/^http/, "ws")) as any
      yield* Effect.promise(() => new Promise<void>((resolve) => ws.on("open", () => resolve())))
      yield* Effect.addFinalizer(() => Effect.sync(() => ws.terminate()))
      ws.on("error", () => {})
      ws._socket.pause()
      const sent = performance.now()
      // About 16 MB in all: short of the 16 MiB at which answers would wait.
      for (let id = 1; id <= 3; id++) ws.send(query(id, groupId))

      const got = yield* secondClientIn(url, sent, TIMEOUT_MILLIS + 8_000)
      expect(got, "the server still holds the reader's connection").toBeDefined()
      expect(got!.letGo).toBeGreaterThanOrEqual(TIMEOUT_MILLIS)
      const answers = yield* Effect.promise(() => got!.second.exchange(query(1, groupId), (messages) => messages.length > 0, 10_000))
      expect(answers[0]?.exit?._tag).toBe("Success")
    }).pipe(Effect.provide(DeliveryService.layerMemory)), 60_000)

  it.scopedLive("over HTTP, one answer it never takes: its connection is let go after the slow-reader timeout", () =>
    Effect.gen(function*() {
      const { url, groupId } = yield* oneConnectionServer
      const body = query(1, groupId) + "\n"
      const { port } = new URL(url)
      const socket = net.connect(Number(port), "127.0.0.1", () =>
        socket.write(
          `POST /rpc HTTP/1.1\r\nhost: x\r\ncontent-type: application/ndjson\r\n` +
            `content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
        ))
      socket.on("error", () => {})
      socket.pause()
      yield* Effect.addFinalizer(() => Effect.sync(() => socket.destroy()))
      const sent = performance.now()

      const got = yield* secondClientIn(url, sent, TIMEOUT_MILLIS + 8_000)
      expect(got, "the server still holds the reader's connection").toBeDefined()
      expect(got!.letGo).toBeGreaterThanOrEqual(TIMEOUT_MILLIS)
    }).pipe(Effect.provide(DeliveryService.layerMemory)), 60_000)

  it.scopedLive("a reader that takes its answers, however large, is never let go", () =>
    Effect.gen(function*() {
      const { url, groupId } = yield* oneConnectionServer
      const ws = new WebSocket(url.replace(/^http/, "ws")) as any
      yield* Effect.promise(() => new Promise<void>((resolve) => ws.on("open", () => resolve())))
      yield* Effect.addFinalizer(() => Effect.sync(() => ws.terminate()))
      let received = 0
      let closed = false
      ws.on("message", () => received += 1)
      ws.on("close", () => closed = true)
      // Three rounds of three large answers, spread past the timeout.
      for (let round = 0; round < 3; round++) {
        for (let id = 1; id <= 3; id++) ws.send(query(round * 3 + id, groupId))
        yield* Effect.sleep(`${TIMEOUT_MILLIS} millis`)
      }
      while (received < 9 && !closed) yield* Effect.sleep("50 millis")
      expect(closed).toBe(false)
      expect(received).toBe(9)
    }).pipe(Effect.provide(DeliveryService.layerMemory)), 60_000)
})
