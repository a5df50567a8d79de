/**
 * `converge serve`: a delivery service over the network, stored in SQLite (the embedded
 * default) or Postgres (several instances may share one database).
 */
import { PgClient } from "@effect/sql-pg"
import { Console, Effect, Layer, Option, Redacted } from "effect"
import { InvalidInput } from "../domain/Errors.ts"
import { DeliveryServer } from "../layers/DeliveryServer.ts"
import * as PgDeliveryStore from "../layers/PgDeliveryStore.ts"
import * as SqlDeliveryStore from "../layers/SqlDeliveryStore.ts"
import * as StoreDeliveryService from "../layers/StoreDeliveryService.ts"
import * as TsMlsCrypto from "../layers/TsMlsCrypto.ts"
import type { DeliveryStore, DeliveryStoreError } from "../services/DeliveryStore.ts"
import { openSqlite } from "./Profile.ts"

export interface ServeOptions {
  readonly port: number
  readonly host: string
  readonly db: string
  readonly postgres: Option.Option<string>
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
    const delivery = yield* Layer.build(deliveryLayer(options))
    const address = yield* DeliveryServer.serve({ port: options.port, host: options.host }).pipe(Effect.provide(delivery))
    const store = Option.isSome(options.postgres) ? "postgres" : `sqlite ${options.db}`
    yield* Console.log(`converge delivery service on ${address.url} (${store})`)
    return yield* Effect.never
  }))
