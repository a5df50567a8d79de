/**
 * The persistence a delivery-service server needs: ordered topics (group messages, welcomes),
 * key packages and identity logs, plus a way to be told that a topic grew so subscriptions
 * can go live. `DeliveryService.layerStore` serves the port over any implementation of it.
 *
 * Ordering: a topic's sequence ids start at 1, increase by one and become visible in order.
 * A reader that has seen id N never later finds a new entry below N, whatever publishers
 * run concurrently and however many servers share the store. A change is announced only
 * once the entries it announces are committed.
 */
import type { SqlClient } from "@effect/sql"
import type { PgClient } from "@effect/sql-pg"
import { Context, type Effect, Layer, type Queue, type Scope } from "effect"
import type { InboxState } from "../domain/IdentityLog.ts"
import type { InboxId, InstallationId } from "../domain/Ids.ts"
import type { DeliveryStoreError, StoredEntry, Topic, TopicChange } from "../domain/Topics.ts"
import type { IdentityUpdate, IdentityUpdateEnvelope } from "../domain/Wire.ts"
import * as Sql from "../layers/SqlDeliveryStore.ts"

export {
  ANY_TOPIC,
  DeliveryStoreError,
  groupTopic,
  type StoredEntry,
  type Topic,
  type TopicChange,
  welcomeTopic
} from "../domain/Topics.ts"

export type AppendIdentityResult =
  | { readonly _tag: "Appended"; readonly envelope: IdentityUpdateEnvelope }
  /** The inbox's log head is no longer the one the update follows: reload and verify again. */
  | { readonly _tag: "Stale" }
  /** The installation being added is a current installation of another inbox. */
  | { readonly _tag: "InstallationTaken"; readonly owner: InboxId }

export interface DeliveryStoreOptions {
  /** Postgres only: the LISTEN/NOTIFY channel for topic changes. Default `converge_ds`. */
  readonly channel?: string
  /** Postgres only: how often the notification connection is checked. Default 10 seconds. */
  readonly heartbeatMillis?: number
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
  /** Ascending entries of a topic after `afterSequenceId` (exclusive), at most `limit`. */
  readonly read: (
    topic: Topic,
    afterSequenceId: bigint,
    limit: number
  ) => Effect.Effect<ReadonlyArray<StoredEntry>, DeliveryStoreError>
  /**
   * Subscribes to topic changes. Once this returns, every append committed from then on is
   * announced on the queue (perhaps with extra or coalesced announcements, and `ANY_TOPIC`
   * when changes may have been missed). Unsubscribes when the scope closes.
   */
  readonly changes: Effect.Effect<Queue.Dequeue<TopicChange>, never, Scope.Scope>

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
  /** The inbox's log entries with `sequence > afterSequence`, in log order. */
  readonly identityUpdates: (
    inboxId: InboxId,
    afterSequence: number
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
}>() {
  /** Embedded SQLite (`@effect/sql-sqlite-node`): one server process; changes go through an in-process PubSub. */
  static readonly layerSqlite: Layer.Layer<DeliveryStore, DeliveryStoreError, SqlClient.SqlClient> = Layer.scoped(
    this,
    Sql.makeSqlite()
  )
  /** Postgres (`@effect/sql-pg`): several servers may share it; changes go through LISTEN/NOTIFY. */
  static readonly layerPg: Layer.Layer<DeliveryStore, DeliveryStoreError, PgClient.PgClient> = Layer.scoped(
    this,
    Sql.makePg({})
  )
  static readonly layerPgWith = (
    options: DeliveryStoreOptions
  ): Layer.Layer<DeliveryStore, DeliveryStoreError, PgClient.PgClient> =>
    Layer.scoped(this, Sql.makePg(options))
}
