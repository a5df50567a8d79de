/**
 * `Storage` over `@effect/sql` (SQLite). Integers are read as safe integers (bigint): times
 * are nanoseconds. Every failure becomes a `StorageError` naming the operation.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Effect, Option, type ParseResult, Schema } from "effect"
import { StorageError } from "../domain/Errors.ts"
import type { IntentState } from "../domain/Intent.ts"
import { GroupRow, IdentityRow, InboxLogRow, IntentRow, KeyPackageRow, MessageRow } from "../domain/Rows.ts"
import type { Storage } from "../services/Storage.ts"
import * as Migrations from "./Migrations.ts"

const toStorageError = (operation: string) => (error: SqlError | ParseResult.ParseError | { readonly message: string }) =>
  new StorageError({ operation, detail: error.message })

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* Migrations.run.pipe(Effect.mapError(toStorageError("migrate")))

  /** Runs a statement with safe integers and a span, mapping errors to `StorageError`. */
  const run = <A>(operation: string, effect: Effect.Effect<A, SqlError | ParseResult.ParseError>) =>
    effect.pipe(
      Effect.provideService(SqlClient.SafeIntegers, true),
      Effect.mapError(toStorageError(operation)),
      Effect.withSpan(`Storage.${operation}`)
    )

  const decodeAll = <A, I>(schema: Schema.Schema<A, I>) => Schema.decodeUnknown(Schema.Array(schema))
  const first = <A>(rows: ReadonlyArray<A>) => Option.fromNullable(rows[0])

  const groups: Storage["Type"]["groups"] = {
    insert: (row) =>
      run(
        "groups.insert",
        Schema.encode(GroupRow)(row).pipe(
          Effect.flatMap((encoded) => sql`INSERT INTO converge_groups ${sql.insert(encoded as never)}`)
        )
      ),
    get: (id) =>
      run(
        "groups.get",
        sql`SELECT * FROM converge_groups WHERE id = ${id}`.pipe(Effect.flatMap(decodeAll(GroupRow)), Effect.map(first))
      ),
    list: ({ includeInactive }) =>
      run(
        "groups.list",
        (includeInactive
          ? sql`SELECT * FROM converge_groups ORDER BY last_message_ns DESC, id`
          : sql`SELECT * FROM converge_groups WHERE membership_state != 'inactive'
                ORDER BY last_message_ns DESC, id`).pipe(Effect.flatMap(decodeAll(GroupRow)))
      ),
    byDmId: (dmId) =>
      run(
        "groups.byDmId",
        sql`SELECT * FROM converge_groups WHERE dm_id = ${dmId} ORDER BY last_message_ns DESC, id`.pipe(
          Effect.flatMap(decodeAll(GroupRow))
        )
      ),
    saveState: (id, { epoch, mlsState }) =>
      run("groups.saveState", sql`UPDATE converge_groups SET epoch = ${epoch}, mls_state = ${mlsState} WHERE id = ${id}`),
    setMembership: (id, state) =>
      run("groups.setMembership", sql`UPDATE converge_groups SET membership_state = ${state} WHERE id = ${id}`),
    markForked: (id, details) =>
      run(
        "groups.markForked",
        sql`UPDATE converge_groups SET maybe_forked = 1, fork_details = ${details} WHERE id = ${id}`
      ),
    touch: (id, atNs) =>
      run(
        "groups.touch",
        sql`UPDATE converge_groups SET last_message_ns = ${atNs} WHERE id = ${id} AND last_message_ns < ${atNs}`
      )
  }

  const messages: Storage["Type"]["messages"] = {
    insert: (row) =>
      run(
        "messages.insert",
        Schema.encode(MessageRow)(row).pipe(
          Effect.flatMap((encoded) =>
            sql`INSERT INTO converge_messages ${sql.insert(encoded as never)} ON CONFLICT (id) DO NOTHING RETURNING id`
          ),
          Effect.map((rows) => rows.length > 0)
        )
      ),
    get: (id) =>
      run(
        "messages.get",
        sql`SELECT * FROM converge_messages WHERE id = ${id}`.pipe(Effect.flatMap(decodeAll(MessageRow)), Effect.map(first))
      ),
    markPublished: (id, { sentAtNs, sequenceId }) =>
      run(
        "messages.markPublished",
        sql`UPDATE converge_messages SET delivery_status = 'published', sent_at_ns = ${sentAtNs},
            sequence_id = ${sequenceId} WHERE id = ${id}`
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
            ${limit === undefined ? sql`` : sql`LIMIT ${limit}`}`.pipe(Effect.flatMap(decodeAll(MessageRow)))
      ),
    membershipChanges: (id) =>
      run(
        "messages.membershipChanges",
        sql`SELECT * FROM converge_messages WHERE conversation_id = ${id} AND kind = 'membershipChange'
            ORDER BY sent_at_ns`.pipe(Effect.flatMap(decodeAll(MessageRow)))
      ),
    insertedAfter: (insertedAtNs, limit) =>
      run(
        "messages.insertedAfter",
        sql`SELECT * FROM converge_messages WHERE inserted_at_ns > ${insertedAtNs}
            ORDER BY inserted_at_ns, id LIMIT ${limit}`.pipe(Effect.flatMap(decodeAll(MessageRow)))
      )
  }

  const inStates = (states: ReadonlyArray<IntentState>) => sql.in(states as Array<IntentState>)

  const intents: Storage["Type"]["intents"] = {
    insert: ({ createdAtNs, data, groupId, kind }) =>
      run(
        "intents.insert",
        sql<{ id: bigint }>`INSERT INTO converge_intents (group_id, kind, data, state, created_at_ns)
            VALUES (${groupId}, ${kind}, ${data}, 'ToPublish', ${createdAtNs}) RETURNING id`.pipe(
          Effect.map((rows) => Number(rows[0]!.id))
        )
      ),
    get: (id) =>
      run(
        "intents.get",
        sql`SELECT * FROM converge_intents WHERE id = ${id}`.pipe(Effect.flatMap(decodeAll(IntentRow)), Effect.map(first))
      ),
    byGroup: (groupId, states) =>
      run(
        "intents.byGroup",
        sql`SELECT * FROM converge_intents WHERE group_id = ${groupId} AND state IN ${inStates(states)} ORDER BY id`.pipe(
          Effect.flatMap(decodeAll(IntentRow))
        )
      ),
    byState: (states) =>
      run(
        "intents.byState",
        sql`SELECT * FROM converge_intents WHERE state IN ${inStates(states)} ORDER BY id`.pipe(
          Effect.flatMap(decodeAll(IntentRow))
        )
      ),
    byPayloadHash: (hash) =>
      run(
        "intents.byPayloadHash",
        sql`SELECT * FROM converge_intents WHERE payload_hash = ${hash}`.pipe(
          Effect.flatMap(decodeAll(IntentRow)),
          Effect.map(first)
        )
      ),
    markPublished: (id, p) =>
      run(
        "intents.markPublished",
        sql`UPDATE converge_intents SET state = 'Published', payload_hash = ${p.payloadHash}, payload = ${p.payload},
            published_epoch = ${p.publishedEpoch}, staged_state = ${p.stagedState},
            post_commit_data = ${p.postCommitData}, attempts = attempts + 1
            WHERE id = ${id} AND state = 'ToPublish'`
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
    markError: (id, error) =>
      run(
        "intents.markError",
        sql`UPDATE converge_intents SET state = 'Error', error = ${error}, staged_state = NULL
            WHERE id = ${id} AND state IN ('ToPublish', 'Published')`
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
    get: run(
      "identity.get",
      sql`SELECT * FROM converge_identity WHERE singleton = 1`.pipe(
        Effect.flatMap(decodeAll(IdentityRow)),
        Effect.map(first)
      )
    ),
    insert: (row) =>
      run(
        "identity.insert",
        Schema.encode(IdentityRow)(row).pipe(
          Effect.flatMap((encoded) =>
            sql`INSERT INTO converge_identity ${sql.insert({ singleton: 1, ...encoded } as never)}`
          )
        )
      ),
    markRegistered: run("identity.markRegistered", sql`UPDATE converge_identity SET registered = 1 WHERE singleton = 1`)
  }

  const keyPackages: Storage["Type"]["keyPackages"] = {
    insert: (row) =>
      run(
        "keyPackages.insert",
        Schema.encode(KeyPackageRow)(row).pipe(
          Effect.flatMap((encoded) =>
            sql`INSERT INTO converge_key_packages ${sql.insert(encoded as never)} ON CONFLICT (ref) DO NOTHING`
          )
        )
      ),
    list: run(
      "keyPackages.list",
      sql`SELECT * FROM converge_key_packages ORDER BY created_at_ns DESC`.pipe(Effect.flatMap(decodeAll(KeyPackageRow)))
    ),
    remove: (ref) => run("keyPackages.remove", sql`DELETE FROM converge_key_packages WHERE ref = ${ref}`)
  }

  const inboxLogs: Storage["Type"]["inboxLogs"] = {
    entries: (inboxId) =>
      run(
        "inboxLogs.entries",
        sql`SELECT * FROM converge_inbox_log WHERE inbox_id = ${inboxId} ORDER BY sequence`.pipe(
          Effect.flatMap(decodeAll(InboxLogRow))
        )
      ),
    append: (rows) =>
      rows.length === 0
        ? Effect.void
        : run(
          "inboxLogs.append",
          Schema.encode(Schema.Array(InboxLogRow))(rows).pipe(
            Effect.flatMap((encoded) =>
              sql`INSERT INTO converge_inbox_log ${sql.insert(encoded as never)}
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

  return { groups, messages, intents, cursors, identity, keyPackages, inboxLogs, transaction } satisfies Storage["Type"]
})
