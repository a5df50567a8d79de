/**
 * The intent queue: what a user (or the engine on a member's behalf) asked for, waiting to be
 * published. Queueing and failing run in the caller's transaction.
 */
import { Effect, Option } from "effect"
import { randomBytes } from "node:crypto"
import { toHex } from "../domain/Bytes.ts"
import { encodeGovernanceError, GroupInactive } from "../domain/Errors.ts"
import { isPaused } from "../domain/Governance.ts"
import { lastSuperAdminLeaving, settingsOrDefaults } from "../domain/GroupSettings.ts"
import type { GroupId, InboxId } from "../domain/Ids.ts"
import {
  type IntentData,
  LeaveData,
  RemoveMembersData,
  SettleLeavingData,
  UpdateInstallationsData
} from "../domain/Intent.ts"
import { liveLeavers } from "../domain/Leaving.ts"
import type { StoredIntent } from "../domain/Stored.ts"
import type { EngineContext } from "./EngineContext.ts"
import type { MlsGroupState } from "./MlsCrypto.ts"

/** Queues an intent (`ToPublish`); returns its id. */
export const queueIntent = (ctx: EngineContext, groupId: GroupId, data: IntentData, createdAtNs: bigint) =>
  ctx.storage.intents.insert({ groupId, data, createdAtNs })

/** A new request to leave (its nonce tells one request's row from another's). */
export const newLeave = () => LeaveData.make({ nonce: toHex(randomBytes(16)) })

/** An intent ends in `Error`; a message it was sending is `failed`. */
export const failIntent = (ctx: EngineContext, intent: StoredIntent, cause: string) =>
  Effect.gen(function*() {
    yield* ctx.storage.intents.markError(intent.id, cause)
    if (intent.data._tag === "SendMessage") yield* ctx.storage.messages.markFailed(intent.data.messageId)
  })

/**
 * `failIntent` for what publishing refused (outside any page): a leave that could not be derived
 * or published leaves us active again, unless the group lists us anyway (another device of ours
 * asked). (A refused own leave commit inside a page is the page's to judge:
 * `PageLeaving.ownLeaveRefused`.)
 */
export const failPublishing = (ctx: EngineContext, intent: StoredIntent, cause: string) =>
  Effect.gen(function*() {
    yield* failIntent(ctx, intent, cause)
    if (intent.data._tag !== "Leave") return
    const group = yield* ctx.storage.groups.get(intent.groupId)
    if (Option.isNone(group) || group.value.membershipState !== "pendingRemove") return
    const listed = yield* ctx.loadState(group.value).pipe(
      Effect.map((state) => settingsOrDefaults(ctx.crypto.view(state).metadata).leaving.includes(ctx.identity.inboxId)),
      Effect.orElseSucceed(() => false)
    )
    if (!listed) yield* ctx.storage.groups.setMembership(intent.groupId, "active")
  })

/**
 * Our request to leave can no longer be carried out (we became the group's last super admin):
 * an unsent one fails with the permission missing, and a listed one is withdrawn by a commit of
 * ours, so that it does not come back once the leave would be possible again.
 */
export const voidOwnLeave = (ctx: EngineContext, groupId: GroupId, listed: boolean, now: bigint) =>
  Effect.gen(function*() {
    const pending = yield* ctx.storage.intents.byGroup(groupId, ["ToPublish", "Published"])
    for (const intent of pending) {
      if (intent.kind === "Leave" && intent.state === "ToPublish") {
        yield* ctx.storage.intents.markError(intent.id, encodeGovernanceError(lastSuperAdminLeaving))
      }
    }
    if (listed && !pending.some((intent) => intent.kind === "SettleLeaving")) {
      yield* queueIntent(ctx, groupId, SettleLeavingData.make({}), now)
    }
  })

/**
 * Out of the group: nothing still pending can land any more, and an unsent intent kept would be
 * re-derived (a removal or a leave replayed) if the group ever took this installation back.
 */
export const failPendingIntents = (ctx: EngineContext, groupId: GroupId) =>
  Effect.gen(function*() {
    const cause = new GroupInactive({ groupId }).message
    for (const intent of yield* ctx.storage.intents.byGroup(groupId, ["ToPublish", "Published"])) {
      yield* failIntent(ctx, intent, cause)
    }
  })

/** The inboxes an intent removes because they asked to leave (none for any other intent). */
const leaveRemovalOf = (intent: StoredIntent): ReadonlyArray<InboxId> =>
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
 * Queues the removal of every inbox the group's settings list as leaving and anyone may remove
 * now (`domain/Leaving`), except our own: every member reads the same list, a member added later
 * included. Not while paused below the group's floor: such an installation commits nothing.
 */
export const queueLeaverRemovals = (ctx: EngineContext, groupId: GroupId, state: MlsGroupState, now: bigint) =>
  Effect.gen(function*() {
    const view = ctx.crypto.view(state)
    const settings = settingsOrDefaults(view.metadata)
    if (settings.leaving.length === 0 || isPaused(settings, ctx.options.protocolVersion)) return
    const leavers = liveLeavers(settings, view.members.map((m) => m.inboxId)).filter((i) => i !== ctx.identity.inboxId)
    for (const inboxId of leavers) yield* queueRemoval(ctx, groupId, inboxId, now)
  })

/** Queues bringing the group's leaves in line with the identity logs, unless one is already pending. */
export const queueInstallationUpdate = (ctx: EngineContext, groupId: GroupId, now: bigint) =>
  Effect.gen(function*() {
    const pending = yield* ctx.storage.intents.byGroup(groupId, ["ToPublish", "Published"])
    if (pending.some((intent) => intent.kind === "UpdateInstallations")) return
    yield* queueIntent(ctx, groupId, UpdateInstallationsData.make({}), now)
  })
