/**
 * What an inbox's installations tell each other in their own-devices group: a new installation
 * asks for the history (`HistoryRequest`), the others answer with archive pages (`HistoryPage`:
 * conversations, then messages, then consent records), and consent decisions travel as they are
 * made (`ConsentUpdate`). Every payload is Schema-encoded JSON inside an MLS application message,
 * bounded in items and bytes. Pure: the paging rule lives here, the reading and writing elsewhere.
 */
import { Schema } from "effect"
import { ConsentRecord } from "./Consent.ts"
import { ContentType, DeliveryStatus, MAX_CONTENT_BYTES, MessageKind } from "./Content.ts"
import { ConversationId, GroupId, InboxId, InstallationId, MessageId } from "./Ids.ts"
import { ConversationKind } from "./Stored.ts"
import { validatedMaker } from "./SchemaClass.ts"

/**
 * The name an own-devices group carries in its MLS context. Receivers trust such a group only
 * while every leaf is an installation of their own inbox; `createGroup` refuses the name.
 */
export const OWN_DEVICES_GROUP_NAME = "converge:own-devices"

/** Most items in one archive page. */
export const MAX_PAGE_ITEMS = 500
/** Most encoded bytes of one page's items (one oversized item still travels alone). */
export const MAX_PAGE_BYTES = 256 * 1024
/** Most consent records in one `ConsentUpdate`. */
export const MAX_CONSENT_RECORDS = 500

const Hex32 = Schema.String.pipe(Schema.pattern(/^[0-9a-f]{32}$/))

export class ArchivedGroup extends Schema.Class<ArchivedGroup>("ArchivedGroup")({
  id: GroupId,
  kind: ConversationKind,
  dmId: Schema.NullOr(ConversationId),
  name: Schema.NullOr(Schema.String.pipe(Schema.maxLength(1000))),
  description: Schema.NullOr(Schema.String.pipe(Schema.maxLength(1000))),
  createdAtNs: Schema.BigInt,
  lastMessageNs: Schema.BigInt
}) {}
/** `ArchivedGroup.make`, its validator built once. */
export const makeArchivedGroup = validatedMaker(ArchivedGroup)

export class ArchivedMessage extends Schema.Class<ArchivedMessage>("ArchivedMessage")({
  id: MessageId,
  groupId: GroupId,
  conversationId: ConversationId,
  senderInboxId: InboxId,
  senderInstallationId: InstallationId,
  sentAtNs: Schema.BigInt,
  sequenceId: Schema.NullOr(Schema.BigInt),
  kind: MessageKind,
  content: Schema.String.pipe(Schema.maxLength(MAX_PAGE_BYTES)),
  deliveryStatus: DeliveryStatus,
  // Messaging fields travel too, so a new device shows a direct message's group, a typed
  // content, a deletion and a disappearing deadline as the others do.
  groupContext: Schema.optionalWith(Schema.NullOr(GroupId), { default: () => null }),
  contentType: Schema.optionalWith(Schema.NullOr(ContentType), { default: () => null }),
  contentBytes: Schema.optionalWith(
    Schema.NullOr(Schema.Uint8ArrayFromBase64.pipe(Schema.filter((b) => b.length <= MAX_CONTENT_BYTES))),
    { default: () => null }
  ),
  deleted: Schema.optionalWith(Schema.Boolean, { default: () => false }),
  expiresAtNs: Schema.optionalWith(Schema.NullOr(Schema.BigInt), { default: () => null })
}) {}
/** `ArchivedMessage.make`, its validator built once (a history answer makes one per message). */
export const makeArchivedMessage = validatedMaker(ArchivedMessage)

export const HistoryRequest = Schema.TaggedStruct("HistoryRequest", {
  requestId: Hex32,
  requester: InstallationId
})

export const HistoryPage = Schema.TaggedStruct("HistoryPage", {
  requestId: Hex32,
  responder: InstallationId,
  index: Schema.Int.pipe(Schema.nonNegative()),
  /** The responder has nothing more for this request. */
  last: Schema.Boolean,
  groups: Schema.Array(ArchivedGroup).pipe(Schema.maxItems(MAX_PAGE_ITEMS)),
  messages: Schema.Array(ArchivedMessage).pipe(Schema.maxItems(MAX_PAGE_ITEMS)),
  consent: Schema.Array(ConsentRecord).pipe(Schema.maxItems(MAX_PAGE_ITEMS))
})
export type HistoryPage = typeof HistoryPage.Type

export const ConsentUpdate = Schema.TaggedStruct("ConsentUpdate", {
  records: Schema.Array(ConsentRecord).pipe(Schema.maxItems(MAX_CONSENT_RECORDS))
})

export const SyncPayload = Schema.Union(HistoryRequest, HistoryPage, ConsentUpdate)
export type SyncPayload = typeof SyncPayload.Type
export const SyncPayloadJson = Schema.parseJson(SyncPayload)

/**
 * Where an answer stands: sending the backlog (`feed`, everything held so far in the order it came),
 * then the consent records, then `live` (what arrives from now on, while the requester is current),
 * or `done` (closed: the requester was revoked).
 */
export const AnswerPhase = Schema.Literal("feed", "consent", "live", "done")
export type AnswerPhase = typeof AnswerPhase.Type
export const nextPhase = (phase: AnswerPhase): AnswerPhase =>
  phase === "feed" ? "consent" : phase === "consent" ? "live" : phase

/**
 * How many of `items` (already in archive order) the next page takes: at most `maxItems`, and no
 * more than `maxBytes` of their sizes, but always at least one so an oversized item still moves on.
 */
export const pageCut = (
  sizes: ReadonlyArray<number>,
  limits: { readonly maxItems: number; readonly maxBytes: number }
): number => {
  let bytes = 0
  let taken = 0
  for (const size of sizes) {
    if (taken >= limits.maxItems) break
    if (taken > 0 && bytes + size > limits.maxBytes) break
    bytes += size
    taken++
  }
  return taken
}

/** Whether a group's leaves make it an own-devices group this installation may trust. */
export const isOwnDevicesGroup = (
  name: string | null,
  leafInboxes: ReadonlyArray<InboxId>,
  self: InboxId
): boolean => name === OWN_DEVICES_GROUP_NAME && leafInboxes.length > 0 && leafInboxes.every((i) => i === self)

/** A group row imported from history: no MLS state, this installation is no member of it (yet). */
export const isHistoryOnly = (group: { readonly mlsState: Uint8Array }): boolean => group.mlsState.length === 0
