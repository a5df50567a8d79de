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
 * - Subscriptions subscribe to the store's changes first, then read the backlog in pages,
 *   then read after the last delivered id whenever their topic changes: no gap, no
 *   duplicate, strict order per topic, also when other servers append to the store.
 */
import { Chunk, Effect, Either, Layer, Queue, type Scope, Stream } from "effect"
import { checkFilterCount, checkIdCount, invalidRequest, makeChecks, pageMayContinue, SPAN } from "./DeliveryRequests.ts"
import { DeliveryError, InvalidIdentityUpdate } from "../domain/Errors.ts"
import { applyUpdate } from "../domain/IdentityLog.ts"
import { GroupId, InstallationId } from "../domain/Ids.ts"
import {
  GroupMessageEnvelope,
  type GroupMessageInput,
  type IdentityUpdate,
  type KeyPackageUpload,
  QueryPage,
  WelcomeMessageEnvelope,
  type WelcomeMessageInput
} from "../domain/Wire.ts"
import {
  DeliveryService,
  type FetchedKeyPackage,
  type GroupQuery,
  type IdentityQuery,
  type InboxUpdates,
  type WelcomeQuery
} from "../services/DeliveryService.ts"
import {
  ANY_TOPIC,
  DeliveryStore,
  type DeliveryStoreError,
  groupTopic,
  type StoredEntry,
  type Topic,
  type TopicChange,
  welcomeTopic
} from "../services/DeliveryStore.ts"
import { MlsCrypto } from "../services/MlsCrypto.ts"
import { requestDigests } from "../domain/RequestAuth.ts"
import * as MemoryDeliveryStore from "./MemoryDeliveryStore.ts"
import * as Authenticator from "./RequestAuthenticator.ts"
import * as SyncQuery from "./SyncQuery.ts"
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
  /** Request authentication: the time window, replay memory and per-installation rate limits. */
  readonly authentication?: Authenticator.AuthenticatorOptions
}

type Service = DeliveryService["Type"]

const DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
const DEFAULT_PAGE_SIZE = 100
const DEFAULT_MAX_BATCH = 50
const DEFAULT_MAX_IDENTITY_UPDATES = 1000
const DEFAULT_POLL_MILLIS = 5000
/** Most payload bytes a subscription holds from announcements before it reads the store instead. */
const MAX_ANNOUNCED_BYTES = 256 * 1024
/** How often an identity update is re-verified when other writers keep moving the log head. */
const STALE_RETRIES = 8

const invalidKeyPackage = (detail: string) =>
  new DeliveryError({ reason: "InvalidKeyPackage", retryable: false, detail })

/**
 * A store failure: the outcome is unknown to the caller, and every operation is safe to retry.
 * The caller learns which operation failed; the cause (SQL, connection details) stays in the
 * server's log.
 */
const unavailable = (error: DeliveryStoreError) =>
  Effect.logWarning(`DeliveryService: store failed in ${error.operation}`, error.cause).pipe(
    Effect.zipRight(
      Effect.fail(
        new DeliveryError({
          reason: "Unavailable",
          retryable: true,
          detail: `the delivery store is unavailable (${error.operation})`
        })
      )
    )
  )

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
    const limits = [
      ["maxPayloadBytes", maxPayloadBytes],
      ["pageSize", pageSize],
      ["maxBatch", maxBatch],
      ["maxIdentityUpdates", maxIdentityUpdates],
      ["pollMillis", pollMillis]
    ] as const
    for (const [name, value] of limits) {
      if (!Number.isInteger(value) || value <= 0) {
        return yield* Effect.dieMessage(`StoreDeliveryService: ${name} must be a positive integer, got ${value}`)
      }
    }

    /** Runs a store operation, reporting its failure as a retryable `Unavailable`. */
    const stored = <A>(effect: Effect.Effect<A, DeliveryStoreError>): Effect.Effect<A, DeliveryError> =>
      Effect.catchAll(effect, unavailable)

    // ---- validation (shared with every delivery-service layer) ----

    const checks = makeChecks({ maxPayloadBytes, pageSize, maxBatch })
    const { authenticate } = Authenticator.make(store, stored, options.authentication)
    const forbidden = (detail: string) => new DeliveryError({ reason: "Forbidden", retryable: false, detail })

    /**
     * A group topic takes only MLS group messages of its own group (the server reads the
     * header, as xmtp-node-go does): nobody can fill a topic with bytes no member can use, and
     * a topic comes into existence only with a well-formed message for it.
     */
    const checkGroupMessage = (m: GroupMessageInput) =>
      crypto.inspect(m.payload).pipe(
        Effect.mapError((e) => invalidRequest(`sendGroupMessages to ${m.groupId}: not an MLS message (${e.detail})`)),
        Effect.flatMap((header) =>
          header.groupId === m.groupId &&
            (header.kind === "application" || header.kind === "commit" || header.kind === "proposal")
            ? Effect.void
            : Effect.fail(invalidRequest(
              `sendGroupMessages to ${m.groupId}: a ${header.kind} message of group ${header.groupId ?? "none"}`
            ))
        )
      )
    const checkPayload = checks.payload
    const checkBatch = checks.batch
    const checkCursor = checks.cursor
    const checkLimit = checks.limit
    const checkGroupId = checks.groupId
    const checkInstallationId = checks.installationId

    // ---- topics ----

    // Not validated again: the id was checked on the way in and the store only holds what
    // passed the checks (validating each field cost ~0.08 ms per delivered message).
    const toGroupEnvelope = (groupId: GroupId) => (e: StoredEntry) =>
      new GroupMessageEnvelope({ groupId, sequenceId: e.sequenceId, serverTimeNs: e.serverTimeNs, payload: e.payload }, true)
    const toWelcomeEnvelope = (installationId: InstallationId) => (e: StoredEntry) =>
      new WelcomeMessageEnvelope({
        installationId,
        sequenceId: e.sequenceId,
        serverTimeNs: e.serverTimeNs,
        payload: e.payload
      }, true)

    /** Ascending after `after`, at most `limit`; `next` only when the page is full. */
    const page = <E extends { readonly sequenceId: bigint }>(
      topic: Topic,
      after: bigint,
      limit: number,
      toEnvelope: (e: StoredEntry) => E
    ): Effect.Effect<QueryPage<E>, DeliveryError> =>
      Effect.map(stored(store.read(topic, after, limit)), (entries) => {
        const items = entries.map(toEnvelope)
        const last = items[items.length - 1]
        return new QueryPage(
          items,
          pageMayContinue(entries, limit, maxPayloadBytes) && last !== undefined ? last.sequenceId : undefined
        )
      })

    /**
     * Replays the topic after `after`, then follows it live. The change subscription is opened
     * before the first read, so every append committed after that read is announced to it.
     * Once caught up, the entries a change carries (the writer's own commits) are handed on
     * without reading the store when they follow the last delivered id without a gap; any
     * other change, a gap, or too many waiting entries mean a read, as without them.
     */
    const follow = <E>(topic: Topic, after: bigint, toEnvelope: (e: StoredEntry) => E): Stream.Stream<E, DeliveryError> =>
      Stream.unwrapScoped(
        Effect.gen(function*() {
          const changes = yield* store.changes
          let lastDelivered = after
          /** Entries announced since the last pull, and whether something announced needs a read. */
          let announced: Array<StoredEntry> = []
          let announcedBytes = 0
          let mustRead = false
          /** Notes a change; whether it may concern this topic beyond what was delivered. */
          const note = (change: TopicChange): boolean => {
            if (change.topic === ANY_TOPIC) {
              mustRead = true
              return true
            }
            if (change.topic !== topic || change.sequenceId <= lastDelivered) return false
            // Another announcement of entries already given (Postgres: the NOTIFY after the
            // writer's own announcement): covered, if they turn out to follow on without a gap.
            const given = announced[announced.length - 1]
            if (change.entries === undefined && given !== undefined && change.sequenceId <= given.sequenceId) return false
            const bytes = change.entries?.reduce((n, e) => n + e.payload.length, 0) ?? 0
            if (
              change.entries === undefined || announced.length + change.entries.length > pageSize ||
              announcedBytes + bytes > MAX_ANNOUNCED_BYTES
            ) {
              // Held back by size (or never given): the store has them.
              announced = []
              announcedBytes = 0
              mustRead = true
            } else {
              announced.push(...change.entries)
              announcedBytes += bytes
            }
            return true
          }
          // Drain the change queue all the time into one flag (the latch) and a bounded buffer,
          // so a subscriber that is slow to pull holds bounded memory here, however busy the
          // other topics are.
          const changed = yield* Effect.makeLatch(false)
          yield* Queue.take(changes).pipe(
            Effect.zip(Queue.takeAll(changes)),
            Effect.flatMap(([first, rest]) => {
              let concerned = note(first)
              for (const change of rest) concerned = note(change) || concerned
              return concerned ? changed.open : Effect.void
            }),
            Effect.forever,
            Effect.forkScoped
          )
          /**
           * Caught up: waits for a change of this topic (or the poll interval, a safety net),
           * then closes the latch before the read, so a change during the read re-opens it.
           */
          const awaitChange = changed.await.pipe(
            Effect.timeoutOption(pollMillis),
            Effect.zipRight(changed.close)
          )
          /** Set once a read came back short: the topic holds nothing more until it changes. */
          let caughtUp = false
          const pull = Effect.gen(function*() {
            if (caughtUp) yield* awaitChange
            const given = announced
            const read = mustRead
            announced = []
            announcedBytes = 0
            mustRead = false
            if (caughtUp && !read && given.length > 0) {
              const fresh = given.filter((e) => e.sequenceId > lastDelivered)
              if (fresh.every((e, i) => e.sequenceId === lastDelivered + 1n + BigInt(i))) {
                const last = fresh[fresh.length - 1]
                if (last !== undefined) lastDelivered = last.sequenceId
                return fresh.map((e) => toEnvelope({ ...e, payload: e.payload.slice() }))
              }
            }
            const entries = yield* stored(store.read(topic, lastDelivered, pageSize))
            caughtUp = !pageMayContinue(entries, pageSize, maxPayloadBytes)
            // Strictly above the last delivered id, in order: a guard that costs nothing.
            const fresh = entries.filter((e) => e.sequenceId > lastDelivered)
            const last = fresh[fresh.length - 1]
            if (last !== undefined) lastDelivered = last.sequenceId
            return fresh.map(toEnvelope)
          })
          return Stream.repeatEffectChunk(Effect.map(pull, (items) => Chunk.unsafeFromArray(items)))
        })
      )

    /** A welcome topic is read by its own installation only. */
    const ownWelcomes = (
      op: "queryWelcomeMessages" | "subscribeWelcomeMessages",
      installationId: InstallationId,
      digest: string
    ) =>
      Effect.flatMap(authenticate(op, digest), (caller) =>
        caller.installationId === installationId
          ? Effect.void
          : Effect.fail(forbidden(`${op}: only ${installationId} may read its welcomes`)))

    // ---- MlsApi ----

    const sendGroupMessages: Service["sendGroupMessages"] = (messages) =>
      Effect.gen(function*() {
        // Validate everything before storing anything: a send is all or nothing.
        yield* checkBatch(messages, "sendGroupMessages")
        for (const m of messages) {
          yield* checkGroupId(m.groupId, "sendGroupMessages")
          yield* checkPayload(m.payload, `sendGroupMessages to ${m.groupId}`)
        }
        yield* authenticate(
          "sendGroupMessages",
          requestDigests.sendGroupMessages(messages),
          messages.reduce((n, m) => n + m.payload.length, 0)
        )
        for (const m of messages) yield* checkGroupMessage(m)
        const entries = yield* stored(
          store.append(messages.map((m: GroupMessageInput) => ({ topic: groupTopic(m.groupId), payload: m.payload })))
        )
        return entries.map((e, i) => toGroupEnvelope(messages[i]!.groupId)(e))
      }).pipe(Effect.withSpan("DeliveryService.sendGroupMessages", SPAN))

    const queryGroupMessages: Service["queryGroupMessages"] = (query) =>
      Effect.gen(function*() {
        yield* checkGroupId(query.groupId, "queryGroupMessages")
        yield* checkCursor(query.afterSequenceId, "queryGroupMessages")
        const limit = yield* checkLimit(query.limit, "queryGroupMessages")
        return yield* page(groupTopic(query.groupId), query.afterSequenceId, limit, toGroupEnvelope(query.groupId))
      }).pipe(Effect.withSpan("DeliveryService.queryGroupMessages", SPAN))

    const batchQueryGroupMessages: Service["batchQueryGroupMessages"] = (queries) =>
      Effect.gen(function*() {
        yield* checkBatch(queries, "batchQueryGroupMessages")
        // Validate all first, so a bad query anywhere fails the whole call.
        const limits = yield* Effect.forEach(queries, (q: GroupQuery) =>
          Effect.gen(function*() {
            yield* checkGroupId(q.groupId, "batchQueryGroupMessages")
            yield* checkCursor(q.afterSequenceId, "batchQueryGroupMessages")
            return yield* checkLimit(q.limit, "batchQueryGroupMessages")
          }))
        return yield* Effect.forEach(
          queries,
          (q, i) => page(groupTopic(q.groupId), q.afterSequenceId, limits[i] ?? pageSize, toGroupEnvelope(q.groupId)),
          { concurrency: 4 }
        )
      }).pipe(Effect.withSpan("DeliveryService.batchQueryGroupMessages", SPAN))

    const subscribeGroupMessages: Service["subscribeGroupMessages"] = (filters) =>
      Stream.unwrap(
        Effect.gen(function*() {
          yield* checkFilterCount(filters, "subscribeGroupMessages")
          for (const f of filters) {
            yield* checkGroupId(f.groupId, "subscribeGroupMessages")
            yield* checkCursor(f.afterSequenceId, "subscribeGroupMessages")
          }
          // One stream per topic: several filters for one group follow it from the lowest cursor.
          const cursors = new Map<GroupId, bigint>()
          for (const f of filters) {
            const seen = cursors.get(f.groupId)
            cursors.set(f.groupId, seen === undefined || f.afterSequenceId < seen ? f.afterSequenceId : seen)
          }
          // No filters: nothing to follow, so the stream ends at once.
          return Stream.mergeAll(
            Array.from(cursors, ([groupId, after]) => follow(groupTopic(groupId), after, toGroupEnvelope(groupId))),
            { concurrency: "unbounded" }
          )
        })
      ).pipe(Stream.withSpan("DeliveryService.subscribeGroupMessages", SPAN))

    const sendWelcomeMessages: Service["sendWelcomeMessages"] = (messages) =>
      Effect.gen(function*() {
        yield* checkBatch(messages, "sendWelcomeMessages")
        for (const m of messages) {
          yield* checkInstallationId(m.installationId, "sendWelcomeMessages")
          yield* checkPayload(m.payload, `sendWelcomeMessages to ${m.installationId}`)
        }
        yield* authenticate(
          "sendWelcomeMessages",
          requestDigests.sendWelcomeMessages(messages),
          messages.reduce((n, m) => n + m.payload.length, 0)
        )
        const entries = yield* stored(
          store.append(
            messages.map((m: WelcomeMessageInput) => ({ topic: welcomeTopic(m.installationId), payload: m.payload }))
          )
        )
        return entries.map((e, i) => toWelcomeEnvelope(messages[i]!.installationId)(e))
      }).pipe(Effect.withSpan("DeliveryService.sendWelcomeMessages", SPAN))

    const queryWelcomeMessages: Service["queryWelcomeMessages"] = (query: WelcomeQuery) =>
      Effect.gen(function*() {
        yield* checkInstallationId(query.installationId, "queryWelcomeMessages")
        yield* checkCursor(query.afterSequenceId, "queryWelcomeMessages")
        const limit = yield* checkLimit(query.limit, "queryWelcomeMessages")
        yield* ownWelcomes(
          "queryWelcomeMessages",
          query.installationId,
          requestDigests.queryWelcomeMessages(query)
        )
        return yield* page(
          welcomeTopic(query.installationId),
          query.afterSequenceId,
          limit,
          toWelcomeEnvelope(query.installationId)
        )
      }).pipe(Effect.withSpan("DeliveryService.queryWelcomeMessages", SPAN))

    const subscribeWelcomeMessages: Service["subscribeWelcomeMessages"] = (filter) =>
      Stream.unwrap(
        Effect.gen(function*() {
          yield* checkInstallationId(filter.installationId, "subscribeWelcomeMessages")
          yield* checkCursor(filter.afterSequenceId, "subscribeWelcomeMessages")
          yield* ownWelcomes(
            "subscribeWelcomeMessages",
            filter.installationId,
            requestDigests.subscribeWelcomeMessages(filter)
          )
          return follow(
            welcomeTopic(filter.installationId),
            filter.afterSequenceId,
            toWelcomeEnvelope(filter.installationId)
          )
        })
      ).pipe(Stream.withSpan("DeliveryService.subscribeWelcomeMessages", SPAN))

    const uploadKeyPackage: Service["uploadKeyPackage"] = (upload: KeyPackageUpload) =>
      Effect.gen(function*() {
        yield* checkInstallationId(upload.installationId, "uploadKeyPackage")
        yield* checkPayload(upload.keyPackage, `uploadKeyPackage for ${upload.installationId}`)
        const caller = yield* authenticate(
          "uploadKeyPackage",
          requestDigests.uploadKeyPackage(upload),
          upload.keyPackage.length
        )
        if (caller.installationId !== upload.installationId) {
          return yield* Effect.fail(forbidden(`uploadKeyPackage: only ${upload.installationId} may upload its key package`))
        }
        // Decode and verify before anything is stored: signatures, lifetime, and that the
        // leaf's installation id is the hash of its signature key.
        const info = yield* crypto.keyPackageInfo(upload.keyPackage).pipe(
          Effect.mapError((error) =>
            invalidKeyPackage(`key package for ${upload.installationId} does not verify: ${error.message}`)
          )
        )
        if (info.installationId !== upload.installationId) {
          return yield* Effect.fail(
            invalidKeyPackage(
              `key package names installation ${info.installationId}, uploaded for ${upload.installationId}`
            )
          )
        }
        // Stored only if the installation is (still) a current installation of the inbox its
        // credential names: checked with the write, so a concurrent revocation wins cleanly.
        const accepted = yield* stored(store.putKeyPackage(upload.installationId, info.inboxId, upload.keyPackage))
        if (!accepted) {
          return yield* Effect.fail(
            invalidKeyPackage(
              `installation ${upload.installationId} is not a current installation of inbox ${info.inboxId}`
            )
          )
        }
      }).pipe(Effect.withSpan("DeliveryService.uploadKeyPackage", SPAN))

    const fetchKeyPackages: Service["fetchKeyPackages"] = (installationIds) =>
      Effect.gen(function*() {
        yield* checkIdCount(installationIds, "fetchKeyPackages")
        for (const id of installationIds) yield* checkInstallationId(id, "fetchKeyPackages")
        if (installationIds.length === 0) return []
        const found = yield* stored(store.getKeyPackages(installationIds))
        return installationIds.map((installationId): FetchedKeyPackage => ({
          installationId,
          keyPackage: found.get(installationId)
        }))
      }).pipe(Effect.withSpan("DeliveryService.fetchKeyPackages", SPAN))

    // ---- IdentityApi ----

    const publishIdentityUpdate: Service["publishIdentityUpdate"] = (update: IdentityUpdate) => {
      const attempt = (retriesLeft: number): Effect.Effect<
        Effect.Effect.Success<ReturnType<Service["publishIdentityUpdate"]>>,
        DeliveryError | InvalidIdentityUpdate
      > =>
        Effect.gen(function*() {
          const state = yield* stored(store.loadInbox(update.inboxId))
          const applied = applyUpdate(state, update)
          if (Either.isLeft(applied)) return yield* Effect.fail(applied.left)
          if (state !== undefined && state.sequence >= maxIdentityUpdates) {
            return yield* Effect.fail(
              new DeliveryError({
                reason: "LimitExceeded",
                retryable: false,
                detail: `identity log of inbox ${update.inboxId} is full (${maxIdentityUpdates} entries)`
              })
            )
          }
          const result = yield* stored(store.appendIdentityUpdate(update, applied.right.headHash))
          switch (result._tag) {
            case "Appended":
              return result.envelope
            case "InstallationTaken":
              // An installation key belongs to one inbox; otherwise a squatter could claim it
              // and, by revoking it, drop the real owner's key package.
              return yield* Effect.fail(
                new InvalidIdentityUpdate({
                  inboxId: update.inboxId,
                  reason: update.action._tag === "AddInstallation"
                    ? `installation ${update.action.installationId} already belongs to another inbox`
                    : "installation already belongs to another inbox"
                })
              )
            case "Stale":
              // Another writer moved the log head between our read and our write: verify again
              // against the new head (a replay of the winning entry then fails as a replay).
              if (retriesLeft <= 0) {
                return yield* Effect.fail(
                  new DeliveryError({
                    reason: "Unavailable",
                    retryable: true,
                    detail: `identity log of inbox ${update.inboxId} kept changing; try again`
                  })
                )
              }
              return yield* attempt(retriesLeft - 1)
          }
        })
      return attempt(STALE_RETRIES).pipe(Effect.withSpan("DeliveryService.publishIdentityUpdate", SPAN))
    }

    const getIdentityUpdates: Service["getIdentityUpdates"] = (queries: ReadonlyArray<IdentityQuery>) =>
      Effect.gen(function*() {
        yield* checkIdCount(queries, "getIdentityUpdates")
        for (const q of queries) {
          if (!Number.isInteger(q.afterSequence) || q.afterSequence < 0) {
            return yield* Effect.fail(
              invalidRequest(`getIdentityUpdates: afterSequence must be a non-negative integer, got ${q.afterSequence}`)
            )
          }
        }
        return yield* Effect.forEach(
          queries,
          (q) =>
            Effect.map(
              stored(store.identityUpdates(q.inboxId, q.afterSequence)),
              (updates): InboxUpdates => ({ inboxId: q.inboxId, updates })
            ),
          { concurrency: 4 }
        )
      }).pipe(Effect.withSpan("DeliveryService.getIdentityUpdates", SPAN))

    const syncQuery = SyncQuery.make({
      store,
      stored,
      batchQueryGroupMessages,
      maxIdentityUpdates,
      maxEntries: DEFAULT_MAX_IDENTITY_ENTRIES
    })

    return {
      sendGroupMessages,
      queryGroupMessages,
      batchQueryGroupMessages,
      syncQuery,
      subscribeGroupMessages,
      sendWelcomeMessages,
      queryWelcomeMessages,
      subscribeWelcomeMessages,
      uploadKeyPackage,
      fetchKeyPackages,
      publishIdentityUpdate,
      getIdentityUpdates
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
