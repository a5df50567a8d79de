/**
 * The delivery service port, shaped after XMTP's V3 MlsApi and IdentityApi so a network
 * layer maps onto it one to one. Each group topic has one total order (strictly increasing
 * sequence ids); that order is the truth every client converges on.
 */
import { Context, Data, Effect, type Stream } from "effect"
import type { DeliveryError, InvalidIdentityUpdate } from "../domain/Errors.ts"
import type { GroupId, InboxId, InstallationId } from "../domain/Ids.ts"
import type {
  GroupMessageEnvelope,
  GroupMessageInput,
  IdentityUpdate,
  IdentityUpdateEnvelope,
  KeyPackageUpload,
  QueryPage,
  WelcomeMessageEnvelope,
  WelcomeMessageInput
} from "../domain/Wire.ts"

export interface GroupQuery {
  readonly groupId: GroupId
  readonly afterSequenceId: bigint
  readonly limit?: number
}

export interface WelcomeQuery {
  readonly installationId: InstallationId
  readonly afterSequenceId: bigint
  readonly limit?: number
}

export interface IdentityQuery {
  readonly inboxId: InboxId
  /** Log entries after this one (0 = the whole log). */
  readonly afterSequence: number
}

export interface InboxUpdates {
  readonly inboxId: InboxId
  readonly updates: ReadonlyArray<IdentityUpdateEnvelope>
}

/**
 * One round trip of a sync: the group topics' pages and the identity changes of the inboxes
 * the caller shares groups with, so a new or revoked device is learnt with the messages.
 */
export interface SyncQuery {
  /** One page per topic, as `batchQueryGroupMessages` (at most the batch limit). */
  readonly groups: ReadonlyArray<GroupQuery>
  /** Each inbox from the last log entry the caller holds (at most 100 inboxes). */
  readonly identities: ReadonlyArray<IdentityQuery>
}

export interface SyncAnswer {
  /** In request order, bounded as `batchQueryGroupMessages` answers (an empty page with `next`: not read). */
  readonly groups: ReadonlyArray<QueryPage<GroupMessageEnvelope>>
  /**
   * Only inboxes with new entries, each a prefix of what is new, in log order: a log cut
   * short (the answer is bounded) continues from its last entry on the next call.
   */
  readonly identities: ReadonlyArray<InboxUpdates>
}

/**
 * What a conditional send did: stored the messages (or found identical ones already stored: a
 * resend), or stored nothing because the topic no longer ended where the caller said.
 */
export type ConditionalSend = Data.TaggedEnum<{
  Stored: { readonly envelopes: ReadonlyArray<GroupMessageEnvelope> }
  TopicMoved: { readonly lastSequenceId: bigint }
}>
export const ConditionalSend = Data.taggedEnum<ConditionalSend>()

export interface FetchedKeyPackage {
  readonly installationId: InstallationId
  readonly keyPackage: Uint8Array | undefined
}

export class DeliveryService extends Context.Tag("converge/DeliveryService")<DeliveryService, {
  // ---- MlsApi ----
  /** Appends to group topics. An identical payload already on a topic is not stored twice. */
  readonly sendGroupMessages: (
    messages: ReadonlyArray<GroupMessageInput>
  ) => Effect.Effect<ReadonlyArray<GroupMessageEnvelope>, DeliveryError>
  /**
   * Appends messages of one group only if its topic still ends at `ifTopicEndsAt` (0: empty), so
   * they land right after what the caller last read, in order: nothing (a commit above all) can
   * have come between. Otherwise stores nothing and answers where the topic ends now. Payloads
   * identical to ones already on the topic come back where they are, as with `sendGroupMessages`
   * (so a batch that is all a resend comes back `Stored` whatever the topic's end).
   */
  readonly sendGroupMessagesIf: (
    messages: ReadonlyArray<GroupMessageInput>,
    ifTopicEndsAt: bigint
  ) => Effect.Effect<ConditionalSend, DeliveryError>
  /** Ascending from the cursor, at most `limit` (default and cap: the page size). */
  readonly queryGroupMessages: (query: GroupQuery) => Effect.Effect<QueryPage<GroupMessageEnvelope>, DeliveryError>
  /**
   * Several topics in one call: one page each, in request order, all within one page's bytes
   * (`MAX_PAGE_BYTES`; the answer's first entry always). A topic past that budget comes back
   * empty with `next` at its own cursor: not read (not done), to be asked again.
   */
  readonly batchQueryGroupMessages: (
    queries: ReadonlyArray<GroupQuery>
  ) => Effect.Effect<ReadonlyArray<QueryPage<GroupMessageEnvelope>>, DeliveryError>
  /**
   * Group pages and identity changes in one call. A read, like the two it combines: the
   * identity part reveals which inboxes the caller looks up, as `getIdentityUpdates` does.
   */
  readonly syncQuery: (query: SyncQuery) => Effect.Effect<SyncAnswer, DeliveryError>
  /** Replays each topic from its cursor, then goes live: no gap, no duplicate. */
  readonly subscribeGroupMessages: (
    filters: ReadonlyArray<Omit<GroupQuery, "limit">>
  ) => Stream.Stream<GroupMessageEnvelope, DeliveryError>
  /**
   * Stores each welcome on its recipient's topic. Answers nothing: a position on someone else's
   * welcome topic would tell the sender how many welcomes (new groups, DMs) that installation got.
   */
  readonly sendWelcomeMessages: (messages: ReadonlyArray<WelcomeMessageInput>) => Effect.Effect<void, DeliveryError>
  readonly queryWelcomeMessages: (query: WelcomeQuery) => Effect.Effect<QueryPage<WelcomeMessageEnvelope>, DeliveryError>
  readonly subscribeWelcomeMessages: (
    filter: Omit<WelcomeQuery, "limit">
  ) => Stream.Stream<WelcomeMessageEnvelope, DeliveryError>
  /** Replaces the installation's key package; the installation must be registered. */
  readonly uploadKeyPackage: (upload: KeyPackageUpload) => Effect.Effect<void, DeliveryError>
  readonly fetchKeyPackages: (
    installationIds: ReadonlyArray<InstallationId>
  ) => Effect.Effect<ReadonlyArray<FetchedKeyPackage>, DeliveryError>
  // ---- IdentityApi ----
  /** Verified against the inbox's log before it is stored. */
  readonly publishIdentityUpdate: (
    update: IdentityUpdate
  ) => Effect.Effect<IdentityUpdateEnvelope, DeliveryError | InvalidIdentityUpdate>
  /** Unknown inboxes come back with no updates. */
  readonly getIdentityUpdates: (
    queries: ReadonlyArray<IdentityQuery>
  ) => Effect.Effect<ReadonlyArray<InboxUpdates>, DeliveryError>
}>() {}

/** Most ids one `fetchKeyPackages` or `getIdentityUpdates` call may carry: a server refuses more. */
export const MAX_IDS_PER_LOOKUP = 100

/** `fetchKeyPackages` for any number of installations: calls of at most `MAX_IDS_PER_LOOKUP` ids, answers in order. */
export const fetchKeyPackagesInChunks = (
  ds: Pick<DeliveryService["Type"], "fetchKeyPackages">,
  installationIds: ReadonlyArray<InstallationId>
): Effect.Effect<ReadonlyArray<FetchedKeyPackage>, DeliveryError> =>
  installationIds.length <= MAX_IDS_PER_LOOKUP
    ? ds.fetchKeyPackages(installationIds)
    : Effect.forEach(
      Array.from(
        { length: Math.ceil(installationIds.length / MAX_IDS_PER_LOOKUP) },
        (_, i) => installationIds.slice(i * MAX_IDS_PER_LOOKUP, (i + 1) * MAX_IDS_PER_LOOKUP)
      ),
      (chunk) => ds.fetchKeyPackages(chunk)
    ).pipe(Effect.map((answers) => answers.flat()))
