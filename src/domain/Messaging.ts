/**
 * The messaging rules every member applies alike, as pure functions: which group a direct
 * message may be shown in, who may delete which message (and what to do with a deletion whose
 * target has not arrived), and when a disappearing message goes.
 */
import { Data } from "effect"
import type { ConversationId, GroupId, InboxId } from "./Ids.ts"
import type { ConversationKind, MembershipState } from "./Stored.ts"

// ---- direct messages: the group they claim ----

/** The claimed group as the recipient holds it when the direct message arrives. */
export interface ClaimedGroup {
  readonly membership: MembershipState
  /** Its member inboxes at the epoch the recipient holds. */
  readonly members: ReadonlyArray<InboxId>
}

export interface GroupContextFacts {
  /** The group the message says it belongs to. */
  readonly claimed: GroupId
  /** Where the message arrived: only a DM carries direct messages. */
  readonly arrivedIn: ConversationKind
  readonly sender: InboxId
  readonly self: InboxId
  /** Undefined when the recipient holds no group of that id. */
  readonly group: ClaimedGroup | undefined
}

export type GroupContextVerdict = Data.TaggedEnum<{
  /** Both inboxes are in the group as the recipient holds it: shown with it. */
  Attached: { readonly groupId: GroupId }
  /** A group message cannot claim a group: every member of this one reads it. */
  NotADirectMessage: {}
  /** The recipient holds no such group, or is out of it. */
  RecipientNotInGroup: {}
  /** The sender is not a member of the group as the recipient holds it. */
  SenderNotInGroup: {}
}>
export const GroupContextVerdict = Data.taggedEnum<GroupContextVerdict>()

/** Decided by the recipient when the message arrives, against its own state of the claimed group. */
export const groupContextVerdict = (facts: GroupContextFacts): GroupContextVerdict => {
  if (facts.arrivedIn !== "dm") return GroupContextVerdict.NotADirectMessage()
  const group = facts.group
  if (group === undefined || group.membership === "inactive" || !group.members.includes(facts.self)) {
    return GroupContextVerdict.RecipientNotInGroup()
  }
  if (!group.members.includes(facts.sender)) return GroupContextVerdict.SenderNotInGroup()
  return GroupContextVerdict.Attached({ groupId: facts.claimed })
}

// ---- deletion ----

/** The message a deletion names, as the receiver stores it. */
export interface DeletionTarget {
  readonly conversationId: ConversationId
  readonly senderInboxId: InboxId
  readonly kind: string
  readonly deleted: boolean
}

export interface DeletionFacts {
  readonly deleter: InboxId
  /** The conversation the deletion travelled in. */
  readonly conversationId: ConversationId
  readonly conversationKind: ConversationKind
  /**
   * Whether the deleter is a super admin in the group's settings at the epoch every member
   * holds when it reaches the deletion on the topic (never in a DM, which has no settings).
   */
  readonly deleterIsSuperAdmin: boolean
  /** Undefined when the target is not stored (yet). */
  readonly target: DeletionTarget | undefined
}

export type DeletionVerdict = Data.TaggedEnum<{
  Apply: {}
  /** The target has not arrived: remember the deletion, judge the target when it comes. */
  Pending: { readonly bySuperAdmin: boolean }
  Refused: { readonly reason: "foreignConversation" | "notDeletable" | "alreadyDeleted" | "notAllowed" }
}>
export const DeletionVerdict = Data.taggedEnum<DeletionVerdict>()

/** The sender of a message deletes it; in a group, so does a super admin. */
export const deletionVerdict = (facts: DeletionFacts): DeletionVerdict => {
  const bySuperAdmin = facts.conversationKind === "group" && facts.deleterIsSuperAdmin
  const target = facts.target
  if (target === undefined) return DeletionVerdict.Pending({ bySuperAdmin })
  if (target.conversationId !== facts.conversationId) return DeletionVerdict.Refused({ reason: "foreignConversation" })
  if (target.kind !== "text") return DeletionVerdict.Refused({ reason: "notDeletable" })
  if (target.deleted) return DeletionVerdict.Refused({ reason: "alreadyDeleted" })
  if (target.senderInboxId === facts.deleter || bySuperAdmin) return DeletionVerdict.Apply()
  return DeletionVerdict.Refused({ reason: "notAllowed" })
}

/** A deletion that arrived before its target, remembered. */
export interface PendingDeletion {
  readonly conversationId: ConversationId
  readonly deleterInboxId: InboxId
  readonly bySuperAdmin: boolean
}

/** Whether a remembered deletion takes the message that has just arrived. */
export const pendingDeletionApplies = (pending: PendingDeletion, target: DeletionTarget): boolean =>
  deletionVerdict({
    deleter: pending.deleterInboxId,
    conversationId: pending.conversationId,
    conversationKind: "group",
    deleterIsSuperAdmin: pending.bySuperAdmin,
    target
  })._tag === "Apply"

// ---- disappearing messages ----

/**
 * When a message disappears: its server time plus the group's `disappearAfterNs` in force where
 * it landed on the topic (the same settings on every member); never without the setting.
 */
export const expiresAt = (sentAtNs: bigint, disappearAfterNs: bigint | null): bigint | null =>
  disappearAfterNs === null ? null : sentAtNs + disappearAfterNs
