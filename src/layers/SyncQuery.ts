/**
 * `DeliveryService.syncQuery` over a `DeliveryStore`: group pages (as `batchQueryGroupMessages`)
 * and the identity changes of the asked inboxes since each one's cursor, in one call, so a
 * client learns of a new or revoked device in the round trip that syncs its groups.
 *
 * Bounded: at most `MAX_IDS_PER_LOOKUP` inboxes, a cursor is an integer between 0 and the
 * longest log the service keeps, at most `maxEntries` log entries per answer (the rest on the
 * next call). A read like the two it combines: the identity part reveals the inboxes asked
 * for, exactly what `getIdentityUpdates` for them reveals, and answers only with signed log
 * entries everyone may read; nothing says who else asked or which groups they share.
 */
import { Effect, Schema } from "effect"
import type { DeliveryError } from "../domain/Errors.ts"
import { InboxId } from "../domain/Ids.ts"
import type { IdentityUpdateEnvelope } from "../domain/Wire.ts"
import type { DeliveryService, InboxUpdates, SyncAnswer } from "../services/DeliveryService.ts"
import type { DeliveryStore, DeliveryStoreError } from "../services/DeliveryStore.ts"
import { checkIdCount, invalidRequest, serverSpan } from "./DeliveryRequests.ts"

type Service = DeliveryService["Type"]

const isInboxId = Schema.is(InboxId)

export interface SyncQueryDeps {
  readonly store: DeliveryStore["Type"]
  readonly stored: <A>(effect: Effect.Effect<A, DeliveryStoreError>) => Effect.Effect<A, DeliveryError>
  readonly batchQueryGroupMessages: Service["batchQueryGroupMessages"]
  /** The longest identity log the service keeps: no cursor can be beyond it. */
  readonly maxIdentityUpdates: number
  /** Most identity-log entries in one answer. */
  readonly maxEntries: number
}

/** Entries grouped by inbox, in the order the store gave them (by inbox, then log order). */
export const groupByInbox = (entries: ReadonlyArray<IdentityUpdateEnvelope>): ReadonlyArray<InboxUpdates> => {
  const byInbox = new Map<InboxId, Array<IdentityUpdateEnvelope>>()
  for (const entry of entries) {
    const list = byInbox.get(entry.update.inboxId) ?? []
    list.push(entry)
    byInbox.set(entry.update.inboxId, list)
  }
  return [...byInbox].map(([inboxId, updates]) => ({ inboxId, updates }))
}

export const make = (deps: SyncQueryDeps): Service["syncQuery"] => (query) =>
  Effect.gen(function*() {
    const what = "syncQuery"
    yield* checkIdCount(query.identities, what)
    for (const q of query.identities) {
      if (!isInboxId(q.inboxId)) return yield* invalidRequest(`${what}: not an inbox id: ${String(q.inboxId).slice(0, 80)}`)
      if (!Number.isInteger(q.afterSequence) || q.afterSequence < 0 || q.afterSequence > deps.maxIdentityUpdates) {
        return yield* invalidRequest(
          `${what}: afterSequence must be an integer from 0 to ${deps.maxIdentityUpdates}, got ${q.afterSequence}`
        )
      }
    }
    // The group part is validated (and bounded) exactly as batchQueryGroupMessages does it.
    const groups = query.groups.length === 0 ? [] : yield* deps.batchQueryGroupMessages(query.groups)
    const entries = query.identities.length === 0
      ? []
      : yield* deps.stored(deps.store.identityChanges(query.identities, deps.maxEntries))
    return { groups, identities: groupByInbox(entries) } satisfies SyncAnswer
  }).pipe(serverSpan("DeliveryService.syncQuery"))
