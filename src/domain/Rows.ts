/**
 * Stored rows. SQLite integers are read as `bigint` (safe integers: nanosecond times do not
 * fit a double), so small counters and flags are decoded from bigint here.
 */
import { Schema } from "effect"
import { DeliveryStatus, MessageKind } from "./Content.ts"
import { ConversationId, GroupId, InboxId, InstallationId, MessageId } from "./Ids.ts"
import { IntentKind, IntentState } from "./Intent.ts"

const Int = Schema.transform(Schema.Union(Schema.BigIntFromSelf, Schema.Number), Schema.Number, {
  strict: true,
  decode: (n) => Number(n),
  encode: (n) => n
})
const Flag = Schema.transform(Schema.Union(Schema.BigIntFromSelf, Schema.Number), Schema.Boolean, {
  strict: true,
  decode: (n) => Number(n) !== 0,
  encode: (b) => (b ? 1 : 0)
})
const Big = Schema.transform(Schema.Union(Schema.BigIntFromSelf, Schema.Number), Schema.BigIntFromSelf, {
  strict: true,
  decode: (n) => BigInt(n),
  encode: (n) => n
})
/** SQLite hands back Node Buffers; normalise them to plain Uint8Arrays. */
const Bytes = Schema.transform(Schema.Uint8ArrayFromSelf, Schema.Uint8ArrayFromSelf, {
  strict: true,
  decode: (bytes) => (bytes.constructor === Uint8Array ? bytes : new Uint8Array(bytes)),
  encode: (bytes) => bytes
})
const Nullable = Schema.NullOr

export const MembershipState = Schema.Literal("active", "pendingRemove", "inactive")
export type MembershipState = typeof MembershipState.Type

export const ConversationKind = Schema.Literal("group", "dm")
export type ConversationKind = typeof ConversationKind.Type

export class GroupRow extends Schema.Class<GroupRow>("GroupRow")({
  id: GroupId,
  kind: ConversationKind,
  /** `dm:<a>:<b>` for DMs: several groups may share it (stitching). */
  dm_id: Nullable(ConversationId),
  membership_state: MembershipState,
  epoch: Big,
  mls_state: Bytes,
  maybe_forked: Flag,
  fork_details: Nullable(Schema.String),
  name: Nullable(Schema.String),
  description: Nullable(Schema.String),
  added_by_inbox_id: Nullable(InboxId),
  created_at_ns: Big,
  last_message_ns: Big
}) {}

export class MessageRow extends Schema.Class<MessageRow>("MessageRow")({
  id: MessageId,
  group_id: GroupId,
  conversation_id: ConversationId,
  sender_inbox_id: InboxId,
  sender_installation_id: InstallationId,
  /** Server time once published; local time while unpublished. */
  sent_at_ns: Big,
  /** Position on the group topic, once published. */
  sequence_id: Nullable(Big),
  kind: MessageKind,
  content: Schema.String,
  delivery_status: DeliveryStatus,
  inserted_at_ns: Big
}) {}

export class IntentRow extends Schema.Class<IntentRow>("IntentRow")({
  id: Int,
  group_id: GroupId,
  kind: IntentKind,
  /** `IntentDataJson`: what the user asked for, re-derived at each publish. */
  data: Schema.String,
  state: IntentState,
  payload_hash: Nullable(Schema.String),
  /** The exact bytes sent, so a send with an unknown outcome is repeated byte for byte. */
  payload: Nullable(Bytes),
  published_epoch: Nullable(Big),
  staged_state: Nullable(Bytes),
  /** `PostCommitDataJson`: welcomes to send once the commit is confirmed. */
  post_commit_data: Nullable(Schema.String),
  /** Where the payload landed on the group topic. */
  sequence_id: Nullable(Big),
  attempts: Int,
  conflicts: Int,
  error: Nullable(Schema.String),
  created_at_ns: Big
}) {}

export class CursorRow extends Schema.Class<CursorRow>("CursorRow")({
  topic: Schema.String,
  sequence_id: Big
}) {}

export class IdentityRow extends Schema.Class<IdentityRow>("IdentityRow")({
  inbox_id: InboxId,
  installation_id: InstallationId,
  root_secret_key: Nullable(Bytes),
  signature_private_key: Bytes,
  signature_public_key: Bytes,
  registered: Flag,
  created_at_ns: Big
}) {}

export class KeyPackageRow extends Schema.Class<KeyPackageRow>("KeyPackageRow")({
  ref: Schema.String,
  public_package: Bytes,
  private_package: Bytes,
  created_at_ns: Big
}) {}

export class InboxLogRow extends Schema.Class<InboxLogRow>("InboxLogRow")({
  inbox_id: InboxId,
  sequence: Int,
  update_json: Schema.String
}) {}
