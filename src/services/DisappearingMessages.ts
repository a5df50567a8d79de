/**
 * Disappearing messages: every stored message with a deadline (`expiresAtNs`, the server time
 * it landed at plus the group's `disappearAfterNs` in force there) is removed, content and all,
 * once the `Clock` passes it. Expired messages are removed entirely, not kept as tombstones: a
 * disappearing message is meant to leave no trace of what was said, nor that it was.
 *
 * One fiber per client sleeps until the earliest deadline; it sweeps once at start (a member
 * that was offline past a deadline deletes on its next start) and is woken whenever new
 * deadlines may have been stored (after a sync or a send).
 */
import { Clock, Duration, Effect, Option, Queue, Schedule } from "effect"
import type { Storage } from "./Storage.ts"

/** Removes what has expired by now; returns how many went. */
export const sweep = (storage: Storage["Type"]) =>
  Effect.gen(function*() {
    const now = yield* Clock.currentTimeNanos
    const gone = yield* storage.messages.expire(now)
    if (gone > 0) yield* Effect.logDebug("disappearing messages removed").pipe(Effect.annotateLogs({ count: gone }))
    return now
  })

/**
 * Starts the sweeper in the current scope; returns the effect that wakes it (call it when new
 * messages may carry an earlier deadline than the one it sleeps until).
 */
export const start = (storage: Storage["Type"]) =>
  Effect.gen(function*() {
    const wake = yield* Queue.sliding<void>(1)
    const loop = Effect.gen(function*() {
      const now = yield* sweep(storage)
      const next = yield* storage.messages.nextExpiry
      const untilNext = Option.match(next, {
        onNone: () => Effect.never,
        onSome: (at) => Effect.sleep(Duration.nanos(at > now ? at - now : 0n))
      })
      yield* Effect.raceFirst(untilNext, Queue.take(wake))
    }).pipe(
      Effect.tapError((e) => Effect.logWarning("disappearing-message sweep failed; retrying", e.message)),
      Effect.retry(Schedule.spaced("1 second")),
      Effect.forever
    )
    // Interruptible even when the client is built in an uninterruptible region (a restart).
    yield* Effect.forkScoped(Effect.interruptible(loop))
    return Queue.offer(wake, undefined).pipe(Effect.asVoid)
  })
