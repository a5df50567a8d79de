/**
 * Serves any `DeliveryService` (taken from the context: memory, SQLite, Postgres...) over
 * the network with `@effect/rpc` (`DeliveryRpcs`), on one path with two transports:
 *
 * - **WebSocket** (`GET /rpc`, upgrade; JSON frames). What `RpcDeliveryService` uses by
 *   default. One connection carries every request and subscription of a client, multiplexed.
 *   The client pings every 10 s and reconnects when a ping goes unanswered, so a silently
 *   dead link (NAT timeout, half-open TCP) is noticed even on a quiet subscription; streams
 *   are flow-controlled by acks; and a dropped connection fails every call in flight at once
 *   with a transport error, which is what the client's resume logic keys on.
 * - **HTTP** (`POST /rpc`, ndjson). One request per POST; a subscription is a long-lived
 *   chunked response. Handy for curl and non-Effect callers, and the client can use it
 *   (`transport: "http"`), but nothing notices a silently dead link on a quiet stream.
 *
 * Bad requests never take the server down: a body that is not ndjson, an unknown RPC or a
 * payload of the wrong shape is answered with an RPC defect (a protocol error) for that
 * request only; a well-formed request with bad values gets the service's typed error.
 * Every request is bounded (`ServerLimits.ts`: body and message size, connections, calls in
 * flight, timeouts, readers that do not read; here: answers in bytes and entries), and every
 * refusal is logged at Info once per class and interval.
 * On shutdown, every running call is interrupted as "transient" (the client's cue to retry
 * or resubscribe elsewhere) before the listener closes.
 */
import {
  HttpIncomingMessage,
  HttpMiddleware,
  HttpRouter,
  HttpServer,
  HttpServerRequest,
  HttpServerResponse
} from "@effect/platform"
import type { ServeError } from "@effect/platform/HttpServerError"
import { SocketServer } from "@effect/platform"
import { NodeHttpServer, NodeHttpServerRequest } from "@effect/platform-node"
import { RpcSerialization, RpcServer } from "@effect/rpc"
import { Context, Effect, FiberRef, Layer, Option, Schema, type Scope, Stream } from "effect"
import type * as Headers from "@effect/platform/Headers"
import {
  DeliveryRpcs,
  fromQueryPage,
  type GroupFilterWire,
  type GroupMessageInputWire,
  type GroupQueryWire,
  type IdentityQueryWire,
  type IdentityUpdateInputWire,
  type InboxUpdatesWire,
  type KeyPackageUploadWire,
  type WelcomeFilterWire,
  type WelcomeMessageInputWire,
  type WelcomeQueryWire
} from "../domain/DeliveryRpcs.ts"
import type { DeliveryError, InvalidIdentityUpdate } from "../domain/Errors.ts"
import type { InstallationId } from "../domain/Ids.ts"
import { AUTH_HEADER, RequestAuthJson } from "../domain/RequestAuth.ts"
import { currentSigner, receivedSigner } from "../services/DeliveryAuth.ts"
import {
  type GroupMessageEnvelope,
  GroupMessageInput,
  IdentityUpdate,
  type IdentityUpdateEnvelope,
  KeyPackageUpload,
  type QueryPage,
  WelcomeMessageInput
} from "../domain/Wire.ts"
import {
  DeliveryService,
  type GroupQuery,
  type IdentityQuery,
  type SyncQuery,
  type WelcomeQuery
} from "../services/DeliveryService.ts"
import { budgetPages, checkIdCount, cutPage, MAX_PAGE_BYTES } from "./DeliveryRequests.ts"
import {
  boundedRequestIds,
  currentHttpResponse,
  Gate,
  guarded,
  layerGate,
  type Refusals,
  type TransportLimits
} from "./ServerLimits.ts"

/** Where the RPC endpoint lives: `POST` for HTTP, `GET` (upgrade) for WebSocket. */
export const RPC_PATH = "/rpc"

/**
 * Where to listen and how much to take. `maxBodyBytes` (default 8 MiB) is the largest HTTP
 * body and WebSocket message: larger bodies get 413, larger messages close the WebSocket
 * (1009). The service's own limits (payload and batch size) still apply below it.
 */
export interface ServerOptions extends AnswerLimits, TransportLimits {
  /** 0 (the default) picks a free port; `serve` reports which. */
  readonly port?: number
  /** Interface to listen on. Default `127.0.0.1` (loopback only); `0.0.0.0` for every interface. */
  readonly host?: string
}

/** A signed statement is a few hundred bytes; anything much longer is not one. */
const MAX_AUTH_HEADER = 1024
const decodeAuth = Schema.decodeOption(RequestAuthJson)

export interface BoundAddress {
  readonly host: string
  readonly port: number
  /** The RPC endpoint, e.g. `http://127.0.0.1:5555/rpc`: what `RpcDeliveryService.make({ url })` takes. */
  readonly url: string
}

// ---- wire -> port ----
// The wire checks shape only; the service checks values (and answers with its typed errors),
// so these only re-dress the decoded structs as the port's types.

type Wire<S extends { readonly Type: unknown }> = S["Type"]

const groupInput = (m: Wire<typeof GroupMessageInputWire>) => new GroupMessageInput(m as GroupMessageInput, true)
const welcomeInput = (m: Wire<typeof WelcomeMessageInputWire>) =>
  new WelcomeMessageInput(m as WelcomeMessageInput, true)
const keyPackageUpload = (u: Wire<typeof KeyPackageUploadWire>) => new KeyPackageUpload(u as KeyPackageUpload, true)
const identityUpdate = (u: Wire<typeof IdentityUpdateInputWire>) => new IdentityUpdate(u as IdentityUpdate, true)
const groupQuery = (q: Wire<typeof GroupQueryWire>): GroupQuery =>
  q.limit === undefined
    ? { groupId: q.groupId as GroupQuery["groupId"], afterSequenceId: q.afterSequenceId }
    : { groupId: q.groupId as GroupQuery["groupId"], afterSequenceId: q.afterSequenceId, limit: q.limit }
const groupFilter = (f: Wire<typeof GroupFilterWire>): Omit<GroupQuery, "limit"> =>
  ({ groupId: f.groupId as GroupQuery["groupId"], afterSequenceId: f.afterSequenceId })
const welcomeQuery = (q: Wire<typeof WelcomeQueryWire>): WelcomeQuery =>
  q.limit === undefined
    ? { installationId: q.installationId as InstallationId, afterSequenceId: q.afterSequenceId }
    : { installationId: q.installationId as InstallationId, afterSequenceId: q.afterSequenceId, limit: q.limit }
const welcomeFilter = (f: Wire<typeof WelcomeFilterWire>): Omit<WelcomeQuery, "limit"> =>
  ({ installationId: f.installationId as InstallationId, afterSequenceId: f.afterSequenceId })
const identityQuery = (q: Wire<typeof IdentityQueryWire>): IdentityQuery => q as IdentityQuery

/**
 * The caller's signed statement from the request header (see `DeliveryAuth`): the service
 * verifies it as it would verify an in-process caller's. A malformed header counts as none.
 */
const signerOf = (headers: Headers.Headers) => {
  const raw = headers[AUTH_HEADER]
  if (raw === undefined || raw.length > MAX_AUTH_HEADER) return Option.none()
  return Option.map(decodeAuth(raw), receivedSigner)
}

const withCaller = (headers: Headers.Headers) => <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.locally(effect, currentSigner, signerOf(headers))

const withCallerStream = (headers: Headers.Headers) => <A, E>(stream: Stream.Stream<A, E>) =>
  Stream.unwrapScoped(Effect.as(Effect.locallyScoped(currentSigner, signerOf(headers)), stream))

const pageBytes = (page: QueryPage<{ readonly payload: Uint8Array }>) =>
  page.items.reduce((n, item) => n + item.payload.length, 0)

/**
 * A batch query whose answer is bounded in bytes: `maxPageBytes` of payload in all, as one
 * page (so about 5.4 MiB as JSON, well within what the client takes). Every topic is first read
 * one entry deep (which also validates the whole batch) and those entries are kept, in order,
 * while they fit; then topics with more are read on, in order, within what is left. A topic
 * past the budget comes back empty with `next` at its own cursor: nothing read, ask again.
 */
const boundedBatchQuery = (
  ds: DeliveryService["Type"],
  queries: ReadonlyArray<GroupQuery>,
  maxPageBytes: number
): Effect.Effect<ReadonlyArray<QueryPage<GroupMessageEnvelope>>, DeliveryError> =>
  Effect.flatMap(
    ds.batchQueryGroupMessages(queries.map((q) => ({ ...q, limit: 1 }))),
    (firsts) => fillPages(ds, queries, firsts, maxPageBytes)
  )

/**
 * The one-entry pages cut to the budget (the answer's first entry always kept, so asking again
 * gets further), then the topics with more read on while the budget lasts, each cut to what is left.
 */
const fillPages = (
  ds: DeliveryService["Type"],
  queries: ReadonlyArray<GroupQuery>,
  firsts: ReadonlyArray<QueryPage<GroupMessageEnvelope>>,
  maxPageBytes: number
): Effect.Effect<ReadonlyArray<QueryPage<GroupMessageEnvelope>>, DeliveryError> =>
  Effect.gen(function*() {
    const heads = budgetPages(firsts, queries.map((q) => q.afterSequenceId), maxPageBytes)
    let left = maxPageBytes - heads.bytes
    const pages: Array<QueryPage<GroupMessageEnvelope>> = []
    for (const [i, head] of heads.pages.entries()) {
      const query = queries[i]!
      if (head.items.length === 0 || head.next === undefined || query.limit === 1 || left <= 0) {
        pages.push(head)
        continue
      }
      // Read again from the same cursor: the head is this page's first entry, already counted.
      const headBytes = pageBytes(head)
      const cut = cutPage(yield* ds.queryGroupMessages(query), query.afterSequenceId, headBytes + left, true)
      left -= cut.bytes - headBytes
      pages.push(cut.page)
    }
    return pages
  })

/**
 * `syncQuery` bounded like the batch query (one entry per topic first, then more, all within the
 * byte budget), with at most `maxEntries` identity-log entries (each inbox a prefix of its news).
 */
const boundedSyncQuery = (
  ds: DeliveryService["Type"],
  query: SyncQuery,
  maxPageBytes: number,
  maxEntries: number
) =>
  Effect.gen(function*() {
    const answer = yield* ds.syncQuery({ ...query, groups: query.groups.map((q) => ({ ...q, limit: 1 })) })
    const groups = yield* fillPages(ds, query.groups, answer.groups, maxPageBytes)
    let budget = maxEntries
    const identities = answer.identities.flatMap(({ inboxId, updates }) => {
      const taken = updates.slice(0, Math.max(0, budget))
      budget -= taken.length
      return taken.length === 0 ? [] : [{ inboxId, updates: taken }]
    })
    return { groups: groups.map(fromQueryPage), identities }
  })

type InboxUpdatesAnswer = Wire<typeof InboxUpdatesWire>

/**
 * Identity logs answered with at most `maxEntries` entries in all, each log read once however
 * often it is asked for. A log cut short (or not read, once the budget is spent) comes back
 * `truncated`, and the caller asks again after its last entry.
 */
const boundedIdentityUpdates = (
  ds: DeliveryService["Type"],
  queries: ReadonlyArray<IdentityQuery>,
  maxEntries: number
): Effect.Effect<ReadonlyArray<InboxUpdatesAnswer>, DeliveryError> =>
  Effect.gen(function*() {
    yield* checkIdCount(queries, "getIdentityUpdates")
    const loaded = new Map<string, ReadonlyArray<IdentityUpdateEnvelope>>()
    let budget = maxEntries
    const answers: Array<InboxUpdatesAnswer> = []
    for (const query of queries) {
      if (budget <= 0) {
        answers.push({ inboxId: query.inboxId, updates: [], truncated: true })
        continue
      }
      const key = `${query.inboxId} ${query.afterSequence}`
      let updates = loaded.get(key)
      if (updates === undefined) {
        const [answer] = yield* ds.getIdentityUpdates([query])
        updates = answer?.updates ?? []
        loaded.set(key, updates)
      }
      const taken = updates.slice(0, budget)
      budget -= taken.length
      answers.push(
        taken.length < updates.length
          ? { inboxId: query.inboxId, updates: taken, truncated: true }
          : { inboxId: query.inboxId, updates: taken }
      )
    }
    return answers
  })

export interface AnswerLimits {
  /**
   * Most payload bytes in one batch-query or `syncQuery` answer, all topics together (its first
   * entry is always answered). Default `MAX_PAGE_BYTES` (4 MiB).
   */
  readonly maxPageBytes?: number
  /** Most identity-log entries in one `getIdentityUpdates` answer. Default 500. */
  readonly maxIdentityEntries?: number
}

import { DEFAULT_MAX_IDENTITY_ENTRIES } from "./TransportLimits.ts"

export { DEFAULT_MAX_IDENTITY_ENTRIES } from "./TransportLimits.ts"

/** Counts a typed refusal by its reason; a store failure is no refusal (the service logs it). */
const noteRefusal = (refusals: Refusals) => (error: DeliveryError | InvalidIdentityUpdate) =>
  Effect.sync(() => {
    if (error._tag === "DeliveryError" && error.reason === "Unavailable") return
    refusals.note(error._tag === "DeliveryError" ? error.reason : error._tag, error.message)
  })

/** The service with every typed refusal counted. */
const noting = (ds: DeliveryService["Type"], refusals: Refusals): DeliveryService["Type"] => {
  const note = noteRefusal(refusals)
  const effects = Object.fromEntries(
    Object.entries(ds).map(([name, f]) => [
      name,
      (...args: Array<unknown>) => {
        const result = (f as (...args: Array<unknown>) => unknown)(...args)
        return Stream.StreamTypeId in (result as object)
          ? Stream.tapError(result as Stream.Stream<unknown, DeliveryError>, note)
          : Effect.tapError(result as Effect.Effect<unknown, DeliveryError>, note)
      }
    ])
  )
  return effects as unknown as DeliveryService["Type"]
}

/** The RPC handlers: each one forwards to the `DeliveryService` in the context. */
export const handlersWith = (limits: AnswerLimits = {}) => DeliveryRpcs.toLayer(
  Effect.gen(function*() {
    const gate = yield* Effect.serviceOption(Gate)
    const service = yield* DeliveryService
    const ds = Option.isSome(gate) ? noting(service, gate.value.refusals) : service
    const maxPageBytes = limits.maxPageBytes ?? MAX_PAGE_BYTES
    const maxIdentityEntries = limits.maxIdentityEntries ?? DEFAULT_MAX_IDENTITY_ENTRIES
    return {
      sendGroupMessages: ({ messages }, { headers }) =>
        withCaller(headers)(Effect.map(ds.sendGroupMessages(messages.map(groupInput)), (envelopes) =>
          envelopes.map(({ sequenceId, serverTimeNs }) => ({ sequenceId, serverTimeNs })))),
      sendGroupMessagesIf: ({ ifTopicEndsAt, messages }, { headers }) =>
        withCaller(headers)(Effect.map(ds.sendGroupMessagesIf(messages.map(groupInput), ifTopicEndsAt), (outcome) =>
          outcome._tag === "Stored"
            ? {
              _tag: "Stored" as const,
              positions: outcome.envelopes.map(({ sequenceId, serverTimeNs }) => ({ sequenceId, serverTimeNs }))
            }
            : { _tag: "TopicMoved" as const, lastSequenceId: outcome.lastSequenceId })),
      queryGroupMessages: ({ query }, { headers }) => withCaller(headers)(Effect.map(ds.queryGroupMessages(groupQuery(query)), fromQueryPage)),
      batchQueryGroupMessages: ({ queries }, { headers }) =>
        withCaller(headers)(
          Effect.map(boundedBatchQuery(ds, queries.map(groupQuery), maxPageBytes), (pages) => pages.map(fromQueryPage))
        ),
      syncQuery: ({ groups, identities }, { headers }) =>
        withCaller(headers)(boundedSyncQuery(
          ds,
          { groups: groups.map(groupQuery), identities: identities.map(identityQuery) },
          maxPageBytes,
          maxIdentityEntries
        )),
      subscribeGroupMessages: ({ filters }, { headers }) =>
        withCallerStream(headers)(ds.subscribeGroupMessages(filters.map(groupFilter))),
      sendWelcomeMessages: ({ messages }, { headers }) =>
        withCaller(headers)(ds.sendWelcomeMessages(messages.map(welcomeInput))),
      queryWelcomeMessages: ({ query }, { headers }) =>
        withCaller(headers)(Effect.map(ds.queryWelcomeMessages(welcomeQuery(query)), fromQueryPage)),
      subscribeWelcomeMessages: ({ filter }, { headers }) =>
        withCallerStream(headers)(ds.subscribeWelcomeMessages(welcomeFilter(filter))),
      uploadKeyPackage: ({ upload }, { headers }) => withCaller(headers)(ds.uploadKeyPackage(keyPackageUpload(upload))),
      fetchKeyPackages: ({ installationIds }, { headers }) =>
        withCaller(headers)(ds.fetchKeyPackages(installationIds as ReadonlyArray<InstallationId>)),
      publishIdentityUpdate: ({ update }, { headers }) =>
        withCaller(headers)(ds.publishIdentityUpdate(identityUpdate(update))),
      getIdentityUpdates: ({ queries }, { headers }) =>
        withCaller(headers)(boundedIdentityUpdates(ds, queries.map(identityQuery), maxIdentityEntries))
    }
  })
)

export const handlers = handlersWith()

/** The server's own router, so it never shares routes with an app's `HttpRouter.Default`. */
export class DeliveryRouter extends HttpRouter.Tag("converge/DeliveryServer/Router")<DeliveryRouter>() {}

/**
 * The RPCs that change what the server stores. A read's answer may be refused (retryably) when
 * its reader is behind rather than held for it; a write's never is: the write is done.
 */
const WRITES = new Set([
  "sendGroupMessages",
  "sendGroupMessagesIf",
  "sendWelcomeMessages",
  "uploadKeyPackage",
  "publishIdentityUpdate"
] as const)

/**
 * The RPC server; with the tracer off (`converge serve` without an OTLP collector) it opens no
 * span per request, which nobody would read. A handler's defect ends its own call (an `Exit`
 * under its id), not every call of the connection with a `Defect` naming none (whose slot the
 * in-flight cap could never free). A new layer per transport: one shared layer value would be
 * built once, and serve only the first transport.
 */
const rpcServer = () => Layer.unwrapEffect(
  Effect.map(
    FiberRef.get(FiberRef.currentTracerEnabled),
    (enabled) => RpcServer.layer(DeliveryRpcs, { disableTracing: !enabled, disableFatalDefects: true })
  )
)

const rpcOverHttp = rpcServer().pipe(
  Layer.provide(guarded(DeliveryRpcs, WRITES, RpcServer.layerProtocolHttp({ path: RPC_PATH, routerTag: DeliveryRouter }))),
  Layer.provide(Layer.succeed(RpcSerialization.RpcSerialization, boundedRequestIds(RpcSerialization.ndjson)))
)

/** WebSocket connections come from the gate's own `ws` server (its message limit), not the router. */
const rpcOverWebsocket = rpcServer().pipe(
  Layer.provide(guarded(DeliveryRpcs, WRITES, Layer.scoped(RpcServer.Protocol, RpcServer.makeProtocolSocketServer))),
  Layer.provide(Layer.effect(SocketServer.SocketServer, Effect.map(Gate, (gate) => gate.sockets))),
  Layer.provide(Layer.succeed(RpcSerialization.RpcSerialization, boundedRequestIds(RpcSerialization.json)))
)

/** An ndjson line the RPC client reads as a protocol defect, for requests the RPC layer never sees. */
const protocolError = (status: number, detail: string) =>
  HttpServerResponse.text(JSON.stringify({ _tag: "Defect", defect: detail }) + "\n", {
    status,
    contentType: RpcSerialization.ndjson.contentType
  })

/**
 * In front of the HTTP transport: reads the body once (the request caches it for the RPC
 * handler) under the size limit, and refuses a body whose last ndjson line is not terminated.
 * The RPC layer would silently ignore such a line (it waits for a newline that never comes)
 * and answer an empty 200; here it gets a 400 instead. A body must declare its length: one
 * larger than the limit gets 413 unread, one with no Content-Length (chunked) 411.
 */
const httpGuard = ({ limits: { maxBodyBytes }, refusals, untaken }: Gate) =>
  HttpMiddleware.make((app) =>
    Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      if (request.method !== "POST" || new URL(request.url, "http://localhost").pathname !== RPC_PATH) {
        return yield* app
      }
      const declared = Number(request.headers["content-length"] ?? Number.NaN)
      if (!Number.isSafeInteger(declared)) {
        // A body of unknown length could only be cut off at the limit, with no answer.
        refusals.note("lengthRequired", "a body without a Content-Length")
        return protocolError(411, "a request body needs a Content-Length").pipe(
          HttpServerResponse.setHeader("connection", "close")
        )
      }
      if (declared > maxBodyBytes) {
        refusals.note("bodyTooLarge", `a declared body of ${declared} bytes`)
        // Refused before reading: reading would cut the connection at the limit instead.
        return protocolError(413, `request body larger than ${maxBodyBytes} bytes`).pipe(
          HttpServerResponse.setHeader("connection", "close")
        )
      }
      const body = yield* request.text.pipe(
        HttpIncomingMessage.withMaxBodySize(Option.some(maxBodyBytes)),
        Effect.either
      )
      if (body._tag === "Left") {
        // Past the limit the body stream is destroyed, so this answer may not get through.
        const cause: unknown = body.left.cause
        if (cause instanceof Error && cause.message === "maxBytes exceeded") {
          refusals.note("bodyTooLarge", `a streamed body past ${maxBodyBytes} bytes`)
          return protocolError(413, `request body larger than ${maxBodyBytes} bytes`)
        }
        return protocolError(400, `cannot read request body: ${body.left.message}`)
      }
      if (body.right.length > 0 && !body.right.endsWith("\n")) {
        return protocolError(400, "malformed request: an ndjson body must end with a newline")
      }
      const response = NodeHttpServerRequest.toServerResponse(request)
      // Its body is handed to the connection when it ends, after the RPC layer's answers: watched from there.
      response.once("prefinish", () => {
        if (response.socket !== null) untaken.written(response.socket)
      })
      // The RPC layer admits this request's calls on this fiber: it finds the response here.
      return yield* app.pipe(Effect.locally(currentHttpResponse, response))
    })
  )

/** Both transports on `RPC_PATH`, on the gate's node server. */
const layerApp = (
  options: ServerOptions
): Layer.Layer<HttpServer.HttpServer, ServeError, DeliveryService> => {
  const listener = Layer.unwrapEffect(
    Effect.map(Gate, (gate) =>
      NodeHttpServer.layer(gate.createServer, { port: options.port ?? 0, host: options.host ?? "127.0.0.1" }))
  )
  const app = Layer.unwrapEffect(Effect.map(Gate, (gate) => DeliveryRouter.serve(httpGuard(gate)))).pipe(
    Layer.provide(Layer.mergeAll(rpcOverHttp, rpcOverWebsocket)),
    Layer.provide(handlersWith(options))
  )
  return app.pipe(Layer.provideMerge(listener), Layer.provide(layerGate(options, RPC_PATH)))
}

/** Serves the `DeliveryService` of the context on `host:port` for as long as the layer lives. */
export const layer = (options: ServerOptions = {}): Layer.Layer<never, ServeError, DeliveryService> =>
  Layer.discard(layerApp(options))

/**
 * Starts the server in the current scope and returns where it listens (with port 0, the
 * port the OS picked). It stops when the scope closes.
 */
export const serve = (
  options: ServerOptions = {}
): Effect.Effect<BoundAddress, ServeError, Scope.Scope | DeliveryService> =>
  Effect.gen(function*() {
    const context = yield* Layer.build(layerApp(options))
    const address = Context.get(context, HttpServer.HttpServer).address
    if (address._tag !== "TcpAddress") return yield* Effect.dieMessage("delivery server: expected a TCP address")
    const host = address.hostname.includes(":") ? `[${address.hostname}]` : address.hostname
    return { host: address.hostname, port: address.port, url: `http://${host}:${address.port}${RPC_PATH}` }
  })

export const DeliveryServer = { layer, serve, handlers, RPC_PATH } as const
