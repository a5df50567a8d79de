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
 * `RETENTION`, in short transactions of `BATCH` rows. The retention is the client's
 * `settledIntentRetention`: the simulation keeps none and prunes often, so intents go while
 * their callers are still resolving them.
 */
import { Clock, Duration, Effect, Schedule } from "effect"
import type { Storage } from "./Storage.ts"

export const RETENTION = Duration.minutes(10)

/** The shortest wait between two prunes, whatever the retention: a retention of 0 is no busy loop. */
const MIN_INTERVAL = Duration.millis(100)

/** Rows per delete: one short write transaction each, so sends are never held up for long. */
const BATCH = 1_000

/** Deletes what settled more than `retention` ago; returns how many went. */
export const prune = Effect.fn("SettledIntents.prune")(function*(
  storage: Storage["Type"],
  retention: Duration.DurationInput = RETENTION
) {
  const cut = (yield* Clock.currentTimeNanos) - Duration.unsafeToNanos(Duration.decode(retention))
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
export const start = (storage: Storage["Type"], retention: Duration.DurationInput = RETENTION) =>
  prune(storage, retention).pipe(
    Effect.tapError((e) => Effect.logWarning("pruning settled intents failed; trying again later", e.message)),
    Effect.ignore,
    Effect.repeat(Schedule.spaced(Duration.max(Duration.decode(retention), MIN_INTERVAL))),
    // Interruptible even when the client is built in an uninterruptible region (a restart).
    Effect.interruptible,
    Effect.forkScoped,
    Effect.asVoid
  )
