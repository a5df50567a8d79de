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
 * (16 MiB of 1 MiB messages) per subscription of a reader that reads nothing.
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

const makeHandlers = (
  runtime: Runtime.Runtime<XmtpStore>,
  limits: Required<TransportLimits>,
  subscriptionsPerPeer: Map<string, number>
) => {
  const unary = (name: string, handler: Unary): Grpc.handleUnaryCall<unknown, unknown> => (call, callback) => {
    if (call.request instanceof RefusedRequest) return callback({ code: Code.ResourceExhausted, details: call.request.reason }, null)
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
      Exit.isSuccess(exit) ? callback(null, exit.value) : callback(statusOf(exit.cause), null))
  }

  const streaming = (name: string, handler: Streaming): Grpc.handleServerStreamingCall<unknown, unknown> => (call) => {
    // node-go sends headers at once: tonic's client waits for them before the stream counts as open.
    const headers = new Grpc.Metadata()
    headers.set("subscribed", "true")
    call.sendMetadata(headers)
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
    const run = Stream.runForEach(
      handler(call.request as never) as Stream.Stream<unknown, XmtpStatus, XmtpStore>,
      (message) =>
        Effect.flatMap(written(call, message, limits.slowReaderTimeoutMillis), (ok) =>
          ok ? Effect.void : Effect.fail(new XmtpStatus({ code: Code.ResourceExhausted, reason: "the reader did not keep up" })))
    ).pipe(Effect.annotateLogs({ rpc: name }))
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
      else call.emit("error", statusOf(exit.cause))
    })
  }
  return { unary, streaming }
}

/**
 * Asks the peer to stop sending on a call answered before its request ended (RFC 9113 8.1:
 * RST_STREAM with NO_ERROR): a status alone half-closes only our side, and grpc-js would go on
 * taking in what the peer sends. grpc-js keeps the HTTP/2 stream in a private field of its call;
 * without it (another version) the peer's own stop is waited for, as before.
 */
const resetStream = (call: Grpc.ServerInterceptingCallInterface) => {
  const stream = (call as unknown as { readonly stream?: Partial<Pick<Http2.ServerHttp2Stream, "closed" | "close">> }).stream
  if (stream?.closed === false && typeof stream.close === "function") stream.close(Http2.constants.NGHTTP2_NO_ERROR)
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
        resetStream(call)
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
    const { streaming, unary } = makeHandlers(runtime, limits, new Map())
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
