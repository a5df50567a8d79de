/**
 * The store's schema. The library owns its migrations (its own migrations table, table
 * names prefixed `converge_`) so it can share a database with its host application.
 */
import { Migrator, SqlClient } from "@effect/sql"
import { Effect } from "effect"

export const migrationsTable = "converge_migrations"

const createTables = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`CREATE TABLE converge_groups (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('group', 'dm')),
    dm_id TEXT,
    membership_state TEXT NOT NULL CHECK (membership_state IN ('active', 'pendingRemove', 'inactive')),
    epoch INTEGER NOT NULL,
    mls_state BLOB NOT NULL,
    maybe_forked INTEGER NOT NULL DEFAULT 0,
    fork_details TEXT,
    name TEXT,
    description TEXT,
    added_by_inbox_id TEXT,
    created_at_ns INTEGER NOT NULL,
    last_message_ns INTEGER NOT NULL
  )`
  yield* sql`CREATE INDEX converge_groups_dm ON converge_groups (dm_id, last_message_ns DESC) WHERE dm_id IS NOT NULL`
  yield* sql`CREATE INDEX converge_groups_recent ON converge_groups (last_message_ns DESC)`

  yield* sql`CREATE TABLE converge_messages (
    id TEXT PRIMARY KEY,
    group_id TEXT NOT NULL REFERENCES converge_groups (id),
    conversation_id TEXT NOT NULL,
    sender_inbox_id TEXT NOT NULL,
    sender_installation_id TEXT NOT NULL,
    sent_at_ns INTEGER NOT NULL,
    sequence_id INTEGER,
    kind TEXT NOT NULL CHECK (kind IN ('text', 'membershipChange')),
    content TEXT NOT NULL,
    delivery_status TEXT NOT NULL CHECK (delivery_status IN ('unpublished', 'published', 'failed')),
    inserted_at_ns INTEGER NOT NULL
  )`
  yield* sql`CREATE INDEX converge_messages_conversation ON converge_messages (conversation_id, sent_at_ns, id)`
  yield* sql`CREATE INDEX converge_messages_inserted ON converge_messages (inserted_at_ns)`

  yield* sql`CREATE TABLE converge_intents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id TEXT NOT NULL REFERENCES converge_groups (id),
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('ToPublish', 'Published', 'Committed', 'Processed', 'Error')),
    payload_hash TEXT,
    payload BLOB,
    published_epoch INTEGER,
    staged_state BLOB,
    post_commit_data TEXT,
    sequence_id INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    conflicts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at_ns INTEGER NOT NULL
  )`
  yield* sql`CREATE INDEX converge_intents_group_state ON converge_intents (group_id, state, id)`
  yield* sql`CREATE UNIQUE INDEX converge_intents_payload_hash ON converge_intents (payload_hash) WHERE payload_hash IS NOT NULL`

  yield* sql`CREATE TABLE converge_cursors (
    topic TEXT PRIMARY KEY,
    sequence_id INTEGER NOT NULL
  )`

  yield* sql`CREATE TABLE converge_identity (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    inbox_id TEXT NOT NULL,
    installation_id TEXT NOT NULL,
    root_secret_key BLOB,
    signature_private_key BLOB NOT NULL,
    signature_public_key BLOB NOT NULL,
    registered INTEGER NOT NULL DEFAULT 0,
    created_at_ns INTEGER NOT NULL
  )`

  yield* sql`CREATE TABLE converge_key_packages (
    ref TEXT PRIMARY KEY,
    public_package BLOB NOT NULL,
    private_package BLOB NOT NULL,
    created_at_ns INTEGER NOT NULL
  )`

  yield* sql`CREATE TABLE converge_inbox_log (
    inbox_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    update_json TEXT NOT NULL,
    PRIMARY KEY (inbox_id, sequence)
  )`
})

/** Where a group records that some of its rows were set aside as unreadable. */
const addGroupQuarantine = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`ALTER TABLE converge_groups ADD COLUMN quarantine TEXT`
})

/**
 * Messages may also be metadata-change transcript entries. SQLite cannot alter a CHECK, so the
 * table is rebuilt with the wider one (same columns, same indexes).
 */
const allowMetadataChangeMessages = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`CREATE TABLE converge_messages_next (
    id TEXT PRIMARY KEY,
    group_id TEXT NOT NULL REFERENCES converge_groups (id),
    conversation_id TEXT NOT NULL,
    sender_inbox_id TEXT NOT NULL,
    sender_installation_id TEXT NOT NULL,
    sent_at_ns INTEGER NOT NULL,
    sequence_id INTEGER,
    kind TEXT NOT NULL CHECK (kind IN ('text', 'membershipChange', 'metadataChange')),
    content TEXT NOT NULL,
    delivery_status TEXT NOT NULL CHECK (delivery_status IN ('unpublished', 'published', 'failed')),
    inserted_at_ns INTEGER NOT NULL
  )`
  yield* sql`INSERT INTO converge_messages_next SELECT id, group_id, conversation_id, sender_inbox_id,
    sender_installation_id, sent_at_ns, sequence_id, kind, content, delivery_status, inserted_at_ns
    FROM converge_messages`
  yield* sql`DROP TABLE converge_messages`
  yield* sql`ALTER TABLE converge_messages_next RENAME TO converge_messages`
  yield* sql`CREATE INDEX converge_messages_conversation ON converge_messages (conversation_id, sent_at_ns, id)`
  yield* sql`CREATE INDEX converge_messages_inserted ON converge_messages (inserted_at_ns)`
})

/**
 * Messaging: direct messages (the group they belong to), typed content, deletion for everyone
 * and disappearing messages; and the deletions whose target has not arrived yet.
 */
const addMessagingColumns = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`ALTER TABLE converge_messages ADD COLUMN group_context TEXT`
  yield* sql`ALTER TABLE converge_messages ADD COLUMN content_type TEXT`
  yield* sql`ALTER TABLE converge_messages ADD COLUMN content_bytes BLOB`
  yield* sql`ALTER TABLE converge_messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0`
  yield* sql`ALTER TABLE converge_messages ADD COLUMN expires_at_ns INTEGER`
  yield* sql`CREATE INDEX converge_messages_group_context ON converge_messages (group_context, sent_at_ns, id)
             WHERE group_context IS NOT NULL`
  yield* sql`CREATE INDEX converge_messages_expiry ON converge_messages (expires_at_ns) WHERE expires_at_ns IS NOT NULL`
  yield* sql`CREATE TABLE converge_message_deletions (
    target_id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    deleter_inbox_id TEXT NOT NULL,
    by_super_admin INTEGER NOT NULL
  )`
})

/**
 * History sync and consent: consent records shared by an inbox's installations, this
 * installation's import progress (one row) and the answers it is sending to new installations.
 */
const historyConsentTables = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`CREATE TABLE converge_consent (
    subject TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('allowed', 'denied', 'unknown')),
    at_ns INTEGER NOT NULL,
    by_installation TEXT NOT NULL,
    unsent INTEGER NOT NULL DEFAULT 0
  )`
  yield* sql`CREATE TABLE converge_history_progress (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    state TEXT NOT NULL CHECK (state IN ('idle', 'requesting', 'importing', 'done')),
    request_id TEXT,
    requested_from TEXT NOT NULL DEFAULT '',
    pages_imported INTEGER NOT NULL DEFAULT 0,
    messages_imported INTEGER NOT NULL DEFAULT 0
  )`
  yield* sql`CREATE TABLE converge_history_sources (
    request_id TEXT NOT NULL,
    responder TEXT NOT NULL,
    next_index INTEGER NOT NULL,
    PRIMARY KEY (request_id, responder)
  )`
  yield* sql`CREATE TABLE converge_history_answers (
    request_id TEXT PRIMARY KEY,
    requester TEXT NOT NULL,
    group_id TEXT NOT NULL,
    phase TEXT NOT NULL CHECK (phase IN ('feed', 'consent', 'live', 'done')),
    cursor TEXT NOT NULL,
    feed_cursor TEXT NOT NULL,
    page_index INTEGER NOT NULL
  )`
  // What this installation came to hold, in the order it did: groups stored and messages
  // published. Answers page through it by sequence. Filled by triggers (SqliteHistoryStorage).
  yield* sql`CREATE TABLE converge_history_feed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('group', 'message')),
    ref TEXT NOT NULL
  )`
  yield* sql`INSERT INTO converge_history_feed (kind, ref) SELECT 'group', id FROM converge_groups ORDER BY rowid`
  yield* sql`INSERT INTO converge_history_feed (kind, ref)
    SELECT 'message', id FROM converge_messages WHERE delivery_status = 'published' ORDER BY rowid`
})

/**
 * Rosters (who holds which leaf) kept beside group states, keyed by the digest of the state they
 * were read from: a restart's installation checks read them instead of decoding every state.
 */
const groupRosters = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`CREATE TABLE converge_group_rosters (
    group_id TEXT PRIMARY KEY,
    state_digest TEXT NOT NULL,
    roster TEXT NOT NULL
  )`
})

/**
 * A message queued to send (stored `unpublished`, only ever by its own sender) moves its group up
 * the conversation list as it is stored: an optimistic send is one statement fewer.
 */
const optimisticSendTouchTrigger = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`CREATE TRIGGER converge_messages_queued_touch AFTER INSERT ON converge_messages
    WHEN new.delivery_status = 'unpublished'
    BEGIN
      UPDATE converge_groups SET last_message_ns = new.sent_at_ns
      WHERE id = new.group_id AND last_message_ns < new.sent_at_ns;
    END`
})

/**
 * A queued message that the service confirms moves its group to where the service put it, in
 * the statement that marks it published: the confirmation's transaction needs no `touch` of its own.
 */
const sendStatementsPublishTouchTrigger = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`CREATE TRIGGER converge_messages_published_touch AFTER UPDATE OF sent_at_ns ON converge_messages
    WHEN new.delivery_status = 'published'
    BEGIN
      UPDATE converge_groups SET last_message_ns = new.sent_at_ns
      WHERE id = new.group_id AND last_message_ns < new.sent_at_ns;
    END`
})

/**
 * A received page writes less (catch-up): the `inserted_at_ns` index had no reader, and the
 * conversation index drops its trailing `id`. Readers order by `sent_at_ns`, then the sequence
 * id, then `id`, so the index only ever served `conversation_id` and `sent_at_ns`; the id made
 * each entry more than twice as large.
 */
const catchupWritesMessageIndexes = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`DROP INDEX IF EXISTS converge_messages_inserted`
  yield* sql`DROP INDEX IF EXISTS converge_messages_conversation`
  yield* sql`CREATE INDEX converge_messages_conversation ON converge_messages (conversation_id, sent_at_ns)`
})

/**
 * The history feed records a statement's published messages as one run (`SqliteHistoryFeed`),
 * written by the store, instead of a row per message from a trigger.
 */
const catchupWritesHistoryFeedRuns = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`ALTER TABLE converge_history_feed ADD COLUMN ids BLOB`
  yield* sql`DROP TRIGGER IF EXISTS converge_history_feed_message`
})

/**
 * Group summaries (every `syncAll`, `conversations()`, history sync) are read from one index that
 * holds every summary column in list order, never from the table: the columns stored after a
 * row's MLS state (60-80 KB in a 100-member group, in overflow pages) cost a walk over those pages
 * for every group listed. It orders by recency as `converge_groups_recent` did, and replaces it.
 */
const groupSummariesCoveringIndex = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`CREATE INDEX converge_groups_summary ON converge_groups (last_message_ns DESC, id, kind, dm_id,
    membership_state, epoch, maybe_forked, fork_details, quarantine, name, description, added_by_inbox_id, created_at_ns)`
  yield* sql`DROP INDEX IF EXISTS converge_groups_recent`
})

/**
 * When an intent became Processed: settled intents are deleted some minutes later
 * (`SettledIntents`), so the table holds what is in flight, not every message ever sent.
 */
const settledIntentsPruned = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`ALTER TABLE converge_intents ADD COLUMN settled_at_ns INTEGER`
})

export const migrations = {
  "0001_create_tables": createTables,
  "0002_group_quarantine": addGroupQuarantine,
  "0003_metadata_change_messages": allowMetadataChangeMessages,
  "0004_messaging_direct_content_deletion": addMessagingColumns,
  "0005_history_consent": historyConsentTables,
  "0006_memory_restart_group_rosters": groupRosters,
  "0007_optimistic_send_touch_trigger": optimisticSendTouchTrigger,
  "0008_send_statements_publish_touch_trigger": sendStatementsPublishTouchTrigger,
  "0009_catchup_writes_message_indexes": catchupWritesMessageIndexes,
  "0010_catchup_writes_history_feed_runs": catchupWritesHistoryFeedRuns,
  "0011_group_summaries_covering_index": groupSummariesCoveringIndex,
  "0012_settled_intents_pruned": settledIntentsPruned
}

export const loader = Migrator.fromRecord(migrations)

/** Runs pending migrations; a no-op on a database that is up to date. */
export const run = Migrator.make({})({ loader, table: migrationsTable })
