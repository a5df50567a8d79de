/**
 * The followers of each topic on one store-backed delivery service, fed by one reader of the
 * store's change feed: an append is handed to the subscriptions following its topic, not to
 * every subscription. Each subscription took its own copy of the feed before, so one append woke
 * and was checked by every subscription on the server (200 idle subscriptions: ~1.5 ms of CPU
 * per append instead of ~0.1 ms). `ANY_TOPIC` ("changes may have been missed") goes to every
 * follower. Also bounds the topics followed server-wide. The XMTP face keeps its own, keyed by
 * its compact topic keys (`XmtpSubscriptions.makeFanOut`); this is the same design.
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

export interface FanOut {
  /**
   * Registers `follower` until the scope closes and returns once the feed is joined, so every
   * append committed after this returns reaches it; refused (`LimitExceeded`) past the bound.
   */
  readonly join: (follower: Follower) => Effect.Effect<void, DeliveryError, Scope.Scope>
  /** Topics followed now, by all subscriptions together. */
  readonly followed: () => number
}

/**
 * The followers of each topic: one follower (the common case) without a Set of its own. Keyed by
 * whatever a face names its topics by (the XMTP face's compact keys too).
 */
export const makeTopicIndex = <K, F extends { readonly topics: ReadonlyArray<K> }>() => {
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
export const notifyEach = <F>(followers: Iterable<F>, notify: (f: F) => void): void => {
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
export const drainFeed = (changes: Queue.Dequeue<TopicChange>, dispatch: (change: TopicChange) => void) =>
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

/** The fan-out of `store`'s feed; its reader runs in the caller's scope (the service's), started by the first follower. */
export const make = (
  store: DeliveryStore["Type"],
  maxTopics: number
): Effect.Effect<FanOut, never, Scope.Scope> =>
  Effect.gen(function*() {
    const scope = yield* Effect.scope
    const index = makeTopicIndex<Topic, Follower>()
    const followers = new Set<Follower>()
    let followed = 0
    /** Completed once the feed is joined; unset until the first follower, or after the feed ended. */
    let joined: Deferred.Deferred<void> | undefined

    const dispatch = (change: TopicChange) => {
      if (change.topic === ANY_TOPIC) return notifyEach(followers, (f) => f.onChange(change))
      index.forEach(change.topic, (f) => f.onChange(change))
    }

    /** Reads the feed for as long as it lasts, for every follower (not the first one's). */
    const feed = (ready: Deferred.Deferred<void>) =>
      Effect.scoped(Effect.gen(function*() {
        const changes = yield* store.changes
        yield* Deferred.succeed(ready, undefined)
        return yield* drainFeed(changes, dispatch)
      })).pipe(Effect.ensuring(Effect.sync(() => (joined === ready ? (joined = undefined) : undefined))))

    const register = (f: Follower) =>
      Effect.suspend(() => {
        if (followed + f.topics.length > maxTopics) {
          return Effect.fail(
            new DeliveryError({
              reason: "LimitExceeded",
              retryable: true,
              detail:
                `the server follows ${followed} topics; ${f.topics.length} more would pass its limit of ${maxTopics}`
            })
          )
        }
        followed += f.topics.length
        followers.add(f)
        index.add(f)
        return Effect.void
      })

    const unregister = (f: Follower) =>
      Effect.sync(() => {
        followed -= f.topics.length
        followers.delete(f)
        index.remove(f)
      })

    const join = (f: Follower) =>
      Effect.gen(function*() {
        // In a turn each: a subscription of 1,000 topics is 1,000 index entries.
        yield* Effect.acquireRelease(inTurn(register(f)), () => inTurn(unregister(f)))
        const ready = yield* Effect.sync(() => {
          if (joined !== undefined) return { ready: joined, start: false }
          joined = Deferred.unsafeMake<void>(FiberId.none)
          return { ready: joined, start: true }
        })
        if (ready.start) yield* Effect.forkIn(feed(ready.ready), scope)
        yield* Deferred.await(ready.ready)
      })

    return { join, followed: () => followed } satisfies FanOut
  })
