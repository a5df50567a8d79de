/**
 * Findings of the attack round against `converge serve` (each one failed before its fix), played
 * against an in-process delivery server on loopback.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { createRequire } from "node:module"
import { serve } from "../src/layers/DeliveryServer.ts"
import { DeliveryService } from "../src/index.ts"

interface WsClient {
  on(event: "open" | "close" | "error" | "message", listener: (...args: Array<any>) => void): void
  send(data: string): void
  close(): void
}
const { WebSocket } = createRequire(import.meta.url)("ws") as {
  readonly WebSocket: new(url: string) => WsClient
}

const groupId = "0".repeat(32)
const requestWithId = (id: unknown, tag: string, payload: unknown) =>
  JSON.stringify({ _tag: "Request", id, tag, payload, headers: [] })
const queryWithId = (id: unknown) => requestWithId(id, "queryGroupMessages", { query: { groupId, afterSequenceId: "0" } })

const post = async (url: string, body: string) => {
  const started = performance.now()
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/ndjson" },
    body,
    signal: AbortSignal.timeout(60_000)
  })
  const text = await response.text()
  return { status: response.status, text, millis: performance.now() - started }
}

/** Opens a WebSocket, sends `frames`, collects the messages until `until` holds or it closes. */
const overWebSocket = (
  url: string,
  frames: ReadonlyArray<string>,
  until: (messages: ReadonlyArray<any>) => boolean
) =>
  new Promise<{ readonly messages: ReadonlyArray<any>; readonly millis: number }>((resolve) => {
    const started = performance.now()
    const ws = new WebSocket(url.replace(/^http/, "ws"))
    const messages: Array<any> = []
    const done = () => resolve({ messages, millis: performance.now() - started })
    const timer = setTimeout(() => (ws.close(), done()), 60_000)
    ws.on("open", () => frames.forEach((f) => ws.send(f)))
    ws.on("error", () => {})
    ws.on("message", (data: Buffer) => {
      messages.push(JSON.parse(data.toString()))
      if (until(messages)) {
        clearTimeout(timer)
        ws.close()
        done()
      }
    })
    ws.on("close", () => (clearTimeout(timer), done()))
  })

describe("request ids", () => {
  // @effect/rpc's server turns every request id into a BigInt (quadratic in the digits) and
  // echoes it back: a 2-million-digit id held the event loop for seconds (3 million: 11 s on
  // `converge serve`), for every caller, without an account.
  const hugeId = "9".repeat(2_000_000)

  it.scopedLive("a request with a huge id is refused without parsing it, and nothing else waits", () =>
    Effect.gen(function*() {
      const { url } = yield* serve({ port: 0 }).pipe(Effect.provide(DeliveryService.layerMemory))
      const answer = yield* Effect.promise(() => post(url, queryWithId(hugeId) + "\n"))
      expect(answer.text.length).toBeLessThan(1000)
      expect(answer.text).toContain("request id")
      expect(answer.millis).toBeLessThan(1000)
      // A normal request on the same server is still served.
      const normal = yield* Effect.promise(() => post(url, queryWithId("1") + "\n"))
      expect(normal.text).toContain(`"_tag":"Success"`)
    }))

  it.scopedLive("an Interrupt or Ack with a huge request id costs nothing either", () =>
    Effect.gen(function*() {
      const { url } = yield* serve({ port: 0 }).pipe(Effect.provide(DeliveryService.layerMemory))
      const frames = [
        JSON.stringify({ _tag: "Interrupt", requestId: hugeId }),
        JSON.stringify({ _tag: "Ack", requestId: hugeId }),
        queryWithId("7")
      ]
      const { messages, millis } = yield* Effect.promise(() =>
        overWebSocket(url, frames, (m) => m.some((x) => x._tag === "Exit" && x.requestId === "7"))
      )
      expect(messages.some((x) => x._tag === "Exit" && x.requestId === "7")).toBe(true)
      expect(millis).toBeLessThan(1000)
    }))
})
