/**
 * A plain `ws` client for tests that speak to `converge serve` below the RPC client: frames
 * written by hand, as an attacker would.
 */
import { createRequire } from "node:module"

/** `ws` ships no types; these are the parts the tests use. */
export interface WsClient {
  on(event: "open" | "close" | "error" | "message" | "unexpected-response", listener: (...args: Array<any>) => void): void
  send(data: string | Buffer): void
  close(): void
  terminate(): void
  readonly readyState: number
}

export const { WebSocket } = createRequire(import.meta.url)("ws") as {
  readonly WebSocket: new(url: string, options?: { readonly maxPayload?: number }) => WsClient
}

/**
 * Opens a WebSocket, sends `frames`, collects the messages (JSON) until `until` holds, the
 * server closes (with its close code) or `timeoutMs` passes.
 */
export const overWebSocket = (
  url: string,
  frames: ReadonlyArray<string>,
  until: (messages: ReadonlyArray<any>) => boolean,
  timeoutMs = 10_000
) =>
  new Promise<{ readonly messages: ReadonlyArray<any>; readonly closeCode: number | undefined; readonly millis: number }>(
    (resolve) => {
      const started = performance.now()
      const ws = new WebSocket(url.replace(/^http/, "ws"))
      const messages: Array<any> = []
      const done = (closeCode: number | undefined) => resolve({ messages, closeCode, millis: performance.now() - started })
      const timer = setTimeout(() => (ws.close(), done(undefined)), timeoutMs)
      ws.on("open", () => frames.forEach((f) => ws.send(f)))
      ws.on("error", () => {})
      ws.on("message", (data: Buffer) => {
        messages.push(JSON.parse(data.toString()))
        if (until(messages)) {
          clearTimeout(timer)
          ws.close()
          done(undefined)
        }
      })
      ws.on("close", (code: number) => (clearTimeout(timer), done(code)))
    }
  )

/** One open WebSocket, for exchanges that each wait for their answer before the next is sent. */
export interface RawConnection {
  /** Sends `frame` and resolves with every message so far once `until` holds (or after `timeoutMs`). */
  readonly exchange: (
    frame: string,
    until: (messages: ReadonlyArray<any>) => boolean,
    timeoutMs?: number
  ) => Promise<ReadonlyArray<any>>
  readonly close: () => void
}

export const openWebSocket = (url: string) =>
  new Promise<RawConnection>((resolve, reject) => {
    const ws = new WebSocket(url.replace(/^http/, "ws"))
    const messages: Array<any> = []
    let check = () => {}
    ws.on("error", reject)
    ws.on("message", (data: Buffer) => {
      messages.push(JSON.parse(data.toString()))
      check()
    })
    ws.on("open", () =>
      resolve({
        exchange: (frame, until, timeoutMs = 5_000) =>
          new Promise((done) => {
            const timer = setTimeout(() => done(messages), timeoutMs)
            check = () => {
              if (until(messages)) (clearTimeout(timer), done(messages))
            }
            ws.send(frame)
          }),
        close: () => ws.close()
      }))
  })
