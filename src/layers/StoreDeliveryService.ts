/**
 * The delivery service served from a `DeliveryStore` (memory, SQLite, Postgres): what
 * `converge serve` runs, and, over the in-memory store, what the tests and the simulation
 * run. One semantics for all of them (the contract the conformance suite checks):
 *
 * - The same validation, limits and typed errors: payload size, batch size, cursors, page
 *   limits, malformed ids; plus a cap on an inbox's identity log (`LimitExceeded`).
 * - Identity updates are verified with the pure `applyUpdate` against the stored log head,
 *   then appended compare-and-set on that head (re-verified if another server moved it).
 * - Key packages are decoded and their signatures verified (`MlsCrypto.keyPackageInfo`); the
 *   package must name the uploading installation, which must be a current installation of
 *   the inbox the package names. One key package per installation is kept: the latest.
 * - Subscriptions join the store's changes first, then read the backlog in pages, then read
 *   after the last delivered id whenever their topic changes: no gap, no duplicate, strict
 *   order per topic, also when other servers append to the store. One reader of the feed per
 *   service hands each change to the subscriptions of its topic (`TopicFanOut`), and the
 *   topics followed server-wide are bounded (`maxSubscribedTopics`, `LimitExceeded`).
 *
 * Parts: `StoreGroupMessages`, `StoreWelcomes`, `StoreKeyPackages`, `StoreIdentity` (the
 * operations), `StoreTopicPages` and `StoreTopicFollower` (reading and following a topic),
 * `StoreDeliveryContext` (what they share).
 */
import { Effect, Layer, type Scope } from "effect"
import type { DeliveryError } from "../domain/Errors.ts"
import { DeliveryService } from "../services/DeliveryService.ts"
import { DeliveryStore, type DeliveryStoreError } from "../services/DeliveryStore.ts"
import { MlsCrypto } from "../services/MlsCrypto.ts"
import { makeChecks } from "./DeliveryRequests.ts"
import * as MemoryDeliveryStore from "./MemoryDeliveryStore.ts"
import * as Authenticator from "./RequestAuthenticator.ts"
import { type StoreDeliveryContext, unavailable } from "./StoreDeliveryContext.ts"
import * as StoreGroupMessages from "./StoreGroupMessages.ts"
import * as StoreIdentity from "./StoreIdentity.ts"
import * as StoreKeyPackages from "./StoreKeyPackages.ts"
import * as StoreWelcomes from "./StoreWelcomes.ts"
import * as SyncQuery from "./SyncQuery.ts"
import * as TopicFanOut from "./TopicFanOut.ts"
import { DEFAULT_MAX_IDENTITY_ENTRIES } from "./TransportLimits.ts"
import * as TsMlsCrypto from "./TsMlsCrypto.ts"

export interface StoreDeliveryOptions {
  /** Largest accepted payload (group message, welcome, key package) in bytes. Default 1 MiB. */
  readonly maxPayloadBytes?: number
  /** Default page size of queries, and the cap on a query's `limit`. Default 100. */
  readonly pageSize?: number
  /** Most items in one send or batch-query call. Default 50. */
  readonly maxBatch?: number
  /** Most entries in one inbox's identity log. Default 1000. */
  readonly maxIdentityUpdates?: number
  /**
   * How often an idle subscription re-reads its topic even without a change notification:
   * a safety net for lost notifications. Default 5 seconds.
   */
  readonly pollMillis?: number
  /**
   * Most topics all subscriptions follow together (a topic followed by two subscriptions counts
   * twice); past it a subscription is refused with a retryable `LimitExceeded`. Default 1,000,000.
   */
  readonly maxSubscribedTopics?: number
  /** Request authentication: the time window, replay memory and per-installation rate limits. */
  readonly authentication?: Authenticator.AuthenticatorOptions
}

type Service = DeliveryService["Type"]

const DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
const DEFAULT_PAGE_SIZE = 100
const DEFAULT_MAX_BATCH = 50
const DEFAULT_MAX_IDENTITY_UPDATES = 1000
const DEFAULT_POLL_MILLIS = 5000

export const make = (
  options: StoreDeliveryOptions = {}
): Effect.Effect<Service, never, DeliveryStore | MlsCrypto | Scope.Scope> =>
  Effect.gen(function*() {
    const store = yield* DeliveryStore
    const crypto = yield* MlsCrypto
    const maxPayloadBytes = options.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES
    const pageSize = options.pageSize ?? DEFAULT_PAGE_SIZE
    const maxBatch = options.maxBatch ?? DEFAULT_MAX_BATCH
    const maxIdentityUpdates = options.maxIdentityUpdates ?? DEFAULT_MAX_IDENTITY_UPDATES
    const pollMillis = options.pollMillis ?? DEFAULT_POLL_MILLIS
    const maxSubscribedTopics = options.maxSubscribedTopics ?? TopicFanOut.DEFAULT_MAX_SUBSCRIBED_TOPICS
    const limits = [
      ["maxPayloadBytes", maxPayloadBytes],
      ["pageSize", pageSize],
      ["maxBatch", maxBatch],
      ["maxIdentityUpdates", maxIdentityUpdates],
      ["pollMillis", pollMillis],
      ["maxSubscribedTopics", maxSubscribedTopics]
    ] as const
    for (const [name, value] of limits) {
      if (!Number.isInteger(value) || value <= 0) {
        return yield* Effect.dieMessage(`StoreDeliveryService: ${name} must be a positive integer, got ${value}`)
      }
    }

    /** Runs a store operation, reporting its failure as a retryable `Unavailable`. */
    const stored = <A>(effect: Effect.Effect<A, DeliveryStoreError>): Effect.Effect<A, DeliveryError> =>
      Effect.catchAll(effect, unavailable)

    const { authenticate } = Authenticator.make(store, stored, options.authentication)
    const c: StoreDeliveryContext = {
      store,
      crypto,
      maxPayloadBytes,
      pageSize,
      maxIdentityUpdates,
      pollMillis,
      stored,
      checks: makeChecks({ maxPayloadBytes, pageSize, maxBatch }),
      authenticate,
      fanOut: yield* TopicFanOut.make(store, maxSubscribedTopics)
    }
    const batchQueryGroupMessages = StoreGroupMessages.batchQueryGroupMessages(c)
    const syncQuery = SyncQuery.make({
      store,
      stored,
      batchQueryGroupMessages,
      maxIdentityUpdates,
      maxEntries: DEFAULT_MAX_IDENTITY_ENTRIES
    })

    return {
      sendGroupMessages: StoreGroupMessages.sendGroupMessages(c),
      sendGroupMessagesIf: StoreGroupMessages.sendGroupMessagesIf(c),
      queryGroupMessages: StoreGroupMessages.queryGroupMessages(c),
      batchQueryGroupMessages,
      syncQuery,
      subscribeGroupMessages: StoreGroupMessages.subscribeGroupMessages(c),
      sendWelcomeMessages: StoreWelcomes.sendWelcomeMessages(c),
      queryWelcomeMessages: StoreWelcomes.queryWelcomeMessages(c),
      subscribeWelcomeMessages: StoreWelcomes.subscribeWelcomeMessages(c),
      uploadKeyPackage: StoreKeyPackages.uploadKeyPackage(c),
      fetchKeyPackages: StoreKeyPackages.fetchKeyPackages(c),
      publishIdentityUpdate: StoreIdentity.publishIdentityUpdate(c),
      getIdentityUpdates: StoreIdentity.getIdentityUpdates(c)
    }
  })

/**
 * The delivery service over whatever `DeliveryStore` is provided, verifying key packages with
 * the provided `MlsCrypto`.
 */
export const layer = (
  options?: StoreDeliveryOptions
): Layer.Layer<DeliveryService, never, DeliveryStore | MlsCrypto> => Layer.scoped(DeliveryService, make(options))

/**
 * An in-process delivery service: this service over a fresh in-memory store, verifying key
 * packages with ts-mls. Each build of the layer is one separate network.
 */
export const layerMemory = (options?: StoreDeliveryOptions): Layer.Layer<DeliveryService> =>
  layer(options).pipe(Layer.provide(MemoryDeliveryStore.layer), Layer.provide(TsMlsCrypto.layer()))