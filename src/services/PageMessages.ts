/**
 * The messages a page stores: the transcript entries of its commits (membership and settings
 * changes, the same id and text on every member), someone's texts, and deletions, each judged on
 * the group's settings in force at its point of the topic.
 */
import { Effect, Schema } from "effect"
import {
  makeMembershipChange,
  makeMetadataChange,
  MembershipChangeJson,
  membershipChangeIdOf,
  messageIdOf,
  MetadataChangeJson,
  metadataChangeIdOf
} from "../domain/Content.ts"
import { changedSettings } from "../domain/GroupSettings.ts"
import type { StorageError } from "../domain/Errors.ts"
import type { GroupId, InboxId, MessageId } from "../domain/Ids.ts"
import type { ApplicationDecision, MembershipDiff } from "../domain/ReceiveDecision.ts"
import { StoredMessage } from "../domain/Stored.ts"
import type { GroupMessageEnvelope } from "../domain/Wire.ts"
import { expiresAt } from "../domain/Messaging.ts"
import * as MessagingReceive from "./MessagingReceive.ts"
import type { LeafMember, MlsGroupState } from "./MlsCrypto.ts"
import { conversationOf as conversationOfGroup, type PageLedger } from "./PageLedger.ts"

export const make = (page: PageLedger) => {
  const { ctx, group, now, newMessages } = page
  const { crypto } = ctx
  const groupId = group.id

  const conversationOf = () => conversationOfGroup(group)

  /** The transcript entry of a commit: the same id and text on every member. */
  const recordTranscript = (diff: MembershipDiff | undefined, committer: LeafMember, envelope: GroupMessageEnvelope) => {
    if (diff === undefined) return
    const change = makeMembershipChange({
      epoch: diff.epoch,
      addedInboxes: diff.added,
      removedInboxes: diff.removed,
      committedBy: committer.inboxId
    })
    newMessages.push(StoredMessage.make({
      id: membershipChangeIdOf(groupId, diff.epoch),
      groupId: groupId,
      conversationId: conversationOf(),
      senderInboxId: committer.inboxId,
      senderInstallationId: committer.installationId,
      sentAtNs: envelope.serverTimeNs,
      sequenceId: envelope.sequenceId,
      kind: "membershipChange",
      content: Schema.encodeSync(MembershipChangeJson)(change),
      membershipChange: change,
      deliveryStatus: "published",
      insertedAtNs: now
    }))
  }

  /** The transcript entry of a commit that changed the group's settings: the same on every member. */
  const recordSettingsChange = (next: MlsGroupState, committer: LeafMember, envelope: GroupMessageEnvelope) => {
    const changed = changedSettings(crypto.view(page.state).metadata, crypto.view(next).metadata)
    if (changed.length === 0) return
    const epoch = crypto.view(page.state).epoch + 1n
    const change = makeMetadataChange({ epoch, changed, committedBy: committer.inboxId })
    newMessages.push(StoredMessage.make({
      id: metadataChangeIdOf(groupId, epoch),
      groupId,
      conversationId: conversationOf(),
      senderInboxId: committer.inboxId,
      senderInstallationId: committer.installationId,
      sentAtNs: envelope.serverTimeNs,
      sequenceId: envelope.sequenceId,
      kind: "metadataChange",
      content: Schema.encodeSync(MetadataChangeJson)(change),
      membershipChange: null,
      deliveryStatus: "published",
      insertedAtNs: now
    }))
  }

  /** When a text landing here disappears: the group's setting in force at this point of the topic. */
  const disappearsAt = (envelope: GroupMessageEnvelope) =>
    group.kind === "group"
      ? expiresAt(envelope.serverTimeNs, MessagingReceive.settingsIn(ctx, page.state).disappearAfterNs)
      : null

  /** A deletion judged on the settings every member holds at this point of the topic. */
  const deletionBy = (deleter: InboxId, target: MessageId): MessagingReceive.Deletion => ({
    target,
    deleter,
    conversationId: conversationOf(),
    conversationKind: group.kind,
    deleterIsSuperAdmin: MessagingReceive.settingsIn(ctx, page.state).superAdmins.includes(deleter)
  })

  /**
   * Someone's text (maybe typed content, maybe a direct message): stored unless already gone.
   * An effect only when a direct message's group must be judged; otherwise done on the spot.
   */
  const textMessage = (
    text: Extract<ApplicationDecision, { _tag: "Text" }>,
    sender: LeafMember,
    envelope: GroupMessageEnvelope
  ): Effect.Effect<void, StorageError> | undefined => {
    page.outcome = { ...page.outcome, messages: page.outcome.messages + 1 }
    const expiresAtNs = disappearsAt(envelope)
    // Read after its deadline (a member that was offline): it disappeared before it was stored.
    if (expiresAtNs !== null && expiresAtNs <= now) return undefined
    const store = (groupContext: GroupId | null) => {
      // Built from values decoded at the boundary (envelope, content, the sender's credential)
      // or derived from them: typed, not validated a second time (a schema pass per message).
      const row: StoredMessage = {
        id: messageIdOf(groupId, sender.installationId, text.nonce, text.idOrder),
        groupId: groupId,
        conversationId: conversationOf(),
        senderInboxId: sender.inboxId,
        senderInstallationId: sender.installationId,
        sentAtNs: envelope.serverTimeNs,
        sequenceId: envelope.sequenceId,
        kind: "text",
        content: text.text,
        membershipChange: null,
        deliveryStatus: "published",
        insertedAtNs: now,
        groupContext,
        contentType: text.content?.type ?? null,
        contentBytes: text.content?.bytes ?? null,
        deleted: false,
        expiresAtNs
      }
      newMessages.push(row)
    }
    if (text.groupContext === undefined) {
      store(null)
      return undefined
    }
    return Effect.map(
      MessagingReceive.judgeGroupContext(ctx, { claimed: text.groupContext, arrivedIn: group.kind, sender: sender.inboxId }),
      store
    )
  }

  return { recordTranscript, recordSettingsChange, disappearsAt, deletionBy, textMessage }
}
