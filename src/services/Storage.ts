/**
 * The local store of one installation: its groups, messages, intents, cursors, identity and
 * key packages. One port with a repository per table; `transaction` makes writes that belong
 * together atomic (MLS state, messages, intent states and cursors change in one transaction).
 *
 * Repositories speak decoded domain values (`domain/Stored.ts`). A stored row that does not
 * decode is the adapter's to log, quarantine and leave out: reads never die of one bad row.
 * The implementation is `layers/SqliteStorage.ts` (`SqliteStorage.layer`, over any `SqlClient`).
 */
import { Context, type Effect, type Option } from "effect"
import type { StorageError } from "../domain/Errors.ts"
import type { ConversationId, GroupId, InboxId, MessageId } from "../domain/Ids.ts"
import type { IntentData, IntentKind, IntentState, PostCommitData } from "../domain/Intent.ts"
import type { PendingDeletion } from "../domain/Messaging.ts"
import type { ConsentRepository, HistoryRepository } from "./HistoryStorage.ts"
import type { RosterRepository } from "./RosterStorage.ts"
import type {
  InboxLogEntry,
  MembershipState,
  StoredGroup,
  StoredIdentity,
  StoredIntent,
  StoredKeyPackage,
  StoredMessage
} from "../domain/Stored.ts"

type Io<A> = Effect.Effect<A, StorageError>

export interface MessageQuery {
  readonly limit?: number
  readonly direction?: "asc" | "desc"
  readonly afterNs?: bigint
}

/** A group's row without its MLS state (tens of kilobytes a group). */
export type GroupSummary = Omit<StoredGroup, "mlsState">

/** What listing conversations reads of a group: which conversation it is, and whether to show it. */
export type GroupListing = Pick<GroupSummary, "id" | "kind" | "dmId" | "name" | "membershipState">

export interface GroupRepository {
  readonly insert: (row: StoredGroup) => Io<void>
  readonly get: (id: GroupId) => Io<Option.Option<StoredGroup>>
  readonly list: (options: { readonly includeInactive: boolean }) => Io<ReadonlyArray<StoredGroup>>
  /** As `list`, without the MLS states: what listing and syncing many groups need. */
  readonly summaries: (options: { readonly includeInactive: boolean }) => Io<ReadonlyArray<GroupSummary>>
  /**
   * As `summaries`, only what a conversation list needs of each group (a list of a thousand is
   * read often). A row is set aside when one of these columns is damaged; a group damaged only
   * elsewhere is listed, and the operations that read the rest of its row meet the damage.
   */
  readonly listing: (options: { readonly includeInactive: boolean }) => Io<ReadonlyArray<GroupListing>>
  /** One group's row without its MLS state: for checks that need only its membership or flags. */
  readonly summary: (id: GroupId) => Io<Option.Option<GroupSummary>>
  /**
   * `get`, with the group topic's cursor (0 before any) and whether any of the group's intents is
   * in `states`: what `send` reads under the group lock before writing ahead, in one statement.
   * The cursor stays valid while that lock is held for an active group: only a page read under
   * the lock moves it then (a welcome sets it without the lock, but only for a group that is
   * absent, inactive or known from history alone, which `send` does not take this way).
   */
  readonly getForSend: (
    id: GroupId,
    topic: string,
    states: ReadonlyArray<IntentState>
  ) => Io<Option.Option<{ readonly group: StoredGroup; readonly cursor: bigint; readonly pending: boolean }>>
  /** Every group of one DM, the most recently used first. */
  readonly byDmId: (dmId: ConversationId) => Io<ReadonlyArray<StoredGroup>>
  readonly saveState: (id: GroupId, state: { readonly epoch: bigint; readonly mlsState: Uint8Array }) => Io<void>
  readonly setMembership: (id: GroupId, state: MembershipState) => Io<void>
  readonly markForked: (id: GroupId, details: string) => Io<void>
  /** The group processed a commit after the one that looked like a fork: it was not one. */
  readonly clearForked: (id: GroupId) => Io<void>
  /** Moves `lastMessageNs` forward only. */
  readonly touch: (id: GroupId, atNs: bigint) => Io<void>
}

export interface MessageRepository {
  /** Stores a message once; returns false if its id was already stored. */
  readonly insert: (row: StoredMessage) => Io<boolean>
  /** Stores each message once, in one statement per hundred; returns the ids stored now (not before). */
  readonly insertMany: (rows: ReadonlyArray<StoredMessage>) => Io<ReadonlyArray<MessageId>>
  readonly get: (id: MessageId) => Io<Option.Option<StoredMessage>>
  readonly markPublished: (
    id: MessageId,
    at: { readonly sentAtNs: bigint; readonly sequenceId: bigint; readonly expiresAtNs?: bigint | null }
  ) => Io<void>
  /** Deleted for everyone: flags it and erases its text and content (and the text its intent kept). */
  readonly erase: (id: MessageId) => Io<void>
  /** Removes every message whose `expiresAtNs` has passed, content and all; returns how many. */
  readonly expire: (now: bigint) => Io<number>
  /** The earliest `expiresAtNs` of the stored messages, if any will expire. */
  readonly nextExpiry: Io<Option.Option<bigint>>
  /** Direct messages that belong to a group (their `groupContext`), in order. */
  readonly directMessages: (
    groupId: GroupId,
    query: Pick<MessageQuery, "limit" | "direction">
  ) => Io<ReadonlyArray<StoredMessage>>
  /** Remembers a deletion whose target has not arrived (the first one for a target stays). */
  readonly rememberDeletion: (targetId: MessageId, pending: PendingDeletion) => Io<void>
  /** The remembered deletion of a message, removed from memory. */
  readonly takeDeletion: (targetId: MessageId) => Io<Option.Option<PendingDeletion>>
  /** The remembered deletions of these messages (one statement per hundred), removed from memory. */
  readonly takeDeletions: (targetIds: ReadonlyArray<MessageId>) => Io<ReadonlyMap<MessageId, PendingDeletion>>
  readonly markFailed: (id: MessageId) => Io<void>
  /** `markPublished` for many messages, one statement per hundred (own messages read back in one page). */
  readonly markPublishedMany: (
    rows: ReadonlyArray<{
      readonly id: MessageId
      readonly sentAtNs: bigint
      readonly sequenceId: bigint
      readonly expiresAtNs: bigint | null
    }>
  ) => Io<void>
  readonly byConversation: (id: ConversationId, query: MessageQuery) => Io<ReadonlyArray<StoredMessage>>
  readonly membershipChanges: (id: ConversationId) => Io<ReadonlyArray<StoredMessage>>
}

export interface NewIntent {
  readonly groupId: GroupId
  /** Its tag is the intent's kind. */
  readonly data: IntentData
  readonly createdAtNs: bigint
}

export interface PublishedIntent {
  readonly payloadHash: string
  readonly payload: Uint8Array
  readonly publishedEpoch: bigint
  readonly stagedState: Uint8Array | null
  readonly postCommit: PostCommitData | null
}

export interface IntentRepository {
  readonly insert: (intent: NewIntent) => Io<number>
  readonly get: (id: number) => Io<Option.Option<StoredIntent>>
  /** `get` for many intents, one statement per hundred; an id without a readable row is left out. */
  readonly getMany: (ids: ReadonlyArray<number>) => Io<ReadonlyArray<StoredIntent>>
  /**
   * The group's intents in these states, oldest first; with `kinds`, only those kinds, so a
   * read for leave removals decodes no pending commit (its staged state and welcomes, 60 KB).
   */
  readonly byGroup: (
    groupId: GroupId,
    states: ReadonlyArray<IntentState>,
    kinds?: ReadonlyArray<IntentKind>
  ) => Io<ReadonlyArray<StoredIntent>>
  /**
   * `byGroup`'s ids, oldest first, without reading the rows: what waits for a publish (a batch of
   * optimistic messages is read back whole by the publisher anyway).
   */
  readonly idsByGroup: (groupId: GroupId, states: ReadonlyArray<IntentState>) => Io<ReadonlyArray<number>>
  /** The states of these intents, one statement per hundred; an id without a row is left out. */
  readonly statesOf: (ids: ReadonlyArray<number>) => Io<ReadonlyMap<number, IntentState>>
  readonly byState: (states: ReadonlyArray<IntentState>) => Io<ReadonlyArray<StoredIntent>>
  readonly byPayloadHash: (hash: string) => Io<Option.Option<StoredIntent>>
  /** The intents published with any of these payload hashes: one query for a whole page. */
  readonly byPayloadHashes: (hashes: ReadonlyArray<string>) => Io<ReadonlyArray<StoredIntent>>
  /**
   * `insert` then `markPublished` in one statement, for an application message written ahead as
   * it is queued (nothing staged, nothing after). Returns the new intent's id.
   */
  readonly insertPublished: (
    intent: NewIntent,
    published: { readonly payloadHash: string; readonly payload: Uint8Array; readonly publishedEpoch: bigint }
  ) => Io<number>
  /** ToPublish -> Published, with everything needed to resend or adopt (write-ahead). */
  readonly markPublished: (id: number, published: PublishedIntent) => Io<void>
  /** `markPublished` for application messages (nothing staged, nothing after), one statement per hundred. */
  readonly markPublishedMany: (
    rows: ReadonlyArray<{
      readonly id: number
      readonly payloadHash: string
      readonly payload: Uint8Array
      readonly publishedEpoch: bigint
    }>
  ) => Io<void>
  /** Published -> ToPublish: drops the staged payload so it is re-derived; counts a conflict. */
  readonly resetToPublish: (id: number, options: { readonly conflict: boolean }) => Io<void>
  readonly markCommitted: (id: number, sequenceId: bigint) => Io<void>
  readonly markProcessed: (id: number) => Io<void>
  /**
   * Own application messages read back from the topic: `markCommitted` then `markProcessed` for
   * each, in one statement per hundred.
   */
  readonly markDelivered: (rows: ReadonlyArray<{ readonly id: number; readonly sequenceId: bigint }>) => Io<void>
  readonly markError: (id: number, error: string) => Io<void>
  readonly countAttempt: (id: number) => Io<void>
  /**
   * Deletes up to `limit` intents that became Processed before `settledBeforeNs` (the marks above
   * stamp it from the `Clock`); returns how many went. Failed intents stay.
   */
  readonly pruneSettled: (settledBeforeNs: bigint, limit: number) => Io<number>
}

export interface CursorRepository {
  readonly get: (topic: string) => Io<bigint>
  /** The cursors of many topics in one query (0 for a topic never read). */
  readonly getMany: (topics: ReadonlyArray<string>) => Io<ReadonlyMap<string, bigint>>
  /** Moves a cursor forward only. */
  readonly advance: (topic: string, sequenceId: bigint) => Io<void>
  /** Puts a cursor anywhere: only for a rejoin, which must read again what it skipped. */
  readonly set: (topic: string, sequenceId: bigint) => Io<void>
}

export interface IdentityRepository {
  readonly get: Io<Option.Option<StoredIdentity>>
  readonly insert: (row: StoredIdentity) => Io<void>
  readonly markRegistered: Io<void>
}

export interface KeyPackageRepository {
  readonly insert: (row: StoredKeyPackage) => Io<void>
  readonly list: Io<ReadonlyArray<StoredKeyPackage>>
  readonly remove: (ref: string) => Io<void>
}

/** A cache of other inboxes' identity logs, verified on the way in. */
export interface InboxLogRepository {
  readonly entries: (inboxId: InboxId) => Io<ReadonlyArray<InboxLogEntry>>
  readonly append: (rows: ReadonlyArray<InboxLogEntry>) => Io<void>
}

export class Storage extends Context.Tag("converge/Storage")<Storage, {
  readonly groups: GroupRepository
  readonly messages: MessageRepository
  readonly intents: IntentRepository
  readonly cursors: CursorRepository
  readonly identity: IdentityRepository
  readonly keyPackages: KeyPackageRepository
  readonly inboxLogs: InboxLogRepository
  /** Consent records shared by the inbox's installations (`HistoryStorage.ts`). */
  readonly consent: ConsentRepository
  /** History sync progress and archive reads (`HistoryStorage.ts`). */
  readonly history: HistoryRepository
  /**
   * Rosters kept beside group states (`RosterStorage.ts`). Optional: a store without it costs a
   * restarted client one decode per group for its installation checks.
   */
  readonly rosters?: RosterRepository
  /** Runs `effect` in one transaction; it must not wait on the network or other fibers. */
  readonly transaction: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E | StorageError, R>
  /**
   * Makes every write so far survive a power loss. Commits survive a crash of the process as
   * soon as they return; a store may leave the disk sync for later, and the engine calls this
   * before every request that writes to the delivery service (a commit's welcomes excepted: they
   * carry what the commit wrote ahead, flushed before the commit went), so nothing leaves
   * the device ahead of the record it depends on (see `SqliteDurability`). Not inside `transaction`.
   */
  readonly flush: Effect.Effect<void, StorageError>
  /** How many row writes a power loss could still undo (0 right after `flush`). */
  readonly unflushedWrites: Effect.Effect<number, StorageError>
}>() {}
