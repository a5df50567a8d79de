/**
 * The connection of the RPC delivery client: WebSocket by default (one multiplexed connection;
 * the RPC client pings it every 10 s and reconnects with `reconnectSchedule` when it drops or
 * goes silent), or HTTP ndjson (one POST per call, a long-lived response per stream) over
 * kept-alive node:http connections.
 */
import { HttpClient, HttpClientRequest, Socket } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { RpcClient, type RpcMessage, RpcSchema, RpcSerialization } from "@effect/rpc"
import { type Duration, Effect, Layer, Schedule, type Scope } from "effect"
import { WebSocket } from "ws"
import { DeliveryRpcs } from "../domain/DeliveryRpcs.ts"
import { depthBoundedJson } from "./RpcAnswerDepth.ts"
import { withCallTimeouts } from "./RpcCallTimeouts.ts"
import { boundedNdjson } from "./RpcNdjson.ts"
import { boundedRequestIds } from "./RpcRequestIds.ts"

/** What the connection needs of `RpcDeliveryOptions`. */
export interface RpcProtocolOptions {
  readonly url: string
  readonly transport?: "websocket" | "http"
  readonly reconnectSchedule?: Schedule.Schedule<unknown, unknown>
  readonly maxAnswerBytes?: number
  /** Per attempt of a unary call, from when its request is sent. */
  readonly timeout: Duration.Duration
}

/**
 * The largest answer taken from a server (a WebSocket message, an ndjson line over HTTP): a page
 * of the server's is at most 4 MiB of payloads (`MAX_PAGE_BYTES`), about 5.4 MiB as JSON with its
 * bytes in base64; `ws` alone would take 100 MiB from a server that sends more.
 */
export const DEFAULT_MAX_ANSWER_BYTES = 16 * 1024 * 1024

const defaultReconnectSchedule: Schedule.Schedule<unknown, unknown> = Schedule.exponential("100 millis").pipe(
  Schedule.either(Schedule.spaced("2 seconds"))
)

/** `http(s)://` -> `ws(s)://` and back; other URLs are left alone. */
const withScheme = (url: string, secure: string, plain: string) =>
  url.replace(/^(https?|wss?):\/\//, (_, scheme: string) => (/^(https|wss)$/.test(scheme) ? secure : plain) + "://")

/**
 * HTTP: a call whose response ends without its `Exit` (the server died mid-answer, a proxy
 * cut it short, a non-RPC error page) would leave the caller waiting forever. This wraps the
 * protocol so such a call ends as if the server had interrupted it, which the client turns
 * into a retryable `Unavailable`.
 *
 * It also holds each call's `Exit` until its response has ended. The RPC client interrupts a
 * call's request as soon as the `Exit` arrives, and that aborts the request while node:http
 * still holds the socket, which destroys it: every call would then pay a new TCP connection
 * (and the server a new socket) instead of reusing the kept-alive one.
 */
const guardHttpProtocol = (
  inner: RpcClient.Protocol["Type"]
): Effect.Effect<RpcClient.Protocol["Type"], never, Scope.Scope> =>
  RpcClient.Protocol.make((writeResponse) => {
    const inFlight = new Map<string, RpcMessage.FromServerEncoded | undefined>()
    return inner.run((message) => {
      if (message._tag === "Exit" && inFlight.has(message.requestId)) {
        inFlight.set(message.requestId, message)
        return Effect.void
      }
      return writeResponse(message)
    }).pipe(
      Effect.forkScoped,
      Effect.as({
        send: (request: RpcMessage.FromClientEncoded) =>
          request._tag !== "Request"
            ? inner.send(request)
            : Effect.suspend(() => {
              inFlight.set(request.id, undefined)
              return inner.send(request).pipe(
                Effect.exit,
                Effect.flatMap((sent) => {
                  // An answer that arrived counts, whatever happened to the connection after it.
                  const exit = inFlight.get(request.id)
                  if (exit !== undefined) return writeResponse(exit)
                  if (sent._tag === "Failure") return sent
                  return writeResponse({
                    _tag: "Exit",
                    requestId: request.id,
                    exit: { _tag: "Failure", cause: { _tag: "Interrupt", fiberId: { _tag: "None" } } }
                  })
                }),
                Effect.ensuring(Effect.sync(() => inFlight.delete(request.id)))
              )
            }),
        supportsAck: inner.supportsAck,
        supportsTransferables: inner.supportsTransferables
      })
    )
  })

/**
 * node:http with connections kept alive between calls (a new `http.Agent` closes each one after
 * its response). The agent retires an idle socket before the server's announced keep-alive
 * timeout, so it does not send on one the server is closing.
 */
const httpClientLayer: Layer.Layer<HttpClient.HttpClient> = NodeHttpClient.layerWithoutAgent.pipe(
  Layer.provide(NodeHttpClient.makeAgentLayer({ keepAlive: true }))
)

/**
 * The wire format with answers under ids no call of ours has (ids count from 0: at most 20
 * digits) left out before the RPC client parses them with `BigInt`: a server sending a
 * multi-million-digit id would hold our event loop for seconds. The call it claims to answer
 * ends by its timeout or its transport's end, as with any answer that never came.
 */
const serialization = (inner: RpcSerialization.RpcSerialization["Type"]) =>
  Layer.succeed(RpcSerialization.RpcSerialization, boundedRequestIds(inner, "drop"))

/** The RPCs that answer once (not streams): the ones with a timeout. */
const unaryTags: ReadonlySet<string> = new Set(
  Array.from(DeliveryRpcs.requests.values()).filter((rpc) => !RpcSchema.isStreamSchema(rpc.successSchema)).map((rpc) => rpc._tag)
)

/** The connection, with a timeout on every unary call (`RpcCallTimeouts`). */
export const protocolLayer = (options: RpcProtocolOptions): Layer.Layer<RpcClient.Protocol> =>
  Layer.scoped(
    RpcClient.Protocol,
    Effect.flatMap(RpcClient.Protocol, (inner) =>
      withCallTimeouts(inner, { timeout: options.timeout, isUnary: (tag) => unaryTags.has(tag) }))
  ).pipe(Layer.provide(transportLayer(options)))

const transportLayer = (options: RpcProtocolOptions): Layer.Layer<RpcClient.Protocol> => {
  if (options.transport === "http") {
    return Layer.scoped(
      RpcClient.Protocol,
      Effect.gen(function*() {
        const inner = yield* RpcClient.makeProtocolHttp(
          HttpClient.filterStatusOk(yield* HttpClient.HttpClient).pipe(
            HttpClient.mapRequest(HttpClientRequest.prependUrl(withScheme(options.url, "https", "http")))
          )
        )
        return yield* guardHttpProtocol(inner)
      })
    ).pipe(
      // node:http rather than undici: undici's 300 s body timeout would cut quiet subscriptions.
      Layer.provide([httpClientLayer, serialization(boundedNdjson(options.maxAnswerBytes ?? DEFAULT_MAX_ANSWER_BYTES))])
    )
  }
  return RpcClient.layerProtocolSocket({
    retryTransientErrors: false,
    retrySchedule: options.reconnectSchedule ?? defaultReconnectSchedule
  }).pipe(
    Layer.provide([
      boundedWebSocket(withScheme(options.url, "wss", "ws"), options.maxAnswerBytes ?? DEFAULT_MAX_ANSWER_BYTES),
      serialization(depthBoundedJson)
    ])
  )
}

/**
 * The connection as `NodeSocket.layerWebSocket` makes it on Node 20 (a `ws` client), with a bound
 * on each message: `ws` closes the connection on a larger one (1009) before buffering it whole,
 * so its calls end Unavailable and the client reconnects.
 */
const boundedWebSocket = (url: string, maxPayload: number): Layer.Layer<Socket.Socket> =>
  Layer.scoped(Socket.Socket, Socket.makeWebSocket(url)).pipe(
    Layer.provide(Layer.succeed(
      Socket.WebSocketConstructor,
      // `ws` implements the WebSocket interface the socket reads (its own typings differ in detail).
      (address, protocols) => new WebSocket(address, protocols, { maxPayload }) as unknown as globalThis.WebSocket
    ))
  )
