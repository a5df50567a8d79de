/**
 * The delivery service port over the network: an `@effect/rpc` client of `DeliveryServer`.
 *
 * - **Transport.** WebSocket by default (one multiplexed connection; the RPC client pings it
 *   every 10 s and reconnects with `reconnectSchedule` when it drops or goes silent), or
 *   HTTP ndjson (`transport: "http"`: one POST per call, a long-lived response per stream).
 * - **Timeouts.** Every unary call attempt gets `timeout` (default 10 s) from when its request
 *   is sent, and then fails with `DeliveryError("Timeout", retryable)`: the call may or may not
 *   have happened (the server is told to interrupt it). The connection keeps them (`RpcCallTimeouts`).
 * - **Transport failures** (connection refused or dropped, server shutting down, a response
 *   that ends early, an answer that does not decode or nests more than `MAX_ANSWER_DEPTH` levels)
 *   become `DeliveryError("Unavailable", retryable)`. Typed errors from the server arrive as the
 *   same tagged errors an in-process service fails with.
 * - **Retries.** Idempotent calls are retried on retryable errors with `retrySchedule`:
 *   queries, fetches, `getIdentityUpdates`, `uploadKeyPackage` (a replace), and the sends
 *   (the server stores an identical payload on a topic once and returns the stored envelope
 *   again). `publishIdentityUpdate` is not retried: a lost response may hide a stored entry,
 *   so the caller re-reads the log and decides.
 * - **Streams resume.** A subscription remembers the last sequence id it delivered per topic.
 *   When the stream fails with a retryable error (the connection dropped, the server
 *   restarted), it resubscribes from those cursors after `resubscribeSchedule`'s backoff
 *   (reset by every delivery) and drops anything at or below them: no loss, no duplicate.
 *   Non-retryable errors (a bad filter) end the stream.
 * - **Server bounds, hidden.** Key-package and identity lookups go in calls of at most
 *   `MAX_IDS_PER_LOOKUP` ids, identity logs the server cut short (`truncated`) are read on,
 *   subscriptions to more than `MAX_SUBSCRIBE_FILTERS` topics are several merged ones, and
 *   cursors past the wire's 20 digits are clamped (they read nothing either way).
 *
 * Timeouts and backoffs run on Effect's `Clock` (timeouts on the one the client was made under):
 * under `TestClock` they wait for it.
 */
import { RpcClient } from "@effect/rpc"
import { type Context, Duration, Effect, Layer, Schedule, type Scope } from "effect"
import { DeliveryRpcs } from "../domain/DeliveryRpcs.ts"
import type { DeliveryError } from "../domain/Errors.ts"
import { DeliveryService } from "../services/DeliveryService.ts"
import { makeCalls } from "./RpcCalls.ts"
import { groupMethods, identityMethods, welcomeMethods } from "./RpcMethods.ts"
import { protocolLayer } from "./RpcProtocol.ts"

type Service = Context.Tag.Service<DeliveryService>

export interface RpcDeliveryOptions {
  /** The server's RPC endpoint, e.g. `http://127.0.0.1:5555/rpc` (`ws://` works too). */
  readonly url: string
  /** Default `"websocket"`. */
  readonly transport?: "websocket" | "http"
  /** Per attempt of a unary call. Default 10 seconds. */
  readonly timeout?: Duration.DurationInput
  /**
   * Retries of idempotent calls on retryable errors. Default: exponential from 100 ms,
   * jittered, at most 4 retries.
   */
  readonly retrySchedule?: Schedule.Schedule<unknown, DeliveryError>
  /**
   * Resubscriptions of a stream that failed with a retryable error. Reset by every delivery.
   * Default: exponential from 100 ms, at most 5 s apart, jittered, forever.
   */
  readonly resubscribeSchedule?: Schedule.Schedule<unknown, DeliveryError>
  /** WebSocket only: reconnection attempts after the connection drops. Default: exponential from 100 ms, at most 2 s apart. */
  readonly reconnectSchedule?: Schedule.Schedule<unknown, unknown>
  /**
   * The largest answer taken from the server, in bytes: a WebSocket message (a larger one closes
   * the connection: its calls end `Unavailable` and the client reconnects) or an ndjson line over
   * HTTP (a larger one ends its response: that call ends `Unavailable`). Default 16 MiB, about
   * three times the largest page a `DeliveryServer` answers.
   */
  readonly maxAnswerBytes?: number
}

const DEFAULT_TIMEOUT = Duration.seconds(10)

export const defaultRetrySchedule: Schedule.Schedule<unknown, DeliveryError> = Schedule.exponential("100 millis")
  .pipe(Schedule.jittered, Schedule.intersect(Schedule.recurs(4)))

export const defaultResubscribeSchedule: Schedule.Schedule<unknown, DeliveryError> = Schedule.exponential(
  "100 millis"
).pipe(Schedule.either(Schedule.spaced("5 seconds")), Schedule.jittered)

/** The port over an RPC client of `DeliveryServer`; the connection lives as long as the scope. */
export const make = (options: RpcDeliveryOptions): Effect.Effect<Service, never, Scope.Scope> =>
  Effect.gen(function*() {
    const protocol = yield* Layer.build(
      protocolLayer({ ...options, timeout: Duration.decode(options.timeout ?? DEFAULT_TIMEOUT) })
    )
    const client = yield* RpcClient.make(DeliveryRpcs, { spanPrefix: "DeliveryRpc" }).pipe(
      Effect.provide(protocol)
    )
    const calls = makeCalls({
      retrySchedule: options.retrySchedule ?? defaultRetrySchedule,
      resubscribeSchedule: options.resubscribeSchedule ?? defaultResubscribeSchedule
    })
    const service: Service = {
      ...groupMethods(client, calls),
      ...welcomeMethods(client, calls),
      ...identityMethods(client, calls)
    }
    return service
  })

/** The delivery service of a `DeliveryServer` over the network (`DeliveryService.layerRpc` in the package root). */
export const layer = (options: RpcDeliveryOptions): Layer.Layer<DeliveryService> =>
  Layer.scoped(DeliveryService, make(options))
