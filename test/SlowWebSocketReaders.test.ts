/**
 * A WebSocket client that sends small queries and never reads its socket (from an attack round
 * on the Converge face): `ws` buffers whatever the server gives it, and the in-flight slot of a
 * call was freed as soon as its answer was handed over, so the server held every answer (1.3
 * GiB for 120 queries of 150 bytes; a longer run ran it out of heap). Now answers wait while the
 * socket holds more than `MAX_UNREAD_SOCKET_BYTES` unread, the calls keep their slots meanwhile,
 * and new requests are refused until the reader catches up or is cut off.
 *
 * Cut off: such a reader was never dropped, for two reasons. Every answer checked the socket
 * before any was written (a write comes after its encoding, and fibers yield in between), so all
 * passed, the socket held 61 MB, and no answer was left waiting for the slow-reader timeout. And
 * an answer that did wait could not be timed out: the RPC server sends an exit from a fiber that
 * cannot be interrupted, so the timeout waited for the reader it was meant to cut off.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { serve } from "../src/layers/DeliveryServer.ts"
import { DeliveryService } from "../src/index.ts"
import { topicOfBigMessages } from "./support/DeliveryFixtures.ts"
import { openWebSocket, type RawConnection, WebSocket } from "./support/RawWebSocket.ts"

const MiB = 1024 * 1024
const request = (id: number, tag: string, payload: unknown) =>
  JSON.stringify({ _tag: "Request", id: String(id), tag, payload, headers: [] })

describe("a WebSocket reader that reads nothing", () => {
  it.scopedLive("cannot make the server hold an answer for every query it sends", () =>
    Effect.gen(function*() {
      const service = yield* DeliveryService
      const groupId = yield* topicOfBigMessages(service)
      const { url } = yield* serve({ port: 0 }).pipe(Effect.provideService(DeliveryService, service))
      const ws = new WebSocket(url.replace(/^http/, "ws")) as any
      yield* Effect.promise(() => new Promise<void>((resolve) => ws.on("open", () => resolve())))
      // Gone even if the bound fails: else the server's shutdown waits for its slow-reader timeout.
      yield* Effect.addFinalizer(() => Effect.sync(() => ws.terminate()))
      ws.on("error", () => {})
      // Stop reading: the kernel's buffers fill, then the server's own.
      ws._socket.pause()
      const before = process.memoryUsage().rss
      let id = 0
      // Two rounds of 60 queries (under the in-flight cap of 64), each answered with about 5.4 MB.
      for (let round = 0; round < 2; round++) {
        for (let i = 0; i < 60; i++) ws.send(request(++id, "queryGroupMessages", { query: { groupId, afterSequenceId: "0" } }))
        yield* Effect.sleep("150 millis")
      }
      yield* Effect.sleep("1 second")
      // Before, 1.3 GiB: every answer kept for a reader that takes none.
      expect((process.memoryUsage().rss - before) / MiB).toBeLessThan(256)
    }).pipe(Effect.provide(DeliveryService.layerMemory)), 60_000)

  it.scopedLive("is dropped after the slow-reader timeout: the server lets go of its connection", () =>
    Effect.gen(function*() {
      const service = yield* DeliveryService
      const groupId = yield* topicOfBigMessages(service)
      const timeoutMillis = 1500
      // One connection at most: a second client gets in only once the server has let go of the first.
      const { url } = yield* serve({ port: 0, slowReaderTimeoutMillis: timeoutMillis, maxConnections: 1 }).pipe(
        Effect.provideService(DeliveryService, service)
      )
      const query = (id: number) => request(id, "queryGroupMessages", { query: { groupId, afterSequenceId: "0" } })
      const ws = new WebSocket(url.replace(/^http/, "ws")) as any
      yield* Effect.promise(() => new Promise<void>((resolve) => ws.on("open", () => resolve())))
      yield* Effect.addFinalizer(() => Effect.sync(() => ws.terminate()))
      ws.on("error", () => {})
      let received = 0
      let closeCode: number | undefined
      ws.on("message", () => received += 1)
      ws.on("close", (code: number) => closeCode = code)
      ws._socket.pause()
      const sent = performance.now()
      for (let id = 1; id <= 60; id++) ws.send(query(id))

      // While the reader is still paused (it would not see the server's close before it reads
      // what its kernel holds), a second client is refused until the first connection is gone.
      let second: RawConnection | undefined
      while (second === undefined && performance.now() - sent < timeoutMillis + 8_000) {
        second = yield* Effect.promise(() => openWebSocket(url).catch(() => undefined))
        if (second === undefined) yield* Effect.sleep("250 millis")
      }
      const letGo = performance.now() - sent
      expect(second, "the server still holds the reader's connection").toBeDefined()
      expect(letGo).toBeGreaterThanOrEqual(timeoutMillis)
      yield* Effect.addFinalizer(() => Effect.sync(() => second!.close()))
      // ...and is answered as usual.
      const answers = yield* Effect.promise(() => second!.exchange(query(1), (messages) => messages.length > 0, 10_000))
      expect(answers[0]?.exit?._tag).toBe("Success")
      expect(answers[0].exit.value.items.length).toBeGreaterThan(0)

      // The reader, reading again, gets what was on its way and then the end: no close frame
      // (the server dropped the connection), and not the answer or refusal of every query.
      ws._socket.resume()
      const readingSince = performance.now()
      while (closeCode === undefined && performance.now() - readingSince < 8_000) yield* Effect.sleep("50 millis")
      expect(closeCode).toBe(1006)
      expect(received).toBeLessThan(60)
    }).pipe(Effect.provide(DeliveryService.layerMemory)), 60_000)
})
