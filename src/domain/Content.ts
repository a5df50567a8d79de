/**
 * What travels inside an MLS application message, and how message ids are derived.
 * A message id binds the group, the authenticated sender installation and a random
 * nonce, so a member cannot forge another member's message id.
 */
import { Schema } from "effect"
import { labelledHash, toHex, utf8 } from "./Bytes.ts"
import type { GroupId, InstallationId, MessageId } from "./Ids.ts"

export const TextContent = Schema.TaggedStruct("Text", {
  nonce: Schema.String.pipe(Schema.pattern(/^[0-9a-f]{32}$/)),
  text: Schema.String
})

/**
 * "Remove my inbox": sent by an installation of the leaving inbox. Its other installations
 * go `pendingRemove`; the remaining members commit the removal (seed: libxmtp #441).
 */
export const LeaveRequestContent = Schema.TaggedStruct("LeaveRequest", {
  nonce: Schema.String.pipe(Schema.pattern(/^[0-9a-f]{32}$/))
})

export const ApplicationContent = Schema.Union(TextContent, LeaveRequestContent)
export type ApplicationContent = typeof ApplicationContent.Type
export const ApplicationContentJson = Schema.parseJson(ApplicationContent)

export const messageIdOf = (groupId: GroupId, sender: InstallationId, nonce: string): MessageId =>
  toHex(labelledHash("message", utf8(groupId), utf8(sender), utf8(nonce))) as MessageId

/** The transcript entry every member writes for a commit: the same id everywhere. */
export const membershipChangeIdOf = (groupId: GroupId, epoch: bigint): MessageId =>
  toHex(labelledHash("membership-change", utf8(groupId), utf8(epoch.toString()))) as MessageId

/** The transcript entry every member writes for a commit that changed the group's settings. */
export const metadataChangeIdOf = (groupId: GroupId, epoch: bigint): MessageId =>
  toHex(labelledHash("metadata-change", utf8(groupId), utf8(epoch.toString()))) as MessageId

export const MessageKind = Schema.Literal("text", "membershipChange", "metadataChange")
export type MessageKind = typeof MessageKind.Type

export const DeliveryStatus = Schema.Literal("unpublished", "published", "failed")
export type DeliveryStatus = typeof DeliveryStatus.Type

/** The text of a membership-change transcript entry, readable and the same on every member. */
export class MembershipChange extends Schema.Class<MembershipChange>("MembershipChange")({
  epoch: Schema.BigInt,
  addedInboxes: Schema.Array(Schema.String),
  removedInboxes: Schema.Array(Schema.String),
  committedBy: Schema.String
}) {}
export const MembershipChangeJson = Schema.parseJson(MembershipChange)

/** The text of a metadata-change transcript entry: who changed which settings, the same on every member. */
export class MetadataChange extends Schema.Class<MetadataChange>("MetadataChange")({
  epoch: Schema.BigInt,
  /** Metadata fields, and `admins`, `superAdmins`, `policies`, `minProtocolVersion` when they changed. */
  changed: Schema.Array(Schema.String),
  committedBy: Schema.String
}) {}
export const MetadataChangeJson = Schema.parseJson(MetadataChange)
