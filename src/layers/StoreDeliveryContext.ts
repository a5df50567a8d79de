/**
 * What every part of the store-backed delivery service (`StoreDeliveryService.ts`) works with:
 * the store, the crypto that inspects payloads, the limits, request checks and authentication,
 * and how a store failure reaches the caller.
 */
import { Effect } from "effect"
import { DeliveryError } from "../domain/Errors.ts"
import type { DeliveryStore, DeliveryStoreError } from "../services/DeliveryStore.ts"
import type { MlsCrypto } from "../services/MlsCrypto.ts"
import type { makeChecks, Refusal } from "./DeliveryRequests.ts"
import type * as Authenticator from "./RequestAuthenticator.ts"
import type { FanOut } from "./TopicFanOut.ts"

export interface StoreDeliveryContext {
  readonly store: DeliveryStore["Type"]
  readonly crypto: MlsCrypto["Type"]
  readonly maxPayloadBytes: number
  readonly pageSize: number
  readonly maxIdentityUpdates: number
  readonly pollMillis: number
  /** Runs a store operation, reporting its failure as a retryable `Unavailable`. */
  readonly stored: <A>(effect: Effect.Effect<A, DeliveryStoreError>) => Effect.Effect<A, DeliveryError>
  /** Validation shared with every delivery-service layer. */
  readonly checks: ReturnType<typeof makeChecks>
  readonly authenticate: ReturnType<typeof Authenticator.make>["authenticate"]
  /** The service's one reader of the store's change feed, handing each change to its topic's subscriptions. */
  readonly fanOut: FanOut
}

/**
 * A store failure: the outcome is unknown to the caller, and every operation is safe to retry.
 * The caller learns which operation failed; the cause (SQL, connection details) stays in the
 * server's log.
 */
export const unavailable = (error: DeliveryStoreError) =>
  Effect.logWarning(`DeliveryService: store failed in ${error.operation}`, error.cause).pipe(
    Effect.zipRight(
      Effect.fail(
        new DeliveryError({
          reason: "Unavailable",
          retryable: true,
          detail: `the delivery store is unavailable (${error.operation})`
        })
      )
    )
  )

export const forbidden = (detail: string) => new DeliveryError({ reason: "Forbidden", retryable: false, detail })

/**
 * A send of addressed payloads, checked whole before anything is stored (all or nothing): the
 * batch size, each address and payload, then the caller's signature over the whole request. The
 * request's digest is computed only once the batch is known to be within bounds.
 */
export const checkedSend = <M extends { readonly payload: Uint8Array }>(
  c: StoreDeliveryContext,
  op: "sendGroupMessages" | "sendGroupMessagesIf" | "sendWelcomeMessages",
  messages: ReadonlyArray<M>,
  address: (m: M) => Refusal,
  digestOf: (messages: ReadonlyArray<M>) => string
): Effect.Effect<void, DeliveryError> => {
  // Plain checks first, in the same order, in one step: the first refusal is the answer.
  let refusal = c.checks.refusals.batch(messages, op)
  for (let i = 0; refusal === undefined && i < messages.length; i++) refusal = address(messages[i]!)
  if (refusal !== undefined) return Effect.fail(refusal)
  return c.authenticate(op, digestOf(messages), messages.reduce((n, m) => n + m.payload.length, 0))
}
