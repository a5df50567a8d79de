/**
 * A WebSocket client that sends small queries and never reads its socket (from an attack round
 * on the Converge face): `ws` buffers whatever the server gives it, and the in-flight slot of a
 * call was freed as soon as its answer was handed over, so the server held every answer (1.3
 * GiB for 120 queries of 150 bytes; a longer run ran it out of heap). Answers then waited while
 * the socket held more than `MAX_UNREAD_SOCKET_BYTES` unread, holding their memory (8 such
 * connections: +1.7 GiB); now a read's answer is refused (retryable) instead, a subscription's
 * chunk ends it (its client resubscribes from its cursor), and new requests are refused until
 * the reader catches up or is cut off (`UntakenAnswers`).
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
import { GroupMessageInput } from "../src/domain/Wire.ts"
import { mlsPayload, newGroupId, registerInstallation, topicOfBigMessages } from "./support/DeliveryFixtures.ts"
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

  it.scopedLive("behind by 16 MiB, its subscription's next chunk ends it (retryable) rather than wait; it resumes from its cursor", () =>
    Effect.gen(function*() {
      const service = yield* DeliveryService
      const bigTopic = yield* topicOfBigMessages(service)
      const writer = yield* registerInstallation(service)
      const followed = newGroupId()
      const { url } = yield* serve({ port: 0 }).pipe(Effect.provideService(DeliveryService, service))
      const ws = new WebSocket(url.replace(/^http/, "ws")) as any
      yield* Effect.promise(() => new Promise<void>((resolve) => ws.on("open", () => resolve())))
      yield* Effect.addFinalizer(() => Effect.sync(() => ws.terminate()))
      const messages: Array<any> = []
      ws.on("message", (data: Buffer) => messages.push(JSON.parse(data.toString())))
      const subscribe = (id: number) =>
        ws.send(request(id, "subscribeGroupMessages", { filters: [{ groupId: followed, afterSequenceId: "0" }] }))
      subscribe(1)
      yield* Effect.sleep("200 millis")
      // The reader stops reading and asks for four pages of about 5.4 MB: its socket falls behind.
      ws._socket.pause()
      for (let id = 2; id <= 5; id++) ws.send(request(id, "queryGroupMessages", { query: { groupId: bigTopic, afterSequenceId: "0" } }))
      yield* Effect.sleep("500 millis")
      // A message for its subscription now: its chunk would have to wait for the reader.
      const text = "for the subscriber"
      yield* writer.ds.sendGroupMessages([GroupMessageInput.make({ groupId: followed, payload: mlsPayload(followed, text) })])
      yield* Effect.sleep("300 millis")
      ws._socket.resume()
      const exitOf = (id: number) => messages.find((m) => m._tag === "Exit" && m.requestId === String(id))
      for (let i = 0; i < 200 && exitOf(1) === undefined; i++) yield* Effect.sleep("50 millis")
      const refusedRetryably = { _tag: "DeliveryError", reason: "LimitExceeded", retryable: true }
      expect(exitOf(1)?.exit?.cause?.error).toMatchObject(refusedRetryably)
      expect(messages.filter((m) => m.requestId === "1" && m._tag === "Chunk")).toEqual([])
      // The stream's own end (it was interrupted) is not passed on: the client was told, and the
      // stream keeps its slot (and its id) until that end comes.
      yield* Effect.sleep("200 millis")
      expect(messages.filter((m) => m.requestId === "1" && m._tag === "Exit")).toHaveLength(1)
      // The pages: those the socket could hold, and the rest refused rather than held.
      for (let i = 0; i < 100 && [2, 3, 4, 5].some((id) => exitOf(id) === undefined); i++) yield* Effect.sleep("50 millis")
      const pages = [2, 3, 4, 5].map((id) => exitOf(id)?.exit)
      expect(pages.filter((exit) => exit?._tag === "Success").length).toBeGreaterThan(0)
      expect(pages.filter((exit) => exit?._tag === "Failure").map((exit) => exit.cause.error)).toContainEqual(
        expect.objectContaining(refusedRetryably)
      )

      // Subscribing again from its cursor (0), it gets the message.
      subscribe(6)
      for (let i = 0; i < 100 && !messages.some((m) => m.requestId === "6" && m._tag === "Chunk"); i++) {
        yield* Effect.sleep("50 millis")
      }
      const chunk = messages.find((m) => m.requestId === "6" && m._tag === "Chunk")
      expect(chunk?.values.map((v: any) => v.sequenceId)).toEqual(["1"])
    }).pipe(Effect.provide(DeliveryService.layerMemory)), 60_000)
})
