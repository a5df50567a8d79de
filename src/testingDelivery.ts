/**
 * The test kit's delivery service: the store-backed service `converge serve` runs, over an
 * in-memory store, a SQLite file, or behind a real server on a loopback port; the store read
 * past authentication; and an outsider with an account.
 */
import { SqliteClient } from "@effect/sql-sqlite-node"
import { ed25519 } from "@noble/curves/ed25519.js"
import { Context, Effect, Either, Layer, Schedule, type Scope } from "effect"
import * as path from "node:path"
import { toHex } from "./domain/Bytes.ts"
import * as IdentityLog from "./domain/IdentityLog.ts"
import { serve as serveDelivery } from "./layers/DeliveryServer.ts"
import * as MemoryDeliveryStore from "./layers/MemoryDeliveryStore.ts"
import * as RpcDeliveryService from "./layers/RpcDeliveryService.ts"
import * as SqlDeliveryStore from "./layers/SqlDeliveryStore.ts"
import * as StoreDeliveryService from "./layers/StoreDeliveryService.ts"
import { authenticatedAs, installationSigner } from "./services/DeliveryAuth.ts"
import { DeliveryService } from "./services/DeliveryService.ts"
import { DeliveryStore, type StoredEntry, type Topic } from "./services/DeliveryStore.ts"
import { MlsCrypto } from "./services/MlsCrypto.ts"

/**
 * Which delivery service the network runs: always the store-backed service `converge serve`
 * runs, over an in-memory store (the default), over a SQLite file, or over the in-memory
 * store behind a real `DeliveryServer` on a loopback port, reached through the RPC client
 * (run such networks on the live clock: the RPC client's timeouts use `Clock`).
 */
export type TestDelivery = "memory" | "sqlite" | "rpc"

/** The delivery service of a test network, without faults, and the store behind it. */
export const makeDelivery = (
  delivery: TestDelivery,
  storeOptions: StoreDeliveryService.StoreDeliveryOptions,
  crypto: Context.Tag.Service<MlsCrypto>,
  dir: string
): Effect.Effect<
  { readonly service: Context.Tag.Service<DeliveryService>; readonly store: Context.Tag.Service<DeliveryStore> },
  never,
  Scope.Scope
> =>
  Effect.gen(function*() {
    const storeLayer: Layer.Layer<DeliveryStore> = delivery === "sqlite"
      ? SqlDeliveryStore.layerSqlite.pipe(
        Layer.provide(SqliteClient.layer({ filename: path.join(dir, "delivery.sqlite") })),
        Layer.orDie
      )
      : MemoryDeliveryStore.layer
    const store = Context.get(yield* Layer.build(storeLayer), DeliveryStore)
    const local = yield* StoreDeliveryService.make({ ...testRateLimit, ...storeOptions }).pipe(
      Effect.provideService(DeliveryStore, store),
      Effect.provideService(MlsCrypto, crypto)
    )
    if (delivery !== "rpc") return { service: local, store }
    const address = yield* serveDelivery({ port: 0, host: "127.0.0.1" }).pipe(
      Effect.provideService(DeliveryService, local),
      Effect.orDie
    )
    const service = yield* RpcDeliveryService.make({
      url: address.url,
      timeout: "10 seconds",
      retrySchedule: Schedule.exponential("20 millis").pipe(Schedule.intersect(Schedule.recurs(5))),
      resubscribeSchedule: Schedule.exponential("20 millis").pipe(Schedule.either(Schedule.spaced("200 millis"))),
      reconnectSchedule: Schedule.exponential("20 millis").pipe(Schedule.either(Schedule.spaced("200 millis")))
    })
    return { service, store }
  })

/**
 * Test clients make many requests without the clock moving (`TestClock`): the network's rate
 * limits are high enough never to matter unless a test sets its own.
 */
const testRateLimit: StoreDeliveryService.StoreDeliveryOptions = {
  authentication: {
    rateLimit: { requestBurst: 1e9, requestsPerSecond: 1e9, byteBurst: 1e15, bytesPerSecond: 1e15 }
  }
}

/** Reads a whole topic of the store, past any authentication: what the server holds. */
export const readAll = (store: Context.Tag.Service<DeliveryStore>, topic: Topic) =>
  Effect.gen(function*() {
    const all: Array<StoredEntry> = []
    for (;;) {
      const page = yield* store.read(topic, all.at(-1)?.sequenceId ?? 0n, 500)
      all.push(...page)
      if (page.length < 500) return all
    }
  }).pipe(Effect.orDie)

/**
 * An inbox with one registered installation that belongs to no group: an outsider with an
 * account, who can publish to any topic what the server accepts from anyone.
 */
export const registerIntruder = (service: Context.Tag.Service<DeliveryService>) =>
  Effect.gen(function*() {
    const root = ed25519.utils.randomSecretKey()
    const inboxId = IdentityLog.inboxIdOf(ed25519.getPublicKey(root))
    const secret = ed25519.utils.randomSecretKey()
    const publicKey = ed25519.getPublicKey(secret)
    const installationId = IdentityLog.installationIdOf(publicKey)
    const created = IdentityLog.signUpdate(root, inboxId, undefined, {
      _tag: "CreateInbox",
      rootPublicKey: toHex(ed25519.getPublicKey(root))
    })
    yield* service.publishIdentityUpdate(created)
    const head = Either.getOrThrow(IdentityLog.applyUpdate(undefined, created))
    yield* service.publishIdentityUpdate(IdentityLog.signUpdate(root, inboxId, head, {
      _tag: "AddInstallation",
      installationId,
      signaturePublicKey: toHex(publicKey)
    }, secret))
    return authenticatedAs(service, installationSigner(installationId, secret))
  }).pipe(Effect.orDie)

