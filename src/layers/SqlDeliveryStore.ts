/**
 * The `DeliveryStore` port on `@effect/sql`: one implementation for SQLite and Postgres, with
 * `sql.onDialectOrElse` where they differ. It owns its schema (migrations table
 * `converge_ds_migrations`, tables prefixed `ds_`), so it can share a database.
 *
 * - Sequence ids come from a counter row per topic (`ds_topics`). An append locks the counter
 *   rows of its topics (in sorted order, so two appends never deadlock) with an upsert that
 *   returns the current head, inserts after it, advances the counter and commits. The next
 *   append on the topic waits for that commit before it reads the head, so ids become visible
 *   in order, also across servers sharing one Postgres. SQLite has one connection and one
 *   transaction at a time, which serializes appends the same way. Within one server, appends
 *   that arrive while a write runs are stored together in the next transaction (group commit).
 * - Identity updates are compare-and-set on the inbox's log head (`ds_inboxes`): the caller
 *   verifies against `loadInbox`, the append fails as `Stale` if the head moved meanwhile.
 * - Changes: SQLite announces after the commit through an in-process PubSub. Postgres sends
 *   `pg_notify` inside the append transaction (Postgres delivers it only on commit, and
 *   after the commit is visible); every store instance LISTENs on one connection, fans out
 *   through its own PubSub, and checks that connection with a heartbeat, re-LISTENing (and
 *   telling subscribers to re-read) if it is lost. Both also hand their own commits' entries
 *   to their subscribers with the announcement, so those need not read them back.
 *
 * Transactions hold only SQL: no network, no waiting on other fibers (SQLite's single
 * connection would deadlock).
 */
import { Migrator, SqlClient } from "@effect/sql"
import {
  Clock,
  Data,
  Deferred,
  Effect,
  Exit,
  HashMap,
  Layer,
  HashSet,
  PubSub,
  Queue,
  Schema,
  type Scope
} from "effect"
import { bytesEqual, sha256Hex } from "../domain/Bytes.ts"
import type { InboxState } from "../domain/IdentityLog.ts"
import type { InboxId, InstallationId } from "../domain/Ids.ts"
import { IdentityUpdate, IdentityUpdateEnvelope } from "../domain/Wire.ts"
import {
  type AppendIdentityResult,
  type CurrentInstallation,
  DeliveryStore,
  DeliveryStoreError,
  type StoredEntry,
  type Topic,
  type TopicChange
} from "../services/DeliveryStore.ts"
import { MAX_PAGE_BYTES, SPAN } from "./DeliveryRequests.ts"
import { endOfTurn, makeTurnBatcher } from "./TurnBatcher.ts"

type Service = DeliveryStore["Type"]



export const migrationsTable = "converge_ds_migrations"

// ---- schema ----

const createTables = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const bytes = sql.onDialectOrElse({ pg: () => sql.literal("BYTEA"), orElse: () => sql.literal("BLOB") })
  const serial = sql.onDialectOrElse({
    pg: () => sql.literal("BIGSERIAL PRIMARY KEY"),
    orElse: () => sql.literal("INTEGER PRIMARY KEY AUTOINCREMENT")
  })
  // Timestamps are nanoseconds (beyond 2^53), kept as decimal text so both drivers return them exactly.
  yield* sql`CREATE TABLE ds_topics (
    topic TEXT PRIMARY KEY,
    last_sequence_id BIGINT NOT NULL,
    last_time_ns TEXT NOT NULL
  )`
  yield* sql`CREATE TABLE ds_envelopes (
    topic TEXT NOT NULL,
    sequence_id BIGINT NOT NULL,
    server_time_ns TEXT NOT NULL,
    digest TEXT NOT NULL,
    payload ${bytes} NOT NULL,
    PRIMARY KEY (topic, sequence_id)
  )`
  yield* sql`CREATE INDEX ds_envelopes_digest ON ds_envelopes (topic, digest)`
  yield* sql`CREATE TABLE ds_inboxes (
    inbox_id TEXT PRIMARY KEY,
    root_public_key TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    head_hash TEXT NOT NULL,
    last_time_ns TEXT NOT NULL
  )`
  yield* sql`CREATE TABLE ds_identity_updates (
    id ${serial},
    inbox_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    server_time_ns TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (inbox_id, sequence)
  )`
  yield* sql`CREATE TABLE ds_installations (
    installation_id TEXT PRIMARY KEY,
    inbox_id TEXT NOT NULL,
    signature_public_key TEXT NOT NULL
  )`
  yield* sql`CREATE INDEX ds_installations_inbox ON ds_installations (inbox_id)`
  yield* sql`CREATE TABLE ds_revoked (
    inbox_id TEXT NOT NULL,
    installation_id TEXT NOT NULL,
    PRIMARY KEY (inbox_id, installation_id)
  )`
  yield* sql`CREATE TABLE ds_key_packages (
    installation_id TEXT PRIMARY KEY,
    key_package ${bytes} NOT NULL
  )`
})

export const migrations = Migrator.fromRecord({ "0001_create_tables": createTables })

/** Runs the store's migrations; concurrent servers starting on a fresh Postgres may race, so retry. */
export const migrate = Migrator.make({})({ loader: migrations, table: migrationsTable }).pipe(
  Effect.retry({ times: 3 }),
  Effect.mapError((cause) => new DeliveryStoreError({ operation: "migrate", cause }))
)

// ---- rows ----

/** Largest value of a signed 64-bit column: cursors above it can only be past the end. */
const MAX_INT64 = 9_223_372_036_854_775_807n

/** Drivers return BIGINT as string (pg) or number (SQLite), and text as text. */
const big = (value: unknown): bigint => BigInt(value as string | number | bigint)

/** Drivers return blobs as Buffers; hand out plain, unshared Uint8Arrays. */
const bytesOf = (value: unknown): Uint8Array => {
  const view = value as Uint8Array
  return new Uint8Array(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength))
}

const IdentityUpdateJson = Schema.parseJson(IdentityUpdate)
const encodeUpdate = Schema.encodeSync(IdentityUpdateJson)
const decodeUpdate = Schema.decodeUnknown(IdentityUpdateJson)

/** Rolls back an identity append whose installation is taken. */
class InstallationTaken extends Data.TaggedError("InstallationTaken")<{ readonly owner: InboxId }> {}

// ---- the store ----

export interface Announcer {
  /** Runs inside the append transaction (Postgres: `pg_notify`, sent on commit). */
  readonly inTransaction: (changes: ReadonlyArray<TopicChange>) => Effect.Effect<void, unknown>
  /** Runs after the commit (SQLite: the in-process PubSub). */
  readonly afterCommit: (changes: ReadonlyArray<TopicChange>) => Effect.Effect<void>
  /** Runs when a transaction that announced `inTransaction` failed (rolled back, or its outcome is unknown). */
  readonly afterFailure?: (changes: ReadonlyArray<TopicChange>) => Effect.Effect<void>
  readonly changes: Effect.Effect<Queue.Dequeue<TopicChange>, never, Scope.Scope>
}

/** The store on any `SqlClient`, announcing changes through `announcer`; a read returns at most `maxPageBytes` of payload. */
export const makeWith = (
  announcer: Announcer,
  maxPageBytes: number
): Effect.Effect<Service, never, SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // Postgres READ COMMITTED takes a fresh snapshot per statement: lock the rows a decision
    // rests on. SQLite runs one transaction at a time and knows neither clause.
    const forUpdate = sql.onDialectOrElse({ pg: () => sql.literal("FOR UPDATE"), orElse: () => sql.literal("") })
    const forShare = sql.onDialectOrElse({ pg: () => sql.literal("FOR SHARE"), orElse: () => sql.literal("") })

    const failed = (operation: string) => <A, E, R>(effect: Effect.Effect<A, E, R>) =>
      effect.pipe(
        Effect.mapError((cause) => new DeliveryStoreError({ operation, cause })),
        Effect.withSpan(`DeliveryStore.${operation}`, SPAN)
      )

    /** An append waiting for the next write transaction; its digests are hashed before it queues. */
    interface Waiting {
      readonly entries: ReadonlyArray<{ readonly topic: Topic; readonly payload: Uint8Array }>
      readonly digests: ReadonlyArray<string>
      readonly done: Deferred.Deferred<ReadonlyArray<StoredEntry>, DeliveryStoreError>
    }
    /**
     * Group commit: appends that arrive while a write transaction runs queue here, and the next
     * writer stores them all in one transaction (one commit, one flush), each caller getting
     * its own entries back. Ids stay per topic, gap-free and in order: one transaction at a
     * time allocates them, in queue order.
     */
    const waiting: Array<Waiting> = []
    const writer = yield* Effect.makeSemaphore(1)
    /** Entries per group-commit transaction (an append bigger than this still goes whole). */
    const MAX_GROUP_ENTRIES = 500

    /** Stores the appends of one group commit in one transaction; one result per append. */
    const appendGroup = (group: ReadonlyArray<Waiting>) =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeNanos
        const all = group.flatMap((w) => w.entries.map((entry, i) => ({ ...entry, digest: w.digests[i]! })))
        const topics = Array.from(new Set(all.map((e) => e.topic))).sort()
        let announcedInTransaction: ReadonlyArray<TopicChange> = []
        const { results, grown } = yield* sql.withTransaction(Effect.gen(function*() {
          // Lock each topic's counter (creating it) in a fixed order, and read its head: one
          // statement per 200 topics, whose rows Postgres locks in the (sorted) order given.
          const heads = new Map<Topic, { sequenceId: bigint; timeNs: bigint }>()
          for (let i = 0; i < topics.length; i += 200) {
            const fresh = topics.slice(i, i + 200).map((topic) => ({ topic, last_sequence_id: 0, last_time_ns: "0" }))
            const rows = yield* sql<{ topic: Topic; last_sequence_id: unknown; last_time_ns: unknown }>`
              INSERT INTO ds_topics ${sql.insert(fresh)}
              ON CONFLICT (topic) DO UPDATE SET last_sequence_id = ds_topics.last_sequence_id
              RETURNING topic, last_sequence_id, last_time_ns`
            for (const head of rows) {
              heads.set(head.topic, { sequenceId: big(head.last_sequence_id), timeNs: big(head.last_time_ns) })
            }
          }
          for (const topic of topics) {
            if (!heads.has(topic)) return yield* Effect.dieMessage(`no counter row for topic ${topic}`)
          }
          // Idempotent resend: an identical payload already on the topic (committed, or earlier
          // in this transaction) comes back as it was stored. One query for the whole group.
          const earlier = new Map<string, Array<StoredEntry>>()
          const key = (topic: Topic, digest: string) => `${topic} ${digest}`
          const digests = Array.from(new Set(all.map((e) => e.digest)))
          for (let i = 0; i < digests.length; i += 500) {
            const rows = yield* sql<{ topic: Topic; digest: string; sequence_id: unknown; server_time_ns: unknown; payload: unknown }>`
              SELECT topic, digest, sequence_id, server_time_ns, payload FROM ds_envelopes
              WHERE ${sql.in("topic", topics)} AND ${sql.in("digest", digests.slice(i, i + 500))} ORDER BY sequence_id`
            for (const row of rows) {
              const stored = { topic: row.topic, sequenceId: big(row.sequence_id), serverTimeNs: big(row.server_time_ns), payload: bytesOf(row.payload) }
              earlier.set(key(row.topic, row.digest), [...(earlier.get(key(row.topic, row.digest)) ?? []), stored])
            }
          }
          const rows: Array<{ topic: Topic; sequence_id: bigint; server_time_ns: string; digest: string; payload: Uint8Array }> = []
          const grown = new Map<Topic, bigint>()
          const fresh: Array<StoredEntry> = []
          const results = group.map((w) =>
            w.entries.map(({ payload, topic }, index): StoredEntry => {
              const digest = w.digests[index]!
              const duplicate = earlier.get(key(topic, digest))?.find((e) => bytesEqual(e.payload, payload))
              if (duplicate !== undefined) return duplicate
              const head = heads.get(topic)!
              const sequenceId = head.sequenceId + 1n
              // Never let a topic's timestamps go backwards, even if a server's clock does.
              const timeNs = now > head.timeNs ? now : head.timeNs
              const entry: StoredEntry = { topic, sequenceId, serverTimeNs: timeNs, payload: payload.slice() }
              rows.push({ topic, sequence_id: sequenceId, server_time_ns: String(timeNs), digest, payload: entry.payload })
              fresh.push(entry)
              heads.set(topic, { sequenceId, timeNs })
              grown.set(topic, sequenceId)
              earlier.set(key(topic, digest), [...(earlier.get(key(topic, digest)) ?? []), entry])
              return entry
            })
          )
          // 5 parameters a row: 100 rows stay far below every driver's parameter limit.
          for (let i = 0; i < rows.length; i += 100) {
            yield* sql`INSERT INTO ds_envelopes ${sql.insert(rows.slice(i, i + 100))}`
          }
          // The new heads, one statement per 200 topics (the rows exist and are locked).
          const advanced = Array.from(grown, ([topic, sequenceId]) => ({
            topic,
            last_sequence_id: sequenceId,
            last_time_ns: String(heads.get(topic)!.timeNs)
          }))
          for (let i = 0; i < advanced.length; i += 200) {
            yield* sql`INSERT INTO ds_topics ${sql.insert(advanced.slice(i, i + 200))}
              ON CONFLICT (topic) DO UPDATE
              SET last_sequence_id = excluded.last_sequence_id, last_time_ns = excluded.last_time_ns`
          }
          const added = new Map<Topic, Array<StoredEntry>>()
          for (const entry of fresh) added.set(entry.topic, [...(added.get(entry.topic) ?? []), entry])
          const changes = Array.from(grown, ([topic, sequenceId]): TopicChange => ({ topic, sequenceId, entries: added.get(topic)! }))
          if (changes.length > 0) {
            announcedInTransaction = changes
            yield* announcer.inTransaction(changes)
          }
          return { results, grown: changes }
        })).pipe(
          Effect.tapErrorCause(() =>
            announcer.afterFailure === undefined || announcedInTransaction.length === 0
              ? Effect.void
              : announcer.afterFailure(announcedInTransaction)
          )
        )
        if (grown.length > 0) yield* announcer.afterCommit(grown)
        return results
      }).pipe(Effect.mapError((cause) => new DeliveryStoreError({ operation: "append", cause })))

    /**
     * Takes the oldest waiting appends (at most `MAX_GROUP_ENTRIES` entries, at least one append)
     * and settles them. If their shared transaction fails, each is retried alone, so one bad
     * append fails only its own caller. Uninterruptible: others wait on the outcome.
     */
    const writeNextGroup = Effect.uninterruptible(Effect.gen(function*() {
      let count = 0
      let size = 0
      while (count < waiting.length && (count === 0 || size + waiting[count]!.entries.length <= MAX_GROUP_ENTRIES)) {
        size += waiting[count]!.entries.length
        count++
      }
      const group = waiting.splice(0, count)
      // An exit, not an either: a defect must reach the waiters too, or they would wait forever.
      const together = yield* Effect.exit(appendGroup(group))
      if (Exit.isSuccess(together)) {
        for (const [i, w] of group.entries()) yield* Deferred.succeed(w.done, together.value[i]!)
        return
      }
      if (group.length === 1) return yield* Deferred.failCause(group[0]!.done, together.cause)
      for (const w of group) yield* Deferred.complete(w.done, Effect.map(appendGroup([w]), (r) => r[0]!))
    }))

    const append: Service["append"] = (entries) =>
      Effect.gen(function*() {
        if (entries.length === 0) return []
        // Hashed before queueing: the writer holds the topics' locks (SQLite: the only writer).
        const self: Waiting = {
          entries,
          digests: entries.map((e) => sha256Hex(e.payload)),
          done: yield* Deferred.make<ReadonlyArray<StoredEntry>, DeliveryStoreError>()
        }
        waiting.push(self)
        // SQLite's driver is synchronous: a writer that started at once would commit before any
        // other request of this turn was even decoded, one transaction per append. Waiting for
        // the end of this event-loop turn lets every append of the turn share its commit.
        yield* endOfTurn
        // Whoever holds the writer stores everything queued so far; an append already stored
        // by an earlier writer only collects its result.
        yield* writer.withPermits(1)(Effect.suspend(function loop(): Effect.Effect<void> {
          return waiting.includes(self) ? Effect.zipRight(writeNextGroup, Effect.suspend(loop)) : Effect.void
        })).pipe(
          // A caller gone before any writer took its append: nothing of it is stored.
          Effect.onInterrupt(() =>
            Effect.sync(() => {
              const at = waiting.indexOf(self)
              if (at >= 0) waiting.splice(at, 1)
            })
          )
        )
        return yield* Deferred.await(self.done)
      }).pipe(Effect.withSpan("DeliveryStore.append", SPAN))

    /**
     * Reads sizes first (neither driver loads a blob to measure it), then only the payloads
     * that fit in `maxPageBytes`: at least one entry, and none past the first that would
     * overflow. Entries are never removed, so the second read sees what the first measured.
     */
    const read: Service["read"] = (topic, afterSequenceId, limit) =>
      Effect.gen(function*() {
        if (afterSequenceId >= MAX_INT64 || limit <= 0) return []
        const after = afterSequenceId < 0n ? 0n : afterSequenceId
        const sizes = yield* sql<{ sequence_id: unknown; size: unknown }>`
          SELECT sequence_id, length(payload) AS size FROM ds_envelopes
          WHERE topic = ${topic} AND sequence_id > ${after}
          ORDER BY sequence_id LIMIT ${limit}`
        let bytes = 0
        let through: unknown = undefined
        for (const row of sizes) {
          bytes += Number(row.size)
          if (through !== undefined && bytes > maxPageBytes) break
          through = row.sequence_id
        }
        if (through === undefined) return []
        const rows = yield* sql<{ sequence_id: unknown; server_time_ns: unknown; payload: unknown }>`
          SELECT sequence_id, server_time_ns, payload FROM ds_envelopes
          WHERE topic = ${topic} AND sequence_id > ${after} AND sequence_id <= ${big(through)}
          ORDER BY sequence_id`
        return rows.map((row): StoredEntry => ({
          topic,
          sequenceId: big(row.sequence_id),
          serverTimeNs: big(row.server_time_ns),
          payload: bytesOf(row.payload)
        }))
      }).pipe(failed("read"))

    // ---- identity ----

    const loadInbox: Service["loadInbox"] = (inboxId) =>
      sql.withTransaction(Effect.gen(function*() {
        // Locking the head row first makes the reads below see one log head: an append holds
        // it (FOR UPDATE) from before it touches installations until it commits.
        const [inbox] = yield* sql<{ root_public_key: string; sequence: unknown; head_hash: string }>`
          SELECT root_public_key, sequence, head_hash FROM ds_inboxes WHERE inbox_id = ${inboxId} ${forShare}`
        if (inbox === undefined) return undefined
        const installations = yield* sql<{ installation_id: InstallationId; signature_public_key: string }>`
          SELECT installation_id, signature_public_key FROM ds_installations WHERE inbox_id = ${inboxId}`
        const revoked = yield* sql<{ installation_id: InstallationId }>`
          SELECT installation_id FROM ds_revoked WHERE inbox_id = ${inboxId}`
        const state: InboxState = {
          inboxId,
          rootPublicKey: inbox.root_public_key,
          installations: HashMap.fromIterable(
            installations.map((row) => [row.installation_id, row.signature_public_key] as const)
          ),
          revoked: HashSet.fromIterable(revoked.map((row) => row.installation_id)),
          sequence: Number(inbox.sequence),
          headHash: inbox.head_hash
        }
        return state
      })).pipe(failed("loadInbox"))

    const appendIdentityUpdate: Service["appendIdentityUpdate"] = (update, headHash) =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeNanos
        const inboxId = update.inboxId
        const action = update.action
        const body = encodeUpdate(update)
        return yield* sql.withTransaction(Effect.gen(function*() {
          let timeNs = now
          if (action._tag === "CreateInbox") {
            const created = yield* sql`
              INSERT INTO ds_inboxes (inbox_id, root_public_key, sequence, head_hash, last_time_ns)
              VALUES (${inboxId}, ${action.rootPublicKey}, ${update.sequence}, ${headHash}, ${String(now)})
              ON CONFLICT (inbox_id) DO NOTHING RETURNING inbox_id`
            if (created.length === 0) return { _tag: "Stale" } as const
          } else {
            const [head] = yield* sql<{ sequence: unknown; head_hash: string; last_time_ns: unknown }>`
              SELECT sequence, head_hash, last_time_ns FROM ds_inboxes WHERE inbox_id = ${inboxId} ${forUpdate}`
            if (
              head === undefined || Number(head.sequence) !== update.sequence - 1 ||
              head.head_hash !== update.previousHash
            ) return { _tag: "Stale" } as const
            const last = big(head.last_time_ns)
            timeNs = now > last ? now : last
            yield* sql`UPDATE ds_inboxes
              SET sequence = ${update.sequence}, head_hash = ${headHash}, last_time_ns = ${String(timeNs)}
              WHERE inbox_id = ${inboxId}`
          }
          if (action._tag === "AddInstallation") {
            // One inbox per installation: the primary key decides between concurrent claims.
            const claimed = yield* sql`
              INSERT INTO ds_installations (installation_id, inbox_id, signature_public_key)
              VALUES (${action.installationId}, ${inboxId}, ${action.signaturePublicKey})
              ON CONFLICT (installation_id) DO NOTHING RETURNING installation_id`
            if (claimed.length === 0) {
              const [owner] = yield* sql<{ inbox_id: InboxId }>`
                SELECT inbox_id FROM ds_installations WHERE installation_id = ${action.installationId}`
              return yield* new InstallationTaken({ owner: owner?.inbox_id ?? inboxId })
            }
          }
          if (action._tag === "RevokeInstallation") {
            // A revoked installation may no longer be added to groups: its key package goes.
            yield* sql`DELETE FROM ds_installations
              WHERE installation_id = ${action.installationId} AND inbox_id = ${inboxId}`
            yield* sql`INSERT INTO ds_revoked (inbox_id, installation_id) VALUES (${inboxId}, ${action.installationId})
              ON CONFLICT (inbox_id, installation_id) DO NOTHING`
            yield* sql`DELETE FROM ds_key_packages WHERE installation_id = ${action.installationId}`
          }
          const [row] = yield* sql<{ id: unknown }>`
            INSERT INTO ds_identity_updates (inbox_id, sequence, server_time_ns, body)
            VALUES (${inboxId}, ${update.sequence}, ${String(timeNs)}, ${body}) RETURNING id`
          if (row === undefined) return yield* Effect.dieMessage("identity update insert returned no id")
          const envelope = new IdentityUpdateEnvelope({ sequenceId: big(row.id), serverTimeNs: timeNs, update })
          return { _tag: "Appended", envelope } as const
        }))
      }).pipe(
        Effect.catchTag(
          "InstallationTaken",
          (taken): Effect.Effect<AppendIdentityResult> => Effect.succeed({ _tag: "InstallationTaken", owner: taken.owner })
        ),
        failed("appendIdentityUpdate")
      )

    /**
     * Every request is authenticated against its installation's current key, so this runs once
     * per request: the lookups of one event-loop turn share one query.
     */
    const installations = makeTurnBatcher((ids: ReadonlyArray<InstallationId>) =>
      Effect.gen(function*() {
        const found = new Map<InstallationId, CurrentInstallation>()
        for (let i = 0; i < ids.length; i += 500) {
          const rows = yield* sql<{ installation_id: InstallationId; inbox_id: InboxId; signature_public_key: string }>`
            SELECT installation_id, inbox_id, signature_public_key FROM ds_installations
            WHERE ${sql.in("installation_id", ids.slice(i, i + 500))}`
          for (const row of rows) {
            found.set(row.installation_id, { inboxId: row.inbox_id, signaturePublicKey: row.signature_public_key })
          }
        }
        return found
      }).pipe(failed("installation"))
    )
    const installation: Service["installation"] = installations

    const identityUpdates: Service["identityUpdates"] = (inboxId, afterSequence) =>
      Effect.gen(function*() {
        const rows = yield* sql<{ id: unknown; server_time_ns: unknown; body: string }>`
          SELECT id, server_time_ns, body FROM ds_identity_updates
          WHERE inbox_id = ${inboxId} AND sequence > ${afterSequence} ORDER BY sequence`
        return yield* Effect.forEach(rows, (row) =>
          Effect.map(decodeUpdate(row.body), (update) =>
            new IdentityUpdateEnvelope({ sequenceId: big(row.id), serverTimeNs: big(row.server_time_ns), update })))
      }).pipe(failed("identityUpdates"))

    const identityChanges: Service["identityChanges"] = (cursors, limit) =>
      Effect.gen(function*() {
        if (cursors.length === 0 || limit <= 0) return []
        // One range per inbox on the (inbox_id, sequence) index, OR-ed: nothing new is one cheap read.
        const ranges = cursors.map((c) => sql`(inbox_id = ${c.inboxId} AND sequence > ${c.afterSequence})`)
        const rows = yield* sql<{ id: unknown; server_time_ns: unknown; body: string }>`
          SELECT id, server_time_ns, body FROM ds_identity_updates
          WHERE ${sql.or(ranges)} ORDER BY inbox_id, sequence LIMIT ${limit}`
        return yield* Effect.forEach(rows, (row) =>
          Effect.map(decodeUpdate(row.body), (update) =>
            new IdentityUpdateEnvelope({ sequenceId: big(row.id), serverTimeNs: big(row.server_time_ns), update })))
      }).pipe(failed("identityChanges"))

    // ---- key packages ----

    const putKeyPackage: Service["putKeyPackage"] = (installationId, inboxId, keyPackage) =>
      sql.withTransaction(Effect.gen(function*() {
        // Share-locking the owner row makes a concurrent revocation wait for this upload (and
        // then delete it), or this upload see the revocation.
        const [owner] = yield* sql<{ inbox_id: InboxId }>`
          SELECT inbox_id FROM ds_installations WHERE installation_id = ${installationId} ${forShare}`
        if (owner?.inbox_id !== inboxId) return false
        const stored = keyPackage.slice()
        yield* sql`INSERT INTO ds_key_packages (installation_id, key_package) VALUES (${installationId}, ${stored})
          ON CONFLICT (installation_id) DO UPDATE SET key_package = excluded.key_package`
        return true
      })).pipe(failed("putKeyPackage"))

    const getKeyPackages: Service["getKeyPackages"] = (installationIds) =>
      Effect.gen(function*() {
        const found = new Map<InstallationId, Uint8Array>()
        const unique = Array.from(new Set(installationIds))
        for (let i = 0; i < unique.length; i += 500) {
          const rows = yield* sql<{ installation_id: InstallationId; key_package: unknown }>`
            SELECT installation_id, key_package FROM ds_key_packages
            WHERE ${sql.in("installation_id", unique.slice(i, i + 500))}`
          for (const row of rows) found.set(row.installation_id, bytesOf(row.key_package))
        }
        return found as ReadonlyMap<InstallationId, Uint8Array>
      }).pipe(failed("getKeyPackages"))

    return {
      append,
      read,
      changes: announcer.changes,
      loadInbox,
      appendIdentityUpdate,
      installation,
      identityUpdates,
      identityChanges,
      putKeyPackage,
      getKeyPackages
    }
  })

// ---- SQLite ----

/**
 * The store on SQLite: appends are announced through an in-process PubSub after commit.
 * `maxPageBytes` caps the payload bytes of one read (default `MAX_PAGE_BYTES`).
 */
export const makeSqlite = (
  maxPageBytes: number = MAX_PAGE_BYTES
): Effect.Effect<Service, DeliveryStoreError, SqlClient.SqlClient | Scope.Scope> =>
  Effect.gen(function*() {
    // An acknowledged append survives a power loss: SQLite opens a file already in WAL mode
    // with synchronous=NORMAL, which could undo it and hand its id to another message.
    const sql = yield* SqlClient.SqlClient
    yield* sql`PRAGMA synchronous = FULL`.pipe(
      Effect.mapError((cause) => new DeliveryStoreError({ operation: "open", cause }))
    )
    yield* migrate
    const pubsub = yield* Effect.acquireRelease(PubSub.unbounded<TopicChange>(), PubSub.shutdown)
    return yield* makeWith({
      inTransaction: () => Effect.void,
      afterCommit: (changes) => PubSub.publishAll(pubsub, changes),
      changes: PubSub.subscribe(pubsub)
    }, maxPageBytes)
  })

/** Embedded SQLite (`@effect/sql-sqlite-node`): one server process; changes go through an in-process PubSub. */
export const layerSqlite: Layer.Layer<DeliveryStore, DeliveryStoreError, SqlClient.SqlClient> = Layer.scoped(
  DeliveryStore,
  makeSqlite()
)

