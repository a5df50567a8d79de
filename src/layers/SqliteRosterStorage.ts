/**
 * The roster repository of `SqliteStorage` (table of migration `0006_memory_restart_group_rosters`).
 * A row that does not decode is no loss: the roster is read again from the state.
 */
import type { SqlClient } from "@effect/sql"
import { Effect, Option, Schema } from "effect"
import { GroupId } from "../domain/Ids.ts"
import { Roster } from "../domain/Roster.ts"
import type { RosterRepository } from "../services/RosterStorage.ts"
import type { Run } from "./SqliteStatements.ts"

const RosterRow = Schema.Struct({ group_id: GroupId, state_digest: Schema.String, roster: Schema.parseJson(Roster) })
const decodeRow = Schema.decodeUnknownOption(RosterRow)
const encodeRoster = Schema.encodeSync(Schema.parseJson(Roster))

export const make = (
  sql: SqlClient.SqlClient,
  run: Run
): RosterRepository => ({
  get: (groupId) =>
    run(
      "rosters.get",
      sql`SELECT group_id, state_digest, roster FROM converge_group_rosters WHERE group_id = ${groupId}`.pipe(
        Effect.map((rows) =>
          Option.fromNullable(rows[0]).pipe(
            Option.flatMap(decodeRow),
            Option.map((row) => ({ groupId: row.group_id, stateDigest: row.state_digest, roster: row.roster }))
          )
        )
      )
    ),
  put: (stored) =>
    run(
      "rosters.put",
      sql`INSERT INTO converge_group_rosters (group_id, state_digest, roster)
          VALUES (${stored.groupId}, ${stored.stateDigest}, ${encodeRoster(stored.roster)})
          ON CONFLICT (group_id) DO UPDATE SET state_digest = excluded.state_digest, roster = excluded.roster`
    )
})
