/**
 * An honest WebSocket reader on a slower link, asking a few pages at once: each page alone is
 * taken well within the slow-reader timeout. `UntakenAnswers` gave each answer the timeout from
 * its write (and answers within a second shared one deadline), so everything queued before it had
 * to be taken too: three pages at once needed three times the rate, and the reader was cut off
 * after the second. Now an answer's time runs from when the reader reached it.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { serve } from "../src/layers/DeliveryServer.ts"
import { DeliveryService } from "../src/index.ts"
import { topicOfBigMessages } from "./support/DeliveryFixtures.ts"
import { WebSocket } from "./support/RawWebSocket.ts"

const TIMEOUT_MILLIS = 1500
/** Bytes a second this reader takes: a page of about 5.4 MB in about 1.1 s, short of the timeout. */
const RATE = 5_000_000

const query = (id: number, groupId: string) =>
  JSON.stringify({ _tag: "Request", id: String(id), tag: "queryGroupMessages", payload: { query: { groupId, afterSequenceId: "0" } }, headers: [] })

describe("a WebSocket reader that reads steadily, a page well within the timeout", () => {
  it.scopedLive("asking three pages at once is answered, not cut off", () =>
    Effect.gen(function*() {
      const service = yield* DeliveryService
      const groupId = yield* topicOfBigMessages(service)
      const { url } = yield* serve({ port: 0, slowReaderTimeoutMillis: TIMEOUT_MILLIS }).pipe(
        Effect.provideService(DeliveryService, service)
      )
      const ws = new WebSocket(url.replace(/^http/, "ws")) as any
      yield* Effect.promise(() => new Promise<void>((resolve) => ws.on("open", () => resolve())))
      yield* Effect.addFinalizer(() => Effect.sync(() => ws.terminate()))
      ws.on("error", () => {})
      const messages: Array<any> = []
      let closeCode: number | undefined
      ws.on("message", (data: Buffer) => messages.push(JSON.parse(data.toString())))
      ws.on("close", (code: number) => closeCode = code)
      // Reads at RATE: paused whenever ahead of it.
      const tcp = ws._socket
      const since = performance.now()
      let taken = 0
      tcp.on("data", (chunk: Buffer) => {
        taken += chunk.length
        const ahead = taken / RATE * 1000 - (performance.now() - since)
        if (ahead > 0) {
          tcp.pause()
          setTimeout(() => tcp.resume(), ahead)
        }
      })
      for (let id = 1; id <= 3; id++) ws.send(query(id, groupId))
      while (closeCode === undefined && messages.length < 3 && performance.now() - since < 15_000) {
        yield* Effect.sleep("100 millis")
      }
      console.log(`[steady] ${messages.length} answers, ${taken} bytes in ${(performance.now() - since).toFixed(0)} ms, close ${closeCode}`)
      expect(closeCode).toBeUndefined()
      expect(messages.map((m) => m.exit?._tag)).toEqual(["Success", "Success", "Success"])
    }).pipe(Effect.provide(DeliveryService.layerMemory)), 30_000)
})
