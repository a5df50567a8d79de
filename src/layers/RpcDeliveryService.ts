/**
 * The delivery service port over the network: an `@effect/rpc` client of `DeliveryServer`.
 *
 * - **Transport.** WebSocket by default (one multiplexed connection; the RPC client pings it
 *   every 10 s and reconnects with `reconnectSchedule` when it drops or goes silent), or
 *   HTTP ndjson (`transport: "http"`: one POST per call, a long-lived response per stream).
 * - **Timeouts.** Every unary call attempt gets `timeout` (default 10 s) and then fails with
 *   `DeliveryError("Timeout", retryable)`: the call may or may not have happened.
 * - **Transport failures** (connection refused or dropped, server shutting down, a response
 *   that ends early) become `DeliveryError("Unavailable", retryable)`. Typed errors from the
 *   server arrive as the same tagged errors an in-process service fails with.
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
 * Timeouts and backoffs run on Effect's `Clock`: under `TestClock` they wait for it.
 */
import { HttpClient, HttpClientRequest } from "@effect/platform"
import { NodeHttpClient, NodeSocket } from "@effect/platform-node"
import { RpcClient, type RpcMessage, RpcSerialization } from "@effect/rpc"
import type { RpcClientError } from "@effect/rpc/RpcClientError"
import {
  Cause,
  Context,
  Duration,
  Effect,
  FiberRef,
  Layer,
  Option,
  Schedule,
  Schema,
  type Scope,
  Stream
} from "effect"
import {
  DeliveryRpcs,
  toGroupMessageEnvelope,
  toIdentityUpdateEnvelope,
  toQueryPage,
  toWelcomeMessageEnvelope,
  toWireCursor
} from "../domain/DeliveryRpcs.ts"
import { DeliveryError } from "../domain/Errors.ts"
import type { GroupId } from "../domain/Ids.ts"
import type { GroupMessageEnvelope, IdentityUpdateEnvelope, WelcomeMessageEnvelope } from "../domain/Wire.ts"
import { AUTH_HEADER, type AuthenticatedOperation, RequestAuthJson, requestDigests } from "../domain/RequestAuth.ts"
import { currentSigner } from "../services/DeliveryAuth.ts"
import {
  DeliveryService,
  type FetchedKeyPackage,
  type IdentityQuery,
  type InboxUpdates
} from "../services/DeliveryService.ts"
import { MAX_IDS_PER_LOOKUP, MAX_SUBSCRIBE_FILTERS } from "./DeliveryRequests.ts"

const encodeAuth = Schema.encodeSync(RequestAuthJson)

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
}

const DEFAULT_TIMEOUT = Duration.seconds(10)

export const defaultRetrySchedule: Schedule.Schedule<unknown, DeliveryError> = Schedule.exponential("100 millis")
  .pipe(Schedule.jittered, Schedule.intersect(Schedule.recurs(4)))

export const defaultResubscribeSchedule: Schedule.Schedule<unknown, DeliveryError> = Schedule.exponential(
  "100 millis"
).pipe(Schedule.either(Schedule.spaced("5 seconds")), Schedule.jittered)

const defaultReconnectSchedule: Schedule.Schedule<unknown, unknown> = Schedule.exponential("100 millis").pipe(
  Schedule.either(Schedule.spaced("2 seconds"))
)

/** `items` in runs of at most `size`; at least one run, so an empty call still reaches the server. */
const chunksOf = <A>(items: ReadonlyArray<A>, size: number): ReadonlyArray<ReadonlyArray<A>> =>
  Array.from({ length: Math.max(1, Math.ceil(items.length / size)) }, (_, i) => items.slice(i * size, (i + 1) * size))

const unavailable = (detail: string) => new DeliveryError({ reason: "Unavailable", retryable: true, detail })

/** `http(s)://` -> `ws(s)://` and back; other URLs are left alone. */
const withScheme = (url: string, secure: string, plain: string) =>
  url.replace(/^(https?|wss?):\/\//, (_, scheme: string) => (scheme.endsWith("s") ? secure : plain) + "://")

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

const protocolLayer = (options: RpcDeliveryOptions): Layer.Layer<RpcClient.Protocol> => {
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
      Layer.provide([httpClientLayer, RpcSerialization.layerNdjson])
    )
  }
  return RpcClient.layerProtocolSocket({
    retryTransientErrors: false,
    retrySchedule: options.reconnectSchedule ?? defaultReconnectSchedule
  }).pipe(
    Layer.provide([NodeSocket.layerWebSocket(withScheme(options.url, "wss", "ws")), RpcSerialization.layerJson])
  )
}

/**
 * The transport's own failures as the port's errors: a client error (connection refused or
 * lost) and an interruption that came over the wire (the server shut down, or the response
 * ended early) both mean the service could not be reached. Our own interruption never gets
 * here: an interrupted fiber skips error handlers.
 */
const transportErrors = <E extends { readonly _tag: string }>(
  op: string,
  cause: Cause.Cause<E>
): Cause.Cause<Exclude<E, RpcClientError> | DeliveryError> => {
  if (Cause.isInterruptedOnly(cause)) {
    return Cause.fail(unavailable(`${op}: the server interrupted the call (shutting down or connection lost)`))
  }
  return Cause.map(cause, (e) =>
    e._tag === "RpcClientError"
      ? fromClientError(op, e as unknown as RpcClientError)
      : e as Exclude<E, RpcClientError>)
}

/**
 * A transport error as a `DeliveryError`. HTTP status errors (the server's guard in front of
 * the RPC layer) say whether trying again could help: 413 and other 4xx cannot.
 */
const fromClientError = (op: string, error: RpcClientError): DeliveryError => {
  const cause: unknown = error.cause
  const status = typeof cause === "object" && cause !== null && "_tag" in cause && cause._tag === "ResponseError" &&
      "response" in cause
    ? (cause as { readonly response: { readonly status: number } }).response.status
    : undefined
  if (status === 413) {
    return new DeliveryError({ reason: "PayloadTooLarge", retryable: false, detail: `${op}: request body too large` })
  }
  if (status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429) {
    return new DeliveryError({ reason: "InvalidRequest", retryable: false, detail: `${op}: HTTP ${status}` })
  }
  return unavailable(`${op}: ${error.message}${status === undefined ? "" : ` (HTTP ${status})`}`)
}

/** The port over an RPC client of `DeliveryServer`; the connection lives as long as the scope. */
export const make = (options: RpcDeliveryOptions): Effect.Effect<Service, never, Scope.Scope> =>
  Effect.gen(function*() {
    const protocol = yield* Layer.build(protocolLayer(options))
    const client = yield* RpcClient.make(DeliveryRpcs, { spanPrefix: "DeliveryRpc" }).pipe(
      Effect.provide(protocol)
    )
    const timeout = Duration.decode(options.timeout ?? DEFAULT_TIMEOUT)
    const retryWhile = (e: DeliveryError) => e.retryable
    const retrySchedule = options.retrySchedule ?? defaultRetrySchedule
    const resubscribeSchedule = Schedule.whileInput(options.resubscribeSchedule ?? defaultResubscribeSchedule, retryWhile)

    /**
     * The headers of one attempt of an authenticated call: a fresh signed statement from the
     * caller's signer (none without one; the server then refuses the call).
     */
    const authHeaders = (op: AuthenticatedOperation, digest: string) =>
      Effect.gen(function*() {
        const signer = yield* FiberRef.get(currentSigner)
        if (Option.isNone(signer)) return {}
        const auth = yield* signer.value(op, digest)
        return { [AUTH_HEADER]: encodeAuth(auth) }
      })

    /** One attempt: transport errors mapped, bounded by the timeout. */
    const attempt = <A, E extends { readonly _tag: string }>(
      op: string,
      call: Effect.Effect<A, E>
    ): Effect.Effect<A, Exclude<E, RpcClientError> | DeliveryError> =>
      call.pipe(
        Effect.catchAllCause((cause) => Effect.failCause(transportErrors(op, cause))),
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () =>
            new DeliveryError({
              reason: "Timeout",
              retryable: true,
              detail: `${op}: no response within ${Duration.format(timeout)}`
            })
        })
      )

    /** An idempotent call: attempted again on retryable errors. */
    const idempotent = <A>(op: string, call: Effect.Effect<A, DeliveryError | RpcClientError>) =>
      attempt(op, call).pipe(Effect.retry({ schedule: retrySchedule, while: retryWhile }))

    /**
     * A stream that resumes: `open` subscribes from the cursors; deliveries at or below a
     * topic's cursor are dropped and every delivery moves its cursor. A normal end is treated
     * as a lost connection too: the server never ends a subscription that has topics to follow.
     */
    const resumable = <A extends { readonly sequenceId: bigint }, K>(
      op: string,
      cursors: Map<K, bigint>,
      keyOf: (a: A) => K,
      open: () => Stream.Stream<A, DeliveryError | RpcClientError>
    ): Stream.Stream<A, DeliveryError> =>
      Stream.suspend(open).pipe(
        Stream.catchAllCause((cause) => Stream.failCause(transportErrors(op, cause))),
        Stream.filter((a) => {
          const key = keyOf(a)
          const last = cursors.get(key)
          if (last !== undefined && a.sequenceId <= last) return false
          cursors.set(key, a.sequenceId)
          return true
        }),
        Stream.concat(Stream.fail(unavailable(`${op}: the server ended the subscription`))),
        Stream.retry(resubscribeSchedule)
      )

    /**
     * Every entry asked for, whatever the server's answer bounds: queries go in calls of at
     * most the id limit, and a log the server cut short (`truncated`) is asked for again
     * after its last entry. A round that brings nothing new fails as `Unavailable` rather
     * than looping on a server that never moves on.
     */
    const wholeIdentityLogs = (
      queries: ReadonlyArray<IdentityQuery>
    ): Effect.Effect<ReadonlyArray<InboxUpdates>, DeliveryError> =>
      Effect.gen(function*() {
        const logs = queries.map((): Array<IdentityUpdateEnvelope> => [])
        let pending = queries.map((query, index) => ({ index, query }))
        while (pending.length > 0) {
          const round = pending.slice(0, MAX_IDS_PER_LOOKUP)
          const answers = yield* idempotent(
            "getIdentityUpdates",
            client.getIdentityUpdates({ queries: round.map((p) => p.query) })
          )
          const again: typeof pending = []
          let progress = false
          for (const [i, { index, query }] of round.entries()) {
            const answer = answers[i]
            if (answer === undefined) continue
            const updates = answer.updates.map(toIdentityUpdateEnvelope)
            logs[index]!.push(...updates)
            if (updates.length > 0) progress = true
            if (answer.truncated === true) {
              const afterSequence = updates[updates.length - 1]?.update.sequence ?? query.afterSequence
              again.push({ index, query: { inboxId: query.inboxId, afterSequence } })
            }
          }
          if (!progress && again.length > 0) {
            return yield* Effect.fail(unavailable("getIdentityUpdates: the server cut every log short without entries"))
          }
          pending = [...again, ...pending.slice(MAX_IDS_PER_LOOKUP)]
        }
        return queries.map((q, i): InboxUpdates => ({ inboxId: q.inboxId, updates: logs[i]! }))
      })

    const service: Service = {
      sendGroupMessages: (messages) =>
        idempotent(
          "sendGroupMessages",
          Effect.flatMap(
            authHeaders("sendGroupMessages", requestDigests.sendGroupMessages(messages)),
            (headers) => client.sendGroupMessages({ messages }, { headers })
          )
        ).pipe(
          Effect.map((envelopes) => envelopes.map(toGroupMessageEnvelope))
        ),
      queryGroupMessages: (query) =>
        idempotent(
          "queryGroupMessages",
          client.queryGroupMessages({ query: { ...query, afterSequenceId: toWireCursor(query.afterSequenceId) } })
        ).pipe(
          Effect.map((page) => toQueryPage(page, toGroupMessageEnvelope))
        ),
      batchQueryGroupMessages: (queries) =>
        idempotent(
          "batchQueryGroupMessages",
          client.batchQueryGroupMessages({
            queries: queries.map((q) => ({ ...q, afterSequenceId: toWireCursor(q.afterSequenceId) }))
          })
        ).pipe(
          Effect.map((pages) => pages.map((page) => toQueryPage(page, toGroupMessageEnvelope)))
        ),
      syncQuery: (query) =>
        idempotent(
          "syncQuery",
          client.syncQuery({
            groups: query.groups.map((q) => ({ ...q, afterSequenceId: toWireCursor(q.afterSequenceId) })),
            identities: query.identities
          })
        ).pipe(
          Effect.map((answer) => ({
            groups: answer.groups.map((page) => toQueryPage(page, toGroupMessageEnvelope)),
            identities: answer.identities.map((i): InboxUpdates => ({
              inboxId: i.inboxId as InboxUpdates["inboxId"],
              updates: i.updates.map(toIdentityUpdateEnvelope)
            }))
          }))
        ),
      subscribeGroupMessages: (filters) => {
        if (filters.length === 0) {
          // Nothing to follow: the server ends the stream at once (or says why not).
          return client.subscribeGroupMessages({ filters: [] }).pipe(
            Stream.catchAllCause((cause) => Stream.failCause(transportErrors("subscribeGroupMessages", cause))),
            Stream.map(toGroupMessageEnvelope)
          )
        }
        return Stream.suspend(() => {
          // Several filters on one topic follow it from the lowest cursor, as the service does.
          const cursors = new Map<GroupId, bigint>()
          for (const f of filters) {
            const seen = cursors.get(f.groupId)
            cursors.set(f.groupId, seen === undefined || f.afterSequenceId < seen ? f.afterSequenceId : seen)
          }
          return resumable(
            "subscribeGroupMessages",
            cursors,
            (e: GroupMessageEnvelope) => e.groupId,
            // More topics than one subscription may follow: several subscriptions, merged.
            () =>
              Stream.mergeAll(
                chunksOf(Array.from(cursors), MAX_SUBSCRIBE_FILTERS).map((chunk) =>
                  client.subscribeGroupMessages({
                    filters: chunk.map(([groupId, after]) => ({ groupId, afterSequenceId: toWireCursor(after) }))
                  })
                ),
                { concurrency: "unbounded" }
              ).pipe(Stream.map(toGroupMessageEnvelope))
          )
        })
      },
      sendWelcomeMessages: (messages) =>
        idempotent(
          "sendWelcomeMessages",
          Effect.flatMap(
            authHeaders("sendWelcomeMessages", requestDigests.sendWelcomeMessages(messages)),
            (headers) => client.sendWelcomeMessages({ messages }, { headers })
          )
        ).pipe(
          Effect.map((envelopes) => envelopes.map(toWelcomeMessageEnvelope))
        ),
      queryWelcomeMessages: (query) =>
        idempotent(
          "queryWelcomeMessages",
          Effect.suspend(() => {
            // Signed as it travels: the server verifies the clamped cursor it receives.
            const wire = { ...query, afterSequenceId: toWireCursor(query.afterSequenceId) }
            return Effect.flatMap(
              authHeaders("queryWelcomeMessages", requestDigests.queryWelcomeMessages(wire)),
              (headers) => client.queryWelcomeMessages({ query: wire }, { headers })
            )
          })
        ).pipe(
          Effect.map((page) => toQueryPage(page, toWelcomeMessageEnvelope))
        ),
      subscribeWelcomeMessages: (filter) =>
        Stream.suspend(() => {
          const cursors = new Map([[filter.installationId, filter.afterSequenceId]])
          return resumable(
            "subscribeWelcomeMessages",
            cursors,
            (e: WelcomeMessageEnvelope) => e.installationId,
            () => {
              const from = {
                installationId: filter.installationId,
                afterSequenceId: toWireCursor(cursors.get(filter.installationId) ?? filter.afterSequenceId)
              }
              // Each (re)subscription is signed anew: a statement is good for one request.
              return Stream.unwrap(Effect.map(
                authHeaders("subscribeWelcomeMessages", requestDigests.subscribeWelcomeMessages(from)),
                (headers) => client.subscribeWelcomeMessages({ filter: from }, { headers })
              )).pipe(Stream.map(toWelcomeMessageEnvelope))
            }
          )
        }),
      // A replace: doing it twice leaves what doing it once does.
      uploadKeyPackage: (upload) =>
        idempotent(
          "uploadKeyPackage",
          Effect.flatMap(
            authHeaders("uploadKeyPackage", requestDigests.uploadKeyPackage(upload)),
            (headers) => client.uploadKeyPackage({ upload }, { headers })
          )
        ),
      // In calls of at most the server's id limit, in order.
      fetchKeyPackages: (installationIds) =>
        Effect.forEach(
          chunksOf(installationIds, MAX_IDS_PER_LOOKUP),
          (chunk) => idempotent("fetchKeyPackages", client.fetchKeyPackages({ installationIds: chunk }))
        ).pipe(
          Effect.map((answers) =>
            answers.flat().map((f): FetchedKeyPackage => ({
              installationId: f.installationId as FetchedKeyPackage["installationId"],
              keyPackage: f.keyPackage
            }))
          )
        ),
      // Not idempotent: a lost response may hide a stored entry; the caller re-reads the log.
      publishIdentityUpdate: (update) =>
        attempt("publishIdentityUpdate", client.publishIdentityUpdate({ update })).pipe(
          Effect.map(toIdentityUpdateEnvelope)
        ),
      getIdentityUpdates: (queries) => wholeIdentityLogs(queries)
    }
    return service
  })

/** The delivery service of a `DeliveryServer` over the network (`DeliveryService.layerRpc` in the package root). */
export const layer = (options: RpcDeliveryOptions): Layer.Layer<DeliveryService> =>
  Layer.scoped(DeliveryService, make(options))
