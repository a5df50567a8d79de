/**
 * The topics of a many-topic subscription that need a read, for one reader serving them all in
 * turn (`StoreTopicFollower.followMany`; the XMTP face's subscriptions keep their own, polling
 * only where the feed can miss an append). The change feed marks topics; when nothing is marked
 * for `pollMillis`, the next `pollPage` topics are marked in turn as a safety net for a lost
 * notification. Not all of them: 32 idle subscriptions of 1,000 topics on one anonymous
 * connection would ask for 6,400 reads a second.
 */
import { Effect, Option } from "effect"
import type { Topic } from "../services/DeliveryStore.ts"

export interface MarkedTopics {
  /** The topics to read; the reader takes one off before reading it (a change meanwhile puts it back). */
  readonly marked: Set<Topic>
  /** Wakes the reader if something is marked: after the feed has marked what changed. */
  readonly wake: Effect.Effect<void>
  /** Waits until a topic is marked, marking the next page in turn after each quiet `pollMillis`. */
  readonly awaitMarked: Effect.Effect<void>
}

export const make = (
  topics: ReadonlyArray<Topic>,
  options: { readonly pollMillis: number; readonly pollPage: number; readonly initiallyMarked: boolean }
): Effect.Effect<MarkedTopics> =>
  Effect.gen(function*() {
    const marked = new Set<Topic>(options.initiallyMarked ? topics : [])
    const woken = yield* Effect.makeLatch(false)
    let nextPolled = 0
    const awaitMarked = Effect.gen(function*() {
      while (marked.size === 0) {
        const woke = yield* woken.await.pipe(Effect.timeoutOption(options.pollMillis))
        yield* woken.close
        if (Option.isNone(woke)) {
          for (let i = 0; i < Math.min(options.pollPage, topics.length); i++) {
            marked.add(topics[nextPolled]!)
            nextPolled = (nextPolled + 1) % topics.length
          }
        }
      }
    })
    return { marked, wake: Effect.suspend(() => (marked.size > 0 ? woken.open : Effect.void)), awaitMarked }
  })
