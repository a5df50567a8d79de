/**
 * `converge serve`: a delivery service over the network, stored in SQLite (the embedded
 * default) or Postgres (several instances may share one database).
 */
import { PgClient } from "@effect/sql-pg"
import { Console, Effect, Layer, Option, Redacted } from "effect"
import { InvalidInput } from "../domain/Errors.ts"
import { DEFAULT_MAX_IDENTITY_ENTRIES, DeliveryServer, type ServerOptions } from "../layers/DeliveryServer.ts"
import * as PgDeliveryStore from "../layers/PgDeliveryStore.ts"
import { DEFAULT_TRANSPORT_LIMITS } from "../layers/ServerLimits.ts"
import * as SqlDeliveryStore from "../layers/SqlDeliveryStore.ts"
import * as StoreDeliveryService from "../layers/StoreDeliveryService.ts"
import * as TsMlsCrypto from "../layers/TsMlsCrypto.ts"
import type { DeliveryStore, DeliveryStoreError } from "../services/DeliveryStore.ts"
import { openSqlite } from "./Profile.ts"

/** The limits `converge serve` takes, in the units of its options (timeouts in seconds). */
export interface ServeLimits {
  readonly maxBodyBytes: number
  readonly maxConnections: number
  readonly maxInFlight: number
  readonly maxSubscriptions: number
  readonly maxIdentityEntries: number
  readonly headersTimeout: number
  readonly requestTimeout: number
  readonly keepAliveTimeout: number
  readonly idleTimeout: number
  readonly slowReaderTimeout: number
}

const seconds = (millis: number) => millis / 1000

export const DEFAULT_SERVE_LIMITS: ServeLimits = {
  maxBodyBytes: DEFAULT_TRANSPORT_LIMITS.maxBodyBytes,
  maxConnections: DEFAULT_TRANSPORT_LIMITS.maxConnections,
  maxInFlight: DEFAULT_TRANSPORT_LIMITS.maxInFlightPerConnection,
  maxSubscriptions: DEFAULT_TRANSPORT_LIMITS.maxSubscriptionsPerConnection,
  maxIdentityEntries: DEFAULT_MAX_IDENTITY_ENTRIES,
  headersTimeout: seconds(DEFAULT_TRANSPORT_LIMITS.headersTimeoutMillis),
  requestTimeout: seconds(DEFAULT_TRANSPORT_LIMITS.requestTimeoutMillis),
  keepAliveTimeout: seconds(DEFAULT_TRANSPORT_LIMITS.keepAliveTimeoutMillis),
  idleTimeout: seconds(DEFAULT_TRANSPORT_LIMITS.idleTimeoutMillis),
  slowReaderTimeout: seconds(DEFAULT_TRANSPORT_LIMITS.slowReaderTimeoutMillis)
}

export interface ServeOptions extends Partial<ServeLimits> {
  readonly port: number
  readonly host: string
  readonly db: string
  readonly postgres: Option.Option<string>
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

/** The store-backed delivery service a server runs. */
export const deliveryLayer = (options: Pick<ServeOptions, "db" | "postgres">) => {
  const store: Layer.Layer<DeliveryStore, DeliveryStoreError | InvalidInput> = Option.match(options.postgres, {
    onNone: () => SqlDeliveryStore.layerSqlite.pipe(Layer.provide(openSqlite(options.db))),
    // A wrong URL or an unreachable server is the user's to fix: a typed error, one line.
    onSome: (url) =>
      PgDeliveryStore.layerPg().pipe(
        Layer.provide(PgClient.layer({ url: Redacted.make(url) })),
        Layer.mapError((e) => new InvalidInput({ reason: `cannot use Postgres at --postgres: ${e.message}` }))
      )
  })
  return StoreDeliveryService.layer().pipe(Layer.provide(store), Layer.provide(TsMlsCrypto.layer()))
}

export const serve = (options: ServeOptions) =>
  Effect.scoped(Effect.gen(function*() {
    // Built into this scope, so the store outlives `serve`'s own setup and closes on shutdown.
    const server = yield* serverOptions(options)
    const delivery = yield* Layer.build(deliveryLayer(options))
    const address = yield* DeliveryServer.serve(server).pipe(Effect.provide(delivery))
    const store = Option.isSome(options.postgres) ? "postgres" : `sqlite ${options.db}`
    yield* Console.log(`converge delivery service on ${address.url} (${store})`)
    return yield* Effect.never
  }))
