/**
 * Payloads that cross the delivery service. Shaped after XMTP's V3 MlsApi / IdentityApi:
 * group messages and welcomes are opaque bytes on ordered topics, each with a sequence id
 * and a server timestamp. The encoded side of every schema is JSON-safe (base64, decimal
 * strings) so a network layer can carry them as they are.
 */
import { Schema } from "effect"
import { Base64Bytes } from "./Base64.ts"
import { ConversationId, GroupId, InboxId, InstallationId } from "./Ids.ts"
import { validatedMaker } from "./SchemaClass.ts"

const Bytes = Base64Bytes
/** A position on a topic. `0n` means "from the beginning". */
export const Cursor = Schema.BigInt
/** Nanoseconds since the Unix epoch, as stamped by the delivery service's clock. */
export const TimeNs = Schema.BigInt

/** A group message as a client publishes it: MLS bytes for one group topic. */
export class GroupMessageInput extends Schema.Class<GroupMessageInput>("GroupMessageInput")({
  groupId: GroupId,
  payload: Bytes
}) {}

/** A group message as the delivery service stores and serves it. */
export class GroupMessageEnvelope extends Schema.Class<GroupMessageEnvelope>("GroupMessageEnvelope")({
  groupId: GroupId,
  sequenceId: Cursor,
  serverTimeNs: TimeNs,
  payload: Bytes
}) {}

/** A welcome as a client publishes it, addressed to one installation. */
export class WelcomeMessageInput extends Schema.Class<WelcomeMessageInput>("WelcomeMessageInput")({
  installationId: InstallationId,
  payload: Bytes
}) {}
/** `WelcomeMessageInput.make`, its validator built once (one per welcome sealed). */
export const makeWelcomeMessageInput = validatedMaker(WelcomeMessageInput)

export class WelcomeMessageEnvelope extends Schema.Class<WelcomeMessageEnvelope>("WelcomeMessageEnvelope")({
  installationId: InstallationId,
  sequenceId: Cursor,
  serverTimeNs: TimeNs,
  payload: Bytes
}) {}

/**
 * What a welcome topic carries: the MLS Welcome plus where on the group topic the adding
 * commit landed, so the joiner starts reading right after it.
 */
export class WelcomePayload extends Schema.Class<WelcomePayload>("WelcomePayload")({
  groupId: GroupId,
  commitSequenceId: Cursor,
  welcome: Bytes,
  /** Set when the group is (one of the groups of) a DM; the joiner checks it against the members. */
  dmId: Schema.optional(ConversationId)
}) {}
/** `WelcomePayload.make`, its validator built once. */
export const makeWelcomePayload = validatedMaker(WelcomePayload)
export const WelcomePayloadJson = Schema.parseJson(WelcomePayload)

/** A public key package of one installation (MLS `KeyPackage` bytes). */
export class KeyPackageUpload extends Schema.Class<KeyPackageUpload>("KeyPackageUpload")({
  installationId: InstallationId,
  keyPackage: Bytes
}) {}

export class QueryRequest extends Schema.Class<QueryRequest>("QueryRequest")({
  topic: Schema.String,
  afterSequenceId: Cursor,
  limit: Schema.optional(Schema.Int.pipe(Schema.positive()))
}) {}

export class QueryPage<A> {
  constructor(
    readonly items: ReadonlyArray<A>,
    /**
     * Cursor to continue from, absent when the topic is exhausted. On an empty page (a batch
     * answer out of bytes before this topic), the cursor it was asked from: not read, ask again.
     */
    readonly next: bigint | undefined
  ) {}
}

// ---- identity ----

export const IdentityAction = Schema.Union(
  Schema.TaggedStruct("CreateInbox", { rootPublicKey: Schema.String }),
  Schema.TaggedStruct("AddInstallation", {
    installationId: InstallationId,
    signaturePublicKey: Schema.String,
    /** The installation's own signature over the entry: it holds the key it is added with. */
    installationSignature: Schema.String
  }),
  Schema.TaggedStruct("RevokeInstallation", { installationId: InstallationId })
)
export type IdentityAction = typeof IdentityAction.Type

/**
 * One entry of an inbox's append-only identity log, signed by the inbox's root key.
 * `sequence` and `previousHash` chain the entries so a replayed or reordered entry fails.
 */
export class IdentityUpdate extends Schema.Class<IdentityUpdate>("IdentityUpdate")({
  inboxId: InboxId,
  sequence: Schema.Int.pipe(Schema.positive()),
  previousHash: Schema.String,
  action: IdentityAction,
  signature: Schema.String
}) {}

/** An identity update as stored by the delivery service, with its server-assigned position. */
export class IdentityUpdateEnvelope extends Schema.Class<IdentityUpdateEnvelope>("IdentityUpdateEnvelope")({
  sequenceId: Cursor,
  serverTimeNs: TimeNs,
  update: IdentityUpdate
}) {}
/** `IdentityUpdateEnvelope.make`, its validator built once (a 100-member join serves ~300). */
export const makeIdentityUpdateEnvelope = validatedMaker(IdentityUpdateEnvelope)
