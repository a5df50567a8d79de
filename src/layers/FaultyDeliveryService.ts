/**
 * Fault injection around any `DeliveryService`: the in-memory one, the store-backed one over
 * SQLite, or the RPC client of a real server. The tests and the seeded simulation use it to
 * drop requests, lose responses, partition installations, and duplicate, pause or hold what
 * subscriptions deliver.
 *
 * Faults never change what is stored or its order: a dropped request never reaches the
 * service, a lost response hides an effect that happened, and the subscription faults change
 * only when and how often a subscriber is told.
 */
import { Effect, HashSet, Ref, type Scope, Stream, SubscriptionRef } from "effect"
import { sha256Hex } from "../domain/Bytes.ts"
import { DeliveryError } from "../domain/Errors.ts"
import type { GroupId, InstallationId } from "../domain/Ids.ts"
import type { GroupMessageEnvelope, WelcomeMessageEnvelope, WelcomeMessageInput } from "../domain/Wire.ts"
import type { DeliveryService, FetchedKeyPackage, GroupQuery } from "../services/DeliveryService.ts"

type Service = DeliveryService["Type"]

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
  /** Key packages answered with another installation's (`substituteKeyPackages`). */
  readonly substituted: number
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
   * A lying delivery service: the next `n` answers of `fetchKeyPackages` hand out, for each
   * installation asked, the key package of another installation seen before (an attacker
   * putting its own device into someone's group). Clients must notice and refuse it.
   */
  readonly substituteKeyPackages: (n: number) => Effect.Effect<void>
  /**
   * Clears every pending fault, partition, paused subscriber and held topic (the stats stay);
   * held deliveries then flow.
   */
  readonly healAll: Effect.Effect<void>
  readonly stats: Effect.Effect<FaultStats>
}

export interface FaultyDelivery {
  /** The service as seen by a caller that belongs to no installation (never partitioned). */
  readonly service: Service
  readonly faults: FaultControls
  /** The same service as seen by one installation: subject to that installation's partition. */
  readonly forInstallation: (id: InstallationId) => Service
}

const unavailable = (detail: string) => new DeliveryError({ reason: "Unavailable", retryable: true, detail })

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
  /** `fetchKeyPackages` answers still to be falsified. */
  readonly substitutions: number
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
    const index = state.rules.findIndex((r) => r.kind === kind && (r.op === undefined || r.op === op || aliasOf(op) === r.op))
    const rule = state.rules[index]
    if (rule === undefined) continue
    const rules = rule.remaining > 1
      ? state.rules.map((r, i) => (i === index ? { ...r, remaining: r.remaining - 1 } : r))
      : state.rules.filter((_, i) => i !== index)
    return [kind, bump({ ...state, rules }, kind === "drop" ? "dropped" : "lostResponses")]
  }
  return ["pass", state]
}

// ---- the wrapper ----

/**
 * `syncQuery` is the batch query that also carries identity changes: faults aimed at the batch
 * query hit it too, so seeded plans (which name their targets) keep reaching the sync path.
 */
const aliasOf = (op: DeliveryOperation): DeliveryOperation | undefined =>
  op === "syncQuery" ? "batchQueryGroupMessages" : undefined

const groupTopicOf = (e: GroupMessageEnvelope) => `g/${e.groupId}`
/**
 * A welcome by its recipient and bytes: a send answers no position (it would tell the sender how
 * many welcomes the recipient got), and the store keeps identical welcomes of a topic once, so
 * these name one stored welcome as a topic and sequence id would.
 */
const welcomeKeyOf = (e: Pick<WelcomeMessageEnvelope, "installationId" | "payload">) =>
  `w/${e.installationId}/${sha256Hex(e.payload)}`

export const make = (inner: Service): Effect.Effect<FaultyDelivery, never, Scope.Scope> =>
  Effect.gen(function*() {
    const faultState = yield* Ref.make<FaultState>({
      rules: [],
      duplicates: 0,
      substitutions: 0,
      stats: {
        dropped: 0,
        lostResponses: 0,
        partitionRejections: 0,
        streamsCut: 0,
        duplicated: 0,
        delayed: 0,
        substituted: 0
      }
    })
    // Observable, so live streams can watch for their partition without waking on every request.
    const partitioned = yield* SubscriptionRef.make(HashSet.empty<InstallationId>())
    /** Installations whose subscriptions are paused, and group topics whose deliveries are held. */
    const paused = yield* SubscriptionRef.make(HashSet.empty<InstallationId>())
    const held = yield* SubscriptionRef.make(HashSet.empty<GroupId>())
    /** Published envelopes (topic/sequence, or a welcome's `welcomeKeyOf`) that subscriptions deliver twice. */
    const duplicated = new Set<string>()
    /**
     * The highest sequence id a send returned per topic: a send that returns nothing above it
     * was an idempotent resend, which stored nothing new and so uses up no duplicate.
     */
    const highestSent = new Map<string, bigint>()

    /** Waits while `item` is in the set; counts one delay if it waited. */
    const waitUntilClear = <A>(set: SubscriptionRef.SubscriptionRef<HashSet.HashSet<A>>, item: A) =>
      Effect.flatMap(SubscriptionRef.get(set), (now) =>
        HashSet.has(now, item)
          ? Ref.update(faultState, (s) => bump(s, "delayed")).pipe(
            Effect.zipRight(set.changes.pipe(Stream.filter((s) => !HashSet.has(s, item)), Stream.runHead))
          )
          : Effect.void)

    /** Welcomes sent so far (`welcomeKeyOf`): sending one again stores nothing new, and uses up no duplicate. */
    const sentWelcomes = new Set<string>()
    /** Marks the welcomes a send stored, while duplicates are armed. */
    const markWelcomeDuplicates = (messages: ReadonlyArray<WelcomeMessageInput>) =>
      Ref.update(faultState, (s) => {
        let state = s
        for (const message of messages) {
          const key = welcomeKeyOf(message)
          if (sentWelcomes.has(key)) continue
          sentWelcomes.add(key)
          if (state.duplicates === 0) continue
          duplicated.add(key)
          state = bump({ ...state, duplicates: state.duplicates - 1 }, "duplicated")
        }
        return state
      })

    /** Marks the group messages a send stored, while duplicates are armed. */
    const markDuplicates = (envelopes: ReadonlyArray<GroupMessageEnvelope>) =>
      Ref.update(faultState, (s) => {
        let state = s
        for (const envelope of envelopes) {
          const topic = groupTopicOf(envelope)
          const isNew = envelope.sequenceId > (highestSent.get(topic) ?? 0n)
          if (!isNew) continue
          highestSent.set(topic, envelope.sequenceId)
          if (state.duplicates === 0) continue
          duplicated.add(`${topic}/${envelope.sequenceId}`)
          state = bump({ ...state, duplicates: state.duplicates - 1 }, "duplicated")
        }
        return state
      })

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

    const refusal = (verdict: "partitioned" | "drop", op: DeliveryOperation, installation: InstallationId | undefined) =>
      verdict === "partitioned"
        ? unavailable(`${op}: installation ${installation} is partitioned from the delivery service`)
        : unavailable(`${op}: request dropped (injected fault)`)

    /** A unary request through the fault gate. */
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
      })

    /** Fails once the installation is partitioned; used to cut its live streams. */
    const partitionOf = (installation: InstallationId): Effect.Effect<never, DeliveryError> =>
      partitioned.changes.pipe(
        Stream.filter((cut) => HashSet.has(cut, installation)),
        Stream.runHead,
        Effect.zipRight(Ref.update(faultState, (s) => bump(s, "streamsCut"))),
        Effect.zipRight(Effect.fail(unavailable(`installation ${installation} was partitioned: stream cut`)))
      )

    /** A subscription through the fault gate: refused when opened, cut when partitioned, paused on demand. */
    const serveStream = <A>(
      op: DeliveryOperation,
      installation: InstallationId | undefined,
      open: Stream.Stream<A, DeliveryError>
    ): Stream.Stream<A, DeliveryError> => {
      const opened = Stream.unwrap(
        Effect.map(decide(op, installation, ["drop"]), (verdict) =>
          verdict === "partitioned" || verdict === "drop" ? Stream.fail(refusal(verdict, op, installation)) : open)
      )
      return installation === undefined ? opened : opened.pipe(
        Stream.tap(() => waitUntilClear(paused, installation)),
        Stream.interruptWhen(partitionOf(installation))
      )
    }

    const twiceIfMarked = (envelope: GroupMessageEnvelope): ReadonlyArray<GroupMessageEnvelope> =>
      duplicated.has(`${groupTopicOf(envelope)}/${envelope.sequenceId}`) ? [envelope, envelope] : [envelope]

    /**
     * One inner subscription per group, so a held topic waits on its own while the other
     * topics of the same subscription keep flowing: reordered across topics, never within one.
     */
    const subscribeGroups = (
      filters: ReadonlyArray<Omit<GroupQuery, "limit">>
    ): Stream.Stream<GroupMessageEnvelope, DeliveryError> => {
      const byGroup = new Map<GroupId, Array<Omit<GroupQuery, "limit">>>()
      for (const f of filters) byGroup.set(f.groupId, [...(byGroup.get(f.groupId) ?? []), f])
      if (byGroup.size <= 1) {
        return inner.subscribeGroupMessages(filters).pipe(
          Stream.mapConcat(twiceIfMarked),
          Stream.tap((e) => waitUntilClear(held, e.groupId))
        )
      }
      return Stream.mergeAll(
        Array.from(byGroup.values(), (group) => subscribeGroups(group)),
        { concurrency: "unbounded" }
      )
    }

    /** Key packages seen in answers, by installation: what a lying service hands out instead. */
    const seenKeyPackages = new Map<InstallationId, Uint8Array>()

    /** Answers a fetch, falsified while substitutions are armed: each package swapped for another's. */
    const lieAbout = (fetched: ReadonlyArray<FetchedKeyPackage>) =>
      Ref.modify(faultState, (state): readonly [ReadonlyArray<FetchedKeyPackage>, FaultState] => {
        for (const f of fetched) if (f.keyPackage !== undefined) seenKeyPackages.set(f.installationId, f.keyPackage)
        if (state.substitutions === 0) return [fetched, state]
        let swapped = 0
        const lies = fetched.map((f) => {
          const other = [...seenKeyPackages].find(([id]) => id !== f.installationId)
          if (f.keyPackage === undefined || other === undefined) return f
          swapped++
          return { installationId: f.installationId, keyPackage: other[1] }
        })
        if (swapped === 0) return [fetched, state]
        const next = { ...state, substitutions: state.substitutions - 1 }
        return [lies, { ...next, stats: { ...next.stats, substituted: next.stats.substituted + swapped } }]
      })

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
      substituteKeyPackages: (n) =>
        checkCount(n, "substituteKeyPackages").pipe(
          Effect.zipRight(Ref.update(faultState, (s) => ({ ...s, substitutions: s.substitutions + n })))
        ),
      healAll: Effect.all([
        Ref.update(faultState, (s) => ({ ...s, rules: [], duplicates: 0, substitutions: 0 })),
        SubscriptionRef.set(partitioned, HashSet.empty()),
        SubscriptionRef.set(paused, HashSet.empty()),
        SubscriptionRef.set(held, HashSet.empty())
      ], { discard: true }),
      stats: Effect.map(Ref.get(faultState), (s) => s.stats)
    }

    const view = (installation: InstallationId | undefined): Service => ({
      sendGroupMessages: (messages) =>
        serve("sendGroupMessages", installation, inner.sendGroupMessages(messages)).pipe(
          Effect.tap(markDuplicates)
        ),
      sendGroupMessagesIf: (messages, ifTopicEndsAt) =>
        serve("sendGroupMessagesIf", installation, inner.sendGroupMessagesIf(messages, ifTopicEndsAt)).pipe(
          Effect.tap((outcome) => outcome._tag === "Stored" ? markDuplicates(outcome.envelopes) : Effect.void)
        ),
      queryGroupMessages: (query) => serve("queryGroupMessages", installation, inner.queryGroupMessages(query)),
      batchQueryGroupMessages: (queries) =>
        serve("batchQueryGroupMessages", installation, inner.batchQueryGroupMessages(queries)),
      syncQuery: (query) => serve("syncQuery", installation, inner.syncQuery(query)),
      subscribeGroupMessages: (filters) => serveStream("subscribeGroupMessages", installation, subscribeGroups(filters)),
      sendWelcomeMessages: (messages) =>
        serve("sendWelcomeMessages", installation, inner.sendWelcomeMessages(messages)).pipe(
          Effect.tap(() => markWelcomeDuplicates(messages))
        ),
      queryWelcomeMessages: (query) => serve("queryWelcomeMessages", installation, inner.queryWelcomeMessages(query)),
      subscribeWelcomeMessages: (filter) =>
        serveStream(
          "subscribeWelcomeMessages",
          installation,
          inner.subscribeWelcomeMessages(filter).pipe(
            Stream.mapConcat((welcome) => (duplicated.has(welcomeKeyOf(welcome)) ? [welcome, welcome] : [welcome]))
          )
        ),
      uploadKeyPackage: (upload) => serve("uploadKeyPackage", installation, inner.uploadKeyPackage(upload)),
      fetchKeyPackages: (ids) =>
        serve("fetchKeyPackages", installation, inner.fetchKeyPackages(ids)).pipe(Effect.flatMap(lieAbout)),
      publishIdentityUpdate: (update) => serve("publishIdentityUpdate", installation, inner.publishIdentityUpdate(update)),
      getIdentityUpdates: (queries) => serve("getIdentityUpdates", installation, inner.getIdentityUpdates(queries))
    })

    return { service: view(undefined), faults, forInstallation: view }
  })
