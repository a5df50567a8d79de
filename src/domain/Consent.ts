/**
 * Consent: whether the user wants to see a conversation, or anything from an inbox. Records are
 * shared by every installation of an inbox; two records for one subject merge by last writer
 * (stamp, then writing installation, then state), so every installation ends on the same one
 * whatever order the records reach it in. Pure: no storage, no network.
 */
import { Schema } from "effect"
import { ConversationId, dmPeer, InboxId, InstallationId } from "./Ids.ts"

export const ConsentState = Schema.Literal("allowed", "denied", "unknown")
export type ConsentState = typeof ConsentState.Type

/** What a consent is about: one conversation (a DM's id covers all its groups) or one inbox. */
export const ConsentSubject = Schema.Union(
  Schema.Struct({ conversationId: ConversationId }),
  Schema.Struct({ inboxId: InboxId })
)
export type ConsentSubject = typeof ConsentSubject.Type

/** The stored key of a subject: `conversation:<id>` or `inbox:<id>`. */
export const subjectKey = (subject: ConsentSubject): string =>
  "conversationId" in subject ? `conversation:${subject.conversationId}` : `inbox:${subject.inboxId}`

export const ConsentKey = Schema.String.pipe(
  Schema.pattern(/^(conversation:(dm:[0-9a-f]{64}:[0-9a-f]{64}|[0-9a-f]{32})|inbox:[0-9a-f]{64})$/),
  Schema.brand("ConsentKey")
)
export type ConsentKey = typeof ConsentKey.Type

/** One consent decision as it travels between an inbox's installations and sits in the store. */
export class ConsentRecord extends Schema.Class<ConsentRecord>("ConsentRecord")({
  key: ConsentKey,
  state: ConsentState,
  /** A hybrid logical stamp: never below the writer's clock, always above every stamp it had seen. */
  atNs: Schema.BigInt,
  by: InstallationId
}) {}

const stateRank: Record<ConsentState, number> = { unknown: 0, allowed: 1, denied: 2 }

/** Whether `a` wins over `b` for the same subject: later stamp, then higher installation id, then stricter state. */
export const wins = (a: ConsentRecord, b: ConsentRecord): boolean => {
  if (a.atNs !== b.atNs) return a.atNs > b.atNs
  if (a.by !== b.by) return a.by > b.by
  return stateRank[a.state] > stateRank[b.state]
}

/** The record that stands after seeing both (either may be absent). */
export const merge = (a: ConsentRecord | undefined, b: ConsentRecord | undefined): ConsentRecord | undefined =>
  a === undefined ? b : b === undefined ? a : wins(b, a) ? b : a

/** The stamp of a new local decision: the clock, but after everything already known. */
export const nextStamp = (nowNs: bigint, highestKnown: bigint): bigint => (nowNs > highestKnown ? nowNs : highestKnown + 1n)

/**
 * A conversation's consent: its own record if any, else a DM follows its peer's inbox record,
 * else unknown. (A group whose welcome came from a denied inbox gets a denied record when joined.)
 */
export const effectiveConsent = (
  conversationId: ConversationId,
  self: InboxId,
  recordOf: (key: string) => ConsentRecord | undefined
): ConsentState => {
  const own = recordOf(subjectKey({ conversationId }))
  if (own !== undefined) return own.state
  const peer = dmPeer(conversationId, self)
  return peer === undefined ? "unknown" : recordOf(subjectKey({ inboxId: peer }))?.state ?? "unknown"
}

/** What `conversations()` and `streamMessages` show unless asked otherwise. */
export const DEFAULT_VISIBLE: ReadonlyArray<ConsentState> = ["allowed", "unknown"]
