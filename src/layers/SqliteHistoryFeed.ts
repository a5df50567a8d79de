/**
 * The history feed's message runs (migration `0010_catchup_writes_history_feed_runs`). The feed
 * gives every entry its own sequence number, and answers page through it by those numbers. A
 * statement that stores many published messages (a received page) records them as ONE row: their
 * ids packed in `ids` (32 bytes each, in the order they were given), the row's `seq` being the
 * last of the run's numbers and the `n - 1` before it reserved. A trigger row per message cost a
 * page of 100 a trigger run and an 80-byte row each (4 WAL pages); a run is one row (2). Rows
 * from before the migration (`ref` = one message id, `ids` NULL) are runs of one, so stored
 * cursors stay valid.
 */
import { SqlClient } from "@effect/sql"
import { Effect, Schema } from "effect"
import { fromHex, toHex } from "../domain/Bytes.ts"
import type { MessageId } from "../domain/Ids.ts"
import { failedCommitAsError } from "./FailedCommit.ts"
import { Bytes, Int, Nullable } from "./SqliteColumns.ts"

/** Bytes of one packed message id (64 hex characters). */
const ID_BYTES = 32

/** A feed row as stored. */
export const FeedRow = Schema.Struct({
  seq: Int,
  kind: Schema.Literal("group", "message"),
  ref: Schema.String,
  ids: Nullable(Bytes)
}).pipe(Schema.filter((row) => row.ids === null || (row.ids.length > 0 && row.ids.length % ID_BYTES === 0), {
  message: () => "a run holds whole message ids"
}))
export type FeedRow = typeof FeedRow.Type

/** One entry of the feed: a group id or a message id, at its own sequence number. */
export interface FeedItem {
  readonly seq: number
  readonly kind: "group" | "message"
  readonly ref: string
}

/**
 * Records published messages just stored by one statement, in the given order, as one run (none
 * for an empty list). Its numbers follow the highest ever handed out (`sqlite_sequence` keeps
 * that for the AUTOINCREMENT key), so group rows added by trigger afterwards come after it.
 */
export const recordMessages = (sql: SqlClient.SqlClient, ids: ReadonlyArray<MessageId>) => {
  if (ids.length === 0) return Effect.void
  const packed = new Uint8Array(ids.length * ID_BYTES)
  ids.forEach((id, i) => packed.set(fromHex(id), i * ID_BYTES))
  return sql`INSERT INTO converge_history_feed (seq, kind, ref, ids) VALUES (
      max(coalesce((SELECT max(seq) FROM converge_history_feed), 0),
          coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'converge_history_feed'), 0)) + ${ids.length},
      'message', '', ${packed})`.pipe(Effect.asVoid)
}

/** The ids a message row holds: its run, or the one id of a row from before runs. */
const messageIds = (row: FeedRow): ReadonlyArray<string> => {
  if (row.ids === null) return [row.ref]
  const ids: Array<string> = []
  for (let at = 0; at + ID_BYTES <= row.ids.length; at += ID_BYTES) ids.push(toHex(row.ids.subarray(at, at + ID_BYTES)))
  return ids
}

/**
 * The entries of rows read in `seq` order, after `afterSeq`, at most `limit`: a run read from
 * its middle (an answer's page ended inside it) yields only its entries after the cursor.
 */
export const entriesAfter = (rows: ReadonlyArray<FeedRow>, afterSeq: number, limit: number): Array<FeedItem> => {
  const items: Array<FeedItem> = []
  for (const row of rows) {
    if (row.kind === "group") {
      if (row.seq > afterSeq) items.push({ seq: row.seq, kind: "group", ref: row.ref })
    } else {
      const ids = messageIds(row)
      const firstSeq = row.seq - ids.length + 1
      ids.forEach((ref, i) => {
        if (firstSeq + i > afterSeq) items.push({ seq: firstSeq + i, kind: "message", ref })
      })
    }
    if (items.length >= limit) break
  }
  return items.slice(0, limit)
}

/**
 * The published messages a statement stored, in the order given: those `inserted` names (an id
 * given twice was stored once, as it came first), as a trigger per row would have recorded them.
 */
export const publishedAmong = (
  given: ReadonlyArray<{ readonly id: MessageId; readonly deliveryStatus: string }>,
  inserted: ReadonlyArray<{ readonly id: MessageId }>
): Array<MessageId> => {
  const fresh = new Set(inserted.map((row) => row.id))
  const ids: Array<MessageId> = []
  for (const message of given) {
    if (fresh.delete(message.id) && message.deliveryStatus === "published") ids.push(message.id)
  }
  return ids
}

/**
 * Runs statements that must land together (messages and their feed run) in one transaction: the
 * caller's if there is one (the page's), without a savepoint; otherwise their own.
 */
export const atomically = <A, E, R>(sql: SqlClient.SqlClient, effect: Effect.Effect<A, E, R>) =>
  Effect.serviceOption(SqlClient.TransactionConnection).pipe(
    Effect.flatMap((inTransaction) => (inTransaction._tag === "Some" ? effect : failedCommitAsError(sql.withTransaction(effect))))
  )
