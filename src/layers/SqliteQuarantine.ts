/**
 * Stored rows that do not decode: each is logged, quarantined (per table: an intent fails, its
 * group is flagged, a cursor starts over) and skipped, so one bad row never stops a group.
 */
import type { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Effect, Schema } from "effect"
import { groupOfTopic } from "../domain/Topics.ts"
import type { RawRow } from "./SqliteStatements.ts"

/** What to do with a row that does not decode, per table (besides logging and skipping it). */
export const make = (sql: SqlClient.SqlClient) => {
  /** Flags a group: some of its stored rows were set aside. */
  const flagGroup = (groupId: unknown, why: string) =>
    typeof groupId === "string" ? sql`UPDATE converge_groups SET quarantine = ${why} WHERE id = ${groupId}` : Effect.void

  return {
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
    /**
     * A cursor that does not decode is set back to the topic's start: its items are read again
     * (the engine takes what it already has as such), so nothing past it is lost.
     */
    cursors: (topic: string, why: string) =>
      Effect.zipRight(
        sql`UPDATE converge_cursors SET sequence_id = 0 WHERE topic = ${topic}`,
        flagGroup(groupOfTopic(topic), `cursor: ${why}`)
      ),
    none: () => Effect.void
  }
}
export type Quarantine = ReturnType<typeof make>

/**
 * Decodes each row; one that does not decode is logged, quarantined and left out. The decoder
 * is built once and runs synchronously (sealed columns open with the key the schema was made with).
 */
export const decodeEach = <A, I>(
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

/** The message an unreadable intent was sending, if its (maybe truncated) JSON still names one. */
const messageIdIn = (data: unknown): string | null =>
  typeof data === "string" ? (/"messageId"\s*:\s*"([0-9a-f]{64})"/.exec(data)?.[1] ?? null) : null
