/**
 * The topics of a many-topic subscription that need a read, for one reader serving them all in
 * turn (`StoreTopicFollower.followMany`). The change feed marks the topics that changed; which
 * others have news is asked of the store's `heads` (one query per `HEADS_CHUNK` topics): at the
 * opening, when the feed says it may have missed changes (`recheck`), and, only where the feed
 * can miss an append, a page of topics every `pollMillis` as a safety net. Reading every topic
 * instead (1,000 reads per subscription of 1,000 topics) stalled `converge serve` for seconds
 * when 256 such subscriptions opened, and the poll's reads kept it half busy while they idled.
 * Both faces use it, each keyed by what it names its topics by (the XMTP face's compact keys).
 */
import { Effect } from "effect"
import { inTurn } from "./EventLoopTurns.ts"

/** Topics per look at the store's heads, each in a turn of its own: one short query (about a millisecond on SQLite). */
const HEADS_CHUNK = 500

export interface MarkedTopics<K, E> {
  /** The topics to read; the reader takes one off before reading it (a change meanwhile puts it back). */
  readonly marked: Set<K>
  /** Wakes the reader if something is marked: after the feed has marked what changed (on the feed's fiber, so at once). */
  readonly wake: () => void
  /** Has every topic's head checked again before the next read: the feed may have missed changes. */
  readonly recheck: () => void
  /** Waits until a topic is marked, checking every topic's head first at the opening and after a `recheck`. */
  readonly awaitMarked: Effect.Effect<void, E>
}

export interface Options<K, E> {
  /** Marks those of `topics` whose head is past what was delivered (at most `HEADS_CHUNK` at a time). */
  readonly check: (topics: ReadonlyArray<K>) => Effect.Effect<void, E>
  /** Whether the feed may miss an append: then a page of topics is checked every `pollMillis`. */
  readonly poll: boolean
  readonly pollMillis: number
  readonly pollPage: number
}

export const make = <K, E>(topics: ReadonlyArray<K>, options: Options<K, E>) =>
  Effect.gen(function*() {
    const marked = new Set<K>()
    const woken = yield* Effect.makeLatch(false)
    // The opening's check: only topics with news are read.
    let recheckDue = true
    const wake = () => (marked.size > 0 ? woken.unsafeOpen() : undefined)

    const checkAll = Effect.gen(function*() {
      for (let i = 0; i < topics.length; i += HEADS_CHUNK) {
        yield* inTurn(options.check(topics.slice(i, i + HEADS_CHUNK)))
      }
    })

    const awaitMarked: Effect.Effect<void, E> = Effect.gen(function*() {
      while (true) {
        if (recheckDue) {
          // Cleared first: a recheck asked for during this one runs again.
          recheckDue = false
          yield* checkAll
        }
        if (marked.size > 0) return
        yield* woken.await
        // Closed before the state is looked at again: a mark after this opens it anew.
        yield* woken.close
      }
    })

    if (options.poll && topics.length > 0) yield* Effect.forkScoped(safetyPoll(topics, options, wake))
    const recheck = () => {
      recheckDue = true
      woken.unsafeOpen()
    }
    return { marked, wake, recheck, awaitMarked } satisfies MarkedTopics<K, E>
  })

/** Every `pollMillis`, the next `pollPage` topics' heads are checked, in turn; a failure waits for the next round. */
const safetyPoll = <K, E>(topics: ReadonlyArray<K>, options: Options<K, E>, wake: () => void) => {
  let next = 0
  const page = Effect.suspend(() => {
    const slice = topics.slice(next, next + Math.min(options.pollPage, HEADS_CHUNK))
    next = next + slice.length >= topics.length ? 0 : next + slice.length
    return inTurn(options.check(slice))
  }).pipe(
    Effect.zipRight(Effect.sync(wake)),
    Effect.catchAll((error) => Effect.logWarning("a subscription's safety poll failed", error))
  )
  return Effect.forever(Effect.zipRight(Effect.sleep(options.pollMillis), page))
}
