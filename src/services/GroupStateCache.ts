/**
 * Decoded MLS states, one per group, keyed by the exact stored bytes. Deserializing a ts-mls
 * state is the costliest step of a sync; states are immutable values, so the last decode is
 * reused while the stored bytes are the same.
 */
import { Effect } from "effect"
import { bytesEqual } from "../domain/Bytes.ts"
import type { GroupId } from "../domain/Ids.ts"
import type { StoredGroup } from "../domain/Stored.ts"
import type { MlsCrypto, MlsGroupState } from "./MlsCrypto.ts"

export const make = (crypto: MlsCrypto["Type"]) => {
  const cache = new Map<GroupId, { readonly bytes: Uint8Array; readonly state: MlsGroupState }>()
  const loadState = (group: StoredGroup) => {
    const hit = cache.get(group.id)
    if (hit !== undefined && (hit.bytes === group.mlsState || bytesEqual(hit.bytes, group.mlsState))) {
      return Effect.succeed(hit.state)
    }
    return crypto.deserialize(group.mlsState).pipe(
      Effect.tap((state) => Effect.sync(() => cache.set(group.id, { bytes: group.mlsState, state })))
    )
  }
  const encodeState = (groupId: GroupId, state: MlsGroupState) => {
    const hit = cache.get(groupId)
    if (hit !== undefined && hit.state === state) return hit.bytes
    const bytes = crypto.serialize(state)
    cache.set(groupId, { bytes, state })
    return bytes
  }
  return { loadState, encodeState }
}
