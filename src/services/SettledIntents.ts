/**
 * Settled intents are deleted, so `converge_intents` holds what is in flight rather than a row
 * (and the text) of every message this installation ever sent.
 *
 * A Processed intent is kept for `RETENTION` first: its row answers a caller that resolves the
 * intent after another fiber settled it (the caller reads the state after its round), which
 * happens within moments; a caller later than that finds no row, which only a settled intent
 * lacks (`IntentResolution`). The delivery service stores a payload once, so no second copy of
 * ours needs the row to be known as a duplicate. Failed intents stay: they say why a message
 * shows as failed.
 *
 * One fiber per client prunes at start (rows from before settling was stamped) and then every
 * `RETENTION`, in short transactions of `BATCH` rows.
 */
import { Clock, Duration, Effect, Schedule } from "effect"
import type { Storage } from "./Storage.ts"

export const RETENTION = Duration.minutes(10)

/** Rows per delete: one short write transaction each, so sends are never held up for long. */
const BATCH = 1_000

/** Deletes what settled more than `RETENTION` ago; returns how many went. */
export const prune = Effect.fn("SettledIntents.prune")(function*(storage: Storage["Type"]) {
  const cut = (yield* Clock.currentTimeNanos) - Duration.unsafeToNanos(RETENTION)
  let total = 0
  for (;;) {
    const gone = yield* storage.intents.pruneSettled(cut, BATCH)
    total += gone
    if (gone < BATCH) break
  }
  if (total > 0) yield* Effect.logDebug("settled intents pruned").pipe(Effect.annotateLogs({ count: total }))
  return total
})

/** Starts the pruning fiber in the current scope. */
export const start = (storage: Storage["Type"]) =>
  prune(storage).pipe(
    Effect.tapError((e) => Effect.logWarning("pruning settled intents failed; trying again later", e.message)),
    Effect.ignore,
    Effect.repeat(Schedule.spaced(RETENTION)),
    // Interruptible even when the client is built in an uninterruptible region (a restart).
    Effect.interruptible,
    Effect.forkScoped,
    Effect.asVoid
  )
