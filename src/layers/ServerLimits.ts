/**
 * What bounds a delivery server's transport, in front of the RPC layer: connections per
 * server, request and idle timeouts, the WebSocket message size (refused from the frame
 * header, before it is buffered), calls and subscriptions in flight per connection, and
 * HTTP stream responses that wait for their reader. Every refusal is counted by class and
 * logged at Info at most once per class and interval, never once per request.
 *
 * Node's `http.Server` is used as it is, except that two of its events are taken over:
 * `connection` (to refuse past the cap with a 503 before any parsing) and `upgrade` (served
 * by our own `ws` server, which has a `maxPayload`; the platform's has a fixed 100 MiB one).
 */
import type { Rpc, RpcGroup, RpcMessage } from "@effect/rpc"
import { RpcSchema, RpcServer } from "@effect/rpc"
import { Socket, SocketServer } from "@effect/platform"
import { Context, Effect, FiberRef, FiberSet, Layer, Mailbox, Option, type Scope } from "effect"
import * as Http from "node:http"
import { createRequire } from "node:module"
import type * as Net from "node:net"
import type { Duplex } from "node:stream"

import { isShortRequestId } from "./RpcRequestIds.ts"
import { type BufferedSocket, drained, MAX_UNREAD_SOCKET_BYTES, socketDrained } from "./SlowReaders.ts"
import { DEFAULT_TRANSPORT_LIMITS, type TransportLimits } from "./TransportLimits.ts"
import * as UntakenAnswers from "./UntakenAnswers.ts"

export { boundedRequestIds, MAX_REQUEST_ID_DIGITS } from "./RpcRequestIds.ts"
export { DEFAULT_TRANSPORT_LIMITS, type TransportLimits } from "./TransportLimits.ts"

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
      server = created
      return created
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

// ---- calls in flight, and readers that do not read ----

/** The RPCs a server answers, by tag: whether each answers with a stream. */
export type RpcKinds = ReadonlyMap<string, boolean>

export const rpcKinds = <R extends Rpc.Any>(group: RpcGroup.RpcGroup<R>): RpcKinds =>
  new Map(Array.from(group.requests, ([tag, rpc]) => {
    const { successSchema } = rpc as unknown as Rpc.AnyWithProps
    return [tag, RpcSchema.isStreamSchema(successSchema)]
  }))

/**
 * A request id as the RPC server writes it in its answers: it parses ids with `BigInt`, so
 * "007" is answered as "7". Undefined for an id that is not a short decimal (refused before
 * this by `boundedRequestIds`).
 */
const answeredId = (id: unknown): string | undefined =>
  !isShortRequestId(id) ? undefined : typeof id === "bigint" ? String(id) : String(id).replace(/^0+(?=.)/, "")

/**
 * The current HTTP request's response: set by the HTTP guard around the RPC app, read when
 * the request's RPC messages are admitted (on the same fiber).
 */
export const currentHttpResponse = FiberRef.unsafeMake<Http.ServerResponse | undefined>(undefined)

type RefusalReason = "LimitExceeded" | "InvalidRequest"

/** An RPC exit failing with a `DeliveryError`, as the client decodes it. */
const refusal = (requestId: string, reason: RefusalReason, detail: string): RpcMessage.FromServerEncoded => ({
  _tag: "Exit",
  requestId,
  exit: {
    _tag: "Failure",
    cause: {
      _tag: "Fail",
      error: { _tag: "DeliveryError", reason, retryable: reason === "LimitExceeded", detail }
    }
  }
})

/**
 * Calls at once on one HTTP connection, across its requests (pipelined POSTs included): each
 * running, or holding an answer its reader has not taken. @effect/rpc collects a POST's answers
 * before its response starts, so a POST of 60 queries never read held 690-953 MiB. An honest
 * client sends one call per POST and one POST at a time on a connection (a subscription holds
 * its connection), so this is a WebSocket's in-flight cap for the one reader HTTP allows.
 */
export const MAX_CALLS_PER_HTTP_CONNECTION = 4

/** What one HTTP connection has at once, shared by its requests. */
interface HttpConnectionCalls {
  calls: number
}

interface ClientState {
  /** Request id -> whether it is a stream. */
  readonly running: Map<string, boolean>
  streams: number
  readonly response: Http.ServerResponse | undefined
  /** For an HTTP request: its connection's count. */
  readonly connection: HttpConnectionCalls | undefined
  readonly socket: BufferedSocket | undefined
  /** The TCP connection its answers go out on (HTTP or WebSocket), watched for answers not taken. */
  readonly tcp: Net.Socket | undefined
  /**
   * A WebSocket's answers take turns from `socketDrained` to their write. Checked side by side,
   * every answer saw the socket empty (a write comes after its encoding, and fibers yield in
   * between), so all were written (61 MB for a reader that took nothing) and none was left
   * waiting for the slow-reader timeout to cut the reader off.
   */
  readonly turn: Effect.Semaphore
}

/**
 * Headers as the RPC server reads them: `[name, value]` pairs of strings. Anything else made it
 * throw while taking the request: the WebSocket closed (1005) with every call on it, an HTTP POST
 * got an empty 500.
 */
const isHeaderList = (headers: unknown): boolean =>
  Array.isArray(headers) &&
  headers.every((pair) => Array.isArray(pair) && pair.length === 2 && typeof pair[0] === "string" && typeof pair[1] === "string")

/** What becomes of a request: counted while it runs, refused at once, or passed on uncounted. */
type Admission =
  | { readonly _tag: "Count"; readonly id: string; readonly isStream: boolean }
  | { readonly _tag: "Refuse"; readonly kind: string; readonly reason: RefusalReason; readonly detail: string }
  | { readonly _tag: "Pass" }

/**
 * Only a request the server will run is counted, under the id its `Exit` will carry: one for
 * an RPC it does not have, or with an id it cannot read, it answers at once with a `Defect`
 * that names no request, which would never free the slot. A second request under an id in
 * flight is refused: the server would queue it behind the first, uncounted, and the two
 * answers under one id could not tell which call ended.
 */
const admission = (
  state: ClientState,
  message: RpcMessage.RequestEncoded,
  kinds: RpcKinds,
  limits: Required<TransportLimits>
): Admission => {
  const isStream = typeof message.tag === "string" ? kinds.get(message.tag) : undefined
  const id = answeredId(message.id)
  if (isStream === undefined || id === undefined) return { _tag: "Pass" }
  const refuse = (kind: string, reason: RefusalReason, detail: string): Admission => ({ _tag: "Refuse", kind, reason, detail })
  if (!isHeaderList(message.headers)) {
    return refuse("malformedHeaders", "InvalidRequest", "malformed request: headers must be a list of [name, value] string pairs")
  }
  if (state.running.has(id)) {
    return refuse("duplicateId", "InvalidRequest", `request id ${id} is already in flight on this connection`)
  }
  const { maxInFlightPerConnection, maxSubscriptionsPerConnection } = limits
  if (state.running.size >= maxInFlightPerConnection) {
    return refuse("inFlight", "LimitExceeded", `more than ${maxInFlightPerConnection} calls in flight on this connection`)
  }
  if (isStream && state.streams >= maxSubscriptionsPerConnection) {
    return refuse("subscriptions", "LimitExceeded", `more than ${maxSubscriptionsPerConnection} subscriptions on this connection`)
  }
  if (state.connection !== undefined && state.connection.calls >= MAX_CALLS_PER_HTTP_CONNECTION) {
    return refuse(
      "httpConnection",
      "LimitExceeded",
      `more than ${MAX_CALLS_PER_HTTP_CONNECTION} calls at once on this HTTP connection: send one call per request`
    )
  }
  return { _tag: "Count", id, isStream }
}

/**
 * Wraps an RPC server protocol: a request past its connection's caps is answered at once with
 * a typed, retryable `LimitExceeded` (one under an id in flight, or with malformed headers, with
 * `InvalidRequest`) and never reaches the server; and an answer (an exit or a stream chunk) waits until the
 * reader has taken what came before it: an HTTP response's buffer drained, a WebSocket holding at most
 * `MAX_UNREAD_SOCKET_BYTES` unread. A reader that stays behind for the slow-reader timeout is cut off, and a
 * WebSocket that is behind gets its new requests refused. `kinds` are the server's RPCs.
 */
export const guardProtocol = (
  inner: RpcServer.Protocol["Type"],
  gate: Gate,
  kinds: RpcKinds
): Effect.Effect<RpcServer.Protocol["Type"], never, Scope.Scope> =>
  RpcServer.Protocol.make((writeRequest) =>
    Effect.gen(function*() {
      const { limits, refusals } = gate
      const clients = new Map<number, ClientState>()
      const httpConnections = new WeakMap<Net.Socket, HttpConnectionCalls>()
      const connectionOf = (response: Http.ServerResponse | undefined) => {
        const socket = response?.req.socket
        if (socket === undefined) return undefined
        const known = httpConnections.get(socket)
        if (known !== undefined) return known
        const created: HttpConnectionCalls = { calls: 0 }
        httpConnections.set(socket, created)
        return created
      }

      const admit = (clientId: number, message: RpcMessage.FromClientEncoded) =>
        Effect.gen(function*() {
          if (message._tag !== "Request") return yield* writeRequest(clientId, message)
          let state = clients.get(clientId)
          if (state === undefined) {
            // A WebSocket client's requests run where @effect/platform provides its socket.
            const socket = yield* Effect.serviceOption(Socket.WebSocket)
            const response = yield* FiberRef.get(currentHttpResponse)
            const webSocket = Option.getOrUndefined(socket)
            state = {
              running: new Map(),
              streams: 0,
              response,
              connection: connectionOf(response),
              socket: webSocket as unknown as BufferedSocket | undefined,
              tcp: response?.req.socket ?? (webSocket === undefined ? undefined : gate.connectionOf(webSocket)),
              turn: yield* Effect.makeSemaphore(1)
            }
            clients.set(clientId, state)
          }
          if (state.socket !== undefined && state.socket.bufferedAmount > MAX_UNREAD_SOCKET_BYTES) {
            const detail = `the connection holds ${state.socket.bufferedAmount} bytes its reader has not taken`
            refusals.note("slowReader", detail)
            return yield* inner.send(clientId, refusal(message.id, "LimitExceeded", detail))
          }
          const decided = admission(state, message, kinds, limits)
          if (decided._tag === "Refuse") {
            refusals.note(decided.kind, decided.detail)
            return yield* inner.send(clientId, refusal(message.id, decided.reason, decided.detail))
          }
          if (decided._tag === "Count") {
            state.running.set(decided.id, decided.isStream)
            if (decided.isStream) state.streams += 1
            if (state.connection !== undefined) state.connection.calls += 1
          }
          return yield* writeRequest(clientId, message)
        })

      const settle = (clientId: number, requestId: string) => {
        const state = clients.get(clientId)
        const isStream = state?.running.get(requestId)
        if (state === undefined || isStream === undefined) return
        state.running.delete(requestId)
        if (isStream) state.streams -= 1
        if (state.connection !== undefined) state.connection.calls -= 1
      }
      /** A client gone: the calls it still counted leave its HTTP connection's count. */
      const forget = (clientId: number) => {
        const state = clients.get(clientId)
        if (state?.connection !== undefined) state.connection.calls -= state.running.size
        clients.delete(clientId)
      }

      yield* inner.run(admit).pipe(Effect.forkScoped)
      // The server learns of disconnects from this mailbox; so do we, to forget the client.
      const disconnects = yield* Mailbox.make<number>()
      yield* inner.disconnects.take.pipe(
        Effect.tap((clientId) => Effect.sync(() => forget(clientId))),
        Effect.flatMap((clientId) => disconnects.offer(clientId)),
        Effect.forever,
        Effect.ignore,
        Effect.forkScoped
      )
      /**
       * A client whose response is gone: its calls are interrupted rather than left to fill
       * the transport's unbounded buffer with chunks nobody will read.
       */
      const cutOff = (clientId: number) =>
        Effect.forEach(
          Array.from(clients.get(clientId)?.running.keys() ?? []),
          (requestId) => writeRequest(clientId, { _tag: "Interrupt", requestId }),
          { discard: true }
        )

      return {
        disconnects,
        send: (clientId, response, transferables) => {
          const state = clients.get(clientId)
          // A call's slot is held until its answer is handed on: a reader that is behind gets
          // no more calls running (each holding its answer) than the in-flight cap.
          const settled = response._tag === "Exit"
            ? Effect.sync(() => settle(clientId, response.requestId))
            : Effect.void
          const tcp = state?.tcp
          const sent = inner.send(clientId, response, transferables)
          const forward = Effect.zipRight(
            tcp === undefined ? sent : Effect.zipLeft(sent, Effect.sync(() => gate.untaken.written(tcp))),
            settled
          )
          const waited = state?.response !== undefined
            ? drained(state.response, limits.slowReaderTimeoutMillis, refusals)
            : state?.socket !== undefined
            ? socketDrained(state.socket, limits.slowReaderTimeoutMillis, refusals)
            : undefined
          if (waited === undefined) return forward
          const written = Effect.flatMap(waited, (writable) => (writable ? Effect.as(forward, true) : Effect.succeed(false)))
          return Effect.flatMap(
            state?.socket !== undefined ? state.turn.withPermits(1)(written) : written,
            (wrote) => (wrote ? Effect.void : Effect.zipRight(settled, cutOff(clientId)))
          ).pipe(
            // The wait can be interrupted (the call interrupted by its client): its slot is freed all the same.
            Effect.onInterrupt(() => settled)
          )
        },
        end: (clientId) => Effect.zipRight(Effect.sync(() => forget(clientId)), inner.end(clientId)),
        clientIds: inner.clientIds,
        initialMessage: inner.initialMessage,
        supportsAck: inner.supportsAck,
        supportsTransferables: inner.supportsTransferables,
        supportsSpanPropagation: inner.supportsSpanPropagation
      }
    })
  )

/** A server protocol layer with `guardProtocol` around it, for a server of `group`. */
export const guarded = <Rpcs extends Rpc.Any, E, R>(
  group: RpcGroup.RpcGroup<Rpcs>,
  inner: Layer.Layer<RpcServer.Protocol, E, R>
): Layer.Layer<RpcServer.Protocol, E, R | Gate> =>
  Layer.scoped(
    RpcServer.Protocol,
    Effect.gen(function*() {
      return yield* guardProtocol(yield* RpcServer.Protocol, yield* Gate, rpcKinds(group))
    })
  ).pipe(Layer.provide(inner))
