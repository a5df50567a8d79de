/**
 * A message as this client stores it and shows it: an outgoing message stored `unpublished`
 * with its intent, and a stored row read back as the public `Message`.
 */
import { Clock, Effect, PubSub } from "effect"
import { randomBytes } from "node:crypto"
import { messageIdOf, timeOrderedNonce } from "../domain/Content.ts"
import { InvalidInput } from "../domain/Errors.ts"
import type { ConversationId, GroupId } from "../domain/Ids.ts"
import { makeSendMessageData } from "../domain/Intent.ts"
import { Message } from "../domain/Model.ts"
import { makeStoredMessage, type StoredGroup, type StoredMessage } from "../domain/Stored.ts"
import type { GroupSummary } from "./Storage.ts"
import type { ClientContext } from "./ClientContext.ts"
import type * as ConversationMessaging from "./ConversationMessaging.ts"
import type * as GroupIntents from "./GroupIntents.ts"

/** Largest text `send` accepts; the delivery service also caps whole payloads. */
export const MAX_TEXT_BYTES = 64 * 1024

/**
 * A stored message as the API shows it. Built unchecked: every field is a `StoredMessage` field
 * (the compiler holds the types equal), checked when its row is decoded for a read, and for the
 * live stream made from values decoded at the boundary (the envelope, the content, the sender's
 * credential; `PageMessages`) or by a checked maker (our own sends, history imports). Every
 * message read comes through here: checking it again cost a read of 50 messages a third of its time.
 */
export const toMessage = (row: StoredMessage) =>
  new Message({
    id: row.id,
    conversationId: row.conversationId,
    groupId: row.groupId,
    senderInboxId: row.senderInboxId,
    senderInstallationId: row.senderInstallationId,
    sentAtNs: row.sentAtNs,
    kind: row.kind,
    text: row.content,
    deliveryStatus: row.deliveryStatus,
    groupContext: row.groupContext,
    content: row.contentType === null ? null : { type: row.contentType, bytes: row.contentBytes ?? new Uint8Array() },
    deleted: row.deleted
  }, true)

export const make = (
  { consent, env, publisher, self }: ClientContext,
  { checkNotPaused, checkSummaryNotPaused, queueIntent }: ReturnType<typeof GroupIntents.make>
) => {
  const { identity, storage, stored } = env

  /** The message as stored unpublished, its intent's data, and the effects that store and announce it. */
  const prepare = (group: GroupSummary, text: string, extras: ConversationMessaging.MessageExtras) =>
    Effect.gen(function*() {
      // Its UTF-8 length without encoding it (a lone surrogate counts 3 bytes either way).
      if (Buffer.byteLength(text, "utf8") > MAX_TEXT_BYTES) {
        return yield* new InvalidInput({ reason: `message text is over ${MAX_TEXT_BYTES} bytes` })
      }
      const now = yield* Clock.currentTimeNanos
      const nonce = timeOrderedNonce(now, randomBytes(10))
      const messageId = messageIdOf(group.id, identity.installationId, nonce, "time")
      const row = makeStoredMessage({
        id: messageId,
        groupId: group.id,
        conversationId: group.dmId ?? (group.id as unknown as ConversationId),
        senderInboxId: self,
        senderInstallationId: identity.installationId,
        sentAtNs: now,
        sequenceId: null,
        kind: "text",
        content: text,
        membershipChange: null,
        deliveryStatus: "unpublished",
        insertedAtNs: now,
        groupContext: extras.groupContext ?? null,
        contentType: extras.content?.type ?? null,
        contentBytes: extras.content?.bytes ?? null
      })
      return {
        messageId,
        now,
        data: makeSendMessageData({ messageId, nonce, text, idOrder: "time", ...extras }),
        // Stored `unpublished`, it moves the group up the list as it is inserted (a trigger: one statement).
        storeMessage: Effect.asVoid(storage.messages.insert(row)),
        announce: Effect.asVoid(PubSub.publish(stored, row))
      }
    })

  /** Answering a DM allows it (unless a decision was made). */
  const allowAnsweredDm = (group: GroupSummary) =>
    group.dmId === null ? Effect.void : consent.setIfUnset(group.dmId, "allowed")

  /** Stores the message as unpublished and queues its intent, in one transaction; then announces it. */
  const queueAsUsual = (groupId: GroupId, message: Effect.Effect.Success<ReturnType<typeof prepare>>) =>
    storage.transaction(Effect.zipRight(message.storeMessage, queueIntent(groupId, message.data))).pipe(
      Effect.tap(() => message.announce)
    )

  /** Stores the message as unpublished and queues its intent, in one transaction. */
  const queueMessage = (group: GroupSummary | StoredGroup, text: string, extras: ConversationMessaging.MessageExtras = {}) =>
    Effect.gen(function*() {
      // Judged on the summary's epoch: a queued message needs no MLS state until it is published.
      yield* checkSummaryNotPaused(group)
      const message = yield* prepare(group, text, extras)
      yield* allowAnsweredDm(group)
      return { messageId: message.messageId, intentId: yield* queueAsUsual(group.id, message) }
    })

  /**
   * `send`'s message: if nothing is queued ahead, its intent is stored already written ahead and
   * its first publish round has run too (`known.first`); else it is queued as usual. The group's
   * protocol-version floor is judged under the group lock, on the row the message is written
   * after, so the caller needs only the group's summary (no state read and decoded twice).
   */
  const sendMessage = (group: GroupSummary, text: string) =>
    Effect.gen(function*() {
      const message = yield* prepare(group, text, {})
      yield* allowAnsweredDm(group)
      const writtenAhead = yield* publisher.queueWrittenAhead(
        group.id,
        message.data,
        message.now,
        message.storeMessage,
        message.announce,
        checkNotPaused
      )
      if (writtenAhead !== undefined) {
        return { messageId: message.messageId, intentId: writtenAhead.intentId, known: { ...writtenAhead.known, first: writtenAhead.first } }
      }
      return { messageId: message.messageId, intentId: yield* queueAsUsual(group.id, message), known: undefined }
    })

  return { queueMessage, sendMessage }
}
