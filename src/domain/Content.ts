/**
 * What travels inside an MLS application message, and how message ids are derived.
 * A message id binds the group, the authenticated sender installation and a random
 * nonce, so a member cannot forge another member's message id.
 */
import { Schema } from "effect"
import { labelledHashHex, labelledHashHexOfText, toHex, utf8 } from "./Bytes.ts"
import { GroupId, type InstallationId, MessageId } from "./Ids.ts"
import { validatedMaker } from "./SchemaClass.ts"

/** Longest content type, in characters (`"app.example/reaction:1"`). */
export const MAX_CONTENT_TYPE_LENGTH = 128
/** Largest typed content, in bytes (the fallback text is bounded like any text). */
export const MAX_CONTENT_BYTES = 64 * 1024

/** A content type: a short name of letters, digits and `. _ / : + -`, starting with a letter or digit. */
export const ContentType = Schema.String.pipe(
  Schema.maxLength(MAX_CONTENT_TYPE_LENGTH),
  Schema.pattern(/^[A-Za-z0-9][A-Za-z0-9._/:+-]*$/, {
    message: () => `a content type is 1 to ${MAX_CONTENT_TYPE_LENGTH} of letters, digits and . _ / : + -`
  })
)

/** Typed content as it travels: its type and its bytes (base64 in the JSON). */
export const WireTypedContent = Schema.Struct({
  type: ContentType,
  bytes: Schema.Uint8ArrayFromBase64.pipe(
    Schema.filter((b) => b.length <= MAX_CONTENT_BYTES || `content is over ${MAX_CONTENT_BYTES} bytes`)
  )
})

/**
 * How a text's id is laid out (`messageIdOf`). `"time"`: it begins with the sender's clock, so the
 * ids of new messages sort after older ones. Every store indexes messages by id: with ids all
 * hash, each stored message landed on a random page of that index, and a received page of 100
 * dirtied about 100 index pages (a 100,000-message store took about 33 us a message to write
 * them, against 8 us with ids in time order). Absent: the whole id is the hash (earlier senders).
 */
export const IdOrder = Schema.Literal("time")
export type IdOrder = typeof IdOrder.Type

/**
 * A message. `groupContext`, `content` and `idOrder` came after the first release: all are
 * optional, and a receiver that does not know them (Schema ignores unknown fields) still reads
 * `text`, which for typed content is its fallback.
 */
export const TextContent = Schema.TaggedStruct("Text", {
  nonce: Schema.String.pipe(Schema.pattern(/^[0-9a-f]{32}$/)),
  text: Schema.String,
  idOrder: Schema.optional(IdOrder),
  /** A direct message: the group (of sender and recipient) it was written in. */
  groupContext: Schema.optional(GroupId),
  content: Schema.optional(WireTypedContent)
})

/**
 * "Delete this message for everyone": an in-band message of the conversation the target lives
 * in. Every receiver judges it (`Messaging.deletionVerdict`); receivers that predate it skip it
 * as undecodable content.
 */
export const DeleteContent = Schema.TaggedStruct("Delete", {
  nonce: Schema.String.pipe(Schema.pattern(/^[0-9a-f]{32}$/)),
  target: MessageId
})

export const ApplicationContent = Schema.Union(TextContent, DeleteContent)
export type ApplicationContent = typeof ApplicationContent.Type
export const ApplicationContentJson = Schema.parseJson(ApplicationContent)

/** Hex characters of a time-ordered nonce (and id) that carry the sender's clock: 48 bits of milliseconds. */
const TIME_PREFIX_LENGTH = 12
const TIME_PREFIX = /^[0-9a-f]{12}/

/**
 * A text's id: the labelled hash of its group, sender installation and nonce. In `"time"` order
 * its first 6 bytes are the nonce's (the sender's clock) and the other 26 the hash's: still bound
 * to the sender (another member's nonce gives another hash), still 64 hex characters.
 */
export const messageIdOf = (groupId: GroupId, sender: InstallationId, nonce: string, idOrder?: IdOrder): MessageId => {
  const hash = labelledHashHexOfText("message", groupId, sender, nonce)
  return (idOrder === "time" && TIME_PREFIX.test(nonce)
    ? nonce.slice(0, TIME_PREFIX_LENGTH) + hash.slice(TIME_PREFIX_LENGTH)
    : hash) as MessageId
}

/**
 * A nonce for a `"time"`-ordered id: the sender's clock in milliseconds (12 hex characters, wrapping
 * after 8,900 years), then 10 random bytes (`random`, at least 10): unique without a counter.
 */
export const timeOrderedNonce = (nowNs: bigint, random: Uint8Array): string =>
  ((nowNs / 1_000_000n) % (1n << 48n)).toString(16).padStart(TIME_PREFIX_LENGTH, "0") + toHex(random.subarray(0, 10))

/** The transcript entry every member writes for a commit: the same id everywhere. */
export const membershipChangeIdOf = (groupId: GroupId, epoch: bigint): MessageId =>
  labelledHashHex("membership-change", utf8(groupId), utf8(epoch.toString())) as MessageId

/** The transcript entry every member writes for a commit that changed the group's settings. */
export const metadataChangeIdOf = (groupId: GroupId, epoch: bigint): MessageId =>
  labelledHashHex("metadata-change", utf8(groupId), utf8(epoch.toString())) as MessageId

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
/** `MembershipChange.make`, its validator built once (one per commit received). */
export const makeMembershipChange = validatedMaker(MembershipChange)

/** The text of a metadata-change transcript entry: who changed which settings, the same on every member. */
export class MetadataChange extends Schema.Class<MetadataChange>("MetadataChange")({
  epoch: Schema.BigInt,
  /** Metadata fields, and `admins`, `superAdmins`, `policies`, `minProtocolVersion` when they changed. */
  changed: Schema.Array(Schema.String),
  committedBy: Schema.String
}) {}
export const MetadataChangeJson = Schema.parseJson(MetadataChange)
/** `MetadataChange.make`, its validator built once (one per settings commit received). */
export const makeMetadataChange = validatedMaker(MetadataChange)
