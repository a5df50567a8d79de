/**
 * The persistence a delivery-service server needs: ordered topics (group messages, welcomes),
 * key packages and identity logs, plus a way to be told that a topic grew so subscriptions
 * can go live. The store-backed delivery service (`layers/StoreDeliveryService.ts`) serves the
 * port over any implementation of it: memory, SQLite or Postgres.
 *
 * Ordering: a topic's sequence ids start at 1, increase by one and become visible in order.
 * A reader that has seen id N never later finds a new entry below N, whatever publishers
 * run concurrently and however many servers share the store. A change is announced only
 * once the entries it announces are committed.
 */
import { Context, Data, Effect, type Queue, type Scope } from "effect"
import { withDriverCause } from "../domain/FailureDetail.ts"
import type { InboxState } from "../domain/IdentityLog.ts"
import type { InboxId, InstallationId } from "../domain/Ids.ts"
import type { Topic } from "../domain/Topics.ts"
import type { IdentityUpdate, IdentityUpdateEnvelope } from "../domain/Wire.ts"

export { groupTopic, type Topic, welcomeTopic } from "../domain/Topics.ts"

/**
 * "Every topic may have grown": announced when changes may have been missed (e.g. a store's
 * notification connection was re-established). Subscribers re-read.
 */
export const ANY_TOPIC = "*" as Topic

/** One entry of a topic as stored. */
export interface StoredEntry {
  readonly topic: Topic
  readonly sequenceId: bigint
  readonly serverTimeNs: bigint
  readonly payload: Uint8Array
}

/** A topic grew: its entries up to `sequenceId` are committed and readable. */
export interface TopicChange {
  readonly topic: Topic
  readonly sequenceId: bigint
  /**
   * The entries this commit added to the topic, in order and ending at `sequenceId`, when the
   * announcer holds them (the writing process): a subscriber that has delivered up to just
   * below the first may hand them on without reading the store. Shared: copy before handing out.
   */
  readonly entries?: ReadonlyArray<StoredEntry>
}

/**
 * The store could not be reached or failed: the operation may or may not have happened.
 * Server-side only; a delivery service reports it to callers as a retryable `Unavailable`.
 */
export class DeliveryStoreError extends Data.TaggedError("DeliveryStoreError")<{
  readonly operation: string
  readonly cause: unknown
}> {
  override get message() {
    const cause = this.cause
    const said = cause instanceof Error ? `${cause.name}: ${withDriverCause(cause)}` : String(cause)
    return `delivery store failed in ${this.operation}: ${said}`
  }
}

/** What a conditional append did: the entries as stored (or their stored copies), or where the topic ends instead. */
export type ConditionalAppend = Data.TaggedEnum<{
  Appended: { readonly entries: ReadonlyArray<StoredEntry> }
  Moved: { readonly lastSequenceId: bigint }
}>
export const ConditionalAppend = Data.taggedEnum<ConditionalAppend>()

/**
 * The one topic of a conditional append's entries. None, or several topics, is the caller's bug:
 * the service checks a request's messages before they reach the store.
 */
export const conditionalTopic = (
  entries: ReadonlyArray<{ readonly topic: Topic }>
): Effect.Effect<Topic> => {
  const topic = entries[0]?.topic
  if (topic === undefined) return Effect.dieMessage("a conditional append of no entries")
  return entries.every((e) => e.topic === topic)
    ? Effect.succeed(topic)
    : Effect.dieMessage("a conditional append to more than one topic")
}

export type AppendIdentityResult =
  | { readonly _tag: "Appended"; readonly envelope: IdentityUpdateEnvelope }
  /** The inbox's log head is no longer the one the update follows: reload and verify again. */
  | { readonly _tag: "Stale" }
  /** The installation being added is a current installation of another inbox. */
  | { readonly _tag: "InstallationTaken"; readonly owner: InboxId }

/** Where a reader of an inbox's identity log is: the last entry it holds (0 = none). */
export interface IdentityCursor {
  readonly inboxId: InboxId
  readonly afterSequence: number
}

export interface CurrentInstallation {
  readonly inboxId: InboxId
  readonly signaturePublicKey: string
}

export class DeliveryStore extends Context.Tag("converge/DeliveryStore")<DeliveryStore, {
  /**
   * Appends to topics in one transaction: all or nothing, in the given order. Payloads
   * identical to one already on their topic (or earlier in the same call) are not stored
   * again: their existing entry comes back. Server timestamps never decrease on a topic.
   * Every topic that got new entries is announced after the commit.
   */
  readonly append: (
    entries: ReadonlyArray<{ readonly topic: Topic; readonly payload: Uint8Array }>
  ) => Effect.Effect<ReadonlyArray<StoredEntry>, DeliveryStoreError>
  /**
   * `append` of entries to one topic, only if its last id is `ifTopicEndsAt` (0: no entries)
   * when they would be stored: then the new ones land right after it, in order; else nothing is
   * stored. As with `append`, a payload already on the topic (or earlier in the call) comes back
   * where it is; entries that all are (a resend) come back whatever the topic's end. Every entry
   * must be for the same topic (a defect otherwise).
   */
  readonly appendIf: (
    entries: ReadonlyArray<{ readonly topic: Topic; readonly payload: Uint8Array }>,
    ifTopicEndsAt: bigint
  ) => Effect.Effect<ConditionalAppend, DeliveryStoreError>
  /** Ascending entries of a topic after `afterSequenceId` (exclusive), at most `limit`. */
  readonly read: (
    topic: Topic,
    afterSequenceId: bigint,
    limit: number
  ) => Effect.Effect<ReadonlyArray<StoredEntry>, DeliveryStoreError>
  /**
   * Each topic's last sequence id, for the topics that have entries (the others are absent), in
   * one query: which topics of a many-topic subscription have anything after their cursors.
   */
  readonly heads: (topics: ReadonlyArray<Topic>) => Effect.Effect<ReadonlyMap<Topic, bigint>, DeliveryStoreError>
  /**
   * Subscribes to topic changes. Once this returns, every append committed from then on is
   * announced on the queue (perhaps with extra or coalesced announcements, and `ANY_TOPIC`
   * when changes may have been missed). Unsubscribes when the scope closes.
   */
  readonly changes: Effect.Effect<Queue.Dequeue<TopicChange>, never, Scope.Scope>
  /**
   * Whether `changes` may miss an append without announcing `ANY_TOPIC`, so that followers need a
   * safety-net poll: on Postgres a commit whose outcome was lost may have had its NOTIFY dropped
   * (`PgDeliveryStore`). The in-process feeds (memory, SQLite) announce every commit.
   */
  readonly changesMayMiss: boolean

  // ---- identity ----
  /** The inbox's current verified state, consistent with one log head; undefined if unknown. */
  readonly loadInbox: (inboxId: InboxId) => Effect.Effect<InboxState | undefined, DeliveryStoreError>
  /**
   * Appends a verified update onto the log head it names (`update.sequence - 1`, with hash
   * `update.previousHash`), and applies its action: creates the inbox, records an installation
   * as the inbox's, or revokes one (forgetting its key package). `headHash` is the hash of the
   * update, the log's new head.
   */
  readonly appendIdentityUpdate: (
    update: IdentityUpdate,
    headHash: string
  ) => Effect.Effect<AppendIdentityResult, DeliveryStoreError>
  /** A current installation's inbox and signature key (hex); undefined once revoked or never added. */
  readonly installation: (
    installationId: InstallationId
  ) => Effect.Effect<CurrentInstallation | undefined, DeliveryStoreError>
  /** The inbox's log entries with `sequence > afterSequence`, in log order. */
  readonly identityUpdates: (
    inboxId: InboxId,
    afterSequence: number
  ) => Effect.Effect<ReadonlyArray<IdentityUpdateEnvelope>, DeliveryStoreError>
  /**
   * Identity changes of several inboxes since each one's cursor, in one read: the entries
   * with `sequence > afterSequence` of each asked inbox (an inbox asked twice: from its lowest
   * cursor), grouped by inbox id ascending and in log order within it, at most `limit`
   * entries in all, so each inbox gets a prefix of what is new and continues from its last
   * entry. Inboxes with nothing new, or unknown, are absent. The common case (nothing
   * changed) is one indexed read, whatever the number of inboxes.
   */
  readonly identityChanges: (
    cursors: ReadonlyArray<IdentityCursor>,
    limit: number
  ) => Effect.Effect<ReadonlyArray<IdentityUpdateEnvelope>, DeliveryStoreError>

  // ---- key packages ----
  /**
   * Replaces the installation's key package, only if the installation is currently one of
   * `inboxId`'s (checked atomically with the write, so a concurrent revocation wins or loses
   * cleanly). False when it is not, and nothing is stored.
   */
  readonly putKeyPackage: (
    installationId: InstallationId,
    inboxId: InboxId,
    keyPackage: Uint8Array
  ) => Effect.Effect<boolean, DeliveryStoreError>
  readonly getKeyPackages: (
    installationIds: ReadonlyArray<InstallationId>
  ) => Effect.Effect<ReadonlyMap<InstallationId, Uint8Array>, DeliveryStoreError>
}>() {}
