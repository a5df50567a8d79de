/**
 * How the RPC delivery client makes its calls: signed headers for authenticated operations,
 * one attempt with transport errors mapped (its timeout is the connection's: `RpcCallTimeouts`),
 * retries of idempotent calls, and subscriptions that resume from their cursors after a
 * retryable failure.
 */
import type { RpcClientError } from "@effect/rpc/RpcClientError"
import { Effect, FiberRef, Option, Schedule, Stream } from "effect"
import { DeliveryError } from "../domain/Errors.ts"
import { AUTH_HEADER, type AuthenticatedOperation, type RequestAuth } from "../domain/RequestAuth.ts"
import { currentSigner } from "../services/DeliveryAuth.ts"
import { transportErrors, unavailable } from "./RpcTransportErrors.ts"

/**
 * The header's JSON: the statement's four strings, as `RequestAuthJson` encodes them. The
 * statement is a `RequestAuth` (checked when it was made) and the server decodes the header
 * with `RequestAuthJson` anyway, so the schema's encode would only check it a third time.
 */
const encodeAuth = (auth: RequestAuth): string =>
  JSON.stringify({ installationId: auth.installationId, timeNs: auth.timeNs, nonce: auth.nonce, signature: auth.signature })

/** `items` in runs of at most `size`; at least one run, so an empty call still reaches the server. */
export const chunksOf = <A>(items: ReadonlyArray<A>, size: number): ReadonlyArray<ReadonlyArray<A>> =>
  Array.from({ length: Math.max(1, Math.ceil(items.length / size)) }, (_, i) => items.slice(i * size, (i + 1) * size))

export interface CallOptions {
  readonly retrySchedule: Schedule.Schedule<unknown, DeliveryError>
  readonly resubscribeSchedule: Schedule.Schedule<unknown, DeliveryError>
}

export const makeCalls = ({ resubscribeSchedule: resubscribeEvery, retrySchedule }: CallOptions) => {
  const retryWhile = (e: DeliveryError) => e.retryable
  const resubscribeSchedule = Schedule.whileInput(resubscribeEvery, retryWhile)

  /**
   * The headers of one attempt of an authenticated call: a fresh signed statement from the
   * caller's signer (none without one; the server then refuses the call).
   */
  const authHeaders = (op: AuthenticatedOperation, digest: string) =>
    Effect.gen(function*() {
      const signer = yield* FiberRef.get(currentSigner)
      if (Option.isNone(signer)) return {}
      const auth = yield* signer.value(op, digest)
      return { [AUTH_HEADER]: encodeAuth(auth) }
    })

  /**
   * One attempt, transport errors mapped. The connection bounds it by the timeout: a call
   * unanswered in time fails with a retryable `DeliveryError("Timeout")` (`RpcCallTimeouts`).
   */
  const attempt = <A, E extends { readonly _tag: string }>(
    op: string,
    call: Effect.Effect<A, E>
  ): Effect.Effect<A, Exclude<E, RpcClientError> | DeliveryError> =>
    Effect.catchAllCause(call, (cause) => Effect.failCause(transportErrors(op, cause)))

  /**
   * An idempotent call: attempted again on retryable errors. The retry schedule starts only
   * after a first retryable failure, which it sees as its first input (so the delays and the
   * number of attempts are the schedule's): a call that succeeds pays for no schedule.
   */
  const idempotent = <A>(op: string, call: Effect.Effect<A, DeliveryError | RpcClientError>) => {
    const once = attempt(op, call)
    return Effect.catchIf(once, retryWhile, (first) => {
      let failedFirst = false
      const again = Effect.suspend(() => {
        if (failedFirst) return once
        failedFirst = true
        return Effect.fail(first)
      })
      return Effect.retry(again, { schedule: retrySchedule, while: retryWhile })
    })
  }

  /**
   * A stream that resumes: `open` subscribes from the cursors; deliveries at or below a
   * topic's cursor are dropped and every delivery moves its cursor. A normal end is treated
   * as a lost connection too: the server never ends a subscription that has topics to follow.
   */
  const resumable = <A extends { readonly sequenceId: bigint }, K>(
    op: string,
    cursors: Map<K, bigint>,
    keyOf: (a: A) => K,
    open: () => Stream.Stream<A, DeliveryError | RpcClientError>
  ): Stream.Stream<A, DeliveryError> =>
    Stream.suspend(open).pipe(
      Stream.catchAllCause((cause) => Stream.failCause(transportErrors(op, cause))),
      Stream.filter((a) => {
        const key = keyOf(a)
        const last = cursors.get(key)
        if (last !== undefined && a.sequenceId <= last) return false
        cursors.set(key, a.sequenceId)
        return true
      }),
      Stream.concat(Stream.fail(unavailable(`${op}: the server ended the subscription`))),
      Stream.retry(resubscribeSchedule)
    )

  return { authHeaders, attempt, idempotent, resumable }
}

export type Calls = ReturnType<typeof makeCalls>
