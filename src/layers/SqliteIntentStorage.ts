/**
 * The intent repository of `SqliteStorage` (`converge_intents`): what this installation means to
 * publish, and how far each intent got. A staged commit's state is sealed at rest.
 */
import type { SqlClient } from "@effect/sql"
import { Clock, Effect, ParseResult, Schema } from "effect"
import { GroupId } from "../domain/Ids.ts"
import { IntentDataJson, IntentKind, IntentState, PostCommitDataJson } from "../domain/Intent.ts"
import type { StoredIntent } from "../domain/Stored.ts"
import type { IntentRepository } from "../services/Storage.ts"
import { Big, Bytes, Int, Nullable, type SealedColumn, type SealedWithKey } from "./SqliteColumns.ts"
import { decodeEach, type Quarantine } from "./SqliteQuarantine.ts"
import { chunksOf, first, type Run } from "./SqliteStatements.ts"
import { Sealed, sealFor } from "./StorageKey.ts"

/**
 * An intent row as SQLite holds it, decoded under its column names and renamed in code
 * (`intentOf`): renaming in the schema checks every field twice (the renamed struct is checked
 * again), twice the time and garbage of every intent read (each queued message is read once to
 * publish it).
 */
export const intentColumnsWith = <S extends SealedColumn>(sealed: S) => Schema.Struct({
  id: Int,
  group_id: GroupId,
  kind: IntentKind,
  data: IntentDataJson,
  state: IntentState,
  payload_hash: Nullable(Schema.String),
  payload: Nullable(Bytes),
  published_epoch: Nullable(Big),
  staged_state: Nullable(sealed("staged_state") as ReturnType<S>),
  post_commit_data: Nullable(PostCommitDataJson),
  sequence_id: Nullable(Big),
  attempts: Int,
  conflicts: Int,
  error: Nullable(Schema.String),
  created_at_ns: Big
})
type IntentColumns = typeof IntentColumns.Type
/** The columns as `Sealed` decodes them (the compiler holds `intentOf`'s result to `StoredIntent`). */
export const IntentColumns = intentColumnsWith(Sealed)

/** The columns renamed to the intent's fields, not checked again: each column checks what its field does. */
const intentOf = (row: IntentColumns): StoredIntent => ({
  id: row.id,
  groupId: row.group_id,
  kind: row.kind,
  data: row.data,
  state: row.state,
  payloadHash: row.payload_hash,
  payload: row.payload,
  publishedEpoch: row.published_epoch,
  stagedState: row.staged_state,
  postCommit: row.post_commit_data,
  sequenceId: row.sequence_id,
  attempts: row.attempts,
  conflicts: row.conflicts,
  error: row.error,
  createdAtNs: row.created_at_ns
})

/** Intents are only read through this schema; every write is a statement of its own. */
const intentRowWith = (sealed: SealedWithKey) =>
  Schema.transformOrFail(
    intentColumnsWith(sealed),
    Schema.declare((u): u is StoredIntent => typeof u === "object" && u !== null, { identifier: "StoredIntent" }),
    {
      strict: true,
      decode: (row) => ParseResult.succeed(intentOf(row)),
      encode: (intent, _, ast) => ParseResult.fail(new ParseResult.Forbidden(ast, intent, "intent rows are not written whole"))
    }
  )
/** An intent's id and state alone: how far it got, without decoding its data. */
const IntentStateRow = Schema.Struct({ id: Int, state: IntentState })
/** Built once: a schema made per call builds its encoder anew each time (every published intent). */
const encodePostCommit = Schema.encode(Schema.NullOr(PostCommitDataJson))
/** Built once: every queued intent is encoded with it. */
const encodeIntentData = Schema.encode(IntentDataJson)

export const make = (
  sql: SqlClient.SqlClient,
  run: Run,
  sealedWithKey: SealedWithKey,
  quarantine: Quarantine
): IntentRepository => {
  const decodeIntents = decodeEach(intentRowWith(sealedWithKey), "converge_intents", quarantine.intents)
  /** The intents whose `column` is one of `values`, read `chunk` values per statement. */
  const whereIn = (column: "id" | "payload_hash", values: ReadonlyArray<string | number>, chunk: number) =>
    Effect.gen(function*() {
      const found: Array<StoredIntent> = []
      for (let i = 0; i < values.length; i += chunk) {
        const rows = yield* sql`SELECT * FROM converge_intents WHERE ${sql.in(column, values.slice(i, i + chunk))}`
        found.push(...(yield* decodeIntents(rows)))
      }
      return found
    })
  // Only id and state are read here: a bad state is logged and skipped, and quarantined when the
  // whole row is read (resolving an intent reads it), where its message and group are known.
  const decodeIntentStates = decodeEach(IntentStateRow, "converge_intents", quarantine.none)

  const inStates = (states: ReadonlyArray<IntentState>) => sql.in(states as Array<IntentState>)

  const intents: IntentRepository = {
    insert: ({ createdAtNs, data, groupId }) =>
      run(
        "intents.insert",
        encodeIntentData(data).pipe(
          Effect.flatMap((json) =>
            run.exec(sql<{ id: bigint }>`INSERT INTO converge_intents (group_id, kind, data, state, created_at_ns)
                VALUES (${groupId}, ${data._tag}, ${json}, 'ToPublish', ${createdAtNs}) RETURNING id`)
          ),
          Effect.map((rows) => Number(rows[0]!.id))
        )
      ),
    insertPublished: ({ createdAtNs, data, groupId }, p) =>
      run(
        "intents.insertPublished",
        encodeIntentData(data).pipe(
          Effect.flatMap((json) =>
            run.exec(sql<{ id: bigint }>`INSERT INTO converge_intents
                (group_id, kind, data, state, created_at_ns, payload_hash, payload, published_epoch, attempts)
                VALUES (${groupId}, ${data._tag}, ${json}, 'Published', ${createdAtNs}, ${p.payloadHash}, ${p.payload},
                        ${p.publishedEpoch}, 1) RETURNING id`)
          ),
          Effect.map((rows) => Number(rows[0]!.id))
        )
      ),
    get: (id) =>
      run(
        "intents.get",
        sql`SELECT * FROM converge_intents WHERE id = ${id}`.pipe(Effect.flatMap(decodeIntents), Effect.map(first))
      ),
    getMany: (ids) => run("intents.getMany", whereIn("id", ids, 100)),
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
    // Chunked far below SQLite's parameter limit; a page is 100 envelopes by default.
    byPayloadHashes: (hashes) => run("intents.byPayloadHashes", whereIn("payload_hash", hashes, 500)),
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
        Effect.flatMap(Clock.currentTimeNanos, (now) =>
          sql`UPDATE converge_intents SET state = 'Processed', staged_state = NULL, payload = NULL,
              post_commit_data = NULL, settled_at_ns = ${now}
              WHERE id = ${id} AND state IN ('ToPublish', 'Published', 'Committed')`)
      ),
    markDelivered: (rows) =>
      run(
        "intents.markDelivered",
        // markCommitted (only from Published: it records the sequence id) and markProcessed in one.
        Effect.flatMap(Clock.currentTimeNanos, (now) =>
          Effect.forEach(chunksOf(rows, 100), (chunk) =>
            run.exec(sql`UPDATE converge_intents SET
                  sequence_id = CASE WHEN state = 'Published' THEN v.column2 ELSE sequence_id END,
                  state = 'Processed', staged_state = NULL, payload = NULL, post_commit_data = NULL, settled_at_ns = ${now}
                FROM (VALUES ${sql.csv(chunk.map((r) => sql`(${r.id}, ${r.sequenceId})`))}) AS v
                WHERE converge_intents.id = v.column1 AND state IN ('ToPublish', 'Published', 'Committed')`), { discard: true }))
      ),
    markError: (id, error) =>
      run(
        "intents.markError",
        sql`UPDATE converge_intents SET state = 'Error', error = ${error}, staged_state = NULL
            WHERE id = ${id} AND state IN ('ToPublish', 'Published', 'Committed')`
      ),
    countAttempt: (id) =>
      run("intents.countAttempt", sql`UPDATE converge_intents SET attempts = attempts + 1 WHERE id = ${id}`),
    pruneSettled: (settledBeforeNs, limit) =>
      run(
        "intents.pruneSettled",
        // Rows settled before this column existed have none: long settled, they go too.
        sql<{ id: unknown }>`DELETE FROM converge_intents WHERE id IN (
              SELECT id FROM converge_intents WHERE state = 'Processed'
              AND (settled_at_ns IS NULL OR settled_at_ns < ${settledBeforeNs}) LIMIT ${limit})
            RETURNING id`.pipe(Effect.map((rows) => rows.length))
      )
  }

  return intents
}
