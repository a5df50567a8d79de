/**
 * The XMTP V3 face of `converge serve`: `xmtp.mls.api.v1.MlsApi` and
 * `xmtp.identity.api.v1.IdentityApi` as gRPC over HTTP/2 cleartext (what libxmtp's tonic
 * client speaks for `http://` URLs), on `@grpc/grpc-js` with `@xmtp/proto`'s codecs.
 *
 * The transport keeps the Converge face's bounds: this module owns the TCP listener and hands
 * each accepted socket to grpc-js (a connection injector), refusing past `maxConnections`;
 * message size, calls in flight per connection (HTTP/2 concurrent streams), subscriptions per
 * connection, idle sockets, unary deadlines and readers that stop reading are all bounded.
 * A refused or failed call gets a gRPC status with a reason; nothing is stored for it.
 */
import * as Grpc from "@grpc/grpc-js"
import { Cause, Effect, Exit, Fiber, Option, Runtime, type Scope, Stream } from "effect"
import * as Http2 from "node:http2"
import * as Net from "node:net"
import { resolveLimits, type TransportLimits } from "../layers/ServerLimits.ts"
import { IDENTITY_API, MLS_API, RefusedRequest } from "./Proto.ts"
import * as IdentityApi from "./XmtpIdentityApi.ts"
import * as MlsApi from "./XmtpMlsApi.ts"
import type { Unary } from "./XmtpMlsApi.ts"
import { Code, DEFAULT_XMTP_LIMITS, type XmtpLimits, XmtpStatus } from "./XmtpStatus.ts"
import type { XmtpStore } from "./XmtpStore.ts"
import * as Subscriptions from "./XmtpSubscriptions.ts"
import type { Streaming } from "./XmtpSubscriptions.ts"

export interface XmtpServerOptions extends TransportLimits, Partial<XmtpLimits> {
  readonly port: number
  readonly host: string
}


/**
 * Bytes of unary answers not yet taken by HTTP/2 that one connection may hold; past it new calls and
 * new answers are refused. Four 4 MiB pages: the Converge face's 4 calls at once per connection.
 */
export const MAX_UNREAD_ANSWER_BYTES_PER_CONNECTION = 16 * 1024 * 1024

/** How deep grpc-js may wrap a call (handler call, our interceptors) before its HTTP/2 stream. */
const MAX_CALL_WRAPPERS = 8

/** The slow-reader cut: RST_STREAM ENHANCE_YOUR_CALM, which gRPC clients read as RESOURCE_EXHAUSTED. */
const CUT = Http2.constants.NGHTTP2_ENHANCE_YOUR_CALM

type Wrapped = { readonly stream?: unknown; readonly nextCall?: unknown; readonly call?: unknown }

/**
 * The HTTP/2 stream under a grpc-js call. grpc-js keeps it in private fields: a handler's call
 * wraps (`call`) the interceptors' calls, each wrapping the next (`nextCall`), down to the one
 * holding `stream`. Undefined in another grpc-js version (then nothing is reset or counted).
 */
const http2StreamOf = (call: unknown): Http2.ServerHttp2Stream | undefined => {
  let current = call as Wrapped | undefined
  for (let depth = 0; current !== undefined && current !== null && depth < MAX_CALL_WRAPPERS; depth++) {
    const stream = current.stream as Partial<Http2.ServerHttp2Stream> | undefined
    if (typeof stream?.close === "function" && typeof stream.writableLength === "number") {
      return stream as Http2.ServerHttp2Stream
    }
    current = (current.nextCall ?? current.call) as Wrapped | undefined
  }
  return undefined
}

/**
 * Resets the call's HTTP/2 stream (RST_STREAM `code`). A status is a frame behind what is queued:
 * to a reader that reads nothing it never arrives, and the queued answer stays held with the
 * stream's slot. A reset drops the queue at once.
 */
const resetStream = (call: unknown, code: number): boolean => {
  const stream = http2StreamOf(call)
  if (stream === undefined) return false
  if (!stream.closed) stream.close(code)
  return true
}

const statusOf = (cause: Cause.Cause<XmtpStatus>): Partial<Grpc.StatusObject> => {
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) return { code: failure.value.code, details: failure.value.reason }
  if (Cause.isInterruptedOnly(cause)) return { code: Grpc.status.CANCELLED, details: "cancelled" }
  return { code: Code.Internal, details: "internal error" }
}

/**
 * Writes `message` and waits until HTTP/2 has taken it (its flow control holds it while the
 * reader reads nothing), or gives up after `millis` (false). One message in flight per
 * subscription: writing on until the stream's buffer says "drain" queued 16 serialized messages
 * (16 MiB of 1 MiB messages) per subscription of a reader that reads nothing. The callback is
 * the HTTP/2 stream's own write callback, called once nghttp2 took the bytes (or the stream
 * closed, hence the `destroyed` check), not when grpc-js queued them.
 */
const written = (call: Grpc.ServerWritableStream<unknown, unknown>, message: unknown, millis: number) =>
  Effect.async<boolean>((resume) => {
    let settled = false
    const done = (ok: boolean) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      call.off("close", closed)
      resume(Effect.succeed(ok))
    }
    const closed = () => done(false)
    const timer = setTimeout(() => done(false), millis)
    call.once("close", closed)
    call.write(message, () => done(!call.destroyed))
    return Effect.sync(() => {
      settled = true
      clearTimeout(timer)
      call.off("close", closed)
    })
  })

/** Per HTTP/2 connection, the bytes of its unary answers still queued behind its flow control. */
type UnreadAnswers = WeakMap<Http2.ServerHttp2Session, number>

const unreadRefusal = {
  code: Code.ResourceExhausted,
  details: `more than ${MAX_UNREAD_ANSWER_BYTES_PER_CONNECTION} bytes of answers on this connection are not yet read`
}

/** Whether the connection of `stream` already holds its share of unread answers. */
const overBudget = (unread: UnreadAnswers, stream: Http2.ServerHttp2Stream) =>
  (unread.get(stream.session as Http2.ServerHttp2Session) ?? 0) >= MAX_UNREAD_ANSWER_BYTES_PER_CONNECTION

/**
 * Answers a unary call, bounding what a reader that does not read holds. grpc-js queues a whole
 * serialized answer behind HTTP/2 flow control with no deadline, and a connection with open
 * streams is never idle: 64 calls on each of 2 connections that opened no window held 1.9 GiB
 * forever. Here a connection whose queued answers reach `MAX_UNREAD_ANSWER_BYTES_PER_CONNECTION`
 * gets RESOURCE_EXHAUSTED instead of more (no headers were sent: a trailers-only response,
 * which flow control does not hold), and an answer not taken within `millis` has its stream reset.
 */
const answer = (call: unknown, callback: Grpc.sendUnaryData<unknown>, value: unknown, unread: UnreadAnswers, millis: number) => {
  const stream = http2StreamOf(call)
  if (stream === undefined) return callback(null, value)
  const session = stream.session as Http2.ServerHttp2Session
  if (overBudget(unread, stream)) return callback(unreadRefusal, null)
  const before = stream.writableLength
  callback(null, value)
  // grpc-js serializes and writes at once: what the stream's queue grew by is this answer.
  const held = stream.writableLength - before
  if (held <= 0 || stream.closed) return
  unread.set(session, (unread.get(session) ?? 0) + held)
  const timer = setTimeout(() => stream.closed || stream.close(CUT), millis)
  // A unary stream closes once its answer and status are sent (or it is reset).
  stream.once("close", () => {
    clearTimeout(timer)
    unread.set(session, (unread.get(session) ?? 0) - held)
  })
}

const makeHandlers = (
  runtime: Runtime.Runtime<XmtpStore>,
  limits: Required<TransportLimits>,
  subscriptionsPerPeer: Map<string, number>,
  unread: UnreadAnswers
) => {
  const unary = (name: string, handler: Unary): Grpc.handleUnaryCall<unknown, unknown> => (call, callback) => {
    if (call.request instanceof RefusedRequest) return callback({ code: Code.ResourceExhausted, details: call.request.reason }, null)
    // Refused before the work: the answer would be refused anyway.
    const stream = http2StreamOf(call)
    if (stream !== undefined && overBudget(unread, stream)) return callback(unreadRefusal, null)
    const effect = (handler(call.request as never) as Effect.Effect<unknown, XmtpStatus, XmtpStore>).pipe(
      Effect.timeoutFail({
        duration: limits.requestTimeoutMillis,
        onTimeout: () => new XmtpStatus({ code: Grpc.status.DEADLINE_EXCEEDED, reason: `${name} took longer than ${limits.requestTimeoutMillis} ms` })
      }),
      // A defect is ours: logged, and answered INTERNAL without its details.
      Effect.tapErrorCause((cause) => Cause.isDie(cause) ? Effect.logError(`xmtp: ${name} failed`, cause) : Effect.void),
      Effect.annotateLogs({ rpc: name })
    )
    const fiber = Runtime.runFork(runtime)(effect)
    call.once("cancelled", () => Runtime.runFork(runtime)(Fiber.interrupt(fiber)))
    fiber.addObserver((exit) =>
      Exit.isSuccess(exit)
        ? answer(call, callback, exit.value, unread, limits.slowReaderTimeoutMillis)
        : callback(statusOf(exit.cause), null))
  }

  const streaming = (name: string, handler: Streaming): Grpc.handleServerStreamingCall<unknown, unknown> => (call) => {
    // Refusals go before any headers: a trailers-only response, which a reader's flow control does not hold.
    if (call.request instanceof RefusedRequest) {
      call.emit("error", { code: Code.ResourceExhausted, details: call.request.reason })
      return
    }
    const peer = call.getPeer()
    const open = subscriptionsPerPeer.get(peer) ?? 0
    if (open >= limits.maxSubscriptionsPerConnection) {
      call.emit("error", {
        code: Code.ResourceExhausted,
        details: `more than ${limits.maxSubscriptionsPerConnection} subscriptions on this connection`
      })
      return
    }
    subscriptionsPerPeer.set(peer, open + 1)
    // node-go sends headers at once: tonic's client waits for them before the stream counts as open.
    const headers = new Grpc.Metadata()
    headers.set("subscribed", "true")
    call.sendMetadata(headers)
    const slowReader = new XmtpStatus({ code: Code.ResourceExhausted, reason: "the reader did not keep up" })
    const run = Stream.runForEach(
      handler(call.request as never) as Stream.Stream<unknown, XmtpStatus, XmtpStore>,
      (message) =>
        Effect.flatMap(written(call, message, limits.slowReaderTimeoutMillis), (ok) => ok ? Effect.void : Effect.fail(slowReader))
    ).pipe(Effect.annotateLogs({ rpc: name }))
    const isCut = (cause: Cause.Cause<XmtpStatus>) => Option.getOrUndefined(Cause.failureOption(cause)) === slowReader
    const fiber = Runtime.runFork(runtime)(run)
    const stop = () => Runtime.runFork(runtime)(Fiber.interrupt(fiber))
    call.once("cancelled", stop)
    call.once("close", stop)
    fiber.addObserver((exit) => {
      const left = (subscriptionsPerPeer.get(peer) ?? 1) - 1
      if (left <= 0) subscriptionsPerPeer.delete(peer)
      else subscriptionsPerPeer.set(peer, left)
      if (call.cancelled || call.destroyed) return
      if (Exit.isSuccess(exit)) call.end()
      // Its status would wait behind the unread message forever: reset instead (read as RESOURCE_EXHAUSTED).
      else if (!(isCut(exit.cause) && resetStream(call, CUT))) call.emit("error", statusOf(exit.cause))
    })
  }
  return { unary, streaming }
}

/**
 * Ends a call whose request has not fully arrived (half-closed) within `millis`. grpc-js runs a
 * handler only then, and holds what arrived until it does: 64 streams of 8 MiB each, never
 * finished, held a connection's gigabyte forever (its idle timer waits for no stream to be open).
 */
const receiveDeadline = (millis: number): Grpc.ServerInterceptor => (_method, call) => {
  let timer: ReturnType<typeof setTimeout> | undefined
  const stop = () => clearTimeout(timer)
  return new Grpc.ServerInterceptingCall(call, {
    start: (next) => {
      timer = setTimeout(() => {
        call.sendStatus({
          code: Grpc.status.DEADLINE_EXCEEDED,
          details: `the request did not arrive within ${millis} ms`,
          metadata: new Grpc.Metadata()
        })
        // RST_STREAM NO_ERROR (RFC 9113 8.1): the peer stops sending; a status alone half-closes
        // only our side, and grpc-js would go on taking in what the peer sends.
        resetStream(call, Http2.constants.NGHTTP2_NO_ERROR)
      }, millis)
      next({
        onReceiveHalfClose: (nextHalfClose) => {
          stop()
          nextHalfClose()
        },
        onCancel: stop
      })
    },
    sendStatus: (status, next) => {
      stop()
      next(status)
    }
  })
}

const grpcOptions = (limits: Required<TransportLimits>): Grpc.ServerOptions => ({
  interceptors: [receiveDeadline(limits.requestTimeoutMillis)],
  "grpc.max_receive_message_length": limits.maxBodyBytes,
  "grpc.max_send_message_length": limits.maxBodyBytes * 2,
  "grpc.max_concurrent_streams": limits.maxInFlightPerConnection,
  // Pings keep a quiet subscription's connection alive (well within the idle timeout), and find dead peers.
  "grpc.keepalive_time_ms": Math.max(1000, Math.min(30_000, Math.floor(limits.idleTimeoutMillis / 2))),
  "grpc.keepalive_timeout_ms": 10_000,
  "grpc.keepalive_permit_without_calls": 1,
  "grpc.http2.min_ping_interval_without_data_ms": 5_000,
  "grpc.max_connection_idle_ms": limits.idleTimeoutMillis
})

/** Listens on `options.host:options.port` until the scope closes; returns the address. */
export const serve = (options: XmtpServerOptions): Effect.Effect<{ readonly port: number; readonly url: string }, Error, XmtpStore | Scope.Scope> =>
  Effect.gen(function*() {
    const limits = resolveLimits(options)
    const apiLimits: XmtpLimits = { ...DEFAULT_XMTP_LIMITS, ...options }
    const runtime = yield* Effect.runtime<XmtpStore>()
    const { streaming, unary } = makeHandlers(runtime, limits, new Map(), new WeakMap())
    const server = new Grpc.Server(grpcOptions(limits))
    const mls: Record<string, Unary> = MlsApi.make(apiLimits)
    const subscriptions: Record<string, Streaming> = Subscriptions.make(apiLimits)
    const identity: Record<string, Unary> = IdentityApi.make(apiLimits)
    const implementation = (handlers: Record<string, Unary>, streams: Record<string, Streaming>) =>
      Object.fromEntries([
        ...Object.entries(handlers).map(([name, h]) => [name, unary(name, h)] as const),
        ...Object.entries(streams).map(([name, h]) => [name, streaming(name, h)] as const)
      ])
    server.addService(MLS_API, implementation(mls, subscriptions))
    server.addService(IDENTITY_API, implementation(identity, {}))
    const injector = server.createConnectionInjector(Grpc.ServerCredentials.createInsecure())

    let open = 0
    const listener = Net.createServer((socket) => {
      if (open >= limits.maxConnections) return socket.destroy()
      open += 1
      socket.once("close", () => open -= 1)
      socket.on("error", () => {})
      // Once Node's HTTP/2 session holds the socket, its timeouts no longer fire: a peer that
      // sends nothing is closed here, before the hand-over (the Converge face's header timeout).
      const silent = setTimeout(() => socket.destroy(), limits.headersTimeoutMillis)
      socket.once("data", (first: Buffer) => {
        clearTimeout(silent)
        socket.pause()
        socket.unshift(first)
        injector.injectConnection(socket)
      })
      socket.once("close", () => clearTimeout(silent))
    })
    yield* Effect.acquireRelease(
      Effect.async<void, Error>((resume) => {
        listener.once("error", (e) => resume(Effect.fail(e)))
        listener.listen(options.port, options.host, () => resume(Effect.void))
      }),
      () =>
        Effect.async<void>((resume) => {
          injector.destroy()
          server.forceShutdown()
          listener.close(() => resume(Effect.void))
        })
    )
    const address = listener.address() as Net.AddressInfo
    return { port: address.port, url: `http://${options.host.includes(":") ? `[${options.host}]` : options.host}:${address.port}` }
  })
