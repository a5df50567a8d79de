/**
 * The cursor repository of `SqliteStorage` (`converge_cursors`): per topic, the sequence id this
 * installation has read up to.
 */
import type { SqlClient } from "@effect/sql"
import { Effect } from "effect"
import type { CursorRepository } from "../services/Storage.ts"
import { decodeBig } from "./SqliteColumns.ts"
import type { Run } from "./SqliteStatements.ts"

export const make = (sql: SqlClient.SqlClient, run: Run): CursorRepository => {
  const cursors: CursorRepository = {
    get: (topic) =>
      run(
        "cursors.get",
        sql<{ sequence_id: unknown }>`SELECT sequence_id FROM converge_cursors WHERE topic = ${topic}`.pipe(
          Effect.flatMap((rows) => (rows[0] === undefined ? Effect.succeed(0n) : decodeBig(rows[0].sequence_id)))
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
            for (const row of rows) found.set(row.topic, yield* decodeBig(row.sequence_id))
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

  return cursors
}
