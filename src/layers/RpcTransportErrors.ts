/**
 * The RPC transport's own failures as the delivery port's errors: connection refused or lost,
 * a server shutting down, a response that ended early, HTTP status refusals, a defect answered.
 */
import type { RpcClientError } from "@effect/rpc/RpcClientError"
import { Cause } from "effect"
import { DeliveryError } from "../domain/Errors.ts"

export const unavailable = (detail: string) => new DeliveryError({ reason: "Unavailable", retryable: true, detail })

/**
 * The transport's own failures as the port's errors: a client error (connection refused or
 * lost) and an interruption that came over the wire (the server shut down, or the response
 * ended early) both mean the service could not be reached. Our own interruption never gets
 * here: an interrupted fiber skips error handlers.
 */
export const transportErrors = <E extends { readonly _tag: string }>(
  op: string,
  cause: Cause.Cause<E>
): Cause.Cause<Exclude<E, RpcClientError> | DeliveryError> => {
  if (Cause.isInterruptedOnly(cause)) {
    return Cause.fail(unavailable(`${op}: the server interrupted the call (shutting down or connection lost)`))
  }
  // A defect in a call comes almost always from the other side: a defect the server's handler
  // died with, or an answer the RPC client could not decode. This process carries on: the call
  // failed, and says with what (a defect of our own request encoding would read the same).
  if (Cause.isDie(cause) && Cause.failureOption(cause)._tag === "None") {
    const defect = Cause.squash(cause)
    return Cause.fail(unavailable(`${op}: the call ended in a defect: ${defect instanceof Error ? defect.message : String(defect)}`))
  }
  return Cause.map(cause, (e) =>
    e._tag === "RpcClientError"
      ? fromClientError(op, e as unknown as RpcClientError)
      : e as Exclude<E, RpcClientError>)
}

/**
 * A transport error as a `DeliveryError`. HTTP status errors (the server's guard in front of
 * the RPC layer) say whether trying again could help: 413 and other 4xx cannot.
 */
const fromClientError = (op: string, error: RpcClientError): DeliveryError => {
  const cause: unknown = error.cause
  const status = typeof cause === "object" && cause !== null && "_tag" in cause && cause._tag === "ResponseError" &&
      "response" in cause
    ? (cause as { readonly response: { readonly status: number } }).response.status
    : undefined
  if (status === 413) {
    return new DeliveryError({ reason: "PayloadTooLarge", retryable: false, detail: `${op}: request body too large` })
  }
  if (status !== undefined && status >= 400 && status < 500 && status !== 408 && status !== 429) {
    return new DeliveryError({ reason: "InvalidRequest", retryable: false, detail: `${op}: HTTP ${status}` })
  }
  return unavailable(`${op}: ${error.message}${status === undefined ? "" : ` (HTTP ${status})`}`)
}
