/**
 * The timeout of every unary call, kept by the connection instead of by each call. A call the
 * server has not answered within `timeout` of its request being sent gets an answer from here:
 * a `DeliveryError("Timeout", retryable)` under its request id, which the RPC client hands to
 * the caller as it would the server's (and interrupts the call's sending, as for any answer);
 * the server is told to interrupt the call, as when a caller is interrupted.
 *
 * Why not `Effect.timeoutFail` per call: it forked two fibers (the call and a sleep) and merged
 * their fiber refs back on every call, a third of the client's Effect operations per call. Here
 * a call costs a map entry, and one fiber per connection sleeps until the oldest deadline. All
 * calls of a connection have the same timeout, so deadlines come in the order calls are sent.
 *
 * The clock is the one the connection was made under (`TestClock` in tests). Deadlines are read
 * off its monotonic time (`unsafeCurrentTimeNanos`), not the time of day, which the system may
 * step back or forward (NTP, a resumed VM) and so hold calls or time them out early.
 */
import { RpcClient, type RpcMessage } from "@effect/rpc"
import { Duration, Effect, FiberSet, type Scope } from "effect"
import { failedAnswer } from "../domain/DeliveryRpcs.ts"
import { DeliveryError } from "../domain/Errors.ts"

export interface CallTimeoutOptions {
  readonly timeout: Duration.Duration
  /** Is the RPC of this tag a unary call? Streams have no timeout: they resume instead. */
  readonly isUnary: (tag: string) => boolean
}

/**
 * Unanswered calls by request id, and their ids in the order sent: as every call of a connection
 * has the same timeout, the front of that order is the oldest deadline (answered ids are skipped).
 */
const makeDeadlines = () => {
  const pending = new Map<string, { readonly tag: string; readonly deadline: number }>()
  let order: Array<string> = []
  let head = 0

  /** Takes the calls past their deadline at `now`, as [id, tag]; drops answered ones from the front. */
  const takeExpired = (now: number): Array<[string, string]> => {
    const expired: Array<[string, string]> = []
    while (head < order.length) {
      const id = order[head]!
      const call = pending.get(id)
      if (call !== undefined && call.deadline > now) break
      head++
      if (call !== undefined) {
        pending.delete(id)
        expired.push([id, call.tag])
      }
    }
    if (head > 1024 && head * 2 > order.length) {
      order = order.slice(head)
      head = 0
    }
    return expired
  }

  /** The oldest unanswered call's deadline; with none, the order starts over. */
  const oldest = (): number | undefined => {
    const call = head < order.length ? pending.get(order[head]!) : undefined
    if (call === undefined) {
      order = []
      head = 0
    }
    return call?.deadline
  }

  return {
    add: (id: string, tag: string, deadline: number) => {
      pending.set(id, { tag, deadline })
      order.push(id)
    },
    remove: (id: string) => pending.delete(id),
    clear: () => pending.clear(),
    takeExpired,
    oldest
  }
}

/** The answer to a call that timed out, as the server would have encoded it. */
const timeoutExit = (requestId: string, tag: string, timeout: Duration.Duration): RpcMessage.FromServerEncoded =>
  failedAnswer(
    requestId,
    new DeliveryError({ reason: "Timeout", retryable: true, detail: `${tag}: no response within ${Duration.format(timeout)}` })
  )

/** `inner` with every unary call bounded by `timeout`; the timer fiber lives as long as the scope. */
export const withCallTimeouts = (
  inner: RpcClient.Protocol["Type"],
  { isUnary, timeout }: CallTimeoutOptions
): Effect.Effect<RpcClient.Protocol["Type"], never, Scope.Scope> =>
  RpcClient.Protocol.make((writeResponse) =>
    Effect.gen(function*() {
      const clock = yield* Effect.clock
      const nowMillis = () => Number(clock.unsafeCurrentTimeNanos()) / 1_000_000
      const millis = Duration.toMillis(timeout)
      // Interrupts sent for timed-out calls, each on its own fiber: on a socket still opening the
      // send waits for it to open, and the timer must not wait with it.
      const interrupts = yield* FiberSet.make()
      const deadlines = makeDeadlines()
      const wake = yield* Effect.makeLatch(false)

      const expire = (id: string, tag: string) =>
        Effect.zipRight(
          writeResponse(timeoutExit(id, tag, timeout)),
          FiberSet.run(
            interrupts,
            inner.send({ _tag: "Interrupt", requestId: id }).pipe(Effect.timeout(timeout), Effect.ignore)
          )
        )

      // Sleeps until the oldest deadline, or until a call is sent when there is none.
      yield* Effect.gen(function*() {
        for (;;) {
          const expired = deadlines.takeExpired(nowMillis())
          for (const [id, tag] of expired) yield* expire(id, tag)
          if (expired.length > 0) continue
          const oldest = deadlines.oldest()
          if (oldest === undefined) {
            wake.unsafeClose()
            yield* wake.await
          } else {
            yield* clock.sleep(Duration.millis(Math.max(0, oldest - nowMillis())))
          }
        }
      }).pipe(Effect.interruptible, Effect.forkScoped)

      yield* Effect.forkScoped(inner.run((message) => {
        if (message._tag === "Exit") deadlines.remove(message.requestId)
        // The RPC client fails every call of its own on these: none is left to time out.
        else if (message._tag === "ClientProtocolError" || message._tag === "Defect") deadlines.clear()
        return writeResponse(message)
      }))

      return {
        // Runs when the RPC client sends (inside its effect), so the deadline counts from then.
        send: (request, transferables) => {
          if (request._tag === "Request" && Number.isFinite(millis) && isUnary(request.tag)) {
            deadlines.add(request.id, request.tag, nowMillis() + millis)
            wake.unsafeOpen()
          } else if (request._tag === "Interrupt") {
            deadlines.remove(request.requestId)
          }
          return inner.send(request, transferables)
        },
        supportsAck: inner.supportsAck,
        supportsTransferables: inner.supportsTransferables
      }
    })
  )
