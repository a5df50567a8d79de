/**
 * What the local store holds, as domain values: decoded, camelCase, stored JSON already parsed.
 * The `Storage` port speaks these; how they sit in SQLite (snake_case rows, integer flags, JSON
 * columns) is the adapter's business.
 */
import { Schema } from "effect"
import { DeliveryStatus, MembershipChange, MessageKind } from "./Content.ts"
import { ConversationId, GroupId, InboxId, InstallationId, MessageId } from "./Ids.ts"
import { IntentData, IntentKind, IntentState, PostCommitData } from "./Intent.ts"
import { IdentityUpdate } from "./Wire.ts"
import { structMaker } from "./SchemaClass.ts"

export const MembershipState = Schema.Literal("active", "pendingRemove", "inactive")
export type MembershipState = typeof MembershipState.Type

export const ConversationKind = Schema.Literal("group", "dm")
export type ConversationKind = typeof ConversationKind.Type

const Bytes = Schema.Uint8ArrayFromSelf
const Nullable = Schema.NullOr

export const StoredGroup = Schema.Struct({
  id: GroupId,
  kind: ConversationKind,
  /** `dm:<a>:<b>` for DMs: several groups may share it (stitching). */
  dmId: Nullable(ConversationId),
  membershipState: MembershipState,
  epoch: Schema.BigIntFromSelf,
  mlsState: Bytes,
  maybeForked: Schema.Boolean,
  forkDetails: Nullable(Schema.String),
  /** Why some of the group's stored rows were set aside as unreadable, if any were. */
  quarantine: Nullable(Schema.String),
  name: Nullable(Schema.String),
  description: Nullable(Schema.String),
  addedByInboxId: Nullable(InboxId),
  createdAtNs: Schema.BigIntFromSelf,
  lastMessageNs: Schema.BigIntFromSelf
})
export type StoredGroup = typeof StoredGroup.Type

export const StoredMessage = Schema.Struct({
  id: MessageId,
  groupId: GroupId,
  conversationId: ConversationId,
  senderInboxId: InboxId,
  senderInstallationId: InstallationId,
  /** Server time once published; local time while unpublished. */
  sentAtNs: Schema.BigIntFromSelf,
  /** Position on the group topic, once published. */
  sequenceId: Nullable(Schema.BigIntFromSelf),
  kind: MessageKind,
  /** The text; for a membership change, its transcript entry as JSON (what the API shows). */
  content: Schema.String,
  /** The transcript entry of a `membershipChange` message, decoded; null for a text. */
  membershipChange: Nullable(MembershipChange),
  deliveryStatus: DeliveryStatus,
  insertedAtNs: Schema.BigIntFromSelf,
  // Messaging fields: optional with defaults, so rows built without them stay plain texts.
  /** A direct message: the group it was written in, as the receiver judged it (null otherwise). */
  groupContext: Schema.optionalWith(Nullable(GroupId), { default: () => null }),
  /** Typed content (`content` then holds its fallback text); null for plain text. */
  contentType: Schema.optionalWith(Nullable(Schema.String), { default: () => null }),
  contentBytes: Schema.optionalWith(Nullable(Bytes), { default: () => null }),
  /** Deleted for everyone: its text and content are erased, its place kept. */
  deleted: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  /** When it disappears (server time + the group's setting where it landed); null: never. */
  expiresAtNs: Schema.optionalWith(Nullable(Schema.BigIntFromSelf), { default: () => null })
})
export type StoredMessage = typeof StoredMessage.Type
/** `StoredMessage.make` with its validator built once (every message sent is made with it). */
export const makeStoredMessage = structMaker(StoredMessage)

export const StoredIntent = Schema.Struct({
  id: Schema.Number,
  groupId: GroupId,
  kind: IntentKind,
  /** What the user asked for, re-derived at each publish. */
  data: IntentData,
  state: IntentState,
  payloadHash: Nullable(Schema.String),
  /** The exact bytes sent, so a send with an unknown outcome is repeated byte for byte. */
  payload: Nullable(Bytes),
  publishedEpoch: Nullable(Schema.BigIntFromSelf),
  stagedState: Nullable(Bytes),
  /** Welcomes to send once the commit is confirmed. */
  postCommit: Nullable(PostCommitData),
  /** Where the payload landed on the group topic. */
  sequenceId: Nullable(Schema.BigIntFromSelf),
  attempts: Schema.Number,
  conflicts: Schema.Number,
  error: Nullable(Schema.String),
  createdAtNs: Schema.BigIntFromSelf
})
export type StoredIntent = typeof StoredIntent.Type

/** What an application message's write-ahead records: the exact bytes and the epoch they were made at. */
export interface PublishedPayload {
  readonly payloadHash: string
  readonly payload: Uint8Array
  readonly publishedEpoch: bigint
}

/**
 * The intent as storage leaves it once its application message is written ahead (one attempt
 * more, nothing staged): what a publisher holding the row under the group lock may use instead of
 * reading it back.
 */
export const publishedIntent = (intent: StoredIntent, published: PublishedPayload): StoredIntent => ({
  ...intent,
  ...published,
  state: "Published",
  stagedState: null,
  postCommit: null,
  attempts: intent.attempts + 1
})

export const StoredIdentity = Schema.Struct({
  inboxId: InboxId,
  installationId: InstallationId,
  rootSecretKey: Nullable(Bytes),
  signaturePrivateKey: Bytes,
  signaturePublicKey: Bytes,
  registered: Schema.Boolean,
  createdAtNs: Schema.BigIntFromSelf
})
export type StoredIdentity = typeof StoredIdentity.Type

export const StoredKeyPackage = Schema.Struct({
  ref: Schema.String,
  publicPackage: Bytes,
  privatePackage: Bytes,
  createdAtNs: Schema.BigIntFromSelf
})
export type StoredKeyPackage = typeof StoredKeyPackage.Type

/** One verified entry of another inbox's identity log, cached. */
export const InboxLogEntry = Schema.Struct({
  inboxId: InboxId,
  sequence: Schema.Number,
  update: IdentityUpdate
})
export type InboxLogEntry = typeof InboxLogEntry.Type
