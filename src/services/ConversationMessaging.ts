/**
 * The messaging operations of a conversation handle: direct messages inside a group (they travel
 * in the DM of the two inboxes, never on the group's topic), typed content, and deletion for
 * everyone. `Client` builds these from its own helpers and spreads them into each handle.
 */
import { Effect, Option, Schema } from "effect"
import { randomBytes } from "node:crypto"
import { toHex } from "../domain/Bytes.ts"
import { WireTypedContent } from "../domain/Content.ts"
import {
  type ConversationNotFound,
  GroupInactive,
  type InboxNotFound,
  InvalidInput,
  type KeyPackageUnavailable,
  MessageAlreadyDeleted,
  MessageNotFound,
  NotAMember,
  PermissionDenied,
  type ProtocolVersionTooOld,
  type StorageError
} from "../domain/Errors.ts"
import { type ConversationId, dmId, type GroupId, InboxId, MessageId } from "../domain/Ids.ts"
import { DeleteMessageData, type IntentData } from "../domain/Intent.ts"
import { deletionVerdict } from "../domain/Messaging.ts"
import type { GroupMetadata, Message } from "../domain/Model.ts"
import type { StoredGroup, StoredMessage } from "../domain/Stored.ts"
import type { EngineContext } from "./EngineContext.ts"

/** What a message adds to its text: the group of a direct message, typed content. */
export interface MessageExtras {
  readonly groupContext?: GroupId
  readonly content?: typeof WireTypedContent.Type
}

/** The client's helpers these operations are built from. */
export interface Helpers<ActionError> {
  readonly ctx: EngineContext
  readonly primaryOf: (id: ConversationId, kind: "group" | "dm") => Effect.Effect<StoredGroup, ConversationNotFound | StorageError>
  readonly groupMembers: (group: StoredGroup) => Effect.Effect<ReadonlyMap<InboxId, unknown>, ActionError>
  readonly settingsOf: (group: StoredGroup) => Effect.Effect<GroupMetadata, ActionError>
  readonly checkNotPaused: (group: StoredGroup) => Effect.Effect<void, ActionError | ProtocolVersionTooOld>
  /** Stores the message as unpublished and queues its intent; then `resolve` waits for it. */
  readonly queueMessage: (
    group: StoredGroup,
    text: string,
    extras: MessageExtras
  ) => Effect.Effect<{ readonly messageId: MessageId; readonly intentId: number }, ActionError | InvalidInput | ProtocolVersionTooOld>
  readonly queueIntent: (groupId: GroupId, data: IntentData) => Effect.Effect<number, StorageError>
  readonly resolve: (groupId: GroupId, intentId: number) => Effect.Effect<void, ActionError>
  /** `resolve`, with a governance refusal the intent ended with returned typed. */
  readonly resolveTyped: (
    groupId: GroupId,
    intentId: number
  ) => Effect.Effect<void, ActionError | PermissionDenied | ProtocolVersionTooOld>
  readonly findOrCreateDm: (peer: InboxId) => Effect.Effect<unknown, ActionError | InvalidInput | InboxNotFound | KeyPackageUnavailable>
  readonly toMessage: (row: StoredMessage) => Message
}

const decodeInbox = Schema.decodeUnknown(InboxId)
const decodeMessageId = Schema.decodeUnknown(MessageId)
const decodeContent = Schema.decodeUnknown(WireTypedContent)

const activeOf = (group: StoredGroup) =>
  group.membershipState === "inactive" ? Effect.fail(new GroupInactive({ groupId: group.id })) : Effect.succeed(group)

export const make = <ActionError>(h: Helpers<ActionError>) => {
  const { ctx } = h
  const self = ctx.identity.inboxId

  return (id: ConversationId, kind: "group" | "dm") => {
    const traced = { attributes: { conversationId: id } }
    const annotated = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.annotateLogs(effect, { conversationId: id })

    const sendDirect = Effect.fn("Conversation.sendDirect", traced)(function*(member: InboxId, text: string) {
      if (kind === "dm") return yield* new InvalidInput({ reason: "a direct message is sent inside a group; in a DM, use send" })
      const peer = yield* decodeInbox(member).pipe(
        Effect.mapError(() => new InvalidInput({ reason: `not an inbox id: ${String(member)}` }))
      )
      if (peer === self) return yield* new InvalidInput({ reason: "a direct message needs another member than yourself" })
      const group = yield* h.primaryOf(id, kind).pipe(Effect.flatMap(activeOf))
      // Only current members, as this installation holds the group, may be written to.
      if (!(yield* h.groupMembers(group)).has(peer)) return yield* new NotAMember({ groupId: group.id, inboxId: peer })
      // The DM of the two inboxes, created on first use; the group's topic carries nothing.
      yield* h.findOrCreateDm(peer)
      const dm = yield* h.primaryOf(dmId(self, peer), "dm").pipe(Effect.flatMap(activeOf))
      const { intentId, messageId } = yield* h.queueMessage(dm, text, { groupContext: group.id })
      yield* h.resolve(dm.id, intentId)
      return messageId
    }, annotated)

    const directMessages = Effect.fn("Conversation.directMessages", traced)(function*(
      query: { readonly limit?: number; readonly direction?: "asc" | "desc" } = {}
    ) {
      if (kind === "dm") return yield* new InvalidInput({ reason: "direct messages belong to a group; a DM lists its own with messages" })
      if (query.limit !== undefined && (!Number.isInteger(query.limit) || query.limit < 1)) {
        return yield* new InvalidInput({ reason: "limit must be a positive integer" })
      }
      const rows = yield* ctx.storage.messages.directMessages(id as unknown as GroupId, query)
      return rows.map(h.toMessage)
    }, annotated)

    const sendContent = Effect.fn("Conversation.sendContent", traced)(function*(
      content: { readonly type: string; readonly bytes: Uint8Array; readonly fallback?: string }
    ) {
      if (!(content.bytes instanceof Uint8Array)) return yield* new InvalidInput({ reason: "content bytes must be a Uint8Array" })
      const typed = yield* decodeContent({ type: content.type, bytes: Buffer.from(content.bytes).toString("base64") }).pipe(
        Effect.mapError((e) => new InvalidInput({ reason: `content: ${e.message}` }))
      )
      const group = yield* h.primaryOf(id, kind).pipe(Effect.flatMap(activeOf))
      const { intentId, messageId } = yield* h.queueMessage(group, content.fallback ?? "", { content: typed })
      yield* h.resolve(group.id, intentId)
      return messageId
    }, annotated)

    const deleteMessage = deleteMessageOf(h, id, kind)

    return { sendDirect, directMessages, sendContent, deleteMessage }
  }
}

/** `deleteMessage` of one conversation handle: checked here at the epoch held, judged again by every receiver. */
const deleteMessageOf = <ActionError>(h: Helpers<ActionError>, id: ConversationId, kind: "group" | "dm") => {
  const { ctx } = h
  const self = ctx.identity.inboxId
  const traced = { attributes: { conversationId: id } }
  /** Where a deletion of `row` travels: its own conversation (a direct message's is the DM). */
  const conversationFor = (row: StoredMessage) =>
    row.conversationId === id || (kind === "group" && row.groupContext === (id as unknown as GroupId))
      ? Option.some({ id: row.conversationId, kind: row.conversationId.startsWith("dm:") ? "dm" as const : "group" as const })
      : Option.none()

  return Effect.fn("Conversation.deleteMessage", traced)(function*(messageId: MessageId) {
    const target = yield* decodeMessageId(messageId).pipe(
      Effect.mapError(() => new InvalidInput({ reason: `not a message id: ${String(messageId)}` }))
    )
    const row = Option.getOrUndefined(yield* ctx.storage.messages.get(target))
    const travel = row === undefined ? undefined : Option.getOrUndefined(conversationFor(row))
    if (row === undefined || travel === undefined) return yield* new MessageNotFound({ messageId: target })
    if (row.kind !== "text") return yield* new InvalidInput({ reason: "membership and settings entries cannot be deleted" })
    const group = yield* h.primaryOf(travel.id, travel.kind).pipe(Effect.flatMap(activeOf))
    const pending = yield* ctx.storage.intents.byGroup(group.id, ["ToPublish", "Published"])
    if (row.deleted || pending.some((i) => i.data._tag === "DeleteMessage" && i.data.target === target)) {
      return yield* new MessageAlreadyDeleted({ messageId: target })
    }
    yield* h.checkNotPaused(group)
    const superAdmins = travel.kind === "group" ? (yield* h.settingsOf(group)).superAdmins : []
    // Checked here at the epoch held; every receiver checks again where the deletion lands.
    const verdict = deletionVerdict({
      deleter: self,
      conversationId: travel.id,
      conversationKind: travel.kind,
      deleterIsSuperAdmin: superAdmins.includes(self),
      target: { conversationId: row.conversationId, senderInboxId: row.senderInboxId, kind: row.kind, deleted: row.deleted }
    })
    if (verdict._tag !== "Apply") {
      const required = travel.kind === "dm" ? "the sender (in a DM)" : "the sender or a super admin"
      return yield* new PermissionDenied({ action: "deleteMessage", required })
    }
    const intentId = yield* h.queueIntent(group.id, DeleteMessageData.make({ nonce: toHex(randomBytes(16)), target }))
    yield* h.resolveTyped(group.id, intentId)
  }, (effect) => Effect.annotateLogs(effect, { conversationId: id }))
}
