/**
 * `converge serve`: a delivery service over the network, stored in SQLite (the embedded
 * default) or Postgres (several instances may share one database).
 */
import type { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Console, Context, Effect, Layer, Option, Redacted } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { InvalidInput } from "../domain/Errors.ts"
import { withDriverCause } from "../domain/FailureDetail.ts"
import type { ServerOptions } from "../layers/DeliveryServer.ts"
import { DeliveryServer } from "../layers/DeliveryServer.ts"
import * as PgDeliveryStore from "../layers/PgDeliveryStore.ts"
import * as SqlDeliveryStore from "../layers/SqlDeliveryStore.ts"
import * as StoreDeliveryService from "../layers/StoreDeliveryService.ts"
import * as TsMlsCrypto from "../layers/TsMlsCrypto.ts"
import { DeliveryService } from "../services/DeliveryService.ts"
import type { DeliveryStore, DeliveryStoreError } from "../services/DeliveryStore.ts"
import { UsageError } from "./Errors.ts"
import * as Metrics from "./Metrics.ts"
import { openSqlite } from "./Profile.ts"

import { DEFAULT_SERVE_LIMITS, type ServeLimits } from "./ServeLimits.ts"

export { DEFAULT_SERVE_LIMITS, type ServeLimits } from "./ServeLimits.ts"

export interface ServeOptions extends Partial<ServeLimits> {
  readonly port: number
  readonly host: string
  readonly db: string
  readonly postgres: Option.Option<string>
  /** Serve Prometheus text on `GET /metrics` of this port (same host). */
  readonly metricsPort: Option.Option<number>
  /** Also serve XMTP's V3 gRPC API on this port (same host, same database). */
  readonly xmtpPort?: Option.Option<number>
}

/** The server options for `options`; a limit that is not a positive integer is the user's to fix. */
export const serverOptions = (options: ServeOptions): Effect.Effect<ServerOptions, InvalidInput> => {
  const limits = { ...DEFAULT_SERVE_LIMITS, ...options }
  for (const [name, value] of Object.entries(limits)) {
    if (!(name in DEFAULT_SERVE_LIMITS)) continue
    if (typeof value !== "number" || !Number.isSafeInteger(value) || value <= 0) {
      return Effect.fail(new InvalidInput({ reason: `${name} must be a positive integer, got ${String(value)}` }))
    }
  }
  const millis = (s: number) => s * 1000
  return Effect.succeed({
    port: options.port,
    host: options.host,
    maxBodyBytes: limits.maxBodyBytes,
    maxConnections: limits.maxConnections,
    maxInFlightPerConnection: limits.maxInFlight,
    maxSubscriptionsPerConnection: limits.maxSubscriptions,
    maxIdentityEntries: limits.maxIdentityEntries,
    headersTimeoutMillis: millis(limits.headersTimeout),
    requestTimeoutMillis: millis(limits.requestTimeout),
    keepAliveTimeoutMillis: millis(limits.keepAliveTimeout),
    idleTimeoutMillis: millis(limits.idleTimeout),
    slowReaderTimeoutMillis: millis(limits.slowReaderTimeout)
  })
}

/** The server's store, and the SQL client it is on (the XMTP face keeps its tables there too). */
export const storeLayer = (
  options: Pick<ServeOptions, "db" | "postgres">
): Layer.Layer<DeliveryStore | SqlClient.SqlClient, DeliveryStoreError | InvalidInput> =>
  Option.match(options.postgres, {
    onNone: () => SqlDeliveryStore.layerSqlite.pipe(Layer.provideMerge(openSqlite(options.db))),
    // A wrong URL or an unreachable server is the user's to fix: a typed error, one line.
    onSome: (url) =>
      PgDeliveryStore.layerPg().pipe(
        Layer.provideMerge(PgClient.layer({ url: Redacted.make(url) })),
        Layer.mapError((e) => new InvalidInput({ reason: `cannot use Postgres at --postgres: ${withDriverCause(e)}` }))
      )
  })

/** The topics all subscriptions of one face may follow together (`--max-subscribed-topics`). */
const subscribedTopics = (options: Pick<ServeOptions, "maxSubscribedTopics">) =>
  options.maxSubscribedTopics ?? DEFAULT_SERVE_LIMITS.maxSubscribedTopics

/** The store-backed delivery service a server runs. */
export const deliveryLayer = (options: Pick<ServeOptions, "db" | "postgres" | "maxSubscribedTopics">) =>
  StoreDeliveryService.layer({ maxSubscribedTopics: subscribedTopics(options) }).pipe(
    Layer.provide(storeLayer(options)),
    Layer.provide(TsMlsCrypto.layer())
  )

/** The code of a Node system error inside a `ServeError`, e.g. `EADDRINUSE`. */
const systemCode = (cause: unknown) =>
  typeof cause === "object" && cause !== null && "code" in cause ? String(cause.code) : undefined

const listenError = (options: ServeOptions, flag = "--port") => (error: { readonly cause: unknown }) => {
  const code = systemCode(error.cause)
  if (code === "EADDRINUSE") {
    return new UsageError({
      argument: `${flag} ${options.port}`,
      reason: `the address ${options.host}:${options.port} is already in use`,
      hint: `stop what listens there, or choose another ${flag} (0 picks a free one)`
    })
  }
  const detail = error.cause instanceof Error ? error.cause.message : String(error.cause)
  return new UsageError({ argument: `--host ${options.host}`, reason: `cannot listen on ${options.host}:${options.port}: ${detail}` })
}

/** The XMTP V3 face on `port`, with the Converge face's bounds, beside it on the same store. */
const serveXmtp = (options: ServeOptions, port: number, limits: ServerOptions) =>
  Effect.gen(function*() {
    const { XmtpServer, XmtpStore } = yield* Effect.promise(() => import("../xmtp/index.ts"))
    const store = yield* Layer.build(XmtpStore.layer).pipe(
      Effect.mapError((e) => new InvalidInput({ reason: `cannot prepare the XMTP tables: ${e.message}` }))
    )
    const address = yield* XmtpServer.serve({
      ...limits,
      port,
      host: options.host,
      maxSubscribedTopics: subscribedTopics(options)
    }).pipe(
      Effect.provide(store),
      Effect.mapError((cause) => listenError({ ...options, port }, "--xmtp-port")({ cause }))
    )
    return address.url
  })

export const serve = (options: ServeOptions) =>
  Effect.scoped(Effect.gen(function*() {
    const folder = path.dirname(path.resolve(options.db))
    if (Option.isNone(options.postgres) && !fs.existsSync(folder)) {
      return yield* new UsageError({
        argument: `--db ${options.db}`,
        reason: `the folder ${folder} does not exist`,
        hint: `create it first (mkdir -p ${folder}) or name a file in an existing folder`
      })
    }
    // Built into this scope, so the store outlives `serve`'s own setup and closes on shutdown.
    const server = yield* serverOptions(options)
    const stores = yield* Layer.build(storeLayer(options))
    const delivery = yield* Layer.build(
      StoreDeliveryService.layer({ maxSubscribedTopics: subscribedTopics(options) }).pipe(
        Layer.provide(Layer.succeedContext(stores)),
        Layer.provide(TsMlsCrypto.layer())
      )
    )
    const measured = Metrics.instrument(Context.get(delivery, DeliveryService))
    const address = yield* DeliveryServer.serve(server).pipe(
      Effect.provideService(DeliveryService, measured),
      Effect.mapError(listenError(options))
    )
    const store = Option.isSome(options.postgres) ? "postgres" : `sqlite ${options.db}`
    yield* Console.log(`converge delivery service on ${address.url} (${store})`)
    const xmtpPort = options.xmtpPort ?? Option.none()
    if (Option.isSome(xmtpPort)) {
      const url = yield* serveXmtp(options, xmtpPort.value, server).pipe(Effect.provide(stores))
      yield* Console.log(`XMTP V3 API (gRPC, h2c) on ${url}`)
    }
    if (Option.isSome(options.metricsPort)) {
      const port = options.metricsPort.value
      const url = yield* Metrics.serveMetrics(options.host, port).pipe(
        Effect.mapError((e) => listenError({ ...options, port }, "--metrics-port")({ cause: e }))
      )
      yield* Console.log(`metrics on ${url}`)
    }
    return yield* Effect.never
  }))
