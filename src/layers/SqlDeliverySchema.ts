/**
 * The schema of the SQL delivery store (`SqlDeliveryStore.ts`): its own migrations table
 * (`converge_ds_migrations`) and tables prefixed `ds_`, so it can share a database.
 */
import { Migrator, SqlClient } from "@effect/sql"
import { Effect } from "effect"
import { DeliveryStoreError } from "../services/DeliveryStore.ts"

export const migrationsTable = "converge_ds_migrations"
const createTables = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const bytes = sql.onDialectOrElse({ pg: () => sql.literal("BYTEA"), orElse: () => sql.literal("BLOB") })
  const serial = sql.onDialectOrElse({
    pg: () => sql.literal("BIGSERIAL PRIMARY KEY"),
    orElse: () => sql.literal("INTEGER PRIMARY KEY AUTOINCREMENT")
  })
  // Timestamps are nanoseconds (beyond 2^53), kept as decimal text so both drivers return them exactly.
  yield* sql`CREATE TABLE ds_topics (
    topic TEXT PRIMARY KEY,
    last_sequence_id BIGINT NOT NULL,
    last_time_ns TEXT NOT NULL
  )`
  yield* sql`CREATE TABLE ds_envelopes (
    topic TEXT NOT NULL,
    sequence_id BIGINT NOT NULL,
    server_time_ns TEXT NOT NULL,
    digest TEXT NOT NULL,
    payload ${bytes} NOT NULL,
    PRIMARY KEY (topic, sequence_id)
  )`
  yield* sql`CREATE INDEX ds_envelopes_digest ON ds_envelopes (topic, digest)`
  yield* sql`CREATE TABLE ds_inboxes (
    inbox_id TEXT PRIMARY KEY,
    root_public_key TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    head_hash TEXT NOT NULL,
    last_time_ns TEXT NOT NULL
  )`
  yield* sql`CREATE TABLE ds_identity_updates (
    id ${serial},
    inbox_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    server_time_ns TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (inbox_id, sequence)
  )`
  yield* sql`CREATE TABLE ds_installations (
    installation_id TEXT PRIMARY KEY,
    inbox_id TEXT NOT NULL,
    signature_public_key TEXT NOT NULL
  )`
  yield* sql`CREATE INDEX ds_installations_inbox ON ds_installations (inbox_id)`
  yield* sql`CREATE TABLE ds_revoked (
    inbox_id TEXT NOT NULL,
    installation_id TEXT NOT NULL,
    PRIMARY KEY (inbox_id, installation_id)
  )`
  yield* sql`CREATE TABLE ds_key_packages (
    installation_id TEXT PRIMARY KEY,
    key_package ${bytes} NOT NULL
  )`
})

export const migrations = Migrator.fromRecord({ "0001_create_tables": createTables })

/** Runs the store's migrations; concurrent servers starting on a fresh Postgres may race, so retry. */
export const migrate = Migrator.make({})({ loader: migrations, table: migrationsTable }).pipe(
  Effect.retry({ times: 3 }),
  Effect.mapError((cause) => new DeliveryStoreError({ operation: "migrate", cause }))
)
