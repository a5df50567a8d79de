/**
 * How a server spends its CPU on identity-update signatures (each a secp256k1 recovery of ~2 ms
 * or an Ed25519ph check of ~1 ms): one at a time between event-loop turns, so a flood of costly
 * updates cannot hold the loop for seconds.
 */
import { Effect, type Either } from "effect"
import { endOfTurn } from "../layers/TurnBatcher.ts"

/**
 * Runs one signature check (a synchronous `verify`). The server's (`sharedVerification`) shares
 * the CPU among requests; `takeTurns` gives the event loop a turn before each.
 */
export type Verification = <A, E>(verify: () => Either.Either<A, E>) => Effect.Effect<A, E>

/** The event loop's other callbacks run before each check (`Effect.yieldNow` may stay within microtasks). */
export const takeTurns: Verification = (verify) => Effect.zipRight(endOfTurn, Effect.suspend(verify))

/**
 * One queue of signature checks for a whole server, run `perTurn` to a turn of the event loop in
 * the order asked. A request asks for its next check only once its last is done, so requests take
 * turns: a flood of costly updates holds the loop for `perTurn` checks at a time, and delays an
 * honest update by one check of each flooding request, not all of theirs.
 */
export const sharedVerification = (perTurn: number): Verification => {
  const queue: Array<() => void> = []
  let scheduled = false
  const drain = () => {
    scheduled = false
    for (const run of queue.splice(0, perTurn)) run()
    if (queue.length > 0) schedule()
  }
  const schedule = () => {
    if (scheduled) return
    scheduled = true
    setImmediate(drain)
  }
  return <A, E>(verify: () => Either.Either<A, E>) =>
    Effect.async<A, E>((resume) => {
      // The check runs here, in the loop's turn, not in whatever microtask the fiber resumes in.
      const run = () => resume(verify())
      queue.push(run)
      schedule()
      return Effect.sync(() => {
        const at = queue.indexOf(run)
        if (at !== -1) queue.splice(at, 1)
      })
    })
}

