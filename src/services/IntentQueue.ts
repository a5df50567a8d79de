/**
 * The intent queue: what a user (or the engine on a member's behalf) asked for, waiting to be
 * published. Queueing and failing run in the caller's transaction.
 */
import { Effect } from "effect"
import { randomBytes } from "node:crypto"
import { toHex } from "../domain/Bytes.ts"
import { GroupInactive } from "../domain/Errors.ts"
import type { GroupId, InboxId } from "../domain/Ids.ts"
import { type IntentData, LeaveData, RemoveMembersData, UpdateInstallationsData } from "../domain/Intent.ts"
import type { StoredIntent } from "../domain/Stored.ts"
import type { EngineContext } from "./EngineContext.ts"

/** Queues an intent (`ToPublish`); returns its id. */
export const queueIntent = (ctx: EngineContext, groupId: GroupId, data: IntentData, createdAtNs: bigint) =>
  ctx.storage.intents.insert({ groupId, data, createdAtNs })

/** A new request to leave (each one its own message, so a repeat is not taken for a replay). */
export const newLeaveRequest = () => LeaveData.make({ nonce: toHex(randomBytes(16)) })

/** An intent ends in `Error`; a message it was sending is `failed`. */
export const failIntent = (ctx: EngineContext, intent: StoredIntent, cause: string) =>
  Effect.gen(function*() {
    yield* ctx.storage.intents.markError(intent.id, cause)
    if (intent.data._tag === "SendMessage") yield* ctx.storage.messages.markFailed(intent.data.messageId)
  })

/**
 * Out of the group: nothing still pending can land any more, and an unsent intent kept would be
 * re-derived (a removal or leave request replayed) if the group ever took this installation back.
 */
export const failPendingIntents = (ctx: EngineContext, groupId: GroupId) =>
  Effect.gen(function*() {
    const cause = new GroupInactive({ groupId }).message
    for (const intent of yield* ctx.storage.intents.byGroup(groupId, ["ToPublish", "Published"])) {
      yield* failIntent(ctx, intent, cause)
    }
  })

/** The inboxes an intent removes because they asked to leave (none for any other intent). */
export const leaveRemovalOf = (intent: StoredIntent): ReadonlyArray<InboxId> =>
  intent.data._tag === "RemoveMembers" && intent.data.forLeaveRequest ? intent.data.inboxIds : []

/** The only kind `leaveRemovalOf` finds anything in: reads for it skip every other row (a pending commit's 60 KB). */
const LEAVE_REMOVALS = ["RemoveMembers"] as const

/** Queues the removal of an inbox that asked to leave, unless one is already pending. */
export const queueRemoval = (ctx: EngineContext, groupId: GroupId, inboxId: InboxId, now: bigint) =>
  Effect.gen(function*() {
    const pending = yield* ctx.storage.intents.byGroup(groupId, ["ToPublish", "Published"], LEAVE_REMOVALS)
    if (pending.some((intent) => leaveRemovalOf(intent).includes(inboxId))) return
    yield* queueIntent(ctx, groupId, RemoveMembersData.make({ inboxIds: [inboxId], forLeaveRequest: true }), now)
  })

/**
 * The inboxes this installation knows asked to leave and are not out yet: their pending
 * removals (queued from their requests). Every member read the same requests on the topic.
 */
export const leavingInboxes = (ctx: EngineContext, groupId: GroupId) =>
  Effect.gen(function*() {
    const pending = yield* ctx.storage.intents.byGroup(groupId, ["ToPublish", "Published"], LEAVE_REMOVALS)
    return pending.flatMap(leaveRemovalOf)
  })

/**
 * Drops the removals for leave requests that a commit has carried out (ours lost the race, or
 * someone else was first): the request is settled, whatever membership comes after. A written-ahead
 * one too: its commit, if it ever lands, is for an epoch gone, and re-derived later it would remove
 * the leaver again after a re-add, on a request every other member has settled.
 */
export const settleLeaveRemovals = (ctx: EngineContext, groupId: GroupId, removed: ReadonlySet<InboxId>) =>
  Effect.gen(function*() {
    if (removed.size === 0) return
    const pending = yield* ctx.storage.intents.byGroup(groupId, ["ToPublish", "Published"], LEAVE_REMOVALS)
    for (const intent of pending) {
      const inboxIds = leaveRemovalOf(intent)
      if (inboxIds.length > 0 && inboxIds.every((inboxId) => removed.has(inboxId))) {
        yield* ctx.storage.intents.markProcessed(intent.id)
      }
    }
  })

/**
 * Settles leave requests that the group can no longer honour (the leaver became its last super
 * admin): the pending removals of those inboxes fail, and so does our own unsent request if we
 * are one of them, with the permission that is missing.
 */
export const voidLeaveRequests = (
  ctx: EngineContext,
  groupId: GroupId,
  voided: ReadonlySet<InboxId>,
  cause: string
) =>
  Effect.gen(function*() {
    if (voided.size === 0) return
    const ownVoided = voided.has(ctx.identity.inboxId)
    for (const intent of yield* ctx.storage.intents.byGroup(groupId, ["ToPublish", "Published"])) {
      const inboxIds = leaveRemovalOf(intent)
      const voidedRemoval = inboxIds.length > 0 && inboxIds.every((inboxId) => voided.has(inboxId))
      const voidedLeave = ownVoided && intent.kind === "Leave" && intent.state === "ToPublish"
      if (voidedRemoval || voidedLeave) yield* failIntent(ctx, intent, cause)
    }
  })

/**
 * Asks to leave again. A leave request is an application message of its epoch: members added
 * after it never read it, and if none of those who did is left, nobody would ever commit the
 * removal. So a pendingRemove installation repeats the request when a page it reads brings in
 * installations.
 */
export const queueLeaveAgain = (ctx: EngineContext, groupId: GroupId, now: bigint) =>
  Effect.gen(function*() {
    // An unsent request is derived at the epoch it goes out in: the newcomers will read it.
    const pending = yield* ctx.storage.intents.byGroup(groupId, ["ToPublish"])
    if (pending.some((intent) => intent.kind === "Leave")) return
    yield* queueIntent(ctx, groupId, newLeaveRequest(), now)
  })

/** Queues bringing the group's leaves in line with the identity logs, unless one is already pending. */
export const queueInstallationUpdate = (ctx: EngineContext, groupId: GroupId, now: bigint) =>
  Effect.gen(function*() {
    const pending = yield* ctx.storage.intents.byGroup(groupId, ["ToPublish", "Published"])
    if (pending.some((intent) => intent.kind === "UpdateInstallations")) return
    yield* queueIntent(ctx, groupId, UpdateInstallationsData.make({}), now)
  })
