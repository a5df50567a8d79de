/**
 * A WebSocket client that sends small queries and never reads its socket (from an attack round
 * on the Converge face): `ws` buffers whatever the server gives it, and the in-flight slot of a
 * call was freed as soon as its answer was handed over, so the server held every answer (1.3
 * GiB for 120 queries of 150 bytes; a longer run ran it out of heap). Now answers wait while the
 * socket holds more than `MAX_UNREAD_SOCKET_BYTES` unread, the calls keep their slots meanwhile,
 * and new requests are refused until the reader catches up or is cut off.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { serve } from "../src/layers/DeliveryServer.ts"
import { DeliveryService } from "../src/index.ts"
import { topicOfBigMessages } from "./support/DeliveryFixtures.ts"
import { WebSocket } from "./support/RawWebSocket.ts"

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
      ws.terminate()
    }).pipe(Effect.provide(DeliveryService.layerMemory)), 60_000)
})
