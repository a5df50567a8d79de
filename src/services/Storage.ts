/**
 * The local store of one installation: its groups, messages, intents, cursors, identity and
 * key packages. One port with a repository per table; `transaction` makes writes that belong
 * together atomic (MLS state, messages, intent states and cursors change in one transaction).
 *
 * The implementation is SQLite (`Storage.layer`, over any `SqlClient`); the engine runs its own
 * migrations when the store opens.
 */
import type { SqlClient } from "@effect/sql"
import { Context, type Effect, Layer, type Option } from "effect"
import type { StorageError } from "../domain/Errors.ts"
import type { ConversationId, GroupId, InboxId, MessageId } from "../domain/Ids.ts"
import type { IntentKind, IntentState } from "../domain/Intent.ts"
import type {
  GroupRow,
  IdentityRow,
  InboxLogRow,
  IntentRow,
  KeyPackageRow,
  MembershipState,
  MessageRow
} from "../domain/Rows.ts"
import * as Sqlite from "../layers/SqliteStorage.ts"

type Io<A> = Effect.Effect<A, StorageError>

export interface MessageQuery {
  readonly limit?: number
  readonly direction?: "asc" | "desc"
  readonly afterNs?: bigint
}

export interface GroupRepository {
  readonly insert: (row: GroupRow) => Io<void>
  readonly get: (id: GroupId) => Io<Option.Option<GroupRow>>
  readonly list: (options: { readonly includeInactive: boolean }) => Io<ReadonlyArray<GroupRow>>
  /** Every group of one DM, the most recently used first. */
  readonly byDmId: (dmId: ConversationId) => Io<ReadonlyArray<GroupRow>>
  readonly saveState: (id: GroupId, state: { readonly epoch: bigint; readonly mlsState: Uint8Array }) => Io<void>
  readonly setMembership: (id: GroupId, state: MembershipState) => Io<void>
  readonly markForked: (id: GroupId, details: string) => Io<void>
  /** Moves `last_message_ns` forward only. */
  readonly touch: (id: GroupId, atNs: bigint) => Io<void>
}

export interface MessageRepository {
  /** Stores a message once; returns false if its id was already stored. */
  readonly insert: (row: MessageRow) => Io<boolean>
  readonly get: (id: MessageId) => Io<Option.Option<MessageRow>>
  readonly markPublished: (id: MessageId, at: { readonly sentAtNs: bigint; readonly sequenceId: bigint }) => Io<void>
  readonly markFailed: (id: MessageId) => Io<void>
  readonly byConversation: (id: ConversationId, query: MessageQuery) => Io<ReadonlyArray<MessageRow>>
  readonly membershipChanges: (id: ConversationId) => Io<ReadonlyArray<MessageRow>>
  /** Messages stored after a local insertion point, across conversations, for streams. */
  readonly insertedAfter: (insertedAtNs: bigint, limit: number) => Io<ReadonlyArray<MessageRow>>
}

export interface NewIntent {
  readonly groupId: GroupId
  readonly kind: IntentKind
  readonly data: string
  readonly createdAtNs: bigint
}

export interface PublishedIntent {
  readonly payloadHash: string
  readonly payload: Uint8Array
  readonly publishedEpoch: bigint
  readonly stagedState: Uint8Array | null
  readonly postCommitData: string | null
}

export interface IntentRepository {
  readonly insert: (intent: NewIntent) => Io<number>
  readonly get: (id: number) => Io<Option.Option<IntentRow>>
  readonly byGroup: (groupId: GroupId, states: ReadonlyArray<IntentState>) => Io<ReadonlyArray<IntentRow>>
  readonly byState: (states: ReadonlyArray<IntentState>) => Io<ReadonlyArray<IntentRow>>
  readonly byPayloadHash: (hash: string) => Io<Option.Option<IntentRow>>
  /** ToPublish -> Published, with everything needed to resend or adopt (write-ahead). */
  readonly markPublished: (id: number, published: PublishedIntent) => Io<void>
  /** Published -> ToPublish: drops the staged payload so it is re-derived; counts a conflict. */
  readonly resetToPublish: (id: number, options: { readonly conflict: boolean }) => Io<void>
  readonly markCommitted: (id: number, sequenceId: bigint) => Io<void>
  readonly markProcessed: (id: number) => Io<void>
  readonly markError: (id: number, error: string) => Io<void>
  readonly countAttempt: (id: number) => Io<void>
}

export interface CursorRepository {
  readonly get: (topic: string) => Io<bigint>
  /** Moves a cursor forward only. */
  readonly advance: (topic: string, sequenceId: bigint) => Io<void>
  /** Puts a cursor anywhere: only for a rejoin, which must read again what it skipped. */
  readonly set: (topic: string, sequenceId: bigint) => Io<void>
}

export interface IdentityRepository {
  readonly get: Io<Option.Option<IdentityRow>>
  readonly insert: (row: IdentityRow) => Io<void>
  readonly markRegistered: Io<void>
}

export interface KeyPackageRepository {
  readonly insert: (row: KeyPackageRow) => Io<void>
  readonly list: Io<ReadonlyArray<KeyPackageRow>>
  readonly remove: (ref: string) => Io<void>
}

/** A cache of other inboxes' identity logs, verified on the way in. */
export interface InboxLogRepository {
  readonly entries: (inboxId: InboxId) => Io<ReadonlyArray<InboxLogRow>>
  readonly append: (rows: ReadonlyArray<InboxLogRow>) => Io<void>
}

export class Storage extends Context.Tag("converge/Storage")<Storage, {
  readonly groups: GroupRepository
  readonly messages: MessageRepository
  readonly intents: IntentRepository
  readonly cursors: CursorRepository
  readonly identity: IdentityRepository
  readonly keyPackages: KeyPackageRepository
  readonly inboxLogs: InboxLogRepository
  /** Runs `effect` in one transaction; it must not wait on the network or other fibers. */
  readonly transaction: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E | StorageError, R>
}>() {
  /** SQLite (or any `SqlClient`): runs the migrations, then serves the repositories. */
  static readonly layer: Layer.Layer<Storage, StorageError, SqlClient.SqlClient> = Layer.effect(this, Sqlite.make)
}
