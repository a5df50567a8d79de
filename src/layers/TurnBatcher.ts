/**
 * Work a server does for many requests at once, gathered per event-loop turn. Requests that
 * arrive in the same turn (the I/O callbacks of one poll) are answered by one store query or
 * one transaction instead of one each; the cost is at most one turn of latency.
 */
import { Deferred, Effect, FiberId } from "effect"

/** Resumes after the I/O callbacks of the current event-loop turn (`setImmediate`). */
export const endOfTurn: Effect.Effect<void> = Effect.async<void>((resume) => {
  const timer = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(timer))
})

/**
 * A lookup by key whose calls of one turn are answered by one `load` of all their keys (a
 * key asked twice is loaded once). `load` answers the keys it found; a missing key is
 * `undefined`. If `load` fails, every call of that turn fails with its error.
 */
export const makeTurnBatcher = <K, V, E>(
  load: (keys: ReadonlyArray<K>) => Effect.Effect<ReadonlyMap<K, V>, E>
): (key: K) => Effect.Effect<V | undefined, E> => {
  let gathering: Map<K, Deferred.Deferred<V | undefined, E>> | undefined

  const settle = (batch: Map<K, Deferred.Deferred<V | undefined, E>>) =>
    Effect.exit(Effect.suspend(() => load(Array.from(batch.keys())))).pipe(
      Effect.flatMap((found) =>
        Effect.forEach(batch, ([key, done]) =>
          Deferred.complete(done, Effect.map(found, (values) => values.get(key))), { discard: true })
      )
    )

  // Opening a batch and forking its closer are one uninterruptible step: a caller interrupted
  // between them (at a scheduler yield) would leave a batch open that nobody closes, and every
  // later lookup waiting on it. Only the wait for the answer can be interrupted.
  return (key) =>
    Effect.uninterruptibleMask((restore) => Effect.suspend(() => {
      let batch = gathering
      if (batch === undefined) {
        const fresh = new Map<K, Deferred.Deferred<V | undefined, E>>()
        gathering = batch = fresh
        // Whoever opens the batch closes it after this turn; it settles even if that caller
        // is interrupted meanwhile, since other callers wait on it.
        const close = endOfTurn.pipe(
          Effect.zipRight(Effect.sync(() => {
            if (gathering === fresh) gathering = undefined
          })),
          Effect.zipRight(settle(fresh))
        )
        return Effect.zipRight(Effect.forkDaemon(close), restore(awaitKey(fresh, key)))
      }
      return restore(awaitKey(batch, key))
    }))

  function awaitKey(batch: Map<K, Deferred.Deferred<V | undefined, E>>, key: K) {
    let done = batch.get(key)
    if (done === undefined) {
      done = Deferred.unsafeMake<V | undefined, E>(FiberId.none)
      batch.set(key, done)
    }
    return Deferred.await(done)
  }
}
