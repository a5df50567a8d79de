/**
 * Intents: what a user asked for, not bound to any epoch. Each publish re-derives the
 * payload from the intent's data at the group's current epoch (seed design, libxmtp #284).
 */
import { Schema } from "effect"
import { Base64Bytes } from "./Base64.ts"
import { Policy, Role } from "./Governance.ts"
import { IdOrder, WireTypedContent } from "./Content.ts"
import { GroupId, InboxId, InstallationId, MessageId } from "./Ids.ts"
import { validatedMaker } from "./SchemaClass.ts"

export const IntentKind = Schema.Literal(
  "SendMessage",
  "AddMembers",
  "RemoveMembers",
  "KeyUpdate",
  "MetadataUpdate",
  "Leave",
  "UpdateInstallations",
  "UpdateMetadata",
  "SetRole",
  "UpdatePermissions",
  "SetMinProtocolVersion",
  "DeleteMessage",
  "SettleLeaving"
)
export type IntentKind = typeof IntentKind.Type

export const IntentState = Schema.Literal("ToPublish", "Published", "Committed", "Processed", "Error")
export type IntentState = typeof IntentState.Type

/**
 * The allowed transitions. `Published -> ToPublish` is the epoch-conflict path (the payload
 * is re-derived); `ToPublish -> Processed` is an intent that became a no-op.
 */
const transitions: Readonly<Record<IntentState, ReadonlyArray<IntentState>>> = {
  ToPublish: ["Published", "Processed", "Error"],
  Published: ["Committed", "ToPublish", "Processed", "Error"],
  Committed: ["Processed"],
  Processed: [],
  Error: []
}

export const canTransition = (from: IntentState, to: IntentState): boolean => transitions[from].includes(to)

export const isTerminal = (state: IntentState): boolean => transitions[state].length === 0

/** Intents whose payload is a commit (changes the epoch) rather than an application message. */
export const isCommitKind = (kind: IntentKind): boolean =>
  kind !== "SendMessage" && kind !== "DeleteMessage"

// ---- intent data, one schema per kind ----

export class SendMessageData extends Schema.Class<SendMessageData>("SendMessageData")({
  _tag: Schema.tag("SendMessage"),
  messageId: MessageId,
  nonce: Schema.String,
  text: Schema.String,
  /** How `messageId` is laid out; absent for intents queued before ids were time-ordered. */
  idOrder: Schema.optional(IdOrder),
  /** A direct message (sent in the DM): the group it belongs to. */
  groupContext: Schema.optional(GroupId),
  /** Typed content; `text` is its fallback. */
  content: Schema.optional(WireTypedContent)
}) {}

const validateSendMessage = Schema.validateSync(Schema.Struct(SendMessageData.fields))

/**
 * `SendMessageData.make` with the same checks, by a validator built once: effect's class
 * constructor builds its validator anew on each call when a field transforms (the typed
 * content's bytes), about 0.1 ms, a tenth of an optimistic send.
 */
export const makeSendMessageData = (props: Omit<SendMessageData, "_tag">): SendMessageData =>
  new SendMessageData(validateSendMessage({ ...props, _tag: "SendMessage" }), true)

/** Deletes a message for every member: an application message of the target's conversation. */
export class DeleteMessageData extends Schema.Class<DeleteMessageData>("DeleteMessageData")({
  _tag: Schema.tag("DeleteMessage"),
  nonce: Schema.String,
  target: MessageId
}) {}

export class AddMembersData extends Schema.Class<AddMembersData>("AddMembersData")({
  _tag: Schema.tag("AddMembers"),
  inboxIds: Schema.Array(InboxId)
}) {}

export class RemoveMembersData extends Schema.Class<RemoveMembersData>("RemoveMembersData")({
  _tag: Schema.tag("RemoveMembers"),
  inboxIds: Schema.Array(InboxId),
  /** Queued because the inboxes asked to leave: allowed to anyone, whatever the removal policy. */
  forLeaveRequest: Schema.optionalWith(Schema.Boolean, { default: () => false })
}) {}

export class KeyUpdateData extends Schema.Class<KeyUpdateData>("KeyUpdateData")({
  _tag: Schema.tag("KeyUpdate")
}) {}

export class LeaveData extends Schema.Class<LeaveData>("LeaveData")({
  _tag: Schema.tag("Leave"),
  nonce: Schema.String
}) {}

/**
 * Drop the leave requests in the group's settings that no longer stand: queued by a leaver whose
 * request became void (it is the last super admin), so the request does not come back.
 */
export class SettleLeavingData extends Schema.Class<SettleLeavingData>("SettleLeavingData")({
  _tag: Schema.tag("SettleLeaving")
}) {}

/** Bring the leaves in line with the identity logs: add new installations, remove revoked ones. */
export class UpdateInstallationsData extends Schema.Class<UpdateInstallationsData>("UpdateInstallationsData")({
  _tag: Schema.tag("UpdateInstallations")
}) {}

/** The metadata fields an update sets (bounds are checked by the API against `GroupMetadata`). */
export const MetadataPatch = Schema.Struct({
  name: Schema.optional(Schema.NullOr(Schema.String)),
  description: Schema.optional(Schema.NullOr(Schema.String)),
  imageUrl: Schema.optional(Schema.NullOr(Schema.String)),
  appData: Schema.optional(Schema.NullOr(Schema.String)),
  disappearAfterNs: Schema.optional(Schema.NullOr(Schema.BigInt))
})
export type MetadataPatch = typeof MetadataPatch.Type

/** Sets metadata fields; with `ifMatch`, only if those fields still hold at the epoch it applies in. */
export class UpdateMetadataData extends Schema.Class<UpdateMetadataData>("UpdateMetadataData")({
  _tag: Schema.tag("UpdateMetadata"),
  patch: MetadataPatch,
  ifMatch: Schema.optional(MetadataPatch)
}) {}

export class SetRoleData extends Schema.Class<SetRoleData>("SetRoleData")({
  _tag: Schema.tag("SetRole"),
  inboxId: InboxId,
  role: Role
}) {}

export class UpdatePermissionsData extends Schema.Class<UpdatePermissionsData>("UpdatePermissionsData")({
  _tag: Schema.tag("UpdatePermissions"),
  patch: Schema.Struct({
    addMember: Schema.optional(Policy),
    removeMember: Schema.optional(Policy),
    updateMetadata: Schema.optional(Policy),
    setMinProtocolVersion: Schema.optional(Policy)
  })
}) {}

export class SetMinProtocolVersionData extends Schema.Class<SetMinProtocolVersionData>("SetMinProtocolVersionData")({
  _tag: Schema.tag("SetMinProtocolVersion"),
  version: Schema.Int.pipe(Schema.positive())
}) {}

export const IntentData = Schema.Union(
  SendMessageData,
  AddMembersData,
  RemoveMembersData,
  KeyUpdateData,
  LeaveData,
  UpdateInstallationsData,
  UpdateMetadataData,
  SetRoleData,
  UpdatePermissionsData,
  SetMinProtocolVersionData,
  DeleteMessageData,
  SettleLeavingData
)
export type IntentData = typeof IntentData.Type
export const IntentDataJson = Schema.parseJson(IntentData)

/** What to do once an own commit is confirmed on the topic: send its welcomes. */
export class PostCommitData extends Schema.Class<PostCommitData>("PostCommitData")({
  welcome: Base64Bytes,
  installationIds: Schema.Array(InstallationId),
  /**
   * The public key package each installation was added with (same order): its welcome is
   * sealed to it. Absent in rows written before welcomes were sealed.
   */
  keyPackages: Schema.optionalWith(Schema.Array(Base64Bytes), { default: () => [] })
}) {}
/** `PostCommitData.make`, its validator built once. */
export const makePostCommitData = validatedMaker(PostCommitData)
export const PostCommitDataJson = Schema.parseJson(PostCommitData)
