/**
 * The `DeliveryStore` port on `@effect/sql`: one implementation for SQLite and Postgres, with
 * `sql.onDialectOrElse` where they differ. It owns its schema (migrations table
 * `converge_ds_migrations`, tables prefixed `ds_`), so it can share a database.
 *
 * - Sequence ids come from a counter row per topic (`ds_topics`). An append locks the counter
 *   rows of its topics (in sorted order, so two appends never deadlock) with an upsert that
 *   returns the current head, inserts after it, advances the counter and commits. The next
 *   append on the topic waits for that commit before it reads the head, so ids become visible
 *   in order, also across servers sharing one Postgres. SQLite has one connection and one
 *   transaction at a time, which serializes appends the same way. Within one server, appends
 *   that arrive while a write runs are stored together in the next transaction (group commit).
 * - Identity updates are compare-and-set on the inbox's log head (`ds_inboxes`): the caller
 *   verifies against `loadInbox`, the append fails as `Stale` if the head moved meanwhile.
 * - Changes: SQLite announces after the commit through an in-process PubSub. Postgres sends
 *   `pg_notify` inside the append transaction (Postgres delivers it only on commit, and
 *   after the commit is visible); every store instance LISTENs on one connection, fans out
 *   through its own PubSub, and checks that connection with a heartbeat, re-LISTENing (and
 *   telling subscribers to re-read) if it is lost. Both also hand their own commits' entries
 *   to their subscribers with the announcement, so those need not read them back.
 *
 * Transactions hold only SQL: no network, no waiting on other fibers (SQLite's single
 * connection would deadlock).
 *
 * Parts: the schema in `SqlDeliverySchema.ts`, appends (group commit) in `SqlGroupCommit.ts`,
 * identity in `SqlIdentityQueries.ts`, key packages in `SqlKeyPackages.ts`, column codecs in
 * `SqlDeliveryRows.ts`; reads and the SQLite layer here.
 */
import { SqlClient } from "@effect/sql"
import { Effect, Layer, PubSub, Schema, type Scope } from "effect"
import { DeliveryStore, DeliveryStoreError, type StoredEntry, type Topic, type TopicChange } from "../services/DeliveryStore.ts"
import { MAX_PAGE_BYTES } from "./DeliveryRequests.ts"
import { migrate } from "./SqlDeliverySchema.ts"
import { big, bytesOf, failed, HeadRow, MAX_INT64 } from "./SqlDeliveryRows.ts"
import { type Announcer, makeAppend } from "./SqlGroupCommit.ts"
import * as SqlIdentityQueries from "./SqlIdentityQueries.ts"
import * as SqliteCheckpointer from "./SqliteCheckpointer.ts"
import * as SqlKeyPackages from "./SqlKeyPackages.ts"

export { migrate, migrations, migrationsTable } from "./SqlDeliverySchema.ts"
export type { Announcer } from "./SqlGroupCommit.ts"

type Service = DeliveryStore["Type"]

/**
 * Reads sizes first (neither driver loads a blob to measure it), then only the payloads
 * that fit in `maxPageBytes`: at least one entry, and none past the first that would
 * overflow. Entries are never removed, so the second read sees what the first measured.
 */
const read = (sql: SqlClient.SqlClient, maxPageBytes: number): Service["read"] => (topic, afterSequenceId, limit) =>
  Effect.gen(function*() {
    if (afterSequenceId >= MAX_INT64 || limit <= 0) return []
    const after = afterSequenceId < 0n ? 0n : afterSequenceId
    const sizes = yield* sql<{ sequence_id: unknown; size: unknown }>`
          SELECT sequence_id, length(payload) AS size FROM ds_envelopes
          WHERE topic = ${topic} AND sequence_id > ${after}
          ORDER BY sequence_id LIMIT ${limit}`
    let bytes = 0
    let through: unknown = undefined
    for (const row of sizes) {
      bytes += Number(row.size)
      if (through !== undefined && bytes > maxPageBytes) break
      through = row.sequence_id
    }
    if (through === undefined) return []
    const rows = yield* sql<{ sequence_id: unknown; server_time_ns: unknown; payload: unknown }>`
          SELECT sequence_id, server_time_ns, payload FROM ds_envelopes
          WHERE topic = ${topic} AND sequence_id > ${after} AND sequence_id <= ${big(through)}
          ORDER BY sequence_id`
    return rows.map((row): StoredEntry => ({
      topic,
      sequenceId: big(row.sequence_id),
      serverTimeNs: big(row.server_time_ns),
      payload: bytesOf(row.payload)
    }))
  }).pipe(failed("read"))

/** Topics per `heads` query: one short indexed statement (about a millisecond on SQLite), far below any parameter limit. */
const HEADS_CHUNK = 500

const decodeHeads = Schema.decodeUnknown(Schema.Array(HeadRow))

/** The heads from `ds_topics`, written in the transaction that appends a topic's entries. */
const heads = (sql: SqlClient.SqlClient): Service["heads"] => (topics) =>
  Effect.gen(function*() {
    const unique = [...new Set(topics)]
    const found = new Map<Topic, bigint>()
    for (let i = 0; i < unique.length; i += HEADS_CHUNK) {
      const rows = yield* decodeHeads(yield* sql`
        SELECT topic, last_sequence_id FROM ds_topics WHERE ${sql.in("topic", unique.slice(i, i + HEADS_CHUNK))}`)
      // A counter row of 0 (no entries): absent, as for a topic never written.
      for (const row of rows) if (row.last_sequence_id > 0n) found.set(row.topic as Topic, row.last_sequence_id)
    }
    return found as ReadonlyMap<Topic, bigint>
  }).pipe(failed("heads"))

/**
 * The store on any `SqlClient`, announcing changes through `announcer`; a read returns at most
 * `maxPageBytes` of payload. `changesMayMiss`: whether the announcer may lose an append.
 */
export const makeWith = (
  announcer: Announcer,
  maxPageBytes: number,
  changesMayMiss: boolean
): Effect.Effect<Service, never, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const locks = SqlIdentityQueries.rowLocks(sql)
    return {
      ...(yield* makeAppend(sql, announcer)),
      read: read(sql, maxPageBytes),
      heads: heads(sql),
      changes: announcer.changes,
      changesMayMiss,
      ...SqlIdentityQueries.make(sql, locks),
      ...SqlKeyPackages.make(sql, locks)
    }
  })

// ---- SQLite ----

/**
 * The store on SQLite: appends are announced through an in-process PubSub after commit.
 * `maxPageBytes` caps the payload bytes of one read (default `MAX_PAGE_BYTES`).
 */
export const makeSqlite = (
  maxPageBytes: number = MAX_PAGE_BYTES
): Effect.Effect<Service, DeliveryStoreError, SqlClient.SqlClient | Scope.Scope> =>
  Effect.gen(function*() {
    // An acknowledged append survives a power loss: SQLite opens a file already in WAL mode
    // with synchronous=NORMAL, which could undo it and hand its id to another message.
    const sql = yield* SqlClient.SqlClient
    // Checkpoints off the event loop: the appends' commits only write and sync the log.
    yield* Effect.zipRight(sql`PRAGMA synchronous = FULL`, SqliteCheckpointer.make(sql)).pipe(
      Effect.mapError((cause) => new DeliveryStoreError({ operation: "open", cause }))
    )
    yield* migrate
    const pubsub = yield* Effect.acquireRelease(PubSub.unbounded<TopicChange>(), PubSub.shutdown)
    return yield* makeWith({
      inTransaction: () => Effect.void,
      afterCommit: (changes) => PubSub.publishAll(pubsub, changes),
      changes: PubSub.subscribe(pubsub)
    }, maxPageBytes, false)
  })

/** Embedded SQLite (`@effect/sql-sqlite-node`): one server process; changes go through an in-process PubSub. */
export const layerSqlite: Layer.Layer<DeliveryStore, DeliveryStoreError, SqlClient.SqlClient> = Layer.scoped(
  DeliveryStore,
  makeSqlite()
)
