/**
 * The consent and history repositories of `SqliteStorage` (tables of migration
 * `0005_history_consent`). Rows are decoded here; the group and message decoders are those of
 * `SqliteGroupStorage` and `SqliteMessageStorage`, handed in so a bad row is quarantined the same way.
 */
import type { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Effect, Option, type ParseResult, Schema } from "effect"
import { ConsentKey, ConsentRecord, ConsentState, wins } from "../domain/Consent.ts"
import { AnswerPhase, OWN_DEVICES_GROUP_NAME } from "../domain/HistoryArchive.ts"
import { GroupId, InstallationId } from "../domain/Ids.ts"
import type { StoredGroup, StoredMessage } from "../domain/Stored.ts"
import type {
  ConsentRepository,
  FeedEntry,
  HistoryAnswer,
  HistoryProgress,
  HistoryRepository
} from "../services/HistoryStorage.ts"
import { Big, decodeBig, Int } from "./SqliteColumns.ts"
import { entriesAfter, type FeedItem, FeedRow } from "./SqliteHistoryFeed.ts"
import { chunksOf, type Run } from "./SqliteStatements.ts"
import type { StorageKey } from "./StorageKey.ts"

const ConsentRow = Schema.Struct({
  subject: ConsentKey,
  state: ConsentState,
  at_ns: Big,
  by_installation: InstallationId
})
/**
 * The row's schema checked each field as `ConsentRecord`'s would, so the class is built without
 * checking again: its constructor derives a validator anew on every call (a list of 1,000
 * conversations read 1,000 records, about half of its time).
 */
const toRecord = (row: typeof ConsentRow.Type) =>
  new ConsentRecord({ key: row.subject, state: row.state, atNs: row.at_ns, by: row.by_installation }, true)

const ProgressRow = Schema.Struct({
  state: Schema.Literal("idle", "requesting", "importing", "done"),
  request_id: Schema.NullOr(Schema.String),
  requested_from: Schema.String,
  pages_imported: Int,
  messages_imported: Int
})

const AnswerRow = Schema.Struct({
  request_id: Schema.String,
  requester: InstallationId,
  group_id: GroupId,
  phase: AnswerPhase,
  cursor: Schema.String,
  feed_cursor: Schema.String,
  page_index: Int
})
const toAnswer = (row: typeof AnswerRow.Type): HistoryAnswer => ({
  requestId: row.request_id,
  requester: row.requester,
  groupId: row.group_id,
  phase: row.phase,
  cursor: row.cursor,
  feedCursor: row.feed_cursor,
  pageIndex: row.page_index
})

/** Feed rows read first for a page of entries: a few runs of received messages fill it. */
const FIRST_ROWS = 16

type Decode<A> = (rows: ReadonlyArray<unknown>) => Effect.Effect<Array<A>, SqlError | ParseResult.ParseError, StorageKey>

export const make = (
  sql: SqlClient.SqlClient,
  run: Run,
  decodeGroups: Decode<StoredGroup>,
  decodeMessages: Decode<StoredMessage>
) => {
  // A consent row that does not decode is left out: the next record for its subject replaces it.
  const decodeConsent = (rows: ReadonlyArray<unknown>) =>
    Effect.forEach(rows, (row) => Schema.decodeUnknown(ConsentRow)(row).pipe(Effect.option)).pipe(
      Effect.map((decoded) => decoded.flatMap((r) => (Option.isSome(r) ? [toRecord(r.value)] : [])))
    )

  const consentGet = (key: ConsentKey) =>
    sql`SELECT * FROM converge_consent WHERE subject = ${key}`.pipe(
      Effect.flatMap(decodeConsent),
      Effect.map((rows) => Option.fromNullable(rows[0]))
    )

  const consent: ConsentRepository = {
    get: (key) => run("consent.get", consentGet(key)),
    all: run("consent.all", sql`SELECT * FROM converge_consent ORDER BY subject`.pipe(Effect.flatMap(decodeConsent))),
    page: (afterKey, limit) =>
      run(
        "consent.page",
        sql`SELECT * FROM converge_consent WHERE subject > ${afterKey} ORDER BY subject LIMIT ${limit}`.pipe(
          Effect.flatMap(decodeConsent)
        )
      ),
    put: (record, { unsent }) =>
      run(
        "consent.put",
        Effect.gen(function*() {
          const stored = yield* consentGet(record.key)
          if (Option.isSome(stored) && !wins(record, stored.value)) return false
          yield* sql`INSERT INTO converge_consent (subject, state, at_ns, by_installation, unsent)
            VALUES (${record.key}, ${record.state}, ${record.atNs}, ${record.by}, ${unsent ? 1 : 0})
            ON CONFLICT (subject) DO UPDATE SET state = excluded.state, at_ns = excluded.at_ns,
              by_installation = excluded.by_installation, unsent = excluded.unsent`
          return true
        })
      ),
    unsent: (limit) =>
      run(
        "consent.unsent",
        sql`SELECT * FROM converge_consent WHERE unsent = 1 ORDER BY subject LIMIT ${limit}`.pipe(
          Effect.flatMap(decodeConsent)
        )
      ),
    markSent: (keys) =>
      keys.length === 0
        ? Effect.void
        : run("consent.markSent", sql`UPDATE converge_consent SET unsent = 0 WHERE subject IN ${sql.in([...keys])}`),
    highestStamp: run(
      "consent.highestStamp",
      // Integers only: one damaged stamp (a text sorts above every number) would fail every decision.
      sql<{ at: unknown }>`SELECT max(at_ns) AS at FROM converge_consent WHERE typeof(at_ns) = 'integer'`.pipe(
        Effect.flatMap((rows) => decodeBig(rows[0]?.at ?? 0))
      )
    )
  }

  /** Feed rows; one that does not decode is logged and passed over (its numbers are skipped). */
  const decodeFeedRow = Schema.decodeUnknownEither(FeedRow)
  const decodeFeedRows = (rows: ReadonlyArray<unknown>) =>
    Effect.gen(function*() {
      const decoded: Array<FeedRow> = []
      for (const row of rows) {
        const result = decodeFeedRow(row)
        if (result._tag === "Right") decoded.push(result.right)
        else yield* Effect.logWarning("history feed row does not decode: passed over", result.left.message)
      }
      return decoded
    })

  /** The published messages among `ids`, by id, read in bounded statements. */
  const publishedMessages = (ids: ReadonlyArray<string>) =>
    Effect.forEach(chunksOf([...new Set(ids)], 100), (chunk) =>
      sql`SELECT * FROM converge_messages WHERE id IN ${sql.in(chunk)} AND delivery_status = 'published'`.pipe(
        Effect.flatMap(decodeMessages)
      )).pipe(Effect.map((chunks) => new Map(chunks.flat().map((m) => [m.id as string, m] as const))))

  /**
   * The next `limit` entries. A row holds at least one entry after the cursor and a run up to a
   * page's worth, so a few rows are read first and then at most as many as entries are missing.
   */
  const feedItems = (afterSeq: number, limit: number) =>
    Effect.gen(function*() {
      const items: Array<FeedItem> = []
      let after = afterSeq
      let batch = Math.min(limit, FIRST_ROWS)
      while (items.length < limit) {
        const raw = yield* sql<{ seq: bigint | number }>`SELECT seq, kind, ref, ids FROM converge_history_feed
          WHERE seq > ${after} ORDER BY seq LIMIT ${batch}`
        items.push(...entriesAfter(yield* decodeFeedRows(raw), afterSeq, limit - items.length))
        const last = raw.at(-1)
        if (last === undefined || raw.length < batch) break
        after = Number(last.seq)
        batch = limit - items.length
      }
      return items
    })

  const history: HistoryRepository = {
    progress: run(
      "history.progress",
      sql`SELECT * FROM converge_history_progress WHERE singleton = 1`.pipe(
        Effect.flatMap(Schema.decodeUnknown(Schema.Array(ProgressRow))),
        Effect.map((rows) =>
          Option.fromNullable(rows[0]).pipe(Option.map((r): HistoryProgress => ({
            state: r.state,
            requestId: r.request_id,
            requestedFrom: r.requested_from,
            pagesImported: r.pages_imported,
            messagesImported: r.messages_imported
          })))
        )
      )
    ),
    saveProgress: (p) =>
      run(
        "history.saveProgress",
        sql`INSERT INTO converge_history_progress
            (singleton, state, request_id, requested_from, pages_imported, messages_imported)
          VALUES (1, ${p.state}, ${p.requestId}, ${p.requestedFrom}, ${p.pagesImported}, ${p.messagesImported})
          ON CONFLICT (singleton) DO UPDATE SET state = excluded.state, request_id = excluded.request_id,
            requested_from = excluded.requested_from,
            pages_imported = excluded.pages_imported, messages_imported = excluded.messages_imported`
      ),
    nextIndex: (requestId, responder) =>
      run(
        "history.nextIndex",
        sql<{ next_index: bigint }>`SELECT next_index FROM converge_history_sources
          WHERE request_id = ${requestId} AND responder = ${responder}`.pipe(
          Effect.map((rows) => Number(rows[0]?.next_index ?? 0))
        )
      ),
    saveNextIndex: (requestId, responder, next) =>
      run(
        "history.saveNextIndex",
        sql`INSERT INTO converge_history_sources (request_id, responder, next_index) VALUES (${requestId}, ${responder}, ${next})
          ON CONFLICT (request_id, responder) DO UPDATE SET next_index = excluded.next_index`
      ),
    openAnswers: run(
      "history.openAnswers",
      sql`SELECT * FROM converge_history_answers WHERE phase != 'done' ORDER BY request_id`.pipe(
        Effect.flatMap(Schema.decodeUnknown(Schema.Array(AnswerRow))),
        Effect.map((rows) => rows.map(toAnswer))
      )
    ),
    answer: (requestId) =>
      run(
        "history.answer",
        sql`SELECT * FROM converge_history_answers WHERE request_id = ${requestId}`.pipe(
          Effect.flatMap(Schema.decodeUnknown(Schema.Array(AnswerRow))),
          Effect.map((rows) => Option.fromNullable(rows[0]).pipe(Option.map(toAnswer)))
        )
      ),
    saveAnswer: (a) =>
      run(
        "history.saveAnswer",
        sql`INSERT INTO converge_history_answers (request_id, requester, group_id, phase, cursor, feed_cursor, page_index)
          VALUES (${a.requestId}, ${a.requester}, ${a.groupId}, ${a.phase}, ${a.cursor}, ${a.feedCursor}, ${a.pageIndex})
          ON CONFLICT (request_id) DO UPDATE SET phase = excluded.phase, cursor = excluded.cursor,
            feed_cursor = excluded.feed_cursor, page_index = excluded.page_index`
      ),
    feedAfter: (afterSeq, limit) =>
      run(
        "history.feedAfter",
        Effect.gen(function*() {
          const items = yield* feedItems(afterSeq, limit)
          const own = new Set((yield* sql<{ id: string }>`SELECT id FROM converge_groups
            WHERE name = ${OWN_DEVICES_GROUP_NAME}`).map((r) => r.id))
          const messages = yield* publishedMessages(items.flatMap((item) => (item.kind === "message" ? [item.ref] : [])))
          const entries: Array<FeedEntry> = []
          for (const { kind, ref, seq } of items) {
            if (kind === "group") {
              const [group] = own.has(ref)
                ? []
                : yield* sql`SELECT * FROM converge_groups WHERE id = ${ref}`.pipe(Effect.flatMap(decodeGroups))
              entries.push(group === undefined ? { seq } : { seq, group })
            } else {
              const message = messages.get(ref)
              entries.push(message === undefined || own.has(message.groupId) ? { seq } : { seq, message })
            }
          }
          return entries
        })
      ),
    inbound: (groupIds, limit) =>
      groupIds.length === 0
        ? Effect.succeed([])
        : run(
          "history.inbound",
          sql`SELECT * FROM converge_messages WHERE group_id IN ${sql.in([...groupIds])}
              ORDER BY sequence_id, id LIMIT ${limit}`.pipe(Effect.flatMap(decodeMessages))
        ),
    dropMessage: (id) => run("history.dropMessage", sql`DELETE FROM converge_messages WHERE id = ${id}`)
  }

  /**
   * The feed's triggers, made sure of at every open: a later migration that rebuilds a table
   * drops its triggers, and the feed must not miss what is stored after that. Messages stored
   * published are recorded by the store itself, a run per statement (`SqliteHistoryFeed`).
   */
  const ensureFeedTriggers = run(
    "history.ensureFeedTriggers",
    Effect.all([
      sql`CREATE TRIGGER IF NOT EXISTS converge_history_feed_group AFTER INSERT ON converge_groups
        BEGIN INSERT INTO converge_history_feed (kind, ref) VALUES ('group', new.id); END`,
      sql`CREATE TRIGGER IF NOT EXISTS converge_history_feed_published AFTER UPDATE OF delivery_status ON converge_messages
        WHEN new.delivery_status = 'published' AND old.delivery_status != 'published'
        BEGIN INSERT INTO converge_history_feed (kind, ref) VALUES ('message', new.id); END`,
      // A deletion after the message went out is passed on too: the other devices erase it.
      sql`CREATE TRIGGER IF NOT EXISTS converge_history_feed_deleted AFTER UPDATE OF deleted ON converge_messages
        WHEN new.deleted = 1 AND old.deleted = 0 AND new.delivery_status = 'published'
        BEGIN INSERT INTO converge_history_feed (kind, ref) VALUES ('message', new.id); END`
    ], { discard: true })
  )

  return { consent, history, ensureFeedTriggers }
}
