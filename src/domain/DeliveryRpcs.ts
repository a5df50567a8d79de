/**
 * The delivery service port as an `@effect/rpc` group: one RPC per operation of
 * `DeliveryService`, same names, same errors. Server (`layers/DeliveryServer.ts`) and client
 * (`layers/RpcDeliveryService.ts`) share this module, so they cannot drift apart.
 *
 * Wire rules:
 * - The encoded side of every schema is JSON-safe: bytes travel as base64, bigints (sequence
 *   ids, timestamps, cursors) as decimal strings.
 * - Requests are checked for their *shape* only (strings, numbers, bytes). Their *meaning*
 *   (id formats, cursor and limit ranges, payload and batch sizes, signatures) is the
 *   service's business, so a bad value comes back as the same typed `DeliveryError` /
 *   `InvalidIdentityUpdate` an in-process caller gets instead of a protocol defect. A request
 *   of the wrong shape never reaches the service: the RPC server answers it with a defect.
 * - Responses use the strict `Wire` field schemas (branded ids and all), except where they
 *   echo a caller's id back (`fetchKeyPackages`, `getIdentityUpdates`).
 * - `QueryPage` is a plain class, so pages travel as `{ items, next? }` (see `toQueryPage`).
 */
import { Rpc, RpcGroup } from "@effect/rpc"
import { Schema } from "effect"
import { DeliveryError, InvalidIdentityUpdate } from "./Errors.ts"
import {
  Cursor,
  GroupMessageEnvelope,
  IdentityUpdate,
  IdentityUpdateEnvelope,
  QueryPage,
  WelcomeMessageEnvelope
} from "./Wire.ts"

const Bytes = Schema.Uint8ArrayFromBase64
/** An id as the caller sent it; its format is checked by the service. */
const AnyId = Schema.String
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
  Schema.TaggedStruct("CreateInbox", { rootPublicKey: Schema.String }),
  Schema.TaggedStruct("AddInstallation", {
    installationId: AnyId,
    signaturePublicKey: Schema.String,
    installationSignature: Schema.String
  }),
  Schema.TaggedStruct("RevokeInstallation", { installationId: AnyId })
)
/** An identity update as a caller sent it: verifying it (signature, chain, ids) is the service's job. */
export const IdentityUpdateInputWire = Schema.Struct({
  inboxId: AnyId,
  sequence: AnyCount,
  previousHash: Schema.String,
  action: IdentityActionWire,
  signature: Schema.String
})

// ---- responses ----

/** Structs over the `Wire` classes' fields: they encode instances and plain objects alike. */
export const GroupMessageEnvelopeWire = Schema.Struct(GroupMessageEnvelope.fields)
export const WelcomeMessageEnvelopeWire = Schema.Struct(WelcomeMessageEnvelope.fields)
export const IdentityUpdateEnvelopeWire = Schema.Struct({
  ...IdentityUpdateEnvelope.fields,
  update: Schema.Struct(IdentityUpdate.fields)
})

/** A `QueryPage` on the wire. `next` is absent when the topic is exhausted. */
export const QueryPageWire = <A, I>(item: Schema.Schema<A, I>) =>
  Schema.Struct({ items: Schema.Array(item), next: Schema.optional(Cursor) })

export const GroupMessagePageWire = QueryPageWire(GroupMessageEnvelopeWire)
export const WelcomeMessagePageWire = QueryPageWire(WelcomeMessageEnvelopeWire)

export const FetchedKeyPackageWire = Schema.Struct({
  installationId: AnyId,
  keyPackage: Schema.optional(Bytes)
})
export const InboxUpdatesWire = Schema.Struct({
  inboxId: AnyId,
  updates: Schema.Array(IdentityUpdateEnvelopeWire)
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
    success: Schema.Array(GroupMessageEnvelopeWire),
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
  Rpc.make("subscribeGroupMessages", {
    payload: { filters: Schema.Array(GroupFilterWire) },
    success: GroupMessageEnvelopeWire,
    error: DeliveryError,
    stream: true
  }),
  Rpc.make("sendWelcomeMessages", {
    payload: { messages: Schema.Array(WelcomeMessageInputWire) },
    success: Schema.Array(WelcomeMessageEnvelopeWire),
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
