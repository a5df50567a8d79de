/**
 * The gate of a delivery server, in front of the RPC layer: its limits resolved, its refusals
 * counted by class and logged at Info at most once per class and interval (never once per
 * request), and the node server with its connection cap, request and idle timeouts, and the
 * WebSocket message size (refused from the frame header, before it is buffered).
 *
 * Node's `http.Server` is used as it is, except that two of its events are taken over:
 * `connection` (to refuse past the cap with a 503 before any parsing) and `upgrade` (served
 * by our own `ws` server, which has a `maxPayload`; the platform's has a fixed 100 MiB one).
 */
import { Socket, SocketServer } from "@effect/platform"
import { Context, Effect, FiberSet, Layer } from "effect"
import * as Http from "node:http"
import { createRequire } from "node:module"
import type * as Net from "node:net"
import type { Duplex } from "node:stream"

import { DEFAULT_TRANSPORT_LIMITS, type TransportLimits } from "./TransportLimits.ts"
import * as UntakenAnswers from "./UntakenAnswers.ts"

/** The limits with defaults filled in; a limit that is not a positive integer is a defect. */
export const resolveLimits = (limits: TransportLimits): Required<TransportLimits> => {
  const resolved = { ...DEFAULT_TRANSPORT_LIMITS }
  for (const key of Object.keys(resolved) as Array<keyof TransportLimits>) {
    const value = limits[key] ?? resolved[key]
    if (!Number.isInteger(value) || value <= 0) {
      throw new RangeError(`delivery server: ${key} must be a positive integer, got ${value}`)
    }
    resolved[key] = value
  }
  return resolved
}

// ---- refusals, logged by class ----

export interface Refusals {
  /** Counts one refusal of `kind`; `detail` is kept as the example of its next log line. */
  readonly note: (kind: string, detail: string) => void
}

/** How often a refusal class is logged at most. */
const REFUSAL_LOG_INTERVAL_MILLIS = 10_000

const makeRefusals = Effect.gen(function*() {
  const pending = new Map<string, { count: number; example: string }>()
  const lastLogged = new Map<string, number>()
  const flush = Effect.suspend(() => {
    const now = Date.now()
    const due: Array<readonly [string, { count: number; example: string }]> = []
    for (const [kind, entry] of pending) {
      if (now - (lastLogged.get(kind) ?? 0) < REFUSAL_LOG_INTERVAL_MILLIS) continue
      pending.delete(kind)
      lastLogged.set(kind, now)
      due.push([kind, entry])
    }
    return Effect.forEach(due, ([kind, { count, example }]) =>
      Effect.logInfo("delivery server refused requests").pipe(
        Effect.annotateLogs({ refusal: kind, count, example })
      ), { discard: true })
  })
  yield* flush.pipe(Effect.zipLeft(Effect.sleep("1 second")), Effect.forever, Effect.forkScoped)
  const refusals: Refusals = {
    note: (kind, detail) => {
      const entry = pending.get(kind)
      if (entry === undefined) pending.set(kind, { count: 1, example: detail })
      else entry.count += 1
    }
  }
  return refusals
})

// ---- the node server ----

/** The parts of `ws` used here (the package ships no types of its own). */
interface WsConnection {
  on(event: "error", listener: (error: Error & { readonly code?: string }) => void): void
  close(code?: number, reason?: string): void
}
interface WsServer {
  handleUpgrade(
    request: Http.IncomingMessage,
    socket: Duplex,
    head: Buffer,
    done: (connection: WsConnection) => void
  ): void
  close(done?: () => void): void
}
const { WebSocketServer } = createRequire(import.meta.url)("ws") as {
  readonly WebSocketServer: new(options: { readonly noServer: true; readonly maxPayload: number }) => WsServer
}

/** A raw HTTP refusal for a socket no HTTP parser reads: the body is an RPC protocol defect line. */
const refuseSocket = (socket: Duplex, status: string, detail: string) => {
  const body = JSON.stringify({ _tag: "Defect", defect: detail }) + "\n"
  socket.on("error", () => {})
  socket.resume()
  socket.end(
    `HTTP/1.1 ${status}\r\ncontent-type: application/ndjson\r\nconnection: close\r\n` +
      `content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
  )
  setTimeout(() => socket.destroy(), 1000).unref()
}

/**
 * A node server with the gate's connection-level limits: Node's own timeouts, and two of its
 * events taken over, `connection` (past the cap, a 503 before any parsing) and `upgrade`.
 */
const nodeServer = (
  limits: Required<TransportLimits>,
  refusals: Refusals,
  upgrade: (request: Http.IncomingMessage, socket: Duplex, head: Buffer) => void
): Http.Server => {
  const created = Http.createServer({
    headersTimeout: Math.min(limits.headersTimeoutMillis, limits.requestTimeoutMillis),
    requestTimeout: limits.requestTimeoutMillis,
    keepAliveTimeout: limits.keepAliveTimeoutMillis,
    // Node checks the two timeouts above only this often (default 30 s).
    connectionsCheckingInterval: Math.min(1000, limits.headersTimeoutMillis)
  })
  let open = 0
  const emit = created.emit.bind(created)
  created.emit = ((event: string | symbol, ...args: Array<unknown>): boolean => {
    if (event === "connection") {
      const socket = args[0] as Net.Socket
      if (open >= limits.maxConnections) {
        refusals.note("connections", `over ${limits.maxConnections} open connections`)
        refuseSocket(socket, "503 Service Unavailable", `too many connections (limit ${limits.maxConnections})`)
        return true
      }
      open += 1
      socket.once("close", () => open -= 1)
    } else if (event === "upgrade") {
      upgrade(args[0] as Http.IncomingMessage, args[1] as Duplex, args[2] as Buffer)
      return true
    }
    return emit(event as string, ...args)
  }) as typeof created.emit
  return created
}

export interface Gate {
  readonly limits: Required<TransportLimits>
  readonly refusals: Refusals
  /** A node server with the limits applied; its WebSocket connections go to `sockets`. */
  readonly createServer: () => Http.Server
  /** WebSocket connections on `path`, as a `SocketServer` the RPC socket protocol runs on. */
  readonly sockets: SocketServer.SocketServer["Type"]
  /** The TCP connection under a WebSocket connection of `sockets`. */
  readonly connectionOf: (webSocket: object) => Net.Socket | undefined
  /** Drops a connection whose answer is not taken within the slow-reader timeout. */
  readonly untaken: UntakenAnswers.UntakenAnswers
}
export const Gate = Context.GenericTag<Gate>("converge/DeliveryServer/Gate")

export const layerGate = (limits: TransportLimits, path: string): Layer.Layer<Gate> =>
  Layer.scoped(Gate, makeGate(resolveLimits(limits), path))

const makeGate = (limits: Required<TransportLimits>, path: string) =>
  Effect.gen(function*() {
    const refusals = yield* makeRefusals
    const wss = yield* Effect.acquireRelease(
      Effect.sync(() => new WebSocketServer({ noServer: true, maxPayload: limits.maxBodyBytes })),
      (wss) => Effect.async<void>((resume) => wss.close(() => resume(Effect.void)))
    )
    const onConnection = new Set<(connection: WsConnection) => void>()
    const tcpOfWebSocket = new WeakMap<object, Net.Socket>()
    let server: Http.Server | undefined

    const upgrade = (request: Http.IncomingMessage, socket: Duplex, head: Buffer) => {
      if (new URL(request.url ?? "/", "http://localhost").pathname !== path || onConnection.size === 0) {
        return refuseSocket(socket, "404 Not Found", `no WebSocket endpoint at ${request.url}`)
      }
      wss.handleUpgrade(request, socket, head, (connection) => {
        // After the upgrade: `ws` clears the socket's timeout when it takes it over.
        const tcp = socket as Net.Socket
        tcpOfWebSocket.set(connection, tcp)
        tcp.setTimeout(limits.idleTimeoutMillis)
        tcp.on("timeout", () => {
          refusals.note("idleWebSocket", `no traffic for ${limits.idleTimeoutMillis} ms`)
          tcp.destroy()
        })
        connection.on("error", (error) => {
          if (error.code === "WS_ERR_UNSUPPORTED_MESSAGE_LENGTH") {
            refusals.note("messageTooLarge", `a WebSocket message over ${limits.maxBodyBytes} bytes`)
          }
        })
        for (const listener of onConnection) listener(connection)
      })
    }

    const createServer = () => {
      server = nodeServer(limits, refusals, upgrade)
      return server
    }

    const sockets = SocketServer.SocketServer.of({
      get address(): SocketServer.Address {
        const address = server?.address()
        return typeof address === "object" && address !== null
          ? { _tag: "TcpAddress", hostname: address.address, port: address.port }
          : { _tag: "UnixAddress", path: String(address) }
      },
      run: (handler) =>
        Effect.gen(function*() {
          const runFork = yield* FiberSet.makeRuntime<never>()
          const listener = (connection: WsConnection) =>
            runFork(
              Socket.fromWebSocket(
                Effect.acquireRelease(
                  Effect.succeed(connection as unknown as globalThis.WebSocket),
                  (ws) => Effect.sync(() => ws.close())
                )
              ).pipe(
                Effect.flatMap(handler),
                Effect.catchAllCause((cause) => Effect.logDebug("WebSocket connection failed", cause))
              ) as Effect.Effect<unknown>
            )
          yield* Effect.acquireRelease(
            Effect.sync(() => onConnection.add(listener)),
            () => Effect.sync(() => onConnection.delete(listener))
          )
          return yield* Effect.never
        }).pipe(Effect.scoped)
    })

    const untaken = UntakenAnswers.make(limits.slowReaderTimeoutMillis, (bytes) =>
      refusals.note("slowReader", `an answer not taken for ${limits.slowReaderTimeoutMillis} ms (${bytes} bytes unread)`)
    )
    const connectionOf = (webSocket: object) => tcpOfWebSocket.get(webSocket)
    return { limits, refusals, createServer, sockets, connectionOf, untaken } satisfies Gate
  })
