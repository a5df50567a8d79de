/**
 * This installation's consent records: decisions the user makes (`setConsent`), the ones the
 * engine makes for them (a group created, a DM started or answered: allowed; a welcome from a
 * denied inbox: denied), and what a conversation's consent is. Local decisions are marked unsent;
 * `HistorySync` carries them to the inbox's other installations.
 */
import { Clock, Effect, Option } from "effect"
import {
  type ConsentKey,
  ConsentRecord,
  type ConsentState,
  type ConsentSubject,
  effectiveConsent,
  nextStamp,
  subjectKey
} from "../domain/Consent.ts"
import { type ConversationId, dmPeer, type GroupId } from "../domain/Ids.ts"
import type { EngineContext } from "./EngineContext.ts"

export const make = (ctx: EngineContext) => {
  const { crypto, identity, storage } = ctx
  const self = identity.inboxId

  /** Records a local decision, stamped after every record known here. */
  const set = (subject: ConsentSubject, state: ConsentState) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeNanos
      const record = new ConsentRecord({
        key: subjectKey(subject) as ConsentKey,
        state,
        atNs: nextStamp(now, yield* storage.consent.highestStamp),
        by: identity.installationId
      })
      yield* storage.consent.put(record, { unsent: true })
    })

  /** The engine's decision, unless the user (on any installation) already made one. */
  const setIfUnset = (conversationId: ConversationId, state: ConsentState) =>
    storage.consent.get(subjectKey({ conversationId }) as ConsentKey).pipe(
      Effect.flatMap((stored) => (Option.isSome(stored) ? Effect.void : set({ conversationId }, state)))
    )

  /** Every record, by key: one read for a whole list. */
  const snapshot = storage.consent.all.pipe(
    Effect.map((records) => {
      const byKey = new Map<string, ConsentRecord>(records.map((r) => [r.key, r]))
      return (key: string) => byKey.get(key)
    })
  )

  const stateIn = (recordOf: (key: string) => ConsentRecord | undefined, subject: ConsentSubject): ConsentState =>
    "conversationId" in subject
      ? effectiveConsent(subject.conversationId, self, recordOf)
      : recordOf(subjectKey(subject))?.state ?? "unknown"

  /** One subject's consent, reading only the records it depends on. */
  const stateOf = (subject: ConsentSubject) =>
    Effect.gen(function*() {
      const keys = [subjectKey(subject)]
      if ("conversationId" in subject) {
        const peer = dmPeer(subject.conversationId, self)
        if (peer !== undefined) keys.push(subjectKey({ inboxId: peer }))
      }
      const found = new Map<string, ConsentRecord>()
      for (const key of keys) {
        const record = yield* storage.consent.get(key as ConsentKey)
        if (Option.isSome(record)) found.set(key, record.value)
      }
      return stateIn((key) => found.get(key), subject)
    })

  /** Groups just joined whose welcome came from a denied inbox: recorded, but denied. */
  const onJoined = (groupIds: ReadonlyArray<GroupId>) =>
    Effect.gen(function*() {
      if (groupIds.length === 0) return
      const recordOf = yield* snapshot
      for (const groupId of groupIds) {
        const row = yield* storage.groups.get(groupId)
        if (Option.isNone(row)) continue
        const inviter = crypto.inviterOf(yield* ctx.loadState(row.value))
        if (inviter === undefined || inviter.inboxId === self) continue
        if (recordOf(subjectKey({ inboxId: inviter.inboxId }))?.state !== "denied") continue
        yield* setIfUnset(row.value.dmId ?? (groupId as unknown as ConversationId), "denied")
      }
    })

  return { set, setIfUnset, snapshot, stateIn, stateOf, onJoined }
}
