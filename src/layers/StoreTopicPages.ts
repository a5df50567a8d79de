/** Envelopes from stored entries, and one page of a topic read from the store. */
import { Effect } from "effect"
import type { DeliveryError } from "../domain/Errors.ts"
import type { GroupId, InstallationId } from "../domain/Ids.ts"
import { GroupMessageEnvelope, QueryPage, WelcomeMessageEnvelope } from "../domain/Wire.ts"
import type { StoredEntry, Topic } from "../services/DeliveryStore.ts"
import { pageMayContinue } from "./DeliveryRequests.ts"
import type { StoreDeliveryContext } from "./StoreDeliveryContext.ts"

// Not validated again: the id was checked on the way in and the store only holds what
// passed the checks (validating each field cost ~0.08 ms per delivered message).
export const toGroupEnvelope = (groupId: GroupId) => (e: StoredEntry) =>
  new GroupMessageEnvelope({ groupId, sequenceId: e.sequenceId, serverTimeNs: e.serverTimeNs, payload: e.payload }, true)
export const toWelcomeEnvelope = (installationId: InstallationId) => (e: StoredEntry) =>
  new WelcomeMessageEnvelope({
    installationId,
    sequenceId: e.sequenceId,
    serverTimeNs: e.serverTimeNs,
    payload: e.payload
  }, true)

/** Ascending after `after`, at most `limit`; `next` only when the page is full. */
export const page = <E extends { readonly sequenceId: bigint }>(
  { maxPayloadBytes, store, stored }: StoreDeliveryContext,
  topic: Topic,
  after: bigint,
  limit: number,
  toEnvelope: (e: StoredEntry) => E
): Effect.Effect<QueryPage<E>, DeliveryError> =>
  Effect.map(stored(store.read(topic, after, limit)), (entries) => {
    const items = entries.map(toEnvelope)
    const last = items[items.length - 1]
    return new QueryPage(
      items,
      pageMayContinue(entries, limit, maxPayloadBytes) && last !== undefined ? last.sequenceId : undefined
    )
  })
