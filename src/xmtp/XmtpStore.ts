/**
 * Storage of the XMTP V3 face, in the database of the Converge face.
 *
 * - Group messages, welcomes and commit-log entries are ordered topics of the Converge
 *   `DeliveryStore` (`ds_envelopes`), under names the Converge face never uses (`xg/`, `xw/`,
 *   `xc/` + hex): ids per topic start at 1 and only increase, identical payloads are stored
 *   once, and several servers on one Postgres keep each topic's order (its per-topic lock and
 *   LISTEN/NOTIFY). Each payload is the protobuf record as it will be served, with id and time
 *   left zero (they are the entry's). Reads newest-first query `ds_envelopes` directly.
 * - Identity logs, the identifier index and key packages are in tables of their own
 *   (`xmtp_*`, migrations table `converge_xmtp_migrations`): their formats are XMTP's. An
 *   identity append is compare-and-set on the inbox's log length, so concurrent publishers
 *   (on any server) verify against the log they append to.
 */
import { Migrator, SqlClient } from "@effect/sql"
import { Clock, Context, Data, Effect, Layer, type Queue, type Scope } from "effect"
import type { Topic, TopicChange } from "../services/DeliveryStore.ts"
import { DeliveryStore, DeliveryStoreError, type StoredEntry } from "../services/DeliveryStore.ts"
import { MAX_PAGE_BYTES } from "../layers/DeliveryRequests.ts"

export const migrationsTable = "converge_xmtp_migrations"

const createTables = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const bytes = sql.onDialectOrElse({ pg: () => sql.literal("BYTEA"), orElse: () => sql.literal("BLOB") })
  yield* sql`CREATE TABLE xmtp_inboxes (
    inbox_id TEXT PRIMARY KEY,
    log_length BIGINT NOT NULL,
    last_time_ns TEXT NOT NULL
  )`
  yield* sql`CREATE TABLE xmtp_identity_updates (
    inbox_id TEXT NOT NULL,
    sequence_id BIGINT NOT NULL,
    server_time_ns TEXT NOT NULL,
    body ${bytes} NOT NULL,
    PRIMARY KEY (inbox_id, sequence_id)
  )`
  yield* sql`CREATE TABLE xmtp_identifiers (
    identifier TEXT NOT NULL,
    identifier_kind INTEGER NOT NULL,
    inbox_id TEXT NOT NULL,
    associated_ns TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (identifier, identifier_kind, inbox_id)
  )`
  yield* sql`CREATE TABLE xmtp_key_packages (
    installation_key TEXT PRIMARY KEY,
    key_package ${bytes} NOT NULL,
    updated_ns TEXT NOT NULL
  )`
})

export const migrations = Migrator.fromRecord({ "0001_xmtp_v3_tables": createTables })

export const migrate = Migrator.make({})({ loader: migrations, table: migrationsTable }).pipe(
  Effect.retry({ times: 3 }),
  Effect.mapError((cause) => new DeliveryStoreError({ operation: "xmtp migrate", cause }))
)

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex")

export const groupTopic = (groupId: Uint8Array) => `xg/${hex(groupId)}` as Topic
export const welcomeTopic = (installationKey: Uint8Array) => `xw/${hex(installationKey)}` as Topic
export const commitLogTopic = (groupId: Uint8Array) => `xc/${hex(groupId)}` as Topic

/** Largest signed 64-bit value: "below the newest" for a descending read. */
const MAX_INT64 = 9_223_372_036_854_775_807n

const big = (value: unknown): bigint => BigInt(value as string | number | bigint)
const bytesOf = (value: unknown): Uint8Array => {
  const view = value as Uint8Array
  return new Uint8Array(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength))
}

export interface IdentityEntry {
  readonly sequenceId: bigint
  readonly serverTimeNs: bigint
  readonly body: Uint8Array
}

export type IdentityAppend = Data.TaggedEnum<{
  Appended: { readonly sequenceId: bigint }
  /** The log grew since it was verified: reload and verify again. */
  Stale: {}
  /** The log is at node-go's length limit. */
  Full: {}
}>
export const IdentityAppend = Data.taggedEnum<IdentityAppend>()

/** Ethereum identifiers are kind 1 in XMTP's `IdentifierKind`. */
const ETHEREUM = 1

export class XmtpStore extends Context.Tag("converge/xmtp/XmtpStore")<XmtpStore, {
  readonly append: (
    entries: ReadonlyArray<{ readonly topic: Topic; readonly payload: Uint8Array }>
  ) => Effect.Effect<ReadonlyArray<StoredEntry>, DeliveryStoreError>
  /** Ascending after `after` (exclusive), or descending below `before` (exclusive; 0 = from the newest). */
  readonly read: (
    topic: Topic,
    cursor: bigint,
    limit: number,
    descending: boolean
  ) => Effect.Effect<ReadonlyArray<StoredEntry>, DeliveryStoreError>
  /** The size of each topic's newest payload (topics with none are absent): a budget before the reads. */
  readonly newestSizes: (topics: ReadonlyArray<Topic>) => Effect.Effect<ReadonlyMap<Topic, number>, DeliveryStoreError>
  /** Each topic's last id (topics with none are absent), in one query: which topics of a subscription have news. */
  readonly heads: (topics: ReadonlyArray<Topic>) => Effect.Effect<ReadonlyMap<Topic, bigint>, DeliveryStoreError>
  /**
   * Whether `changes` may miss an append, so that followers need a safety-net poll: on Postgres a
   * commit whose outcome was lost may have had its notification dropped (`PgDeliveryStore`);
   * SQLite's in-process feed announces every commit.
   */
  readonly changesMayMiss: boolean
  readonly changes: Effect.Effect<Queue.Dequeue<TopicChange>, never, Scope.Scope>
  readonly identityLog: (inboxId: string, afterSequenceId: bigint, limit: number) => Effect.Effect<ReadonlyArray<IdentityEntry>, DeliveryStoreError>
  readonly appendIdentity: (
    inboxId: string,
    expectedLength: bigint,
    body: Uint8Array,
    maxLength: number,
    index: { readonly added: ReadonlyArray<string>; readonly revoked: ReadonlyArray<string> }
  ) => Effect.Effect<IdentityAppend, DeliveryStoreError>
  /** The inbox an Ethereum address is currently associated with, newest association first. */
  readonly inboxOf: (address: string) => Effect.Effect<string | undefined, DeliveryStoreError>
  readonly putKeyPackage: (installationKey: Uint8Array, keyPackage: Uint8Array) => Effect.Effect<void, DeliveryStoreError>
  readonly keyPackages: (installationKeys: ReadonlyArray<Uint8Array>) => Effect.Effect<ReadonlyMap<string, Uint8Array>, DeliveryStoreError>
}>() {}

const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const store = yield* DeliveryStore
  yield* migrate
  const failed = (operation: string) => <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    effect.pipe(
      Effect.mapError((cause) => cause instanceof DeliveryStoreError ? cause : new DeliveryStoreError({ operation, cause })),
      Effect.withSpan(`XmtpStore.${operation}`)
    )

  /** Newest first below `before` (0: from the newest); sizes first, so a page stops at `MAX_PAGE_BYTES`. */
  const readDescending = (topic: Topic, before: bigint, limit: number) =>
    Effect.gen(function*() {
      // uint64 on the wire: a cursor past int64's range is "from the newest" too, not a failed bind.
      const below = before > 0n && before < MAX_INT64 ? before : MAX_INT64
      const sizes = yield* sql<{ sequence_id: unknown; size: unknown }>`
        SELECT sequence_id, length(payload) AS size FROM ds_envelopes
        WHERE topic = ${topic} AND sequence_id < ${below} ORDER BY sequence_id DESC LIMIT ${limit}`
      let bytes = 0
      let through: unknown = undefined
      for (const row of sizes) {
        bytes += Number(row.size)
        if (through !== undefined && bytes > MAX_PAGE_BYTES) break
        through = row.sequence_id
      }
      if (through === undefined) return []
      const rows = yield* sql<{ sequence_id: unknown; server_time_ns: unknown; payload: unknown }>`
        SELECT sequence_id, server_time_ns, payload FROM ds_envelopes
        WHERE topic = ${topic} AND sequence_id < ${below} AND sequence_id >= ${big(through)}
        ORDER BY sequence_id DESC`
      return rows.map((row): StoredEntry => ({
        topic,
        sequenceId: big(row.sequence_id),
        serverTimeNs: big(row.server_time_ns),
        payload: bytesOf(row.payload)
      }))
    }).pipe(failed("readDescending"))

  const appendIdentity: XmtpStore["Type"]["appendIdentity"] = (inboxId, expectedLength, body, maxLength, index) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeNanos
      return yield* sql.withTransaction(Effect.gen(function*() {
        // Creates and locks the inbox's row (Postgres: until commit), and reads its length.
        const [head] = yield* sql<{ log_length: unknown; last_time_ns: unknown }>`
          INSERT INTO xmtp_inboxes (inbox_id, log_length, last_time_ns) VALUES (${inboxId}, 0, '0')
          ON CONFLICT (inbox_id) DO UPDATE SET log_length = xmtp_inboxes.log_length
          RETURNING log_length, last_time_ns`
        if (head === undefined) return yield* Effect.dieMessage(`no row for inbox ${inboxId}`)
        const length = big(head.log_length)
        if (length !== expectedLength) return IdentityAppend.Stale()
        if (length >= BigInt(maxLength)) return IdentityAppend.Full()
        const last = big(head.last_time_ns)
        const timeNs = now > last ? now : last
        const sequenceId = length + 1n
        yield* sql`INSERT INTO xmtp_identity_updates (inbox_id, sequence_id, server_time_ns, body)
          VALUES (${inboxId}, ${sequenceId}, ${String(timeNs)}, ${body})`
        yield* sql`UPDATE xmtp_inboxes SET log_length = ${sequenceId}, last_time_ns = ${String(timeNs)}
          WHERE inbox_id = ${inboxId}`
        for (const address of index.added) {
          yield* sql`INSERT INTO xmtp_identifiers (identifier, identifier_kind, inbox_id, associated_ns, revoked)
            VALUES (${address}, ${ETHEREUM}, ${inboxId}, ${String(timeNs)}, 0)
            ON CONFLICT (identifier, identifier_kind, inbox_id)
            DO UPDATE SET associated_ns = ${String(timeNs)}, revoked = 0`
        }
        for (const address of index.revoked) {
          yield* sql`UPDATE xmtp_identifiers SET revoked = 1
            WHERE identifier = ${address} AND identifier_kind = ${ETHEREUM} AND inbox_id = ${inboxId}`
        }
        return IdentityAppend.Appended({ sequenceId })
      }))
    }).pipe(failed("appendIdentity"))

  const service: XmtpStore["Type"] = {
    append: store.append,
    read: (topic, cursor, limit, descending) => descending ? readDescending(topic, cursor, limit) : store.read(topic, cursor, limit),
    newestSizes: (topics) =>
      Effect.gen(function*() {
        if (topics.length === 0) return new Map<Topic, number>()
        const rows = yield* sql<{ topic: string; size: unknown }>`
          SELECT e.topic, length(e.payload) AS size FROM ds_envelopes e
          WHERE e.topic IN ${sql.in([...new Set(topics)])}
            AND e.sequence_id = (SELECT max(m.sequence_id) FROM ds_envelopes m WHERE m.topic = e.topic)`
        return new Map(rows.map((row) => [row.topic as Topic, Number(row.size)] as const))
      }).pipe(failed("newestSizes")),
    // The Converge face's: the same ds_topics heads, and the same notifications.
    heads: store.heads,
    changesMayMiss: store.changesMayMiss,
    changes: store.changes,
    identityLog: (inboxId, after, limit) =>
      sql<{ sequence_id: unknown; server_time_ns: unknown; body: unknown }>`
        SELECT sequence_id, server_time_ns, body FROM xmtp_identity_updates
        WHERE inbox_id = ${inboxId} AND sequence_id > ${after < 0n ? 0n : after > MAX_INT64 ? MAX_INT64 : after}
        ORDER BY sequence_id LIMIT ${limit}`.pipe(
        Effect.map((rows) =>
          rows.map((row) => ({ sequenceId: big(row.sequence_id), serverTimeNs: big(row.server_time_ns), body: bytesOf(row.body) }))
        ),
        failed("identityLog")
      ),
    appendIdentity,
    inboxOf: (address) =>
      sql<{ inbox_id: string }>`
        SELECT inbox_id FROM xmtp_identifiers
        WHERE identifier = ${address} AND identifier_kind = ${ETHEREUM} AND revoked = 0
        ORDER BY associated_ns DESC LIMIT 1`.pipe(Effect.map((rows) => rows[0]?.inbox_id), failed("inboxOf")),
    putKeyPackage: (installationKey, keyPackage) =>
      Effect.flatMap(Clock.currentTimeNanos, (now) =>
        sql`INSERT INTO xmtp_key_packages (installation_key, key_package, updated_ns)
          VALUES (${hex(installationKey)}, ${keyPackage}, ${String(now)})
          ON CONFLICT (installation_key) DO UPDATE SET key_package = ${keyPackage}, updated_ns = ${String(now)}`).pipe(
        Effect.asVoid,
        failed("putKeyPackage")
      ),
    keyPackages: (installationKeys) =>
      Effect.gen(function*() {
        if (installationKeys.length === 0) return new Map<string, Uint8Array>()
        const keys = installationKeys.map(hex)
        const rows = yield* sql<{ installation_key: string; key_package: unknown }>`
          SELECT installation_key, key_package FROM xmtp_key_packages WHERE ${sql.in("installation_key", keys)}`
        return new Map(rows.map((row) => [row.installation_key, bytesOf(row.key_package)] as const))
      }).pipe(failed("keyPackages"))
  }
  return service
})

/** The store on the database's `SqlClient`, beside the Converge face's `DeliveryStore`. */
export const layer: Layer.Layer<XmtpStore, DeliveryStoreError, SqlClient.SqlClient | DeliveryStore> = Layer.effect(XmtpStore, make)
