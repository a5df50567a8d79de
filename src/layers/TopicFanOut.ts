/**
 * The followers of each topic on one store-backed delivery service, fed by one reader of the
 * store's change feed: an append is handed to the subscriptions following its topic, not to
 * every subscription. Each subscription took its own copy of the feed before, so one append woke
 * and was checked by every subscription on the server (200 idle subscriptions: ~1.5 ms of CPU
 * per append instead of ~0.1 ms). `ANY_TOPIC` ("changes may have been missed") goes to every
 * follower. Also bounds the topics followed server-wide. Both faces use it (`makeWith`): the
 * Converge face keyed by topic, the XMTP face by its compact topic keys.
 */
import { Cause, Deferred, Effect, FiberId, Queue, type Scope } from "effect"
import { DeliveryError } from "../domain/Errors.ts"
import { ANY_TOPIC, type DeliveryStore, type Topic, type TopicChange } from "../services/DeliveryStore.ts"
import { inTurn } from "./EventLoopTurns.ts"

/**
 * Most topics all subscriptions of a service follow together (a topic followed twice counts
 * twice): ~540 MB at the ~540 bytes a topic of a many-topic subscription, where the
 * per-connection bounds alone allow 1,024 x 32 x 1,000 (~17 GB). As the XMTP face's bound.
 */
export const DEFAULT_MAX_SUBSCRIBED_TOPICS = 1_000_000

/** One subscription as the fan-out sees it. */
export interface Follower {
  /** Its topics, each once. */
  readonly topics: ReadonlyArray<Topic>
  /**
   * A change of one of its topics, or `ANY_TOPIC`: called on the feed's fiber, so it only notes
   * the change and opens a latch (it must not wait, fail or throw).
   */
  readonly onChange: (change: TopicChange) => void
}

export interface FanOut<F = Follower, E = DeliveryError, R = never> {
  /**
   * Registers `follower` until the scope closes and returns once the feed is joined, so every
   * append committed after this returns reaches it; refused past the bound (the face's `refuse`).
   */
  readonly join: (follower: F) => Effect.Effect<void, E, Scope.Scope | R>
  /** Topics followed now, by all subscriptions together. */
  readonly followed: () => number
}

/**
 * The followers of each topic: one follower (the common case) without a Set of its own. Keyed by
 * whatever a face names its topics by (the XMTP face's compact keys too).
 */
const makeTopicIndex = <K, F extends { readonly topics: ReadonlyArray<K> }>() => {
  const byTopic = new Map<K, F | Set<F>>()
  const add = (f: F) => {
    for (const topic of f.topics) {
      const found = byTopic.get(topic)
      if (found === undefined) byTopic.set(topic, f)
      else if (found instanceof Set) found.add(f)
      else byTopic.set(topic, new Set([found, f]))
    }
  }
  const remove = (f: F) => {
    for (const topic of f.topics) {
      const found = byTopic.get(topic)
      if (found === f) byTopic.delete(topic)
      else if (found instanceof Set) {
        found.delete(f)
        if (found.size === 1) byTopic.set(topic, found.values().next().value!)
      }
    }
  }
  /** Calls `each` for every follower of `topic`. */
  const forEach = (topic: K, each: (f: F) => void) => {
    const found = byTopic.get(topic)
    if (found instanceof Set) notifyEach(found, each)
    else if (found !== undefined) each(found)
  }
  return { add, remove, forEach }
}

/**
 * Calls `notify` for every follower even if one throws (a bug), then throws the first error:
 * one broken subscription must not cost the others a change.
 */
const notifyEach = <F>(followers: Iterable<F>, notify: (f: F) => void): void => {
  let thrown: { readonly error: unknown } | undefined
  for (const f of followers) {
    try {
      notify(f)
    } catch (error) {
      thrown ??= { error }
    }
  }
  if (thrown !== undefined) throw thrown.error
}

/**
 * Hands every change of `changes` to `dispatch`, in order, for as long as the feed lasts. A
 * throwing `dispatch` is a bug, logged as a defect; the reader goes on, since it is the only
 * one: ending it would leave every subscription of the service deaf until the next one opens.
 */
const drainFeed = (changes: Queue.Dequeue<TopicChange>, dispatch: (change: TopicChange) => void) =>
  Queue.take(changes).pipe(
    Effect.zip(Queue.takeAll(changes)),
    Effect.flatMap(([first, rest]) => {
      const thrown: Array<unknown> = []
      const guarded = (change: TopicChange) => {
        try {
          dispatch(change)
        } catch (error) {
          thrown.push(error)
        }
      }
      guarded(first)
      for (const change of rest) guarded(change)
      return thrown.length === 0 ? Effect.void : Effect.logError(
        "fan-out: a subscription's change handler threw; the feed goes on",
        thrown.map(Cause.die).reduce(Cause.parallel)
      )
    }),
    Effect.forever
  )

/** What a face's fan-out makes its own: its topic key, its followers, its refusal, its store. */
export interface FanOutOptions<K, F, E, R> {
  /** Most topics all its subscriptions follow together. */
  readonly maxTopics: number
  /** The store's change feed (`changes`), joined by the first follower. */
  readonly changes: Effect.Effect<Queue.Dequeue<TopicChange>, never, Scope.Scope | R>
  /** Runs the feed's reader: it serves every follower, so it outlives the first one's scope. */
  readonly fork: (reader: Effect.Effect<never, never, R>) => Effect.Effect<unknown, never, R>
  /** The key the face follows `topic` by; undefined for topics none of its subscriptions follows. */
  readonly keyOf: (topic: Topic) => K | undefined
  /**
   * A change of `key`, followed by `f`; and `ANY_TOPIC`, to every follower. Called on the feed's
   * fiber, so they only note the change and wake the subscription (they must not wait, fail or throw).
   */
  readonly onChange: (f: F, key: K, change: TopicChange) => void
  readonly onAnyTopic: (f: F, change: TopicChange) => void
  /** The error a subscription is refused with past `maxTopics`. */
  readonly refuse: (detail: string) => E
}

/** The fan-out of one store's feed to followers of topics keyed by `K`: both faces' frame. */
export const makeWith = <K, F extends { readonly topics: ReadonlyArray<K> }, E, R>(
  options: FanOutOptions<K, F, E, R>
): FanOut<F, E, R> => {
  const index = makeTopicIndex<K, F>()
  const followers = new Set<F>()
  let followed = 0
  /** Completed once the feed is joined; unset until the first follower, or after the feed ended. */
  let joined: Deferred.Deferred<void> | undefined

  const dispatch = (change: TopicChange) => {
    if (change.topic === ANY_TOPIC) return notifyEach(followers, (f) => options.onAnyTopic(f, change))
    const key = options.keyOf(change.topic)
    if (key !== undefined) index.forEach(key, (f) => options.onChange(f, key, change))
  }

  /** Reads the feed for as long as it lasts, for every follower (not the first one's). */
  const feed = (ready: Deferred.Deferred<void>) =>
    Effect.scoped(Effect.gen(function*() {
      const changes = yield* options.changes
      yield* Deferred.succeed(ready, undefined)
      return yield* drainFeed(changes, dispatch)
    })).pipe(Effect.ensuring(Effect.sync(() => (joined === ready ? (joined = undefined) : undefined))))

  const register = (f: F) =>
    Effect.suspend(() => {
      if (followed + f.topics.length > options.maxTopics) {
        return Effect.fail(options.refuse(
          `the server follows ${followed} topics; ${f.topics.length} more would pass its limit of ${options.maxTopics}`
        ))
      }
      followed += f.topics.length
      followers.add(f)
      index.add(f)
      return Effect.void
    })

  const unregister = (f: F) =>
    Effect.sync(() => {
      followed -= f.topics.length
      followers.delete(f)
      index.remove(f)
    })

  const join = (f: F) =>
    Effect.gen(function*() {
      // In a turn each: a subscription of 1,000 topics is 1,000 index entries.
      yield* Effect.acquireRelease(inTurn(register(f)), () => inTurn(unregister(f)))
      const ready = yield* Effect.sync(() => {
        if (joined !== undefined) return { ready: joined, start: false }
        joined = Deferred.unsafeMake<void>(FiberId.none)
        return { ready: joined, start: true }
      })
      if (ready.start) yield* options.fork(feed(ready.ready))
      yield* Deferred.await(ready.ready)
    })

  return { join, followed: () => followed }
}

/** The Converge face's fan-out of `store`'s feed; its reader runs in the caller's scope (the service's). */
export const make = (
  store: DeliveryStore["Type"],
  maxTopics: number
): Effect.Effect<FanOut, never, Scope.Scope> =>
  Effect.map(Effect.scope, (scope) =>
    makeWith<Topic, Follower, DeliveryError, never>({
      maxTopics,
      changes: store.changes,
      fork: (reader) => Effect.forkIn(reader, scope),
      keyOf: (topic) => topic,
      onChange: (f, _topic, change) => f.onChange(change),
      onAnyTopic: (f, change) => f.onChange(change),
      refuse: (detail) => new DeliveryError({ reason: "LimitExceeded", retryable: true, detail })
    }))
