/**
 * The group repository of `SqliteStorage` (`converge_groups`): a group's row holds its MLS state,
 * sealed at rest; listings read the summaries (the row without that state).
 */
import type { SqlClient } from "@effect/sql"
import { Effect, Option, Schema } from "effect"
import { ConversationId, GroupId, InboxId } from "../domain/Ids.ts"
import type { IntentState } from "../domain/Intent.ts"
import { ConversationKind, MembershipState, type StoredGroup } from "../domain/Stored.ts"
import type { GroupRepository } from "../services/Storage.ts"
import { Big, column, Flag, Nullable, type SealedColumn, type SealedWithKey } from "./SqliteColumns.ts"
import { decodeEach, type Quarantine } from "./SqliteQuarantine.ts"
import { first, type RawRow, type Run } from "./SqliteStatements.ts"
import { Sealed, sealFor } from "./StorageKey.ts"

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

// The row decodes to exactly the port's value (checked by the compiler).
void (true satisfies (typeof GroupRow.Type extends StoredGroup ? true : false))

/** The group decoder (`SqliteHistoryStorage` reads groups too) and the repository. */
export const make = (sql: SqlClient.SqlClient, run: Run, sealedWithKey: SealedWithKey, quarantine: Quarantine) => {
  const decodeGroups = decodeEach(groupRowWith(sealedWithKey), "converge_groups", quarantine.groups)
  const decodeSummariesEach = decodeEach(GroupSummaryRow, "converge_groups", quarantine.groups)
  const decodeSummariesAll = Schema.decodeUnknown(Schema.Array(GroupSummaryRow))
  /** All rows in one decode (a client in a thousand groups lists them all); row by row only if one is bad. */
  const decodeSummaries = (rows: ReadonlyArray<unknown>) =>
    decodeSummariesAll(rows).pipe(Effect.catchAll(() => decodeSummariesEach(rows)))

  const groups: GroupRepository = {
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

  return { decodeGroups, groups }
}
