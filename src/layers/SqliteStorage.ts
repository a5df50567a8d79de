/**
 * `Storage` over `@effect/sql` (SQLite). Integers are read as safe integers (bigint): times
 * are nanoseconds. Rows are decoded here into the port's domain values, stored JSON included;
 * a row that does not decode is logged, quarantined (an intent fails, its group is flagged) and
 * skipped, so one bad row never stops a group. Every failure is a `StorageError` naming the
 * operation.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Config, type ConfigError, Context, Effect, Layer, Option, ParseResult, type Redacted, Schema } from "effect"
import { DeliveryStatus, MembershipChangeJson, MessageKind } from "../domain/Content.ts"
import { StorageError } from "../domain/Errors.ts"
import { ConversationId, GroupId, InboxId, InstallationId, MessageId } from "../domain/Ids.ts"
import { IntentDataJson, IntentKind, IntentState, PostCommitDataJson } from "../domain/Intent.ts"
import {
  ConversationKind,
  InboxLogEntry,
  MembershipState,
  StoredGroup,
  StoredIdentity,
  StoredIntent,
  StoredKeyPackage,
  StoredMessage
} from "../domain/Stored.ts"
import { IdentityUpdate } from "../domain/Wire.ts"
import { Storage } from "../services/Storage.ts"
import * as Migrations from "./Migrations.ts"
import { Big, Bytes, column, Flag, Int, Nullable } from "./SqliteColumns.ts"
import * as SqliteDurability from "./SqliteDurability.ts"
import { atomically, publishedAmong, recordMessages } from "./SqliteHistoryFeed.ts"
import * as SqliteHistoryStorage from "./SqliteHistoryStorage.ts"
import * as StorageKeys from "./StorageKey.ts"
import * as SqliteRosterStorage from "./SqliteRosterStorage.ts"
import { Sealed, SealedWith, sealFor, StorageKey } from "./StorageKey.ts"

// ---- rows: how the domain values sit in SQLite (private to this adapter) ----


/** Sealed columns: `Sealed` (effectful, for encoding), or `SealedWith` a known key (decoding). */
type SealedColumn = (column: string) => ReturnType<typeof Sealed> | ReturnType<typeof SealedWith>

const groupRowWith = <S extends SealedColumn>(sealed: S) => Schema.Struct({
  id: GroupId,
  kind: ConversationKind,
  dmId: column(Nullable(ConversationId), "dm_id"),
  membershipState: column(MembershipState, "membership_state"),
  epoch: Big,
  mlsState: column(sealed("mls_state") as ReturnType<S>, "mls_state"),
  maybeForked: column(Flag, "maybe_forked"),
  forkDetails: column(Nullable(Schema.String), "fork_details"),
  quarantine: Nullable(Schema.String),
  name: Nullable(Schema.String),
  description: Nullable(Schema.String),
  addedByInboxId: column(Nullable(InboxId), "added_by_inbox_id"),
  createdAtNs: column(Big, "created_at_ns"),
  lastMessageNs: column(Big, "last_message_ns")
})
const GroupRow = groupRowWith(Sealed)

/** A group row without its MLS state. */
const GroupSummaryRow = GroupRow.omit("mlsState")
const SUMMARY_COLUMNS = "id, kind, dm_id, membership_state, epoch, maybe_forked, fork_details, quarantine, name, " +
  "description, added_by_inbox_id, created_at_ns, last_message_ns"

const MessageColumns = Schema.Struct({
  id: MessageId,
  groupId: column(GroupId, "group_id"),
  conversationId: column(ConversationId, "conversation_id"),
  senderInboxId: column(InboxId, "sender_inbox_id"),
  senderInstallationId: column(InstallationId, "sender_installation_id"),
  sentAtNs: column(Big, "sent_at_ns"),
  sequenceId: column(Nullable(Big), "sequence_id"),
  kind: MessageKind,
  content: Schema.String,
  deliveryStatus: column(DeliveryStatus, "delivery_status"),
  insertedAtNs: column(Big, "inserted_at_ns"),
  groupContext: column(Nullable(GroupId), "group_context"),
  contentType: column(Nullable(Schema.String), "content_type"),
  contentBytes: column(Nullable(Bytes), "content_bytes"),
  deleted: Flag,
  expiresAtNs: column(Nullable(Big), "expires_at_ns")
})

const PendingDeletionRow = Schema.Struct({
  conversationId: column(ConversationId, "conversation_id"),
  deleterInboxId: column(InboxId, "deleter_inbox_id"),
  bySuperAdmin: column(Flag, "by_super_admin")
})
const TargetedDeletionRow = Schema.Struct({ targetId: column(MessageId, "target_id"), ...PendingDeletionRow.fields })

/** A membership change's content is its transcript entry: decoded here, and must decode. */
const MessageRow = Schema.transformOrFail(MessageColumns, Schema.typeSchema(StoredMessage), {
  strict: true,
  decode: (row, _, ast) =>
    row.kind !== "membershipChange"
      ? ParseResult.succeed({ ...row, membershipChange: null })
      : Schema.decodeUnknown(MembershipChangeJson)(row.content).pipe(
        Effect.map((membershipChange) => ({ ...row, membershipChange })),
        Effect.mapError((e) => new ParseResult.Type(ast, row.content, `membership change content: ${e.message}`))
      ),
  encode: ({ membershipChange: _, ...row }) => ParseResult.succeed(row)
})

/**
 * A message's columns, as `MessageRow` encodes them, written out: a receive page inserts a row per
 * message, and the schema encoder (which validates the value again on the way) cost more than
 * SQLite's insert. The values are `StoredMessage`s, validated where they were made; the compiler
 * checks the shape against `MessageColumns`, test/Storage.test.ts every field's round trip.
 */
const messageColumns = (m: StoredMessage): typeof MessageColumns.Encoded => ({
  id: m.id,
  group_id: m.groupId,
  conversation_id: m.conversationId,
  sender_inbox_id: m.senderInboxId,
  sender_installation_id: m.senderInstallationId,
  sent_at_ns: m.sentAtNs,
  sequence_id: m.sequenceId,
  kind: m.kind,
  content: m.content,
  delivery_status: m.deliveryStatus,
  inserted_at_ns: m.insertedAtNs,
  group_context: m.groupContext,
  content_type: m.contentType,
  content_bytes: m.contentBytes,
  deleted: m.deleted ? 1 : 0,
  expires_at_ns: m.expiresAtNs
})

const intentRowWith = <S extends SealedColumn>(sealed: S) => Schema.Struct({
  id: Int,
  groupId: column(GroupId, "group_id"),
  kind: IntentKind,
  data: IntentDataJson,
  state: IntentState,
  payloadHash: column(Nullable(Schema.String), "payload_hash"),
  payload: Nullable(Bytes),
  publishedEpoch: column(Nullable(Big), "published_epoch"),
  stagedState: column(Nullable(sealed("staged_state") as ReturnType<S>), "staged_state"),
  postCommit: column(Nullable(PostCommitDataJson), "post_commit_data"),
  sequenceId: column(Nullable(Big), "sequence_id"),
  attempts: Int,
  conflicts: Int,
  error: Nullable(Schema.String),
  createdAtNs: column(Big, "created_at_ns")
})
const IntentRow = intentRowWith(Sealed)
/** An intent's id and state alone: how far it got, without decoding its data. */
const IntentStateRow = Schema.Struct({ id: Int, state: IntentState })
/** Built once: a schema made per call builds its encoder anew each time (every published intent). */
const encodePostCommit = Schema.encode(Schema.NullOr(PostCommitDataJson))
/** Built once: every queued intent is encoded with it. */
const encodeIntentData = Schema.encode(IntentDataJson)

const IdentityRow = Schema.Struct({
  inboxId: column(InboxId, "inbox_id"),
  installationId: column(InstallationId, "installation_id"),
  rootSecretKey: column(Nullable(Sealed("root_secret_key")), "root_secret_key"),
  signaturePrivateKey: column(Sealed("signature_private_key"), "signature_private_key"),
  signaturePublicKey: column(Bytes, "signature_public_key"),
  registered: Flag,
  createdAtNs: column(Big, "created_at_ns")
})

const keyPackageRowWith = <S extends SealedColumn>(sealed: S) => Schema.Struct({
  ref: Schema.String,
  publicPackage: column(Bytes, "public_package"),
  privatePackage: column(sealed("private_package") as ReturnType<S>, "private_package"),
  createdAtNs: column(Big, "created_at_ns")
})
const KeyPackageRow = keyPackageRowWith(Sealed)

const InboxLogRow = Schema.Struct({
  inboxId: column(InboxId, "inbox_id"),
  sequence: Int,
  update: column(Schema.parseJson(IdentityUpdate), "update_json")
})

// The rows decode to exactly the port's values (checked by the compiler).
void ([true, true, true, true, true, true] satisfies [
  typeof GroupRow.Type extends StoredGroup ? true : false,
  typeof MessageRow.Type extends StoredMessage ? true : false,
  typeof IntentRow.Type extends StoredIntent ? true : false,
  typeof IdentityRow.Type extends StoredIdentity ? true : false,
  typeof KeyPackageRow.Type extends StoredKeyPackage ? true : false,
  typeof InboxLogRow.Type extends InboxLogEntry ? true : false
])

const toStorageError = (operation: string) => (error: SqlError | ParseResult.ParseError | { readonly message: string }) =>
  new StorageError({ operation, detail: error.message })

/** Consecutive slices of at most `size` (one statement each). */
const chunksOf = <A>(items: ReadonlyArray<A>, size: number): Array<ReadonlyArray<A>> =>
  Array.from({ length: Math.ceil(items.length / size) }, (_, i) => items.slice(i * size, (i + 1) * size))

/** A stored row as SQLite returns it, before decoding. */
type RawRow = { readonly [column: string]: unknown }

/** The storage; with a key, the secrets in it are sealed at rest (see `StorageKey`). */
export const makeWith = (key: StorageKey["Type"], options: SqliteStorageOptions = {}) => Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  // When commits reach the disk: before anything that depends on them leaves (SqliteDurability).
  const durability = yield* SqliteDurability.make(sql, options.durability ?? "publish")
  yield* Migrations.run.pipe(Effect.mapError(toStorageError("migrate")))
  // Deleted and expired messages are overwritten on disk, not only unlinked (SQLite only).
  yield* sql`PRAGMA secure_delete = ON`.pipe(Effect.ignore)

  /**
   * Runs a statement with safe integers, mapping errors to `StorageError`. No span: these are
   * the hot paths of every sync, traced by the engine step that calls them.
   */
  const runContext = Context.make(SqlClient.SafeIntegers, true).pipe(Context.add(StorageKey, key))
  const run = <A>(operation: string, effect: Effect.Effect<A, SqlError | ParseResult.ParseError, StorageKey>) =>
    effect.pipe(
      // Both services in one context change: every statement pays for it.
      Effect.provide(runContext),
      Effect.mapError(toStorageError(operation))
    )

  /** Flags a group: some of its stored rows were set aside. */
  const flagGroup = (groupId: unknown, why: string) =>
    typeof groupId === "string" ? sql`UPDATE converge_groups SET quarantine = ${why} WHERE id = ${groupId}` : Effect.void

  /** What to do with a row that does not decode, per table (besides logging and skipping it). */
  const quarantine = {
    groups: (row: RawRow, why: string) => flagGroup(row.id, `group row: ${why}`),
    messages: (row: RawRow, why: string) => flagGroup(row.group_id, `message ${String(row.id)}: ${why}`),
    intents: (row: RawRow, why: string) =>
      Effect.gen(function*() {
        // Nothing can be derived from an intent we cannot read: it fails, and its message with it.
        yield* sql`UPDATE converge_intents SET state = 'Error', error = ${`stored intent does not decode: ${why}`},
                   staged_state = NULL WHERE id = ${row.id as bigint} AND state NOT IN ('Processed', 'Error')`
        yield* sql`UPDATE converge_messages SET delivery_status = 'failed'
                   WHERE delivery_status = 'unpublished' AND id = ${messageIdIn(row.data)}`
        yield* flagGroup(row.group_id, `intent ${String(row.id)}: ${why}`)
      }),
    none: () => Effect.void
  }

  /**
   * Decodes each row; one that does not decode is logged, quarantined and left out. The decoder
   * is built once and runs synchronously (sealed columns open with the key given here).
   */
  const decodeEach = <A, I>(
    schema: Schema.Schema<A, I, never>,
    table: string,
    onBadRow: (row: RawRow, why: string) => Effect.Effect<unknown, SqlError>
  ) => {
    const decode = Schema.decodeUnknownEither(schema)
    return (rows: ReadonlyArray<unknown>): Effect.Effect<Array<A>, SqlError> => {
      const decoded: Array<A> = []
      let bad: Array<{ readonly row: RawRow; readonly why: string }> | undefined
      for (const row of rows) {
        const result = decode(row)
        if (result._tag === "Right") decoded.push(result.right)
        else (bad ??= []).push({ row: row as RawRow, why: result.left.message })
      }
      if (bad === undefined) return Effect.succeed(decoded)
      return Effect.as(
        Effect.forEach(bad, ({ row, why }) =>
          Effect.logWarning("stored row does not decode: quarantined and skipped", why).pipe(
            Effect.annotateLogs({ table, rowId: String(row.id ?? row.ref ?? "?") }),
            Effect.zipRight(onBadRow(row, why))
          ), { discard: true }),
        decoded
      )
    }
  }
  const first = <A>(rows: ReadonlyArray<A>) => Option.fromNullable(rows[0])

  const sealedWithKey = (column: string) => SealedWith(key, column)
  const decodeGroups = decodeEach(groupRowWith(sealedWithKey), "converge_groups", quarantine.groups)
  const decodeSummariesEach = decodeEach(GroupSummaryRow, "converge_groups", quarantine.groups)
  const decodeSummariesAll = Schema.decodeUnknown(Schema.Array(GroupSummaryRow))
  /** All rows in one decode (a client in a thousand groups lists them all); row by row only if one is bad. */
  const decodeSummaries = (rows: ReadonlyArray<unknown>) =>
    decodeSummariesAll(rows).pipe(Effect.catchAll(() => decodeSummariesEach(rows)))
  const decodeMessages = decodeEach(MessageRow, "converge_messages", quarantine.messages)
  const decodeIntents = decodeEach(intentRowWith(sealedWithKey), "converge_intents", quarantine.intents)
  // Only id and state are read here: a bad state is logged and skipped, and quarantined when the
  // whole row is read (resolving an intent reads it), where its message and group are known.
  const decodeIntentStates = decodeEach(IntentStateRow, "converge_intents", quarantine.none)

  const groups: Storage["Type"]["groups"] = {
    insert: (group) =>
      run(
        "groups.insert",
        Schema.encode(GroupRow)(group).pipe(
          Effect.flatMap((row) => sql`INSERT INTO converge_groups ${sql.insert(row as never)}`)
        )
      ),
    get: (id) =>
      run(
        "groups.get",
        sql`SELECT * FROM converge_groups WHERE id = ${id}`.pipe(Effect.flatMap(decodeGroups), Effect.map(first))
      ),
    getForSend: (id, topic, states) =>
      run(
        "groups.getForSend",
        sql<RawRow>`SELECT g.*,
              (SELECT sequence_id FROM converge_cursors WHERE topic = ${topic}) AS converge_cursor,
              EXISTS (SELECT 1 FROM converge_intents WHERE group_id = g.id AND state IN ${
          sql.in(states as Array<IntentState>)
        }) AS converge_pending
            FROM converge_groups g WHERE g.id = ${id}`.pipe(
          Effect.flatMap((rows) =>
            // The row decodes as `get`'s (its extra columns ignored); one that does not is quarantined there.
            Effect.map(decodeGroups(rows), (decoded) =>
              Option.map(first(decoded), (group) => ({
                group,
                cursor: rows[0]!.converge_cursor == null ? 0n : BigInt(rows[0]!.converge_cursor as bigint),
                pending: Number(rows[0]!.converge_pending) !== 0
              })))
          )
        )
      ),
    list: ({ includeInactive }) =>
      run(
        "groups.list",
        (includeInactive
          ? sql`SELECT * FROM converge_groups ORDER BY last_message_ns DESC, id`
          : sql`SELECT * FROM converge_groups WHERE membership_state != 'inactive'
                ORDER BY last_message_ns DESC, id`).pipe(Effect.flatMap(decodeGroups))
      ),
    summaries: ({ includeInactive }) =>
      run(
        "groups.summaries",
        (includeInactive
          ? sql`SELECT ${sql.literal(SUMMARY_COLUMNS)} FROM converge_groups ORDER BY last_message_ns DESC, id`
          : sql`SELECT ${sql.literal(SUMMARY_COLUMNS)} FROM converge_groups WHERE membership_state != 'inactive'
                ORDER BY last_message_ns DESC, id`).pipe(Effect.flatMap(decodeSummaries))
      ),
    summary: (id) =>
      run(
        "groups.summary",
        sql`SELECT ${sql.literal(SUMMARY_COLUMNS)} FROM converge_groups WHERE id = ${id}`.pipe(
          Effect.flatMap(decodeSummariesEach),
          Effect.map(first)
        )
      ),
    byDmId: (dmId) =>
      run(
        "groups.byDmId",
        sql`SELECT * FROM converge_groups WHERE dm_id = ${dmId} ORDER BY last_message_ns DESC, id`.pipe(
          Effect.flatMap(decodeGroups)
        )
      ),
    saveState: (id, { epoch, mlsState }) =>
      run(
        "groups.saveState",
        Effect.flatMap(
          sealFor("mls_state")(mlsState),
          (sealed) => sql`UPDATE converge_groups SET epoch = ${epoch}, mls_state = ${sealed} WHERE id = ${id}`
        )
      ),
    setMembership: (id, state) =>
      run("groups.setMembership", sql`UPDATE converge_groups SET membership_state = ${state} WHERE id = ${id}`),
    markForked: (id, details) =>
      run(
        "groups.markForked",
        sql`UPDATE converge_groups SET maybe_forked = 1, fork_details = ${details} WHERE id = ${id}`
      ),
    clearForked: (id) =>
      run(
        "groups.clearForked",
        sql`UPDATE converge_groups SET maybe_forked = 0, fork_details = NULL WHERE id = ${id} AND maybe_forked = 1`
      ),
    touch: (id, atNs) =>
      run(
        "groups.touch",
        sql`UPDATE converge_groups SET last_message_ns = ${atNs} WHERE id = ${id} AND last_message_ns < ${atNs}`
      )
  }

  /** A deleted or expired message's text also leaves the intent that sent it. */
  const eraseIntentText = (ids: ReadonlyArray<string>) =>
    ids.length === 0 ? Effect.void : sql`UPDATE converge_intents
      SET data = json_remove(json_set(data, '$.text', ''), '$.content')
      WHERE kind = 'SendMessage' AND json_extract(data, '$.messageId') IN ${sql.in(ids)}`

  const messages: Storage["Type"]["messages"] = {
    insert: (message) => {
      // Written out as `insertMany` writes a page's rows: every optimistic send stores one.
      const store = sql`INSERT INTO converge_messages ${sql.insert(messageColumns(message) as never)}
        ON CONFLICT (id) DO NOTHING RETURNING id`.pipe(Effect.map((rows) => rows.length > 0))
      return run(
        "messages.insert",
        // A published one with its feed entry, atomically.
        message.deliveryStatus !== "published"
          ? store
          : atomically(sql, Effect.tap(store, (stored) => stored ? recordMessages(sql, [message.id]) : Effect.void))
      )
    },
    insertMany: (messages) =>
      run(
        "messages.insertMany",
        // The rows and their feed runs together, even for a caller without a transaction.
        messages.length === 0 ? Effect.succeed([]) : atomically(sql, Effect.gen(function*() {
          const stored: Array<MessageId> = []
          for (let i = 0; i < messages.length; i += 100) {
            const chunk = messages.slice(i, i + 100)
            const inserted = yield* sql<{ id: MessageId }>`INSERT INTO converge_messages
              ${sql.insert(chunk.map(messageColumns) as never)} ON CONFLICT (id) DO NOTHING RETURNING id`
            stored.push(...inserted.map((row) => row.id))
            yield* recordMessages(sql, publishedAmong(chunk, inserted))
          }
          return stored
        }))
      ),
    get: (id) =>
      run(
        "messages.get",
        sql`SELECT * FROM converge_messages WHERE id = ${id}`.pipe(Effect.flatMap(decodeMessages), Effect.map(first))
      ),
    markPublished: (id, { expiresAtNs = null, sentAtNs, sequenceId }) =>
      run(
        "messages.markPublished",
        sql`UPDATE converge_messages SET delivery_status = 'published', sent_at_ns = ${sentAtNs},
            sequence_id = ${sequenceId}, expires_at_ns = ${expiresAtNs} WHERE id = ${id}`
      ),
    erase: (id) =>
      run(
        "messages.erase",
        Effect.gen(function*() {
          yield* sql`UPDATE converge_messages SET deleted = 1, content = '', content_type = NULL, content_bytes = NULL
                     WHERE id = ${id}`
          yield* eraseIntentText([id])
        })
      ),
    expire: (now) =>
      run(
        "messages.expire",
        Effect.gen(function*() {
          const gone = yield* sql<{ id: string }>`DELETE FROM converge_messages WHERE expires_at_ns <= ${now} RETURNING id`
          yield* eraseIntentText(gone.map((r) => r.id))
          return gone.length
        })
      ),
    nextExpiry: run(
      "messages.nextExpiry",
      sql<{ next: bigint | number | null }>`SELECT min(expires_at_ns) AS next FROM converge_messages
          WHERE expires_at_ns IS NOT NULL`.pipe(
        Effect.map((rows) => Option.map(Option.fromNullable(rows[0]?.next), BigInt))
      )
    ),
    directMessages: (groupId, { direction = "asc", limit }) =>
      run(
        "messages.directMessages",
        sql`SELECT * FROM converge_messages WHERE group_context = ${groupId}
            ORDER BY sent_at_ns ${direction === "asc" ? sql`ASC` : sql`DESC`},
                     coalesce(sequence_id, 9223372036854775807) ${direction === "asc" ? sql`ASC` : sql`DESC`},
                     id ${direction === "asc" ? sql`ASC` : sql`DESC`}
            ${limit === undefined ? sql`` : sql`LIMIT ${limit}`}`.pipe(Effect.flatMap(decodeMessages))
      ),
    rememberDeletion: (targetId, pending) =>
      run(
        "messages.rememberDeletion",
        Schema.encode(PendingDeletionRow)(pending).pipe(
          Effect.flatMap((row) =>
            sql`INSERT INTO converge_message_deletions ${sql.insert({ target_id: targetId, ...row } as never)}
                ON CONFLICT (target_id) DO NOTHING`
          )
        )
      ),
    takeDeletion: (targetId) =>
      run(
        "messages.takeDeletion",
        sql`DELETE FROM converge_message_deletions WHERE target_id = ${targetId} RETURNING *`.pipe(
          Effect.flatMap(decodeEach(PendingDeletionRow, "converge_message_deletions", quarantine.none)),
          Effect.map(first)
        )
      ),
    takeDeletions: (targetIds) =>
      run(
        "messages.takeDeletions",
        Effect.forEach(chunksOf(targetIds, 100), (chunk) =>
          sql`DELETE FROM converge_message_deletions WHERE target_id IN ${sql.in(chunk)} RETURNING *`.pipe(
            Effect.flatMap(decodeEach(TargetedDeletionRow, "converge_message_deletions", quarantine.none))
          )).pipe(Effect.map((chunks) => new Map(chunks.flat().map((d) => [d.targetId, d] as const))))
      ),
    markPublishedMany: (rows) =>
      run(
        "messages.markPublishedMany",
        Effect.forEach(chunksOf(rows, 100), (chunk) =>
          sql`UPDATE converge_messages SET delivery_status = 'published', sent_at_ns = v.column2, sequence_id = v.column3,
                expires_at_ns = v.column4
              FROM (VALUES ${sql.csv(chunk.map((r) => sql`(${r.id}, ${r.sentAtNs}, ${r.sequenceId}, ${r.expiresAtNs})`))}) AS v
              WHERE converge_messages.id = v.column1`, { discard: true })
      ),
    markFailed: (id) =>
      run(
        "messages.markFailed",
        sql`UPDATE converge_messages SET delivery_status = 'failed' WHERE id = ${id} AND delivery_status = 'unpublished'`
      ),
    byConversation: (id, { afterNs, direction = "asc", limit }) =>
      run(
        "messages.byConversation",
        sql`SELECT * FROM converge_messages WHERE conversation_id = ${id}
            ${afterNs === undefined ? sql`` : sql`AND sent_at_ns > ${afterNs}`}
            ORDER BY sent_at_ns ${direction === "asc" ? sql`ASC` : sql`DESC`},
                     coalesce(sequence_id, 9223372036854775807) ${direction === "asc" ? sql`ASC` : sql`DESC`},
                     id ${direction === "asc" ? sql`ASC` : sql`DESC`}
            ${limit === undefined ? sql`` : sql`LIMIT ${limit}`}`.pipe(Effect.flatMap(decodeMessages))
      ),
    membershipChanges: (id) =>
      run(
        "messages.membershipChanges",
        sql`SELECT * FROM converge_messages WHERE conversation_id = ${id} AND kind = 'membershipChange'
            ORDER BY sent_at_ns`.pipe(Effect.flatMap(decodeMessages))
      )
  }

  const inStates = (states: ReadonlyArray<IntentState>) => sql.in(states as Array<IntentState>)

  const intents: Storage["Type"]["intents"] = {
    insert: ({ createdAtNs, data, groupId }) =>
      run(
        "intents.insert",
        encodeIntentData(data).pipe(
          Effect.flatMap((json) =>
            sql<{ id: bigint }>`INSERT INTO converge_intents (group_id, kind, data, state, created_at_ns)
                VALUES (${groupId}, ${data._tag}, ${json}, 'ToPublish', ${createdAtNs}) RETURNING id`
          ),
          Effect.map((rows) => Number(rows[0]!.id))
        )
      ),
    insertPublished: ({ createdAtNs, data, groupId }, p) =>
      run(
        "intents.insertPublished",
        encodeIntentData(data).pipe(
          Effect.flatMap((json) =>
            sql<{ id: bigint }>`INSERT INTO converge_intents
                (group_id, kind, data, state, created_at_ns, payload_hash, payload, published_epoch, attempts)
                VALUES (${groupId}, ${data._tag}, ${json}, 'Published', ${createdAtNs}, ${p.payloadHash}, ${p.payload},
                        ${p.publishedEpoch}, 1) RETURNING id`
          ),
          Effect.map((rows) => Number(rows[0]!.id))
        )
      ),
    get: (id) =>
      run(
        "intents.get",
        sql`SELECT * FROM converge_intents WHERE id = ${id}`.pipe(Effect.flatMap(decodeIntents), Effect.map(first))
      ),
    getMany: (ids) =>
      run(
        "intents.getMany",
        Effect.gen(function*() {
          const found: Array<StoredIntent> = []
          for (let i = 0; i < ids.length; i += 100) {
            const rows = yield* sql`SELECT * FROM converge_intents WHERE ${sql.in("id", ids.slice(i, i + 100))}`
            found.push(...(yield* decodeIntents(rows)))
          }
          return found
        })
      ),
    byGroup: (groupId, states, kinds) =>
      run(
        "intents.byGroup",
        (kinds === undefined
          ? sql`SELECT * FROM converge_intents WHERE group_id = ${groupId} AND state IN ${inStates(states)} ORDER BY id`
          : sql`SELECT * FROM converge_intents WHERE group_id = ${groupId} AND state IN ${inStates(states)}
                AND kind IN ${sql.in(kinds as Array<IntentKind>)} ORDER BY id`).pipe(Effect.flatMap(decodeIntents))
      ),
    idsByGroup: (groupId, states) =>
      run(
        "intents.idsByGroup",
        sql<{ id: bigint | number }>`SELECT id FROM converge_intents WHERE group_id = ${groupId} AND state IN ${inStates(states)}
            ORDER BY id`.pipe(Effect.map((rows) => rows.map((row) => Number(row.id))))
      ),
    statesOf: (ids) =>
      run(
        "intents.statesOf",
        Effect.gen(function*() {
          const states = new Map<number, IntentState>()
          for (const chunk of chunksOf(ids, 100)) {
            const rows = yield* sql`SELECT id, state FROM converge_intents WHERE ${sql.in("id", chunk)}`
            for (const row of yield* decodeIntentStates(rows)) states.set(row.id, row.state)
          }
          return states
        })
      ),
    byState: (states) =>
      run(
        "intents.byState",
        sql`SELECT * FROM converge_intents WHERE state IN ${inStates(states)} ORDER BY id`.pipe(
          Effect.flatMap(decodeIntents)
        )
      ),
    byPayloadHash: (hash) =>
      run(
        "intents.byPayloadHash",
        sql`SELECT * FROM converge_intents WHERE payload_hash = ${hash}`.pipe(
          Effect.flatMap(decodeIntents),
          Effect.map(first)
        )
      ),
    byPayloadHashes: (hashes) =>
      run(
        "intents.byPayloadHashes",
        Effect.gen(function*() {
          const found: Array<StoredIntent> = []
          // Chunked far below SQLite's parameter limit; a page is 100 envelopes by default.
          for (let i = 0; i < hashes.length; i += 500) {
            const rows = yield* sql`SELECT * FROM converge_intents WHERE ${sql.in("payload_hash", hashes.slice(i, i + 500))}`
            found.push(...(yield* decodeIntents(rows)))
          }
          return found
        })
      ),
    markPublished: (id, p) =>
      run(
        "intents.markPublished",
        Effect.all([
          encodePostCommit(p.postCommit),
          p.stagedState === null ? Effect.succeed(null) : sealFor("staged_state")(p.stagedState)
        ]).pipe(
          Effect.flatMap(([postCommit, stagedState]) =>
            sql`UPDATE converge_intents SET state = 'Published', payload_hash = ${p.payloadHash},
                payload = ${p.payload}, published_epoch = ${p.publishedEpoch}, staged_state = ${stagedState},
                post_commit_data = ${postCommit}, attempts = attempts + 1
                WHERE id = ${id} AND state = 'ToPublish'`
          )
        )
      ),
    markPublishedMany: (rows) =>
      run(
        "intents.markPublishedMany",
        Effect.forEach(chunksOf(rows, 100), (chunk) =>
          sql`UPDATE converge_intents SET state = 'Published', payload_hash = v.column2, payload = v.column3,
                published_epoch = v.column4, staged_state = NULL, post_commit_data = NULL, attempts = attempts + 1
              FROM (VALUES ${sql.csv(chunk.map((r) => sql`(${r.id}, ${r.payloadHash}, ${r.payload}, ${r.publishedEpoch})`))}) AS v
              WHERE converge_intents.id = v.column1 AND state = 'ToPublish'`, { discard: true })
      ),
    resetToPublish: (id, { conflict }) =>
      run(
        "intents.resetToPublish",
        sql`UPDATE converge_intents SET state = 'ToPublish', payload_hash = NULL, payload = NULL,
            published_epoch = NULL, staged_state = NULL, post_commit_data = NULL,
            conflicts = conflicts + ${conflict ? 1 : 0}
            WHERE id = ${id} AND state = 'Published'`
      ),
    markCommitted: (id, sequenceId) =>
      run(
        "intents.markCommitted",
        // The staged state has been adopted; keep the post-commit data until the welcomes are out.
        sql`UPDATE converge_intents SET state = 'Committed', sequence_id = ${sequenceId}, staged_state = NULL
            WHERE id = ${id} AND state = 'Published'`
      ),
    markProcessed: (id) =>
      run(
        "intents.markProcessed",
        sql`UPDATE converge_intents SET state = 'Processed', staged_state = NULL, payload = NULL,
            post_commit_data = NULL WHERE id = ${id} AND state IN ('ToPublish', 'Published', 'Committed')`
      ),
    markDelivered: (rows) =>
      run(
        "intents.markDelivered",
        // markCommitted (only from Published: it records the sequence id) and markProcessed in one.
        Effect.forEach(chunksOf(rows, 100), (chunk) =>
          sql`UPDATE converge_intents SET
                sequence_id = CASE WHEN state = 'Published' THEN v.column2 ELSE sequence_id END,
                state = 'Processed', staged_state = NULL, payload = NULL, post_commit_data = NULL
              FROM (VALUES ${sql.csv(chunk.map((r) => sql`(${r.id}, ${r.sequenceId})`))}) AS v
              WHERE converge_intents.id = v.column1 AND state IN ('ToPublish', 'Published', 'Committed')`, { discard: true })
      ),
    markError: (id, error) =>
      run(
        "intents.markError",
        sql`UPDATE converge_intents SET state = 'Error', error = ${error}, staged_state = NULL
            WHERE id = ${id} AND state IN ('ToPublish', 'Published', 'Committed')`
      ),
    countAttempt: (id) =>
      run("intents.countAttempt", sql`UPDATE converge_intents SET attempts = attempts + 1 WHERE id = ${id}`)
  }

  const cursors: Storage["Type"]["cursors"] = {
    get: (topic) =>
      run(
        "cursors.get",
        sql<{ sequence_id: bigint }>`SELECT sequence_id FROM converge_cursors WHERE topic = ${topic}`.pipe(
          Effect.map((rows) => (rows[0] === undefined ? 0n : BigInt(rows[0].sequence_id)))
        )
      ),
    getMany: (topics) =>
      run(
        "cursors.getMany",
        Effect.gen(function*() {
          const found = new Map<string, bigint>(topics.map((topic) => [topic, 0n]))
          for (let i = 0; i < topics.length; i += 500) {
            const rows = yield* sql<{ topic: string; sequence_id: bigint }>`
              SELECT topic, sequence_id FROM converge_cursors WHERE ${sql.in("topic", topics.slice(i, i + 500))}`
            for (const row of rows) found.set(row.topic, BigInt(row.sequence_id))
          }
          return found as ReadonlyMap<string, bigint>
        })
      ),
    advance: (topic, sequenceId) =>
      run(
        "cursors.advance",
        sql`INSERT INTO converge_cursors (topic, sequence_id) VALUES (${topic}, ${sequenceId})
            ON CONFLICT (topic) DO UPDATE SET sequence_id = excluded.sequence_id
            WHERE excluded.sequence_id > converge_cursors.sequence_id`
      ),
    set: (topic, sequenceId) =>
      run(
        "cursors.set",
        sql`INSERT INTO converge_cursors (topic, sequence_id) VALUES (${topic}, ${sequenceId})
            ON CONFLICT (topic) DO UPDATE SET sequence_id = excluded.sequence_id`
      )
  }

  const identity: Storage["Type"]["identity"] = {
    // No quarantine: without its identity the installation cannot run; the error says why.
    get: run(
      "identity.get",
      sql`SELECT * FROM converge_identity WHERE singleton = 1`.pipe(
        Effect.flatMap(Schema.decodeUnknown(Schema.Array(IdentityRow))),
        Effect.map(first)
      )
    ),
    insert: (stored) =>
      run(
        "identity.insert",
        Schema.encode(IdentityRow)(stored).pipe(
          Effect.flatMap((row) => sql`INSERT INTO converge_identity ${sql.insert({ singleton: 1, ...row } as never)}`)
        )
      ),
    markRegistered: run("identity.markRegistered", sql`UPDATE converge_identity SET registered = 1 WHERE singleton = 1`)
  }

  const keyPackages: Storage["Type"]["keyPackages"] = {
    insert: (keyPackage) =>
      run(
        "keyPackages.insert",
        Schema.encode(KeyPackageRow)(keyPackage).pipe(
          Effect.flatMap((row) =>
            sql`INSERT INTO converge_key_packages ${sql.insert(row as never)} ON CONFLICT (ref) DO NOTHING`
          )
        )
      ),
    list: run(
      "keyPackages.list",
      sql`SELECT * FROM converge_key_packages ORDER BY created_at_ns DESC, rowid DESC`.pipe(
        Effect.flatMap(decodeEach(keyPackageRowWith(sealedWithKey), "converge_key_packages", quarantine.none))
      )
    ),
    remove: (ref) => run("keyPackages.remove", sql`DELETE FROM converge_key_packages WHERE ref = ${ref}`)
  }

  const inboxLogs: Storage["Type"]["inboxLogs"] = {
    entries: (inboxId) =>
      run(
        "inboxLogs.entries",
        // A skipped entry breaks the chain: the log is then replayed from the network.
        sql`SELECT * FROM converge_inbox_log WHERE inbox_id = ${inboxId} ORDER BY sequence`.pipe(
          Effect.flatMap(decodeEach(InboxLogRow, "converge_inbox_log", quarantine.none))
        )
      ),
    append: (entries) =>
      entries.length === 0
        ? Effect.void
        : run(
          "inboxLogs.append",
          Schema.encode(Schema.Array(InboxLogRow))(entries).pipe(
            Effect.flatMap((rows) =>
              sql`INSERT INTO converge_inbox_log ${sql.insert(rows as never)}
                  ON CONFLICT (inbox_id, sequence) DO NOTHING`
            )
          )
        )
  }

  const transaction = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    sql.withTransaction(effect).pipe(
      Effect.catchIf(
        (e): e is SqlError => (e as { _tag?: string })._tag === "SqlError",
        (e) => Effect.fail(toStorageError("transaction")(e))
      )
    ) as Effect.Effect<A, E | StorageError, R>

  const { consent, ensureFeedTriggers, history } = SqliteHistoryStorage.make(sql, run, decodeGroups, decodeMessages)
  yield* ensureFeedTriggers

  const rosters = SqliteRosterStorage.make(sql, run)
  // What opening wrote (migrations) survives a power loss before anything is sent.
  yield* durability.flush

  return Storage.of({
    groups,
    messages,
    intents,
    cursors,
    identity,
    keyPackages,
    inboxLogs,
    consent,
    history,
    rosters,
    transaction,
    flush: durability.flush,
    unflushedWrites: durability.unflushedWrites
  })
})

/** The message an unreadable intent was sending, if its (maybe truncated) JSON still names one. */
const messageIdIn = (data: unknown): string | null =>
  typeof data === "string" ? (/"messageId"\s*:\s*"([0-9a-f]{64})"/.exec(data)?.[1] ?? null) : null

/** How the SQLite storage is opened. */
export interface SqliteStorageOptions {
  /**
   * When commits reach the disk (see `SqliteDurability`). Default `"publish"`: before anything
   * that depends on them leaves the device. `"commit"`: before each commit returns.
   */
  readonly durability?: SqliteDurability.Durability
}

const durabilityConfig = Config.literal("publish", "commit")("CONVERGE_DURABILITY").pipe(Config.withDefault("publish" as const))

/** The storage without a key: secrets are stored as they are. */
export const make = makeWith(StorageKey.none)

/** SQLite (or any `SqlClient`): runs the migrations, then serves the repositories. No storage key. */
export const layer: Layer.Layer<Storage, StorageError, SqlClient.SqlClient> = Layer.scoped(Storage, make)

/** The same, with the secrets sealed at rest under `key` (32 bytes; see `StorageKey`). */
export const layerWithKey = (
  key: Redacted.Redacted<Uint8Array>
): Layer.Layer<Storage, StorageError, SqlClient.SqlClient> => Layer.scoped(Storage, makeWith(Option.some(key)))

/** With options: a storage key to seal secrets under, and when commits reach the disk. */
export const layerWith = (
  options: SqliteStorageOptions & { readonly key?: Redacted.Redacted<Uint8Array> }
): Layer.Layer<Storage, StorageError, SqlClient.SqlClient> =>
  Layer.scoped(Storage, makeWith(Option.fromNullable(options.key), options))

/**
 * The key from `CONVERGE_STORAGE_KEY` (64 hex characters) if it is set, else none; the
 * durability from `CONVERGE_DURABILITY` (`publish` or `commit`), else `publish`.
 */
export const layerConfig: Layer.Layer<Storage, StorageError | ConfigError.ConfigError, SqlClient.SqlClient> = Layer
  .scoped(
    Storage,
    Effect.flatMap(
      Effect.all([StorageKeys.fromConfig, durabilityConfig]),
      ([key, durability]) => makeWith(key, { durability })
    )
  )
