/**
 * Takes turns at the event loop for bursts of synchronous work that many requests may start at
 * once (subscription openings and closings: decoding and indexing 1,000 topics, better-sqlite3's
 * queries), so other requests still get the loop between them.
 */
import { Effect } from "effect"

/** Most milliseconds of such work per event-loop turn: what it adds to others' latency. */
const MAX_TURN_MS = 10

/**
 * One holder at a time, and once a turn has run `MAX_TURN_MS` the next holder waits for a later
 * turn (`setImmediate`). Yielding per step was not enough: Effect resumes ready fibers in
 * microtasks, so 256 openings woken together ran back to back and held the loop for over a second.
 */
const makeTurns = () => {
  const waiting: Array<() => void> = []
  let busy = false
  let armed = false
  let turnStart = 0
  const next = () => {
    const resume = waiting.shift()
    if (resume === undefined) return
    busy = true
    resume()
  }
  const tick = () => {
    armed = false
    turnStart = performance.now()
    if (!busy) next()
  }
  const handOver = () => {
    if (waiting.length === 0) return
    if (performance.now() - turnStart < MAX_TURN_MS) next()
    else if (!armed) {
      armed = true
      setImmediate(tick)
    }
  }
  const acquire = Effect.async<void>((resume) => {
    const entry = () => resume(Effect.void)
    waiting.push(entry)
    // Within a turn that began under `MAX_TURN_MS` ago, at once; else in a fresh one.
    if (!busy) handOver()
    return Effect.sync(() => {
      const at = waiting.indexOf(entry)
      if (at >= 0) waiting.splice(at, 1)
    })
  })
  const release = Effect.sync(() => {
    busy = false
    handOver()
  })
  /** Runs `effect` in a turn of its own (uninterruptible while it waits: a closed subscription waits its turn). */
  return <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.acquireUseRelease(acquire, () => effect, () => release)
}

/**
 * Runs `effect` when the process's turn allows (the event loop is the process's): keep `effect`
 * short and mostly synchronous, since other holders wait while it holds the turn.
 */
export const inTurn = makeTurns()
