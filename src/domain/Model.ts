/** What the public API hands out: messages, members, summaries. */
import { Schema } from "effect"
import { DeliveryStatus, MessageKind } from "./Content.ts"
import { ConversationId, GroupId, InboxId, InstallationId, MessageId } from "./Ids.ts"
import { addSkipCounts } from "./ReceiveDecision.ts"
import { type Governed, PermissionPolicies, presets } from "./Governance.ts"
import { validatedMaker } from "./SchemaClass.ts"

export class Message extends Schema.Class<Message>("Message")({
  id: MessageId,
  conversationId: ConversationId,
  groupId: GroupId,
  senderInboxId: InboxId,
  senderInstallationId: InstallationId,
  sentAtNs: Schema.BigInt,
  kind: MessageKind,
  text: Schema.String,
  deliveryStatus: DeliveryStatus,
  /** The group a direct message belongs to (as its receiver judged it); null for any other message. */
  groupContext: Schema.NullOr(GroupId),
  /** Typed content (`text` is then its fallback); null for plain text. */
  content: Schema.NullOr(Schema.Struct({ type: Schema.String, bytes: Schema.Uint8ArrayFromSelf })),
  /** Deleted for everyone: `text` is empty and `content` null. */
  deleted: Schema.Boolean
}) {}

export class Member extends Schema.Class<Member>("Member")({
  inboxId: InboxId,
  installationIds: Schema.Array(InstallationId)
}) {}
/** `Member.make`, its validator built once (a member list makes one per inbox). */
export const makeMember = validatedMaker(Member)

/** Longest group name `createGroup` accepts, in characters. */
export const MAX_GROUP_NAME = 100
/** Longest group description `createGroup` accepts, in characters. */
export const MAX_GROUP_DESCRIPTION = 1000
/** Longest group image URL, in characters. */
export const MAX_GROUP_IMAGE_URL = 2048
/** Longest application data a group carries, in characters (it travels in every commit's context). */
export const MAX_GROUP_APP_DATA = 8192
/**
 * The protocol version this library speaks (and advertises in its key packages):
 * - 1: the first release;
 * - 2: who is leaving is part of a group's settings (`GroupMetadata.leaving`, set by a commit).
 *   Version 1 reads none of it, so it would judge removals of leavers differently.
 */
export const PROTOCOL_VERSION = 2

/** What a group's settings without a minimum version admit: groups from before the field admit every version. */
export const FIRST_PROTOCOL_VERSION = 1

const optionalNull = <S extends Schema.Schema.Any>(schema: S) =>
  Schema.optionalWith(Schema.NullOr(schema), { default: () => null })

/**
 * A group's governed settings: what it is called and shows, who holds which role, what each
 * policy allows and the oldest protocol version it admits. All of it lives in the group's MLS
 * context, so every member reads the same at the same epoch. Fields added after the first
 * release are optional with defaults: groups created before them decode as "everyone may".
 */
export class GroupMetadata extends Schema.Class<GroupMetadata>("GroupMetadata")({
  name: Schema.NullOr(Schema.String.pipe(Schema.maxLength(MAX_GROUP_NAME))),
  description: Schema.NullOr(Schema.String.pipe(Schema.maxLength(MAX_GROUP_DESCRIPTION))),
  imageUrl: optionalNull(Schema.String.pipe(Schema.maxLength(MAX_GROUP_IMAGE_URL))),
  appData: optionalNull(Schema.String.pipe(Schema.maxLength(MAX_GROUP_APP_DATA))),
  disappearAfterNs: optionalNull(Schema.BigInt.pipe(Schema.positiveBigInt())),
  admins: Schema.optionalWith(Schema.Array(InboxId), { default: () => [] }),
  superAdmins: Schema.optionalWith(Schema.Array(InboxId), { default: () => [] }),
  policies: Schema.optionalWith(PermissionPolicies, { default: () => presets.everyone }),
  minProtocolVersion: Schema.optionalWith(Schema.Int.pipe(Schema.positive()), { default: () => FIRST_PROTOCOL_VERSION }),
  /** Inboxes that asked to leave, each by a commit of its own (`Leaving`): anyone may remove them. */
  leaving: Schema.optionalWith(Schema.Array(InboxId), { default: () => [] })
}) {
  static readonly none = new GroupMetadata({ name: null, description: null })
}
/** How metadata travels inside the group's MLS context. */
export const GroupMetadataJson = Schema.parseJson(GroupMetadata)

/** The fields `updateMetadata` changes (and `ifMatch` compares). */
export const METADATA_FIELDS = ["name", "description", "imageUrl", "appData", "disappearAfterNs"] as const
export type MetadataField = typeof METADATA_FIELDS[number]

/** The governed view `Governance.checkCommit` judges; bigints as strings so fields compare as JSON. */
export const governedOf = (metadata: GroupMetadata): Governed => ({
  fields: Object.fromEntries(METADATA_FIELDS.map((f) => {
    const value = metadata[f]
    return [f, typeof value === "bigint" ? value.toString() : value]
  })),
  admins: metadata.admins,
  superAdmins: metadata.superAdmins,
  policies: metadata.policies,
  minProtocolVersion: metadata.minProtocolVersion,
  leaving: metadata.leaving
})

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
  joined: Schema.Number,
  /** Messages imported from the history the inbox's other installations sent. */
  historyImported: Schema.optionalWith(Schema.Number, { default: () => 0 })
}) {
  static readonly empty = new SyncSummary({
    received: 0,
    messages: 0,
    commits: 0,
    skipped: 0,
    skippedBy: {},
    published: 0,
    joined: 0,
    historyImported: 0
  })
  /** Sums of numbers are numbers: built without checking them again (a sync combines a few per group). */
  static combine(a: SyncSummary, b: SyncSummary): SyncSummary {
    return new SyncSummary({
      received: a.received + b.received,
      messages: a.messages + b.messages,
      commits: a.commits + b.commits,
      skipped: a.skipped + b.skipped,
      skippedBy: addSkipCounts(a.skippedBy, b.skippedBy) as Record<string, number>,
      published: a.published + b.published,
      joined: a.joined + b.joined,
      historyImported: a.historyImported + b.historyImported
    }, true)
  }
}
/** `SyncSummary.make`, its validator built once (a sync makes a few per group). */
export const makeSyncSummary = validatedMaker(SyncSummary)
