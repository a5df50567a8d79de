/**
 * What a receiver does with the messaging features of a message (`domain/Messaging` holds the
 * rules): judge the group a direct message claims against its own state of that group, store a
 * message under a deletion that arrived before it, and apply deletions, its own included, in
 * the page's transaction.
 */
import { Effect, Option } from "effect"
import { encodeGovernanceError, PermissionDenied } from "../domain/Errors.ts"
import { settingsOrDefaults } from "../domain/GroupSettings.ts"
import type { ConversationId, GroupId, InboxId, MessageId } from "../domain/Ids.ts"
import {
  type DeletionTarget,
  DeletionVerdict,
  deletionVerdict,
  groupContextVerdict,
  pendingDeletionApplies
} from "../domain/Messaging.ts"
import { GroupMetadata } from "../domain/Model.ts"
import type { ConversationKind, StoredIntent, StoredMessage } from "../domain/Stored.ts"
import type { EngineContext } from "./EngineContext.ts"
import { failIntent } from "./IntentQueue.ts"
import type { MlsGroupState } from "./MlsCrypto.ts"

/** The group's settings in a state (defaults when they do not decode, and for a DM). */
export const settingsIn = (ctx: EngineContext, state: MlsGroupState): GroupMetadata =>
  settingsOrDefaults(ctx.crypto.view(state).metadata)

/**
 * The group a direct message is shown with: the one it claims if the recipient, as it holds
 * that group now, is in it with the sender; otherwise none, and the reason is logged.
 */
export const judgeGroupContext = (
  ctx: EngineContext,
  message: { readonly claimed: GroupId; readonly arrivedIn: ConversationKind; readonly sender: InboxId }
) =>
  Effect.gen(function*() {
    const row = yield* ctx.storage.groups.get(message.claimed)
    const group = Option.isNone(row) || row.value.kind !== "group"
      ? undefined
      : yield* ctx.loadState(row.value).pipe(
        Effect.map((state) => ({
          membership: row.value.membershipState,
          members: ctx.crypto.view(state).members.map((m) => m.inboxId)
        })),
        Effect.orElseSucceed(() => undefined)
      )
    const verdict = groupContextVerdict({ ...message, self: ctx.identity.inboxId, group })
    if (verdict._tag === "Attached") return verdict.groupId
    yield* Effect.logInfo("direct message shown without its claimed group").pipe(
      Effect.annotateLogs({ reason: verdict._tag, claimedGroup: message.claimed, sender: message.sender })
    )
    return null
  })

/** A deletion read on a topic (or our own landing there), to apply in the page's transaction. */
export interface Deletion {
  readonly target: MessageId
  readonly deleter: InboxId
  readonly conversationId: ConversationId
  readonly conversationKind: ConversationKind
  readonly deleterIsSuperAdmin: boolean
  /** Our own deletion intent and where it landed: it ends here, refused (typed) if the members refuse it. */
  readonly own?: { readonly intent: StoredIntent; readonly sequenceId: bigint }
}

const targetOf = (row: StoredMessage): DeletionTarget => ({
  conversationId: row.conversationId,
  senderInboxId: row.senderInboxId,
  kind: row.kind,
  deleted: row.deleted
})

/** Judges a deletion against the stored target and applies it, remembers it, or ignores it (logged). */
export const applyDeletion = (ctx: EngineContext, deletion: Deletion) =>
  Effect.gen(function*() {
    const stored = yield* ctx.storage.messages.get(deletion.target)
    const verdict = deletionVerdict({ ...deletion, target: Option.getOrUndefined(Option.map(stored, targetOf)) })
    yield* DeletionVerdict.$match(verdict, {
      Apply: () => ctx.storage.messages.erase(deletion.target),
      Pending: ({ bySuperAdmin }) =>
        ctx.storage.messages.rememberDeletion(deletion.target, {
          conversationId: deletion.conversationId,
          deleterInboxId: deletion.deleter,
          bySuperAdmin
        }),
      Refused: ({ reason }) =>
        Effect.logInfo("deletion ignored").pipe(
          Effect.annotateLogs({ reason, target: deletion.target, deleter: deletion.deleter })
        )
    })
    const own = deletion.own
    if (own === undefined) return
    // Deleted already (by another of our devices, say) is what we asked for.
    if (verdict._tag === "Refused" && verdict.reason !== "alreadyDeleted") {
      const denied = new PermissionDenied({ action: "deleteMessage", required: `the sender or a super admin (${verdict.reason})` })
      return yield* failIntent(ctx, own.intent, encodeGovernanceError(denied))
    }
    yield* ctx.storage.intents.markCommitted(own.intent.id, own.sequenceId)
    yield* ctx.storage.intents.markProcessed(own.intent.id)
  })

/**
 * Erases the messages just stored whose deletion arrived before them (and may take them), with
 * one query for the page; returns the ids erased.
 */
export const settleDeletionsOf = (ctx: EngineContext, stored: ReadonlyArray<StoredMessage>) =>
  Effect.gen(function*() {
    const erased = new Set<MessageId>()
    if (stored.length === 0) return erased
    const pending = yield* ctx.storage.messages.takeDeletions(stored.map((row) => row.id))
    for (const row of stored) {
      const deletion = pending.get(row.id)
      if (deletion !== undefined && pendingDeletionApplies(deletion, targetOf(row))) {
        yield* ctx.storage.messages.erase(row.id)
        erased.add(row.id)
      }
    }
    return erased
  })

/**
 * Stores a message; a deletion that arrived before it (and may take it) erases it at once.
 * Returns whether it was stored for the first time and is shown (not deleted).
 */
export const insertMessage = (ctx: EngineContext, row: StoredMessage) =>
  Effect.gen(function*() {
    if (!(yield* ctx.storage.messages.insert(row))) return false
    const pending = yield* ctx.storage.messages.takeDeletion(row.id)
    if (Option.isSome(pending) && pendingDeletionApplies(pending.value, targetOf(row))) {
      yield* ctx.storage.messages.erase(row.id)
      return false
    }
    return true
  })
