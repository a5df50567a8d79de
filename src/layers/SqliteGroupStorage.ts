/**
 * The group repository of `SqliteStorage` (`converge_groups`): a group's row holds its MLS state,
 * sealed at rest; listings read the summaries (the row without that state).
 */
import type { SqlClient } from "@effect/sql"
import { Effect, Option, ParseResult, Schema } from "effect"
import { ConversationId, GroupId, InboxId } from "../domain/Ids.ts"
import type { IntentState } from "../domain/Intent.ts"
import { ConversationKind, MembershipState, type StoredGroup } from "../domain/Stored.ts"
import type { GroupListing, GroupRepository, GroupSummary } from "../services/Storage.ts"
import { Big, column, Flag, Nullable, type SealedColumn, type SealedWithKey } from "./SqliteColumns.ts"
import { cursorReader } from "./SqliteCursorStorage.ts"
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

/**
 * A group row without its MLS state, as `syncAll` and `conversations()` list every group. Decoded
 * under its column names and renamed in code: renaming in the schema checks every field twice
 * (the renamed struct is checked again), which cost as much as the first check.
 */
export const SummaryColumns = Schema.Struct({
  id: GroupId,
  kind: ConversationKind,
  dm_id: Nullable(ConversationId),
  membership_state: MembershipState,
  epoch: Big,
  maybe_forked: Flag,
  fork_details: Nullable(Schema.String),
  quarantine: Nullable(Schema.String),
  name: Nullable(Schema.String),
  description: Nullable(Schema.String),
  added_by_inbox_id: Nullable(InboxId),
  created_at_ns: Big,
  last_message_ns: Big
})
const SUMMARY_COLUMNS = Object.keys(SummaryColumns.fields).join(", ")

/**
 * The summary listing, newest activity first. SQLite answers it from the covering index of
 * migration 0011 alone (a test holds it to that): no row's MLS state is read.
 */
export const summariesQuery = (includeInactive: boolean, columns: string = SUMMARY_COLUMNS) =>
  `SELECT ${columns} FROM converge_groups${includeInactive ? "" : " WHERE membership_state != 'inactive'"}
   ORDER BY last_message_ns DESC, id`

/**
 * The columns renamed to the summary's fields, not checked again: each column checks what its
 * field does (test/Storage.test.ts holds each column's type to its field's, refinements included).
 */
const summaryOf = (row: typeof SummaryColumns.Type): GroupSummary => ({
  id: row.id,
  kind: row.kind,
  dmId: row.dm_id,
  membershipState: row.membership_state,
  epoch: row.epoch,
  maybeForked: row.maybe_forked,
  forkDetails: row.fork_details,
  quarantine: row.quarantine,
  name: row.name,
  description: row.description,
  addedByInboxId: row.added_by_inbox_id,
  createdAtNs: row.created_at_ns,
  lastMessageNs: row.last_message_ns
})

/** A listing's columns, a subset of the summary's (so the covering index answers it too). */
const ListingColumns = SummaryColumns.pick("id", "kind", "dm_id", "name", "membership_state")
const LISTING_COLUMNS = Object.keys(ListingColumns.fields).join(", ")

/** Renamed unchecked, as `summaryOf`: each column checks what its field does. */
const listingOf = (row: typeof ListingColumns.Type): GroupListing => ({
  id: row.id,
  kind: row.kind,
  dmId: row.dm_id,
  name: row.name,
  membershipState: row.membership_state
})

/** Columns renamed to a read-only domain value: listings and summaries are only read, never written back. */
const readOnlyRow = <I, C, A extends object>(
  columns: Schema.Schema<C, I, never>,
  rename: (row: C) => A,
  identifier: string
) =>
  Schema.transformOrFail(
    columns,
    Schema.declare((u): u is A => typeof u === "object" && u !== null, { identifier }),
    {
      strict: true,
      decode: (row) => ParseResult.succeed(rename(row)),
      encode: (value, _, ast) => ParseResult.fail(new ParseResult.Forbidden(ast, value, `${identifier} rows are not written`))
    }
  )

/** `summariesQuery` for a conversation list's columns: the same index answers it. */
export const listingQuery = (includeInactive: boolean) => summariesQuery(includeInactive, LISTING_COLUMNS)

const GroupListingRow = readOnlyRow(ListingColumns, listingOf, "GroupListing")
const GroupSummaryRow = readOnlyRow(SummaryColumns, summaryOf, "GroupSummary")

// The row decodes to exactly the port's value (checked by the compiler).
void (true satisfies (typeof GroupRow.Type extends StoredGroup ? true : false))

/** The group decoder (`SqliteHistoryStorage` reads groups too) and the repository. */
export const make = (sql: SqlClient.SqlClient, run: Run, sealedWithKey: SealedWithKey, quarantine: Quarantine) => {
  const decodeGroups = decodeEach(groupRowWith(sealedWithKey), "converge_groups", quarantine.groups)
  const readCursor = cursorReader(quarantine)
  /** All rows in one decode (a client in a thousand groups lists them all); row by row only if one is bad. */
  const decodeAllOrEach = <A, I>(schema: Schema.Schema<A, I, never>) => {
    const each = decodeEach(schema, "converge_groups", quarantine.groups)
    const all = Schema.decodeUnknown(Schema.Array(schema))
    return { each, all: (rows: ReadonlyArray<unknown>) => all(rows).pipe(Effect.catchAll(() => each(rows))) }
  }
  const summaryRows = decodeAllOrEach(GroupSummaryRow)
  const listingRows = decodeAllOrEach(GroupListingRow)

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
        run.exec(sql`SELECT * FROM converge_groups WHERE id = ${id}`).pipe(Effect.flatMap(decodeGroups), Effect.map(first))
      ),
    getForSend: (id, topic, states) =>
      run(
        "groups.getForSend",
        run.exec(sql<RawRow>`SELECT g.*,
              (SELECT sequence_id FROM converge_cursors WHERE topic = ${topic}) AS converge_cursor,
              EXISTS (SELECT 1 FROM converge_intents WHERE group_id = g.id AND state IN ${
          sql.in(states as Array<IntentState>)
        }) AS converge_pending
            FROM converge_groups g WHERE g.id = ${id}`).pipe(
          Effect.flatMap((rows) =>
            // The row decodes as `get`'s (its extra columns ignored); one that does not is quarantined there.
            Effect.gen(function*() {
              const group = first(yield* decodeGroups(rows))
              if (Option.isNone(group)) return Option.none()
              const stored = rows[0]!.converge_cursor
              const cursor = stored == null ? 0n : yield* readCursor(topic, stored)
              return Option.some({ group: group.value, cursor, pending: Number(rows[0]!.converge_pending) !== 0 })
            })
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
        sql.unsafe(summariesQuery(includeInactive)).pipe(Effect.flatMap(summaryRows.all))
      ),
    listing: ({ includeInactive }) =>
      run(
        "groups.listing",
        sql.unsafe(listingQuery(includeInactive)).pipe(Effect.flatMap(listingRows.all))
      ),
    summary: (id) =>
      run(
        "groups.summary",
        run.exec(sql`SELECT ${sql.literal(SUMMARY_COLUMNS)} FROM converge_groups WHERE id = ${id}`).pipe(
          Effect.flatMap(summaryRows.each),
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
          (sealed) => run.exec(sql`UPDATE converge_groups SET epoch = ${epoch}, mls_state = ${sealed} WHERE id = ${id}`)
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
