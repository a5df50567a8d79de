/**
 * An in-process delivery service with the ordering semantics of the real one, plus fault
 * injection for tests.
 *
 * - Every group and every installation (for welcomes) has its own topic. Its sequence ids
 *   start at 1, increase strictly and leave no gaps. Server timestamps come from Effect's
 *   `Clock`, so `TestClock` drives them.
 * - A single lock covers allocate + append + publish, so no subscriber ever sees ids out
 *   of order. Reads run without the lock: appends are synchronous, so a reader always sees
 *   a consistent prefix of a topic.
 * - Subscriptions subscribe to the topic's PubSub first, then replay the backlog, then
 *   forward live envelopes above the last id they delivered. This leaves no gap and no
 *   duplicate, even while publishers run concurrently.
 * - Identity updates are verified with the pure `applyUpdate` before they are stored. The
 *   resulting installation -> inbox index decides who may upload key packages.
 * - Faults (`FaultControls`) never change what is stored or its order: a dropped request has
 *   no effect, a lost response hides an effect that happened, and the subscription faults
 *   (duplicate, pause, hold) change only when and how often subscribers are told.
 */
import {
  Clock,
  type Context,
  Effect,
  Either,
  HashSet,
  PubSub,
  Ref,
  Schema,
  type Scope,
  Stream,
  SubscriptionRef
} from "effect"
import { bytesEqual, sha256Hex } from "../domain/Bytes.ts"
import { invalidRequest, makeChecks } from "./DeliveryRequests.ts"
import { DeliveryError, InvalidIdentityUpdate } from "../domain/Errors.ts"
import { applyUpdate, type InboxState } from "../domain/IdentityLog.ts"
import { GroupId, type InboxId, InstallationId } from "../domain/Ids.ts"
import {
  GroupMessageEnvelope,
  type GroupMessageInput,
  type IdentityUpdate,
  IdentityUpdateEnvelope,
  type KeyPackageUpload,
  QueryPage,
  WelcomeMessageEnvelope,
  type WelcomeMessageInput
} from "../domain/Wire.ts"
// Type-only: the port module imports this one as a value, so a value import back would be circular.
import type {
  DeliveryService,
  FetchedKeyPackage,
  GroupQuery,
  IdentityQuery,
  InboxUpdates,
  WelcomeQuery
} from "../services/DeliveryService.ts"

export interface MemoryOptions {
  /** Largest accepted payload (group message, welcome, key package) in bytes. Default 1 MiB. */
  readonly maxPayloadBytes?: number
  /** Default page size of queries, and the cap on a query's `limit`. Default 100. */
  readonly pageSize?: number
  /** Most items in one send or batch-query call. Default 50. */
  readonly maxBatch?: number
}

type Service = Context.Tag.Service<DeliveryService>

/** The name of one operation of the port, e.g. `"sendGroupMessages"`. */
export type DeliveryOperation = keyof Service

/** How many faults were injected so far. `healAll` keeps these counts. */
export interface FaultStats {
  /** Requests failed with `Unavailable` by `dropNext`, without effect. */
  readonly dropped: number
  /** Requests carried out whose caller got `Timeout` by `loseNextResponse`. */
  readonly lostResponses: number
  /** Requests and subscriptions refused because their installation was partitioned. */
  readonly partitionRejections: number
  /** Live subscriptions failed with `Unavailable` when their installation got partitioned. */
  readonly streamsCut: number
  /** Publishes whose delivery to subscribers was duplicated by `duplicateNextDelivery`. */
  readonly duplicated: number
  /** Deliveries to subscribers held back by a paused subscriber or a held topic. */
  readonly delayed: number
}

export interface FaultControls {
  /** The next `n` requests (only those of `op`, if given) fail with `Unavailable` and have no effect. */
  readonly dropNext: (n: number, op?: DeliveryOperation) => Effect.Effect<void>
  /**
   * The next `n` requests (only those of `op`, if given) are carried out, but the caller gets
   * `Timeout`: the outcome is unknown to it. Subscriptions have no response to lose and are
   * not counted.
   */
  readonly loseNextResponse: (n: number, op?: DeliveryOperation) => Effect.Effect<void>
  /** Every call through `forInstallation(id)` fails with `Unavailable`, and its live streams are cut. */
  readonly partition: (installationId: InstallationId) => Effect.Effect<void>
  readonly heal: (installationId: InstallationId) => Effect.Effect<void>
  /**
   * The next `n` publishes that store a new envelope (group or welcome topics) are delivered
   * twice, back to back, by every subscription that delivers them. Only the delivery is
   * duplicated: the envelope is stored once, with one sequence id, and queries see it once.
   */
  readonly duplicateNextDelivery: (n: number) => Effect.Effect<void>
  /**
   * Subscriptions opened through `forInstallation(id)` stop delivering (what arrives is
   * buffered, in order) until `resumeSubscriber(id)`: a slow or stalled subscriber.
   */
  readonly pauseSubscriber: (installationId: InstallationId) => Effect.Effect<void>
  readonly resumeSubscriber: (installationId: InstallationId) => Effect.Effect<void>
  /**
   * Deliveries of one group topic to subscriptions are held back (buffered, in order) until
   * `releaseTopic`, while the other topics of the same subscription keep flowing: delivery is
   * reordered across topics, never within one. Queries are not affected.
   */
  readonly holdTopic: (groupId: GroupId) => Effect.Effect<void>
  readonly releaseTopic: (groupId: GroupId) => Effect.Effect<void>
  /**
   * Clears every pending fault, partition, paused subscriber and held topic (the stats stay);
   * held deliveries then flow.
   */
  readonly healAll: Effect.Effect<void>
  readonly stats: Effect.Effect<FaultStats>
}

export interface MemoryDelivery {
  /** The service as seen by a caller that belongs to no installation (never partitioned). */
  readonly service: Service
  readonly faults: FaultControls
  /** The same service as seen by one installation: subject to that installation's partition. */
  readonly forInstallation: (id: InstallationId) => Service
}

const DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
const DEFAULT_PAGE_SIZE = 100
const DEFAULT_MAX_BATCH = 50

// ---- errors ----

const unavailable = (detail: string) => new DeliveryError({ reason: "Unavailable", retryable: true, detail })

// ---- topics ----

interface Stored {
  readonly sequenceId: bigint
  readonly payload: Uint8Array
}

interface Topic<E extends Stored> {
  /** `envelopes[i]` has sequence id `i + 1`. */
  readonly envelopes: Array<E>
  /** Payload digest -> envelopes with that digest (several only on a hash collision). */
  readonly byDigest: Map<string, Array<E>>
  readonly pubsub: PubSub.PubSub<E>
  lastTimeNs: bigint
}

/**
 * A family of ordered topics (group messages, or welcomes). `append` and `topic` must be
 * called while holding the service lock; `page` and `follow` need no lock.
 */
const makeTopics = <K extends string, E extends Stored>(
  build: (key: K, sequenceId: bigint, serverTimeNs: bigint, payload: Uint8Array) => E,
  delivery: TopicDelivery<K>
) => {
  const topics = new Map<K, Topic<E>>()
  /** Envelopes whose delivery to subscribers is duplicated (a fault). */
  const duplicated = new WeakSet<E>()

  const topic = (key: K): Effect.Effect<Topic<E>> =>
    Effect.gen(function*() {
      const existing = topics.get(key)
      if (existing !== undefined) return existing
      const created: Topic<E> = {
        envelopes: [],
        byDigest: new Map(),
        pubsub: yield* PubSub.unbounded<E>(),
        lastTimeNs: 0n
      }
      topics.set(key, created)
      return created
    })

  const append = (key: K, payload: Uint8Array): Effect.Effect<E> =>
    Effect.gen(function*() {
      const target = yield* topic(key)
      const digest = sha256Hex(payload)
      // Idempotent resend: an identical payload already on the topic is not stored again.
      const duplicate = target.byDigest.get(digest)?.find((e) => bytesEqual(e.payload, payload))
      if (duplicate !== undefined) return duplicate
      const now = yield* Clock.currentTimeNanos
      // Never let a topic's timestamps go backwards, even if the clock does.
      const serverTimeNs = now > target.lastTimeNs ? now : target.lastTimeNs
      // Copy: the caller may reuse its buffer after the send returns.
      const envelope = build(key, BigInt(target.envelopes.length + 1), serverTimeNs, payload.slice())
      target.envelopes.push(envelope)
      target.byDigest.set(digest, [...(target.byDigest.get(digest) ?? []), envelope])
      target.lastTimeNs = serverTimeNs
      if (yield* delivery.duplicateNext) duplicated.add(envelope)
      yield* PubSub.publish(target.pubsub, envelope)
      return envelope
    })

  /** Ascending after `after` (exclusive), at most `limit`; `next` only when the page is full. */
  const page = (key: K, after: bigint, limit: number): QueryPage<E> => {
    const envelopes = topics.get(key)?.envelopes ?? []
    // Ids are dense from 1, so the envelopes after cursor c start at index c.
    const start = after > BigInt(envelopes.length) ? envelopes.length : Number(after)
    const items = envelopes.slice(start, start + limit)
    const last = items[items.length - 1]
    return new QueryPage(items, items.length === limit && last !== undefined ? last.sequenceId : undefined)
  }

  /** Replays the topic after `after`, then follows it live. `withLock` guards topic creation. */
  const follow = (
    key: K,
    after: bigint,
    withLock: <A>(effect: Effect.Effect<A>) => Effect.Effect<A>
  ): Stream.Stream<E> =>
    Stream.unwrapScoped(
      Effect.gen(function*() {
        const target = yield* withLock(topic(key))
        // Subscribe before reading the backlog: anything appended from here on reaches the
        // subscription, so nothing falls between backlog and live.
        const live = yield* PubSub.subscribe(target.pubsub)
        const start = after > BigInt(target.envelopes.length) ? target.envelopes.length : Number(after)
        const backlog = target.envelopes.slice(start)
        // An envelope may be both in the backlog and on the subscription: skip what was delivered.
        let lastDelivered = after
        return Stream.fromIterable(backlog).pipe(
          Stream.concat(Stream.fromQueue(live)),
          Stream.filter((envelope) => {
            if (envelope.sequenceId <= lastDelivered) return false
            lastDelivered = envelope.sequenceId
            return true
          }),
          // Faults act after the dedup above, so a duplicate really reaches the subscriber;
          // a held topic waits here, so its envelopes stay in order among themselves.
          Stream.mapConcat((envelope) => (duplicated.has(envelope) ? [envelope, envelope] : [envelope])),
          Stream.tap(() => delivery.gate(key))
        )
      })
    )

  const shutdown = Effect.forEach(topics.values(), (t) => PubSub.shutdown(t.pubsub), { discard: true })

  return { append, page, follow, shutdown }
}

/** How a topic family's deliveries to subscribers are subject to faults. */
interface TopicDelivery<K> {
  /** Consumed once per new envelope: deliver it twice? */
  readonly duplicateNext: Effect.Effect<boolean>
  /** Waits while deliveries of this topic are held. */
  readonly gate: (key: K) => Effect.Effect<void>
}

// ---- faults ----

interface FaultRule {
  readonly kind: "drop" | "loseResponse"
  readonly remaining: number
  /** Only requests of this operation; any operation when undefined. */
  readonly op: DeliveryOperation | undefined
}

interface FaultState {
  /** Pending one-shot faults, oldest first. */
  readonly rules: ReadonlyArray<FaultRule>
  /** Publishes still to be delivered twice. */
  readonly duplicates: number
  readonly stats: FaultStats
}

type Verdict = "pass" | "partitioned" | "drop" | "loseResponse"

const bump = (state: FaultState, key: keyof FaultStats): FaultState => ({
  ...state,
  stats: { ...state.stats, [key]: state.stats[key] + 1 }
})

/** Decides the fate of one request and consumes the fault rule it triggers, atomically. */
const judge = (
  state: FaultState,
  partitioned: HashSet.HashSet<InstallationId>,
  op: DeliveryOperation,
  installation: InstallationId | undefined,
  kinds: ReadonlyArray<FaultRule["kind"]>
): readonly [Verdict, FaultState] => {
  if (installation !== undefined && HashSet.has(partitioned, installation)) {
    return ["partitioned", bump(state, "partitionRejections")]
  }
  // A dropped request never reaches the server, so drops take precedence over lost responses.
  for (const kind of kinds) {
    const index = state.rules.findIndex((r) => r.kind === kind && (r.op === undefined || r.op === op))
    const rule = state.rules[index]
    if (rule === undefined) continue
    const rules = rule.remaining > 1
      ? state.rules.map((r, i) => (i === index ? { ...r, remaining: r.remaining - 1 } : r))
      : state.rules.filter((_, i) => i !== index)
    return [kind, bump({ ...state, rules }, kind === "drop" ? "dropped" : "lostResponses")]
  }
  return ["pass", state]
}

// ---- the service ----

export const make = (options: MemoryOptions): Effect.Effect<MemoryDelivery, never, Scope.Scope> =>
  Effect.gen(function*() {
    const maxPayloadBytes = options.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES
    const pageSize = options.pageSize ?? DEFAULT_PAGE_SIZE
    const maxBatch = options.maxBatch ?? DEFAULT_MAX_BATCH
    const limits = [["maxPayloadBytes", maxPayloadBytes], ["pageSize", pageSize], ["maxBatch", maxBatch]] as const
    for (const [name, value] of limits) {
      if (!Number.isInteger(value) || value <= 0) {
        return yield* Effect.dieMessage(`MemoryDeliveryService: ${name} must be a positive integer, got ${value}`)
      }
    }

    // One lock for every mutation: allocation, append and publish happen as one step.
    const lock = yield* Effect.makeSemaphore(1)
    const withLock = <A, E>(effect: Effect.Effect<A, E>): Effect.Effect<A, E> => lock.withPermits(1)(effect)


    // Identity: per inbox its verified state and its log; the global identity sequence.
    const inboxes = new Map<InboxId, { state: InboxState; log: Array<IdentityUpdateEnvelope> }>()
    /** Current installation -> the inbox it belongs to. */
    const installationOwner = new Map<InstallationId, InboxId>()
    const keyPackages = new Map<InstallationId, Uint8Array>()
    let identitySequence = 0n
    let identityLastTimeNs = 0n

    // ---- validation (shared with every delivery-service layer) ----

    const checks = makeChecks({ maxPayloadBytes, pageSize, maxBatch })
    const checkPayload = checks.payload
    const checkBatch = checks.batch
    const checkCursor = checks.cursor
    const checkLimit = checks.limit
    const checkGroupId = checks.groupId
    const checkInstallationId = checks.installationId

    // ---- faults ----

    const faultState = yield* Ref.make<FaultState>({
      rules: [],
      duplicates: 0,
      stats: { dropped: 0, lostResponses: 0, partitionRejections: 0, streamsCut: 0, duplicated: 0, delayed: 0 }
    })
    // Separate, and observable, so live streams can watch for their partition without
    // waking up on every request.
    const partitioned = yield* SubscriptionRef.make(HashSet.empty<InstallationId>())
    /** Installations whose subscriptions are paused, and group topics whose deliveries are held. */
    const paused = yield* SubscriptionRef.make(HashSet.empty<InstallationId>())
    const held = yield* SubscriptionRef.make(HashSet.empty<GroupId>())

    /** Waits while `blocked` holds for the set's current value; counts one delay if it waited. */
    const waitUntilClear = <A>(set: SubscriptionRef.SubscriptionRef<HashSet.HashSet<A>>, item: A) =>
      Effect.flatMap(SubscriptionRef.get(set), (now) =>
        HashSet.has(now, item)
          ? Ref.update(faultState, (s) => bump(s, "delayed")).pipe(
            Effect.zipRight(set.changes.pipe(Stream.filter((s) => !HashSet.has(s, item)), Stream.runHead))
          )
          : Effect.void)

    const takeDuplicate = Ref.modify(faultState, (s): readonly [boolean, FaultState] =>
      s.duplicates > 0 ? [true, bump({ ...s, duplicates: s.duplicates - 1 }, "duplicated")] : [false, s])

    const groupTopics = makeTopics<GroupId, GroupMessageEnvelope>(
      (groupId, sequenceId, serverTimeNs, payload) => new GroupMessageEnvelope({ groupId, sequenceId, serverTimeNs, payload }),
      { duplicateNext: takeDuplicate, gate: (groupId) => waitUntilClear(held, groupId) }
    )
    const welcomeTopics = makeTopics<InstallationId, WelcomeMessageEnvelope>(
      (installationId, sequenceId, serverTimeNs, payload) =>
        new WelcomeMessageEnvelope({ installationId, sequenceId, serverTimeNs, payload }),
      { duplicateNext: takeDuplicate, gate: () => Effect.void }
    )
    yield* Effect.addFinalizer(() => Effect.zipRight(groupTopics.shutdown, welcomeTopics.shutdown))

    /** Decides one request's fate against the current partitions and pending faults. */
    const decide = (
      op: DeliveryOperation,
      installation: InstallationId | undefined,
      kinds: ReadonlyArray<FaultRule["kind"]>
    ) =>
      Effect.flatMap(
        SubscriptionRef.get(partitioned),
        (cut) => Ref.modify(faultState, (s) => judge(s, cut, op, installation, kinds))
      )

    type Refusal = "partitioned" | "drop"
    const refusal = (verdict: Refusal, op: DeliveryOperation, installation: InstallationId | undefined) =>
      verdict === "partitioned"
        ? unavailable(`${op}: installation ${installation} is partitioned from the delivery service`)
        : unavailable(`${op}: request dropped (injected fault)`)

    /** A unary request through the fault gate, traced as `DeliveryService.<op>`. */
    const serve = <A, E>(
      op: DeliveryOperation,
      installation: InstallationId | undefined,
      body: Effect.Effect<A, E>
    ): Effect.Effect<A, E | DeliveryError> =>
      Effect.gen(function*() {
        const verdict = yield* decide(op, installation, ["drop", "loseResponse"])
        if (verdict === "partitioned" || verdict === "drop") {
          return yield* Effect.fail(refusal(verdict, op, installation))
        }
        if (verdict === "pass") return yield* body
        // The request is carried out, whatever its outcome, but the response never arrives.
        yield* Effect.exit(body)
        return yield* Effect.fail(
          new DeliveryError({ reason: "Timeout", retryable: true, detail: `${op}: response lost (injected fault)` })
        )
      }).pipe(
        Effect.withSpan(`DeliveryService.${op}`, {
          attributes: installation === undefined ? {} : { "converge.installation": installation }
        })
      )

    /** Fails once the installation is partitioned; used to cut its live streams. */
    const partitionOf = (installation: InstallationId): Effect.Effect<never, DeliveryError> =>
      partitioned.changes.pipe(
        Stream.filter((cut) => HashSet.has(cut, installation)),
        Stream.runHead,
        Effect.zipRight(Ref.update(faultState, (s) => bump(s, "streamsCut"))),
        Effect.zipRight(Effect.fail(unavailable(`installation ${installation} was partitioned: stream cut`)))
      )

    /** A subscription through the fault gate: refused when opened, cut when partitioned. */
    const serveStream = <A>(
      op: DeliveryOperation,
      installation: InstallationId | undefined,
      open: Effect.Effect<Stream.Stream<A, DeliveryError>, DeliveryError>
    ): Stream.Stream<A, DeliveryError> => {
      const opened = Stream.unwrap(
        Effect.gen(function*() {
          const verdict = yield* decide(op, installation, ["drop"])
          if (verdict === "partitioned" || verdict === "drop") {
            return yield* Effect.fail(refusal(verdict, op, installation))
          }
          return yield* open
        })
      )
      const guarded = installation === undefined
        ? opened
        : opened.pipe(
          Stream.tap(() => waitUntilClear(paused, installation)),
          Stream.interruptWhen(partitionOf(installation))
        )
      return guarded.pipe(
        Stream.withSpan(`DeliveryService.${op}`, {
          attributes: installation === undefined ? {} : { "converge.installation": installation }
        })
      )
    }

    const checkCount = (n: number, what: string) =>
      Number.isInteger(n) && n >= 0
        ? Effect.void
        : Effect.dieMessage(`${what}: n must be a non-negative integer, got ${n}`)

    const addRule = (kind: FaultRule["kind"], n: number, op: DeliveryOperation | undefined) =>
      checkCount(n, kind).pipe(
        Effect.zipRight(
          n === 0
            ? Effect.void
            : Ref.update(faultState, (s) => ({ ...s, rules: [...s.rules, { kind, remaining: n, op }] }))
        )
      )

    const faults: FaultControls = {
      dropNext: (n, op) => addRule("drop", n, op),
      loseNextResponse: (n, op) => addRule("loseResponse", n, op),
      partition: (id) => SubscriptionRef.update(partitioned, HashSet.add(id)),
      heal: (id) => SubscriptionRef.update(partitioned, HashSet.remove(id)),
      duplicateNextDelivery: (n) =>
        checkCount(n, "duplicateNextDelivery").pipe(
          Effect.zipRight(Ref.update(faultState, (s) => ({ ...s, duplicates: s.duplicates + n })))
        ),
      pauseSubscriber: (id) => SubscriptionRef.update(paused, HashSet.add(id)),
      resumeSubscriber: (id) => SubscriptionRef.update(paused, HashSet.remove(id)),
      holdTopic: (groupId) => SubscriptionRef.update(held, HashSet.add(groupId)),
      releaseTopic: (groupId) => SubscriptionRef.update(held, HashSet.remove(groupId)),
      healAll: Effect.all([
        Ref.update(faultState, (s) => ({ ...s, rules: [], duplicates: 0 })),
        SubscriptionRef.set(partitioned, HashSet.empty()),
        SubscriptionRef.set(paused, HashSet.empty()),
        SubscriptionRef.set(held, HashSet.empty())
      ], { discard: true }),
      stats: Effect.map(Ref.get(faultState), (s) => s.stats)
    }

    // ---- operations (without the fault gate) ----

    const sendGroupMessages = (messages: ReadonlyArray<GroupMessageInput>) =>
      Effect.gen(function*() {
        // Validate everything before storing anything: a send is all or nothing.
        yield* checkBatch(messages, "sendGroupMessages")
        for (const m of messages) {
          yield* checkGroupId(m.groupId, "sendGroupMessages")
          yield* checkPayload(m.payload, `sendGroupMessages to ${m.groupId}`)
        }
        return yield* withLock(Effect.forEach(messages, (m) => groupTopics.append(m.groupId, m.payload)))
      })

    const queryGroupMessages = (query: GroupQuery) =>
      Effect.gen(function*() {
        yield* checkGroupId(query.groupId, "queryGroupMessages")
        yield* checkCursor(query.afterSequenceId, "queryGroupMessages")
        const limit = yield* checkLimit(query.limit, "queryGroupMessages")
        return groupTopics.page(query.groupId, query.afterSequenceId, limit)
      })

    const batchQueryGroupMessages = (queries: ReadonlyArray<GroupQuery>) =>
      Effect.gen(function*() {
        yield* checkBatch(queries, "batchQueryGroupMessages")
        // Validate all first, so a bad query anywhere fails the whole call.
        const limits = yield* Effect.forEach(queries, (q) =>
          Effect.gen(function*() {
            yield* checkGroupId(q.groupId, "batchQueryGroupMessages")
            yield* checkCursor(q.afterSequenceId, "batchQueryGroupMessages")
            return yield* checkLimit(q.limit, "batchQueryGroupMessages")
          }))
        return queries.map((q, i) => groupTopics.page(q.groupId, q.afterSequenceId, limits[i] ?? pageSize))
      })

    const subscribeGroupMessages = (filters: ReadonlyArray<Omit<GroupQuery, "limit">>) =>
      Effect.gen(function*() {
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
          Array.from(cursors, ([groupId, after]) => groupTopics.follow(groupId, after, withLock)),
          { concurrency: "unbounded" }
        )
      })

    const sendWelcomeMessages = (messages: ReadonlyArray<WelcomeMessageInput>) =>
      Effect.gen(function*() {
        yield* checkBatch(messages, "sendWelcomeMessages")
        for (const m of messages) {
          yield* checkInstallationId(m.installationId, "sendWelcomeMessages")
          yield* checkPayload(m.payload, `sendWelcomeMessages to ${m.installationId}`)
        }
        return yield* withLock(Effect.forEach(messages, (m) => welcomeTopics.append(m.installationId, m.payload)))
      })

    const queryWelcomeMessages = (query: WelcomeQuery) =>
      Effect.gen(function*() {
        yield* checkInstallationId(query.installationId, "queryWelcomeMessages")
        yield* checkCursor(query.afterSequenceId, "queryWelcomeMessages")
        const limit = yield* checkLimit(query.limit, "queryWelcomeMessages")
        return welcomeTopics.page(query.installationId, query.afterSequenceId, limit)
      })

    const subscribeWelcomeMessages = (filter: Omit<WelcomeQuery, "limit">) =>
      Effect.gen(function*() {
        yield* checkInstallationId(filter.installationId, "subscribeWelcomeMessages")
        yield* checkCursor(filter.afterSequenceId, "subscribeWelcomeMessages")
        return welcomeTopics.follow(filter.installationId, filter.afterSequenceId, withLock)
      })

    const uploadKeyPackage = (upload: KeyPackageUpload) =>
      Effect.gen(function*() {
        yield* checkInstallationId(upload.installationId, "uploadKeyPackage")
        yield* checkPayload(upload.keyPackage, `uploadKeyPackage for ${upload.installationId}`)
        // Under the lock, so a concurrent revocation cannot slip between check and store.
        yield* withLock(
          Effect.suspend(() => {
            if (!installationOwner.has(upload.installationId)) {
              return Effect.fail(
                new DeliveryError({
                  reason: "InvalidKeyPackage",
                  retryable: false,
                  detail: `installation ${upload.installationId} is not a current installation of any registered inbox`
                })
              )
            }
            keyPackages.set(upload.installationId, upload.keyPackage.slice())
            return Effect.void
          })
        )
      })

    const fetchKeyPackages = (installationIds: ReadonlyArray<InstallationId>) =>
      Effect.gen(function*() {
        for (const id of installationIds) yield* checkInstallationId(id, "fetchKeyPackages")
        return installationIds.map((installationId): FetchedKeyPackage => ({
          installationId,
          keyPackage: keyPackages.get(installationId)
        }))
      })

    const publishIdentityUpdate = (update: IdentityUpdate) =>
      withLock(
        Effect.gen(function*() {
          const inbox = inboxes.get(update.inboxId)
          const applied = applyUpdate(inbox?.state, update)
          if (Either.isLeft(applied)) return yield* Effect.fail(applied.left)
          const action = update.action
          // An installation key belongs to one inbox; otherwise a squatter could claim it and,
          // by revoking it, drop the real owner's key package.
          if (action._tag === "AddInstallation") {
            const owner = installationOwner.get(action.installationId)
            if (owner !== undefined && owner !== update.inboxId) {
              return yield* Effect.fail(
                new InvalidIdentityUpdate({
                  inboxId: update.inboxId,
                  reason: `installation ${action.installationId} already belongs to another inbox`
                })
              )
            }
          }
          const now = yield* Clock.currentTimeNanos
          identityLastTimeNs = now > identityLastTimeNs ? now : identityLastTimeNs
          identitySequence += 1n
          const envelope = new IdentityUpdateEnvelope({
            sequenceId: identitySequence,
            serverTimeNs: identityLastTimeNs,
            update
          })
          if (inbox === undefined) inboxes.set(update.inboxId, { state: applied.right, log: [envelope] })
          else {
            inbox.state = applied.right
            inbox.log.push(envelope)
          }
          if (action._tag === "AddInstallation") installationOwner.set(action.installationId, update.inboxId)
          if (action._tag === "RevokeInstallation") {
            // A revoked installation may no longer be added to groups: its key package goes.
            installationOwner.delete(action.installationId)
            keyPackages.delete(action.installationId)
          }
          return envelope
        })
      )

    const getIdentityUpdates = (queries: ReadonlyArray<IdentityQuery>) =>
      Effect.gen(function*() {
        for (const q of queries) {
          if (!Number.isInteger(q.afterSequence) || q.afterSequence < 0) {
            return yield* Effect.fail(
              invalidRequest(`getIdentityUpdates: afterSequence must be a non-negative integer, got ${q.afterSequence}`)
            )
          }
        }
        return queries.map((q): InboxUpdates => ({
          inboxId: q.inboxId,
          // Log entries are numbered densely from 1, so those after n start at index n.
          updates: (inboxes.get(q.inboxId)?.log ?? []).slice(q.afterSequence)
        }))
      })

    // ---- views ----

    const view = (installation: InstallationId | undefined): Service => ({
      sendGroupMessages: (messages) => serve("sendGroupMessages", installation, sendGroupMessages(messages)),
      queryGroupMessages: (query) => serve("queryGroupMessages", installation, queryGroupMessages(query)),
      batchQueryGroupMessages: (queries) =>
        serve("batchQueryGroupMessages", installation, batchQueryGroupMessages(queries)),
      subscribeGroupMessages: (filters) =>
        serveStream("subscribeGroupMessages", installation, subscribeGroupMessages(filters)),
      sendWelcomeMessages: (messages) => serve("sendWelcomeMessages", installation, sendWelcomeMessages(messages)),
      queryWelcomeMessages: (query) => serve("queryWelcomeMessages", installation, queryWelcomeMessages(query)),
      subscribeWelcomeMessages: (filter) =>
        serveStream("subscribeWelcomeMessages", installation, subscribeWelcomeMessages(filter)),
      uploadKeyPackage: (upload) => serve("uploadKeyPackage", installation, uploadKeyPackage(upload)),
      fetchKeyPackages: (ids) => serve("fetchKeyPackages", installation, fetchKeyPackages(ids)),
      publishIdentityUpdate: (update) => serve("publishIdentityUpdate", installation, publishIdentityUpdate(update)),
      getIdentityUpdates: (queries) => serve("getIdentityUpdates", installation, getIdentityUpdates(queries))
    })

    return { service: view(undefined), faults, forInstallation: view }
  })
