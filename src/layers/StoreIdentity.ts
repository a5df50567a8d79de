/**
 * The identity operations of the store-backed delivery service. An identity update is verified
 * with the pure `applyUpdate` against the stored log head, then appended compare-and-set on that
 * head (re-verified if another server moved it); an inbox's log is capped (`LimitExceeded`).
 */
import { Effect, Either } from "effect"
import { DeliveryError, InvalidIdentityUpdate } from "../domain/Errors.ts"
import { applyUpdate } from "../domain/IdentityLog.ts"
import type { IdentityUpdate } from "../domain/Wire.ts"
import type { DeliveryService, IdentityQuery, InboxUpdates } from "../services/DeliveryService.ts"
import { checkIdCount, invalidRequest, serverSpan } from "./DeliveryRequests.ts"
import type { StoreDeliveryContext } from "./StoreDeliveryContext.ts"

type Service = DeliveryService["Type"]

/** How often an identity update is re-verified when other writers keep moving the log head. */
const STALE_RETRIES = 8

export const publishIdentityUpdate = (c: StoreDeliveryContext): Service["publishIdentityUpdate"] => (update: IdentityUpdate) => {
  const attempt = (retriesLeft: number): Effect.Effect<
    Effect.Effect.Success<ReturnType<Service["publishIdentityUpdate"]>>,
    DeliveryError | InvalidIdentityUpdate
  > =>
    Effect.gen(function*() {
      const state = yield* c.stored(c.store.loadInbox(update.inboxId))
      const applied = applyUpdate(state, update)
      if (Either.isLeft(applied)) return yield* Effect.fail(applied.left)
      if (state !== undefined && state.sequence >= c.maxIdentityUpdates) {
        return yield* Effect.fail(
          new DeliveryError({
            reason: "LimitExceeded",
            retryable: false,
            detail: `identity log of inbox ${update.inboxId} is full (${c.maxIdentityUpdates} entries)`
          })
        )
      }
      const result = yield* c.stored(c.store.appendIdentityUpdate(update, applied.right.headHash))
      switch (result._tag) {
        case "Appended":
          return result.envelope
        case "InstallationTaken":
          // An installation key belongs to one inbox; otherwise a squatter could claim it
          // and, by revoking it, drop the real owner's key package.
          return yield* Effect.fail(
            new InvalidIdentityUpdate({
              inboxId: update.inboxId,
              reason: update.action._tag === "AddInstallation"
                ? `installation ${update.action.installationId} already belongs to another inbox`
                : "installation already belongs to another inbox"
            })
          )
        case "Stale":
          // Another writer moved the log head between our read and our write: verify again
          // against the new head (a replay of the winning entry then fails as a replay).
          if (retriesLeft <= 0) {
            return yield* Effect.fail(
              new DeliveryError({
                reason: "Unavailable",
                retryable: true,
                detail: `identity log of inbox ${update.inboxId} kept changing; try again`
              })
            )
          }
          return yield* attempt(retriesLeft - 1)
      }
    })
  return attempt(STALE_RETRIES).pipe(serverSpan("DeliveryService.publishIdentityUpdate"))
}

export const getIdentityUpdates = (c: StoreDeliveryContext): Service["getIdentityUpdates"] => (queries: ReadonlyArray<IdentityQuery>) =>
  Effect.gen(function*() {
    yield* checkIdCount(queries, "getIdentityUpdates")
    for (const q of queries) {
      if (!Number.isInteger(q.afterSequence) || q.afterSequence < 0) {
        return yield* Effect.fail(
          invalidRequest(`getIdentityUpdates: afterSequence must be a non-negative integer, got ${q.afterSequence}`)
        )
      }
    }
    return yield* Effect.forEach(
      queries,
      (q) =>
        Effect.map(
          c.stored(c.store.identityUpdates(q.inboxId, q.afterSequence)),
          (updates): InboxUpdates => ({ inboxId: q.inboxId, updates })
        ),
      { concurrency: 4 }
    )
  }).pipe(serverSpan("DeliveryService.getIdentityUpdates"))
