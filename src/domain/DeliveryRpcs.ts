/**
 * The delivery service port as an `@effect/rpc` group: one RPC per operation of
 * `DeliveryService`, same names, same errors. Server (`layers/DeliveryServer.ts`) and client
 * (`layers/RpcDeliveryService.ts`) share this module, so they cannot drift apart.
 *
 * Wire rules:
 * - The encoded side of every schema is JSON-safe: bytes travel as base64, bigints (sequence
 *   ids, timestamps, cursors) as decimal strings.
 * - Decoding is bounded before it is costly: base64 goes through `Buffer` (never a character
 *   at a time) after a linear alphabet check, a decimal string longer than 20 digits is
 *   refused before `BigInt` sees it, and every string field has a length cap. A request that
 *   breaks one of these is refused as a protocol defect, like any other shape error.
 * - Requests are checked for their *shape* only (strings, numbers, bytes). Their *meaning*
 *   (id formats, cursor and limit ranges, payload and batch sizes, signatures) is the
 *   service's business, so a bad value comes back as the same typed `DeliveryError` /
 *   `InvalidIdentityUpdate` an in-process caller gets instead of a protocol defect. A request
 *   of the wrong shape never reaches the service: the RPC server answers it with a defect.
 * - Responses use the strict `Wire` field schemas (branded ids and all), except where they
 *   echo a caller's id back (`fetchKeyPackages`, `getIdentityUpdates`).
 * - `QueryPage` is a plain class, so pages travel as `{ items, next? }` (see `toQueryPage`).
 */
import { Rpc, RpcGroup, type RpcMessage } from "@effect/rpc"
import { ParseResult, Schema } from "effect"

import { Base64Bytes } from "./Base64.ts"
import { DeliveryError, InvalidIdentityUpdate } from "./Errors.ts"
import { GroupId, InboxId, InstallationId } from "./Ids.ts"
import {
  GroupMessageEnvelope,
  IdentityUpdate,
  IdentityUpdateEnvelope,
  QueryPage,
  WelcomeMessageEnvelope
} from "./Wire.ts"

// ---- bounded wire primitives ----

/** Longest decimal a cursor, sequence id or timestamp may have: 2^64 has 20 digits. */
export const MAX_DECIMAL_DIGITS = 20
/** Longest id accepted on the wire (real ids are 32 or 64 hex characters; the service checks the format). */
export const MAX_ID_CHARS = 128
/** Longest key, signature or hash string (hex or base64 of at most a P-521 key or signature). */
export const MAX_KEY_CHARS = 512
export { Base64Bytes, MAX_BYTES_FIELD } from "./Base64.ts"

const DECIMAL = new RegExp(`^-?[0-9]{1,${MAX_DECIMAL_DIGITS}}$`)

/**
 * A bigint as a decimal string of at most 20 digits (and a sign): the length is checked
 * before the pattern, and both before `BigInt`, whose parse is quadratic in the digits.
 * Signs pass, so a negative cursor reaches the service and gets its typed error.
 */
export const DecimalBigInt: Schema.Schema<bigint, string> = Schema.transformOrFail(
  Schema.String.pipe(Schema.maxLength(MAX_DECIMAL_DIGITS + 1)),
  Schema.BigIntFromSelf,
  {
    strict: true,
    decode: (text, _, ast) =>
      DECIMAL.test(text)
        ? ParseResult.succeed(BigInt(text))
        : ParseResult.fail(new ParseResult.Type(ast, text, `not a decimal of at most ${MAX_DECIMAL_DIGITS} digits`)),
    encode: (value) => ParseResult.succeed(value.toString())
  }
)

/** The largest cursor the wire carries; any cursor above it is past every topic's end. */
export const MAX_WIRE_CURSOR = 10n ** BigInt(MAX_DECIMAL_DIGITS) - 1n

/**
 * A caller's cursor as the wire can carry it, with the same meaning: one past every topic's
 * end reads nothing, and a negative one is still refused by the service.
 */
export const toWireCursor = (cursor: bigint): bigint =>
  cursor > MAX_WIRE_CURSOR ? MAX_WIRE_CURSOR : cursor < -MAX_WIRE_CURSOR ? -1n : cursor

const Bytes = Base64Bytes
const Cursor = DecimalBigInt
const TimeNs = DecimalBigInt
/** An id as the caller sent it, bounded in length; its format is checked by the service. */
const AnyId = Schema.String.pipe(Schema.maxLength(MAX_ID_CHARS))
/** A key, signature or hash as the caller sent it; the service verifies it. */
const AnyKey = Schema.String.pipe(Schema.maxLength(MAX_KEY_CHARS))
/** A count as the caller sent it; the service checks it is a positive integer. */
const AnyCount = Schema.Number

// ---- requests (shape only) ----

export const GroupMessageInputWire = Schema.Struct({ groupId: AnyId, payload: Bytes })
export const WelcomeMessageInputWire = Schema.Struct({ installationId: AnyId, payload: Bytes })
export const KeyPackageUploadWire = Schema.Struct({ installationId: AnyId, keyPackage: Bytes })

export const GroupQueryWire = Schema.Struct({
  groupId: AnyId,
  afterSequenceId: Cursor,
  limit: Schema.optional(AnyCount)
})
export const GroupFilterWire = Schema.Struct({ groupId: AnyId, afterSequenceId: Cursor })
export const WelcomeQueryWire = Schema.Struct({
  installationId: AnyId,
  afterSequenceId: Cursor,
  limit: Schema.optional(AnyCount)
})
export const WelcomeFilterWire = Schema.Struct({ installationId: AnyId, afterSequenceId: Cursor })
export const IdentityQueryWire = Schema.Struct({ inboxId: AnyId, afterSequence: AnyCount })

export const IdentityActionWire = Schema.Union(
  Schema.TaggedStruct("CreateInbox", { rootPublicKey: AnyKey }),
  Schema.TaggedStruct("AddInstallation", {
    installationId: AnyId,
    signaturePublicKey: AnyKey,
    installationSignature: AnyKey
  }),
  Schema.TaggedStruct("RevokeInstallation", { installationId: AnyId })
)
/** An identity update as a caller sent it: verifying it (signature, chain, ids) is the service's job. */
export const IdentityUpdateInputWire = Schema.Struct({
  inboxId: AnyId,
  sequence: AnyCount,
  previousHash: AnyKey,
  action: IdentityActionWire,
  signature: AnyKey
})

// ---- responses ----

/**
 * Structs with the `Wire` classes' field types and the bounded wire encodings above: they
 * encode instances and plain objects alike.
 */
export const GroupMessageEnvelopeWire = Schema.Struct({
  groupId: GroupId,
  sequenceId: Cursor,
  serverTimeNs: TimeNs,
  payload: Bytes
})
/**
 * Where a sent message landed: `sendGroupMessages` answers with one per message, in order. The
 * caller holds the group ids and payloads it sent (an identical resend comes back as the entry
 * already stored, the same bytes), so the answer does not carry them back: a batch of 50
 * messages answered with their envelopes was most of the bytes both ends encoded and decoded.
 */
export const SentPositionWire = Schema.Struct({
  sequenceId: Cursor,
  serverTimeNs: TimeNs
})
/** `sendGroupMessagesIf`'s answer: where each message landed, in order, or where the topic ends instead. */
export const ConditionalSendWire = Schema.Union(
  Schema.TaggedStruct("Stored", { positions: Schema.Array(SentPositionWire) }),
  Schema.TaggedStruct("TopicMoved", { lastSequenceId: Cursor })
)
export const WelcomeMessageEnvelopeWire = Schema.Struct({
  installationId: InstallationId,
  sequenceId: Cursor,
  serverTimeNs: TimeNs,
  payload: Bytes
})
const IdentityActionResponseWire = Schema.Union(
  Schema.TaggedStruct("CreateInbox", { rootPublicKey: AnyKey }),
  Schema.TaggedStruct("AddInstallation", {
    installationId: InstallationId,
    signaturePublicKey: AnyKey,
    installationSignature: AnyKey
  }),
  Schema.TaggedStruct("RevokeInstallation", { installationId: InstallationId })
)
export const IdentityUpdateEnvelopeWire = Schema.Struct({
  sequenceId: Cursor,
  serverTimeNs: TimeNs,
  update: Schema.Struct({
    inboxId: InboxId,
    sequence: Schema.Int.pipe(Schema.positive()),
    previousHash: AnyKey,
    action: IdentityActionResponseWire,
    signature: AnyKey
  })
})

/**
 * A `QueryPage` on the wire. `next` is absent when the topic is exhausted; on an empty page of
 * a batch or sync answer it is the cursor asked from (not read for lack of room: ask again).
 */
export const QueryPageWire = <A, I>(item: Schema.Schema<A, I>) =>
  Schema.Struct({ items: Schema.Array(item), next: Schema.optional(Cursor) })

export const GroupMessagePageWire = QueryPageWire(GroupMessageEnvelopeWire)
export const WelcomeMessagePageWire = QueryPageWire(WelcomeMessageEnvelopeWire)

export const FetchedKeyPackageWire = Schema.Struct({
  installationId: AnyId,
  keyPackage: Schema.optional(Bytes)
})
/**
 * One inbox's log entries. `truncated` says the server stopped early to bound its answer:
 * the caller asks again after the last entry it got (`RpcDeliveryService` does so itself).
 */
export const InboxUpdatesWire = Schema.Struct({
  inboxId: AnyId,
  updates: Schema.Array(IdentityUpdateEnvelopeWire),
  truncated: Schema.optional(Schema.Boolean)
})

/** `syncQuery`'s answer: group pages in request order, then only the inboxes with new log entries. */
export const SyncAnswerWire = Schema.Struct({
  groups: Schema.Array(GroupMessagePageWire),
  identities: Schema.Array(Schema.Struct({ inboxId: AnyId, updates: Schema.Array(IdentityUpdateEnvelopeWire) }))
})

// ---- conversions between the wire and the port's classes ----

export const toGroupMessageEnvelope = (e: typeof GroupMessageEnvelopeWire.Type): GroupMessageEnvelope =>
  e instanceof GroupMessageEnvelope ? e : new GroupMessageEnvelope(e, true)

export const toWelcomeMessageEnvelope = (e: typeof WelcomeMessageEnvelopeWire.Type): WelcomeMessageEnvelope =>
  e instanceof WelcomeMessageEnvelope ? e : new WelcomeMessageEnvelope(e, true)

export const toIdentityUpdateEnvelope = (e: typeof IdentityUpdateEnvelopeWire.Type): IdentityUpdateEnvelope =>
  e instanceof IdentityUpdateEnvelope ? e : new IdentityUpdateEnvelope(
    {
      sequenceId: e.sequenceId,
      serverTimeNs: e.serverTimeNs,
      update: e.update instanceof IdentityUpdate ? e.update : new IdentityUpdate(e.update, true)
    },
    true
  )

export const toQueryPage = <W, A>(
  page: { readonly items: ReadonlyArray<W>; readonly next?: bigint | undefined },
  f: (w: W) => A
): QueryPage<A> => new QueryPage(page.items.map(f), page.next)

/** A port page as its wire struct (`next` left out when absent). */
export const fromQueryPage = <A>(page: QueryPage<A>): { readonly items: ReadonlyArray<A>; readonly next?: bigint } =>
  page.next === undefined ? { items: page.items } : { items: page.items, next: page.next }

// ---- the group ----

export class DeliveryRpcs extends RpcGroup.make(
  // ---- MlsApi ----
  Rpc.make("sendGroupMessages", {
    payload: { messages: Schema.Array(GroupMessageInputWire) },
    success: Schema.Array(SentPositionWire),
    error: DeliveryError
  }),
  Rpc.make("sendGroupMessagesIf", {
    payload: { messages: Schema.Array(GroupMessageInputWire), ifTopicEndsAt: Cursor },
    success: ConditionalSendWire,
    error: DeliveryError
  }),
  Rpc.make("queryGroupMessages", {
    payload: { query: GroupQueryWire },
    success: GroupMessagePageWire,
    error: DeliveryError
  }),
  Rpc.make("batchQueryGroupMessages", {
    payload: { queries: Schema.Array(GroupQueryWire) },
    success: Schema.Array(GroupMessagePageWire),
    error: DeliveryError
  }),
  Rpc.make("syncQuery", {
    payload: { groups: Schema.Array(GroupQueryWire), identities: Schema.Array(IdentityQueryWire) },
    success: SyncAnswerWire,
    error: DeliveryError
  }),
  Rpc.make("subscribeGroupMessages", {
    payload: { filters: Schema.Array(GroupFilterWire) },
    success: GroupMessageEnvelopeWire,
    error: DeliveryError,
    stream: true
  }),
  Rpc.make("sendWelcomeMessages", {
    payload: { messages: Schema.Array(WelcomeMessageInputWire) },
    success: Schema.Void,
    error: DeliveryError
  }),
  Rpc.make("queryWelcomeMessages", {
    payload: { query: WelcomeQueryWire },
    success: WelcomeMessagePageWire,
    error: DeliveryError
  }),
  Rpc.make("subscribeWelcomeMessages", {
    payload: { filter: WelcomeFilterWire },
    success: WelcomeMessageEnvelopeWire,
    error: DeliveryError,
    stream: true
  }),
  Rpc.make("uploadKeyPackage", {
    payload: { upload: KeyPackageUploadWire },
    error: DeliveryError
  }),
  Rpc.make("fetchKeyPackages", {
    payload: { installationIds: Schema.Array(AnyId) },
    success: Schema.Array(FetchedKeyPackageWire),
    error: DeliveryError
  }),
  // ---- IdentityApi ----
  Rpc.make("publishIdentityUpdate", {
    payload: { update: IdentityUpdateInputWire },
    success: IdentityUpdateEnvelopeWire,
    error: Schema.Union(DeliveryError, InvalidIdentityUpdate)
  }),
  Rpc.make("getIdentityUpdates", {
    payload: { queries: Schema.Array(IdentityQueryWire) },
    success: Schema.Array(InboxUpdatesWire),
    error: DeliveryError
  })
) {}

/**
 * A call's answer failing with `error`, as the server encodes it and the client decodes it: for
 * answers made outside the RPC server (the server's refusals, the client's own timeouts).
 */
export const failedAnswer = (requestId: string, error: DeliveryError): RpcMessage.FromServerEncoded => ({
  _tag: "Exit",
  requestId,
  exit: { _tag: "Failure", cause: { _tag: "Fail", error: Schema.encodeSync(DeliveryError)(error) } }
})
