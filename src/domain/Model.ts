/** What the public API hands out: messages, members, summaries. */
import { Schema } from "effect"
import { DeliveryStatus, MessageKind } from "./Content.ts"
import { ConversationId, GroupId, InboxId, InstallationId, MessageId } from "./Ids.ts"
import { addSkipCounts } from "./ReceiveDecision.ts"

export class Message extends Schema.Class<Message>("Message")({
  id: MessageId,
  conversationId: ConversationId,
  groupId: GroupId,
  senderInboxId: InboxId,
  senderInstallationId: InstallationId,
  sentAtNs: Schema.BigInt,
  kind: MessageKind,
  text: Schema.String,
  deliveryStatus: DeliveryStatus
}) {}

export class Member extends Schema.Class<Member>("Member")({
  inboxId: InboxId,
  installationIds: Schema.Array(InstallationId)
}) {}

/** Longest group name `createGroup` accepts, in characters. */
export const MAX_GROUP_NAME = 100
/** Longest group description `createGroup` accepts, in characters. */
export const MAX_GROUP_DESCRIPTION = 1000

/** A group's name and description: set by its creator, the same on every member. DMs have neither. */
export class GroupMetadata extends Schema.Class<GroupMetadata>("GroupMetadata")({
  name: Schema.NullOr(Schema.String.pipe(Schema.maxLength(MAX_GROUP_NAME))),
  description: Schema.NullOr(Schema.String.pipe(Schema.maxLength(MAX_GROUP_DESCRIPTION)))
}) {
  static readonly none = new GroupMetadata({ name: null, description: null })
}
/** How metadata travels inside the group's MLS context. */
export const GroupMetadataJson = Schema.parseJson(GroupMetadata)

export class SyncSummary extends Schema.Class<SyncSummary>("SyncSummary")({
  /** Envelopes read from topics. */
  received: Schema.Number,
  /** Application messages stored. */
  messages: Schema.Number,
  /** Commits applied (own and others'). */
  commits: Schema.Number,
  /** Envelopes skipped as undecryptable, malformed, stale or replayed. */
  skipped: Schema.Number,
  /** `skipped` by reason (a `ReceiveDecision.SkipReason`); reasons that did not occur are absent. */
  skippedBy: Schema.Record({ key: Schema.String, value: Schema.Number }),
  /** Intents published in this sync. */
  published: Schema.Number,
  /** Groups joined from welcomes. */
  joined: Schema.Number
}) {
  static readonly empty = new SyncSummary({
    received: 0,
    messages: 0,
    commits: 0,
    skipped: 0,
    skippedBy: {},
    published: 0,
    joined: 0
  })
  static combine(a: SyncSummary, b: SyncSummary): SyncSummary {
    return new SyncSummary({
      received: a.received + b.received,
      messages: a.messages + b.messages,
      commits: a.commits + b.commits,
      skipped: a.skipped + b.skipped,
      skippedBy: addSkipCounts(a.skippedBy, b.skippedBy) as Record<string, number>,
      published: a.published + b.published,
      joined: a.joined + b.joined
    })
  }
}
