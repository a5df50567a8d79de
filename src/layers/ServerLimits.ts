/**
 * What bounds a delivery server's calls, around the RPC server's protocol: calls and
 * subscriptions in flight per connection and per HTTP connection, and answers for readers
 * that are behind (HTTP streams wait for their reader; a WebSocket's reads are refused rather
 * than held). The node server and its connection-level limits are the gate's (`ServerGate`).
 */
import type { Rpc, RpcGroup, RpcMessage } from "@effect/rpc"
import { RpcSchema, RpcServer } from "@effect/rpc"
import { Socket } from "@effect/platform"
import { Effect, FiberRef, Layer, Mailbox, Option, type Scope } from "effect"
import type * as Http from "node:http"
import type * as Net from "node:net"

import { failedAnswer } from "../domain/DeliveryRpcs.ts"
import { DeliveryError } from "../domain/Errors.ts"
import { isShortRequestId } from "./RpcRequestIds.ts"
import { Gate } from "./ServerGate.ts"
import {
  type BufferedSocket,
  drained,
  MAX_REFUSING_SOCKET_BYTES,
  MAX_UNREAD_SOCKET_BYTES,
  socketTurn
} from "./SlowReaders.ts"
import type { TransportLimits } from "./TransportLimits.ts"

export { boundedRequestIds, MAX_REQUEST_ID_DIGITS } from "./RpcRequestIds.ts"
export { Gate, layerGate, type Refusals, resolveLimits } from "./ServerGate.ts"
export { DEFAULT_TRANSPORT_LIMITS, type TransportLimits } from "./TransportLimits.ts"

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
const refusal = (requestId: string, reason: RefusalReason, detail: string): RpcMessage.FromServerEncoded =>
  failedAnswer(requestId, new DeliveryError({ reason, retryable: reason === "LimitExceeded", detail }))

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
  /** The running calls that read (not write): their answers may be refused rather than held. */
  readonly reads: Set<string>
  /**
   * Streams ended by a refusal whose own end is still to come (they were interrupted): they
   * keep their slot until it comes, so their id cannot be taken again meanwhile, and the rest
   * of what they send is dropped, their client having been told.
   */
  readonly refusedStreams: Set<string>
  streams: number
  readonly response: Http.ServerResponse | undefined
  /** For an HTTP request: its connection's count. */
  readonly connection: HttpConnectionCalls | undefined
  readonly socket: BufferedSocket | undefined
  /** The TCP connection its answers go out on (HTTP or WebSocket), watched for answers not taken. */
  readonly tcp: Net.Socket | undefined
  /**
   * A WebSocket's answers take turns from `socketTurn` to their write. Checked side by side,
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

/** What the answer paths need of the guard around them. */
interface Guard {
  readonly inner: RpcServer.Protocol["Type"]
  readonly gate: Gate
  readonly clients: Map<number, ClientState>
  readonly writeRequest: (clientId: number, message: RpcMessage.FromClientEncoded) => Effect.Effect<void>
  /** Frees a call's slot once its answer is handed on (its end), or it is refused. */
  readonly settle: (clientId: number, requestId: string) => void
}

/**
 * A client whose response is gone: its calls are interrupted rather than left to fill the
 * transport's unbounded buffer with chunks nobody will read.
 */
const cutOff = ({ clients, writeRequest }: Guard, clientId: number) =>
  Effect.forEach(
    Array.from(clients.get(clientId)?.running.keys() ?? []),
    (requestId) => writeRequest(clientId, { _tag: "Interrupt", requestId }),
    { discard: true }
  )

/**
 * A refusal written to a client: watched like any answer (`UntakenAnswers`), and on a WebSocket
 * past `MAX_REFUSING_SOCKET_BYTES` the connection dropped instead. Written unwatched, refusals
 * were all a reader that takes nothing got once behind, and it was never cut off.
 */
const sendRefusal = ({ gate, inner }: Guard, clientId: number, state: ClientState, answer: RpcMessage.FromServerEncoded) =>
  Effect.suspend(() => {
    const { socket, tcp } = state
    if (tcp === undefined) return inner.send(clientId, answer)
    if (socket !== undefined && socket.bufferedAmount > MAX_REFUSING_SOCKET_BYTES) {
      gate.refusals.note("slowReader", `a WebSocket holding ${socket.bufferedAmount} bytes unread, still sending`)
      tcp.destroy()
      return Effect.void
    }
    return Effect.zipLeft(inner.send(clientId, answer), Effect.sync(() => gate.untaken.written(tcp)))
  })

/**
 * An answer in a WebSocket's turn (`socketTurn`): written, or a read's answer refused at once
 * while the reader is behind (a stream is ended, as its client was told: it resubscribes from its
 * cursor), or the client's calls cut off once its socket is gone.
 */
const answerOnSocket = (
  guard: Guard,
  clientId: number,
  socket: BufferedSocket,
  state: ClientState,
  response: RpcMessage.FromServerEncoded,
  forward: Effect.Effect<void>
): Effect.Effect<void> =>
  Effect.suspend(() => {
    const requestId = response._tag === "Exit" || response._tag === "Chunk" ? response.requestId : undefined
    const turn = socketTurn(socket, requestId !== undefined && state.reads.has(requestId))
    if (turn === "write") return forward
    if (turn === "gone" || requestId === undefined) {
      return Effect.zipRight(
        Effect.sync(() => requestId !== undefined && guard.settle(clientId, requestId)),
        cutOff(guard, clientId)
      )
    }
    const detail = `the connection holds ${socket.bufferedAmount} bytes its reader has not taken: read them, then ask again`
    guard.gate.refusals.note("slowReader", detail)
    const refused = sendRefusal(guard, clientId, state, refusal(requestId, "LimitExceeded", detail))
    if (response._tag === "Exit") return Effect.zipRight(refused, Effect.sync(() => guard.settle(clientId, requestId)))
    state.refusedStreams.add(requestId)
    return Effect.zipRight(refused, guard.writeRequest(clientId, { _tag: "Interrupt", requestId }))
  })

/**
 * Hands an answer on. A call's slot is held until then: a reader that is behind gets no more
 * calls running (each holding its answer) than the in-flight cap. On a WebSocket, answers take
 * turns (`answerOnSocket`); on an HTTP stream, each waits until the response can take more.
 */
const answer = (
  guard: Guard,
  clientId: number,
  response: RpcMessage.FromServerEncoded,
  transferables: Parameters<RpcServer.Protocol["Type"]["send"]>[2]
): Effect.Effect<void> => {
  const { gate, inner, settle } = guard
  const state = guard.clients.get(clientId)
  const settled = response._tag === "Exit" ? Effect.sync(() => settle(clientId, response.requestId)) : Effect.void
  if ((response._tag === "Exit" || response._tag === "Chunk") && state?.refusedStreams.has(response.requestId)) {
    return settled
  }
  const tcp = state?.tcp
  const sent = inner.send(clientId, response, transferables)
  const forward = Effect.zipRight(
    tcp === undefined ? sent : Effect.zipLeft(sent, Effect.sync(() => gate.untaken.written(tcp))),
    settled
  )
  if (state?.socket !== undefined) {
    return state.turn.withPermits(1)(answerOnSocket(guard, clientId, state.socket, state, response, forward))
  }
  if (state?.response === undefined) return forward
  return Effect.flatMap(
    drained(state.response, gate.limits.slowReaderTimeoutMillis, gate.refusals),
    (writable) => (writable ? forward : Effect.zipRight(settled, cutOff(guard, clientId)))
  ).pipe(
    // The wait can be interrupted (the call interrupted by its client): its slot is freed all the same.
    Effect.onInterrupt(() => settled)
  )
}

/** Each HTTP connection's count of calls, shared by the requests on it. */
const httpConnectionCalls = () => {
  const byConnection = new WeakMap<Net.Socket, HttpConnectionCalls>()
  return (response: Http.ServerResponse | undefined) => {
    const socket = response?.req.socket
    if (socket === undefined) return undefined
    const known = byConnection.get(socket)
    if (known !== undefined) return known
    const created: HttpConnectionCalls = { calls: 0 }
    byConnection.set(socket, created)
    return created
  }
}

/** A client's state at its first request: where its answers go (an HTTP response or a WebSocket). */
const newClientState = (gate: Gate, connectionOf: ReturnType<typeof httpConnectionCalls>) =>
  Effect.gen(function*() {
    // A WebSocket client's requests run where @effect/platform provides its socket.
    const webSocket = Option.getOrUndefined(yield* Effect.serviceOption(Socket.WebSocket))
    const response = yield* FiberRef.get(currentHttpResponse)
    const state: ClientState = {
      running: new Map(),
      reads: new Set(),
      refusedStreams: new Set(),
      streams: 0,
      response,
      connection: connectionOf(response),
      socket: webSocket as unknown as BufferedSocket | undefined,
      tcp: response?.req.socket ?? (webSocket === undefined ? undefined : gate.connectionOf(webSocket)),
      turn: yield* Effect.makeSemaphore(1)
    }
    return state
  })

/**
 * Wraps an RPC server protocol: a request past its connection's caps is answered at once with
 * a typed, retryable `LimitExceeded` (one under an id in flight, or with malformed headers, with
 * `InvalidRequest`) and never reaches the server; an answer on an HTTP stream waits until the
 * reader has taken what came before it (cut off after the slow-reader timeout); a WebSocket
 * holding more than `MAX_UNREAD_SOCKET_BYTES` unread gets its reads' answers and its new requests
 * refused; every answer not taken within the timeout drops its connection (`UntakenAnswers`).
 * `kinds` are the server's RPCs, `writes` those that change what it stores.
 */
export const guardProtocol = (
  inner: RpcServer.Protocol["Type"],
  gate: Gate,
  kinds: RpcKinds,
  writes: ReadonlySet<string>
): Effect.Effect<RpcServer.Protocol["Type"], never, Scope.Scope> =>
  RpcServer.Protocol.make((writeRequest) =>
    Effect.gen(function*() {
      const { limits, refusals } = gate
      const clients = new Map<number, ClientState>()
      const connectionOf = httpConnectionCalls()
      const settle = (clientId: number, requestId: string) => {
        const state = clients.get(clientId)
        const isStream = state?.running.get(requestId)
        if (state === undefined || isStream === undefined) return
        state.running.delete(requestId)
        state.reads.delete(requestId)
        state.refusedStreams.delete(requestId)
        if (isStream) state.streams -= 1
        if (state.connection !== undefined) state.connection.calls -= 1
      }
      const guard: Guard = { inner, gate, clients, writeRequest, settle }
      /** A client gone: the calls it still counted leave its HTTP connection's count. */
      const forget = (clientId: number) => {
        const state = clients.get(clientId)
        if (state?.connection !== undefined) state.connection.calls -= state.running.size
        clients.delete(clientId)
      }

      const admit = (clientId: number, message: RpcMessage.FromClientEncoded) =>
        Effect.gen(function*() {
          if (message._tag !== "Request") return yield* writeRequest(clientId, message)
          let state = clients.get(clientId)
          if (state === undefined) {
            state = yield* newClientState(gate, connectionOf)
            clients.set(clientId, state)
          }
          if (state.socket !== undefined && state.socket.bufferedAmount > MAX_UNREAD_SOCKET_BYTES) {
            const detail = `the connection holds ${state.socket.bufferedAmount} bytes its reader has not taken`
            refusals.note("slowReader", detail)
            return yield* sendRefusal(guard, clientId, state, refusal(message.id, "LimitExceeded", detail))
          }
          const decided = admission(state, message, kinds, limits)
          if (decided._tag === "Refuse") {
            refusals.note(decided.kind, decided.detail)
            return yield* sendRefusal(guard, clientId, state, refusal(message.id, decided.reason, decided.detail))
          }
          if (decided._tag === "Count") {
            state.running.set(decided.id, decided.isStream)
            if (!writes.has(message.tag)) state.reads.add(decided.id)
            if (decided.isStream) state.streams += 1
            if (state.connection !== undefined) state.connection.calls += 1
          }
          return yield* writeRequest(clientId, message)
        })

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

      return {
        disconnects,
        send: (clientId, response, transferables) => answer(guard, clientId, response, transferables),
        end: (clientId) => Effect.zipRight(Effect.sync(() => forget(clientId)), inner.end(clientId)),
        clientIds: inner.clientIds,
        initialMessage: inner.initialMessage,
        supportsAck: inner.supportsAck,
        supportsTransferables: inner.supportsTransferables,
        supportsSpanPropagation: inner.supportsSpanPropagation
      }
    })
  )

/**
 * A server protocol layer with `guardProtocol` around it, for a server of `group` whose RPCs
 * named in `writes` change what it stores (their answers are never refused after the fact).
 */
export const guarded = <Rpcs extends Rpc.Any, E, R>(
  group: RpcGroup.RpcGroup<Rpcs>,
  writes: ReadonlySet<Rpc.Tag<Rpcs>>,
  inner: Layer.Layer<RpcServer.Protocol, E, R>
): Layer.Layer<RpcServer.Protocol, E, R | Gate> =>
  Layer.scoped(
    RpcServer.Protocol,
    Effect.gen(function*() {
      return yield* guardProtocol(yield* RpcServer.Protocol, yield* Gate, rpcKinds(group), writes)
    })
  ).pipe(Layer.provide(inner))
