/**
 * The message repository of `SqliteStorage` (`converge_messages`, and the deletions that arrived
 * before their messages, `converge_message_deletions`). A membership change's content is decoded
 * here, and must decode; a message stored published enters the history feed with it.
 */
import type { SqlClient } from "@effect/sql"
import { Effect, ParseResult, Schema } from "effect"
import { DeliveryStatus, MembershipChangeJson, MessageKind } from "../domain/Content.ts"
import { ConversationId, GroupId, InboxId, InstallationId, MessageId } from "../domain/Ids.ts"
import { StoredMessage } from "../domain/Stored.ts"
import type { MessageRepository } from "../services/Storage.ts"
import { Big, Bytes, column, decodeBig, Flag, Nullable } from "./SqliteColumns.ts"
import { atomically, publishedAmong, recordMessages } from "./SqliteHistoryFeed.ts"
import { decodeEach, type Quarantine } from "./SqliteQuarantine.ts"
import { chunksOf, first, type Run } from "./SqliteStatements.ts"

/**
 * A message row as SQLite holds it. Decoded under its column names and renamed in code below:
 * renaming in the schema checks every field twice (the renamed struct is checked again).
 */
export const MessageColumns = Schema.Struct({
  id: MessageId,
  group_id: GroupId,
  conversation_id: ConversationId,
  sender_inbox_id: InboxId,
  sender_installation_id: InstallationId,
  sent_at_ns: Big,
  sequence_id: Nullable(Big),
  kind: MessageKind,
  content: Schema.String,
  delivery_status: DeliveryStatus,
  inserted_at_ns: Big,
  group_context: Nullable(GroupId),
  content_type: Nullable(Schema.String),
  content_bytes: Nullable(Bytes),
  deleted: Flag,
  expires_at_ns: Nullable(Big)
})

const PendingDeletionRow = Schema.Struct({
  conversationId: column(ConversationId, "conversation_id"),
  deleterInboxId: column(InboxId, "deleter_inbox_id"),
  bySuperAdmin: column(Flag, "by_super_admin")
})
const TargetedDeletionRow = Schema.Struct({ targetId: column(MessageId, "target_id"), ...PendingDeletionRow.fields })

/**
 * The message decoded from its columns. Each field was checked by its column's schema, the same
 * schemas `StoredMessage` checks with (test/Storage.test.ts holds each column's type to its
 * field's, refinements included), so the value is not checked a second time: that pass cost as
 * much as the decode.
 */
const DecodedMessage = Schema.declare((u): u is StoredMessage => typeof u === "object" && u !== null, {
  identifier: "StoredMessage"
})

/** The columns renamed to the message's fields (`columnsOf` below is the way back). */
const fromColumns = (row: typeof MessageColumns.Type, membershipChange: StoredMessage["membershipChange"]): StoredMessage => ({
  id: row.id,
  groupId: row.group_id,
  conversationId: row.conversation_id,
  senderInboxId: row.sender_inbox_id,
  senderInstallationId: row.sender_installation_id,
  sentAtNs: row.sent_at_ns,
  sequenceId: row.sequence_id,
  kind: row.kind,
  content: row.content,
  membershipChange,
  deliveryStatus: row.delivery_status,
  insertedAtNs: row.inserted_at_ns,
  groupContext: row.group_context,
  contentType: row.content_type,
  contentBytes: row.content_bytes,
  deleted: row.deleted,
  expiresAtNs: row.expires_at_ns
})

/** A membership change's content is its transcript entry: decoded here, and must decode. */
const MessageRow = Schema.transformOrFail(MessageColumns, DecodedMessage, {
  strict: true,
  decode: (row, _, ast) =>
    row.kind !== "membershipChange"
      ? ParseResult.succeed(fromColumns(row, null))
      : Schema.decodeUnknown(MembershipChangeJson)(row.content).pipe(
        Effect.map((membershipChange) => fromColumns(row, membershipChange)),
        Effect.mapError((e) => new ParseResult.Type(ast, row.content, `membership change content: ${e.message}`))
      ),
  encode: (message) => ParseResult.succeed(columnsOf(message))
})

/** A message's fields renamed to its columns (`fromColumns` is the way back). */
const columnsOf = (m: StoredMessage): typeof MessageColumns.Type => ({
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
  deleted: m.deleted,
  expires_at_ns: m.expiresAtNs
})

/**
 * A message's columns as `MessageRow` encodes them, written out: a receive page inserts a row per
 * message, and the schema encoder (which validates the value again on the way) cost more than
 * SQLite's insert. The values are `StoredMessage`s, validated where they were made; the compiler
 * checks the shape against `MessageColumns`, test/Storage.test.ts every field's round trip.
 */
const messageColumns = (m: StoredMessage): typeof MessageColumns.Encoded => ({ ...columnsOf(m), deleted: m.deleted ? 1 : 0 })

/** The message decoder (`SqliteHistoryStorage` reads messages too) and the repository. */
export const make = (sql: SqlClient.SqlClient, run: Run, quarantine: Quarantine) => {
  const decodeMessages = decodeEach(MessageRow, "converge_messages", quarantine.messages)

  /** A deleted or expired message's text also leaves the intent that sent it. */
  const eraseIntentText = (ids: ReadonlyArray<string>) =>
    ids.length === 0 ? Effect.void : sql`UPDATE converge_intents
      SET data = json_remove(json_set(data, '$.text', ''), '$.content')
      WHERE kind = 'SendMessage' AND json_extract(data, '$.messageId') IN ${sql.in(ids)}`

  const messages: MessageRepository = {
    insert: (message) => {
      // Written out as `insertMany` writes a page's rows: every optimistic send stores one.
      const store = run.exec(sql`INSERT INTO converge_messages ${sql.insert(messageColumns(message) as never)}
        ON CONFLICT (id) DO NOTHING RETURNING id`).pipe(Effect.map((rows) => rows.length > 0))
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
            const inserted = yield* run.exec(sql<{ id: MessageId }>`INSERT INTO converge_messages
              ${sql.insert(chunk.map(messageColumns) as never)} ON CONFLICT (id) DO NOTHING RETURNING id`)
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
      // Integers only (the partial index still serves it): a damaged value would fail every sweep;
      // its row is set aside when read.
      sql<{ next: unknown }>`SELECT min(expires_at_ns) AS next FROM converge_messages
          WHERE expires_at_ns IS NOT NULL AND typeof(expires_at_ns) = 'integer'`.pipe(
        Effect.flatMap((rows) => rows[0]?.next == null ? Effect.succeedNone : Effect.asSome(decodeBig(rows[0].next)))
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
          run.exec(sql`UPDATE converge_messages SET delivery_status = 'published', sent_at_ns = v.column2, sequence_id = v.column3,
                expires_at_ns = v.column4
              FROM (VALUES ${sql.csv(chunk.map((r) => sql`(${r.id}, ${r.sentAtNs}, ${r.sequenceId}, ${r.expiresAtNs})`))}) AS v
              WHERE converge_messages.id = v.column1`), { discard: true })
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

  return { decodeMessages, messages }
}
