/**
 * The RPC delivery client's call timeouts, kept by its connection (`RpcCallTimeouts`) rather than
 * by each call: against servers that never answer, on loopback.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Schedule } from "effect"
import * as http from "node:http"
import { createRequire } from "node:module"
import type { AddressInfo } from "node:net"
import * as net from "node:net"
import type { GroupId } from "../src/domain/Ids.ts"
import { DeliveryService } from "../src/index.ts"

/** The parts of `ws`'s server used here (it ships no types). */
interface WsServer {
  on(event: "listening", listener: () => void): void
  address(): AddressInfo
  close(): void
}
const { WebSocketServer } = createRequire(import.meta.url)("ws") as {
  readonly WebSocketServer: new(options: { readonly port: number; readonly host: string }) => WsServer
}

/** A WebSocket server that takes every request and never answers it. */
const silentWsServer = Effect.acquireRelease(
  Effect.async<WsServer>((resume) => {
    const server = new WebSocketServer({ port: 0, host: "127.0.0.1" })
    server.on("listening", () => resume(Effect.succeed(server)))
  }),
  (server) => Effect.sync(() => server.close())
)

/** An HTTP server that takes every POST and never answers it. */
const silentHttpServer = Effect.acquireRelease(
  Effect.async<http.Server>((resume) => {
    const server = http.createServer(() => {})
    server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
  }),
  (server) => Effect.sync(() => {
    server.closeAllConnections()
    server.close()
  })
)

describe("call timeouts the connection keeps (RpcCallTimeouts)", () => {
  /** A TCP server that accepts connections and never says a word: a WebSocket handshake never completes. */
  const silentTcpServer = Effect.acquireRelease(
    Effect.async<{ readonly server: net.Server; readonly sockets: Set<net.Socket> }>((resume) => {
      const sockets = new Set<net.Socket>()
      const server = net.createServer((socket) => {
        sockets.add(socket)
        socket.on("close", () => sockets.delete(socket))
      })
      server.listen(0, "127.0.0.1", () => resume(Effect.succeed({ server, sockets })))
    }),
    ({ server, sockets }) =>
      Effect.sync(() => {
        sockets.forEach((socket) => socket.destroy())
        server.close()
      })
  )
  const query = (ds: DeliveryService["Type"]) =>
    ds.queryGroupMessages({ groupId: "0".repeat(32) as GroupId, afterSequenceId: 0n })

  // Before: the first call timed out, and the timer then waited to tell the server to interrupt
  // it, on a connection still opening; every later call hung until the socket's own 10 s open
  // timeout and then ended Unavailable.
  it.scopedLive("while the WebSocket is still opening, every call times out at its own timeout, not only the first", () =>
    Effect.gen(function*() {
      const { server } = yield* silentTcpServer
      const context = yield* Layer.build(DeliveryService.layerRpc({
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/rpc`,
        transport: "websocket",
        timeout: "200 millis",
        retrySchedule: Schedule.recurs(0)
      }))
      const ds = Context.get(context, DeliveryService)
      for (let i = 0; i < 3; i++) {
        const result = yield* Effect.either(query(ds)).pipe(Effect.timeout("3 seconds"))
        expect(result).toMatchObject({ _tag: "Left", left: { _tag: "DeliveryError", reason: "Timeout", retryable: true } })
      }
    }))

  // Before: deadlines were read off the time of day (`Clock.unsafeCurrentTimeMillis`, Date.now),
  // so a step back of the system clock (NTP, a resumed VM) held every pending call that long.
  it.scopedLive.each(["websocket", "http"] as const)("over %s, a step back of the time of day does not hold a call past its timeout", (transport) =>
    Effect.gen(function*() {
      const server = yield* transport === "websocket"
        ? Effect.map(silentWsServer, (s) => s.address().port)
        : Effect.map(silentHttpServer, (s) => (s.address() as AddressInfo).port)
      const context = yield* Layer.build(DeliveryService.layerRpc({
        url: `http://127.0.0.1:${server}/rpc`,
        transport,
        timeout: "300 millis",
        retrySchedule: Schedule.recurs(0)
      }))
      const ds = Context.get(context, DeliveryService)
      const realNow = Date.now.bind(Date)
      yield* Effect.acquireRelease(
        Effect.sync(() => {
          // An hour back, 100 ms after the call is sent.
          const stepAt = realNow() + 100
          Date.now = () => (realNow() < stepAt ? realNow() : realNow() - 3_600_000)
        }),
        () => Effect.sync(() => { Date.now = realNow })
      )
      const result = yield* Effect.either(query(ds)).pipe(Effect.timeout("3 seconds"))
      expect(result).toMatchObject({ _tag: "Left", left: { _tag: "DeliveryError", reason: "Timeout", retryable: true } })
    }))
})
