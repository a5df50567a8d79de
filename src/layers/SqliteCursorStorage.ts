/**
 * The cursor repository of `SqliteStorage` (`converge_cursors`): per topic, the sequence id this
 * installation has read up to. A cursor that does not decode is logged and quarantined (set back
 * to the topic's start, its group flagged): one damaged row never stops a sync.
 */
import type { SqlClient } from "@effect/sql"
import { Effect, Either, Schema } from "effect"
import type { CursorRepository } from "../services/Storage.ts"
import { Big } from "./SqliteColumns.ts"
import type { Quarantine } from "./SqliteQuarantine.ts"
import type { Run } from "./SqliteStatements.ts"

const decodeCursor = Schema.decodeUnknownEither(Big)

/** A stored cursor's value, or the topic's start once a damaged one is logged and quarantined. */
export const cursorReader = (quarantine: Quarantine) => (topic: string, stored: unknown) => {
  const decoded = decodeCursor(stored)
  if (Either.isRight(decoded)) return Effect.succeed(decoded.right)
  return Effect.logWarning("stored cursor does not decode: the topic is read again from its start", decoded.left.message).pipe(
    Effect.annotateLogs({ topic }),
    Effect.zipRight(quarantine.cursors(topic, decoded.left.message)),
    Effect.as(0n)
  )
}

export const make = (sql: SqlClient.SqlClient, run: Run, quarantine: Quarantine): CursorRepository => {
  const cursorOf = cursorReader(quarantine)

  const cursors: CursorRepository = {
    get: (topic) =>
      run(
        "cursors.get",
        sql<{ sequence_id: unknown }>`SELECT sequence_id FROM converge_cursors WHERE topic = ${topic}`.pipe(
          Effect.flatMap((rows) => (rows[0] === undefined ? Effect.succeed(0n) : cursorOf(topic, rows[0].sequence_id)))
        )
      ),
    getMany: (topics) =>
      run(
        "cursors.getMany",
        Effect.gen(function*() {
          const found = new Map<string, bigint>(topics.map((topic) => [topic, 0n]))
          for (let i = 0; i < topics.length; i += 500) {
            const rows = yield* sql<{ topic: string; sequence_id: unknown }>`
              SELECT topic, sequence_id FROM converge_cursors WHERE ${sql.in("topic", topics.slice(i, i + 500))}`
            for (const row of rows) found.set(row.topic, yield* cursorOf(row.topic, row.sequence_id))
          }
          return found as ReadonlyMap<string, bigint>
        })
      ),
    advance: (topic, sequenceId) =>
      run(
        "cursors.advance",
        run.exec(sql`INSERT INTO converge_cursors (topic, sequence_id) VALUES (${topic}, ${sequenceId})
            ON CONFLICT (topic) DO UPDATE SET sequence_id = excluded.sequence_id
            WHERE excluded.sequence_id > converge_cursors.sequence_id`)
      ),
    set: (topic, sequenceId) =>
      run(
        "cursors.set",
        sql`INSERT INTO converge_cursors (topic, sequence_id) VALUES (${topic}, ${sequenceId})
            ON CONFLICT (topic) DO UPDATE SET sequence_id = excluded.sequence_id`
      )
  }

  return cursors
}
