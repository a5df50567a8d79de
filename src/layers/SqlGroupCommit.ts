/**
 * The append path of the SQL delivery store: group commit. Appends that arrive while a write
 * transaction runs queue, and the next writer stores them all in one transaction (one commit,
 * one flush), each caller getting its own entries back.
 *
 * Sequence ids come from a counter row per topic (`ds_topics`). A transaction locks the counter
 * rows of its topics (in sorted order, so two appends never deadlock) with an upsert that
 * returns the current head, inserts after it, advances the counter and commits. Ids stay per
 * topic, gap-free and in order: one transaction at a time allocates them, in queue order.
 */
import type { SqlClient } from "@effect/sql"
import { Clock, Deferred, Effect, Exit, FiberId, type Queue, type Scope } from "effect"
import { bytesEqual, sha256Hex } from "../domain/Bytes.ts"
import {
  ConditionalAppend,
  conditionalTopic,
  type DeliveryStore,
  DeliveryStoreError,
  type StoredEntry,
  type Topic,
  type TopicChange
} from "../services/DeliveryStore.ts"
import { serverSpan } from "./DeliveryRequests.ts"
import { failedCommitAsError } from "./FailedCommit.ts"
import { big, bytesOf } from "./SqlDeliveryRows.ts"
import { endOfTurn } from "./TurnBatcher.ts"

export interface Announcer {
  /** Runs inside the append transaction (Postgres: `pg_notify`, sent on commit). */
  readonly inTransaction: (changes: ReadonlyArray<TopicChange>) => Effect.Effect<void, unknown>
  /** Runs after the commit (SQLite: the in-process PubSub). */
  readonly afterCommit: (changes: ReadonlyArray<TopicChange>) => Effect.Effect<void>
  /** Runs when a transaction that announced `inTransaction` failed (rolled back, or its outcome is unknown). */
  readonly afterFailure?: (changes: ReadonlyArray<TopicChange>) => Effect.Effect<void>
  readonly changes: Effect.Effect<Queue.Dequeue<TopicChange>, never, Scope.Scope>
}

/**
 * An append waiting for the next write transaction; its digests are hashed before it queues.
 * `ifTopicEndsAt`: a conditional append (entries of one topic), stored only if its topic ends there then.
 */
interface Waiting {
  readonly entries: ReadonlyArray<{ readonly topic: Topic; readonly payload: Uint8Array }>
  readonly digests: ReadonlyArray<string>
  readonly ifTopicEndsAt?: bigint
  readonly done: Deferred.Deferred<Outcome, DeliveryStoreError>
}

/** An append's entries as stored, or where its topic ended instead (a conditional append refused). */
type Outcome = ReadonlyArray<StoredEntry> | Extract<ConditionalAppend, { _tag: "Moved" }>

/** Entries per group-commit transaction (an append bigger than this still goes whole). */
const MAX_GROUP_ENTRIES = 500

type Sql = SqlClient.SqlClient
type Head = { sequenceId: bigint; timeNs: bigint }
type Pending = { readonly topic: Topic; readonly payload: Uint8Array; readonly digest: string }
type EnvelopeRow = { topic: Topic; sequence_id: bigint; server_time_ns: string; digest: string; payload: Uint8Array }

/**
 * Locks each topic's counter (creating it) in a fixed order, and reads its head: one
 * statement per 200 topics, whose rows Postgres locks in the (sorted) order given.
 */
const lockHeads = (sql: Sql, topics: ReadonlyArray<Topic>) =>
  Effect.gen(function*() {
    const heads = new Map<Topic, Head>()
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
    return heads
  })

const key = (topic: Topic, digest: string) => `${topic} ${digest}`

/**
 * Idempotent resend: an identical payload already on the topic (committed, or earlier in this
 * transaction) comes back as it was stored. One query per 500 distinct (topic, digest) pairs,
 * each pair one probe of the (topic, digest) index: matching topics and digests as two lists
 * probed every topic against every digest (10 topics and 400 digests: 4,000 probes, 4 ms).
 */
const storedCopies = (sql: Sql, all: ReadonlyArray<Pending>) =>
  Effect.gen(function*() {
    const earlier = new Map<string, Array<StoredEntry>>()
    const pairs = Array.from(new Map(all.map((e) => [key(e.topic, e.digest), e])).values())
    for (let i = 0; i < pairs.length; i += 500) {
      const wanted = pairs.slice(i, i + 500).map((e) => sql`(${e.topic}, ${e.digest})`)
      const rows = yield* sql<{ topic: Topic; digest: string; sequence_id: unknown; server_time_ns: unknown; payload: unknown }>`
              SELECT topic, digest, sequence_id, server_time_ns, payload FROM ds_envelopes
              WHERE (topic, digest) IN (VALUES ${sql.csv(wanted)}) ORDER BY sequence_id`
      for (const row of rows) {
        const stored = { topic: row.topic, sequenceId: big(row.sequence_id), serverTimeNs: big(row.server_time_ns), payload: bytesOf(row.payload) }
        earlier.set(key(row.topic, row.digest), [...(earlier.get(key(row.topic, row.digest)) ?? []), stored])
      }
    }
    return earlier
  })

/**
 * Gives each new entry the next id (and a time not before the head's) of its topic, in queue
 * order; a duplicate gets its stored copy back. Advances `heads` and `earlier` as it goes.
 */
const allocate = (
  group: ReadonlyArray<Waiting>,
  heads: Map<Topic, Head>,
  earlier: Map<string, Array<StoredEntry>>,
  now: bigint
) => {
  const rows: Array<EnvelopeRow> = []
  const grown = new Map<Topic, bigint>()
  const fresh: Array<StoredEntry> = []
  const duplicateOf = (topic: Topic, digest: string, payload: Uint8Array) =>
    earlier.get(key(topic, digest))?.find((e) => bytesEqual(e.payload, payload))
  // Refused unless its topic ends where the caller says, or it is all a resend.
  const refused = (w: Waiting) => {
    if (w.ifTopicEndsAt === undefined) return undefined
    const head = heads.get(w.entries[0]!.topic)!.sequenceId
    if (head === w.ifTopicEndsAt) return undefined
    const resend = w.entries.every(({ payload, topic }, i) => duplicateOf(topic, w.digests[i]!, payload) !== undefined)
    return resend ? undefined : ConditionalAppend.Moved({ lastSequenceId: head })
  }
  const results = group.map((w): Outcome => {
    const moved = refused(w)
    if (moved !== undefined) return moved
    return w.entries.map(({ payload, topic }, index): StoredEntry => {
      const digest = w.digests[index]!
      const duplicate = duplicateOf(topic, digest, payload)
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
  })
  return { rows, grown, fresh, results }
}

/** Inserts the new envelopes and writes the topics' new heads (their rows exist and are locked). */
const writeAllocated = (sql: Sql, rows: ReadonlyArray<EnvelopeRow>, grown: ReadonlyMap<Topic, bigint>, heads: ReadonlyMap<Topic, Head>) =>
  Effect.gen(function*() {
    // 5 parameters a row: 100 rows stay far below every driver's parameter limit.
    for (let i = 0; i < rows.length; i += 100) {
      yield* sql`INSERT INTO ds_envelopes ${sql.insert(rows.slice(i, i + 100))}`
    }
    // The new heads, one statement per 200 topics.
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
  })

/** One change per grown topic, carrying the entries this transaction added to it. */
const changesOf = (fresh: ReadonlyArray<StoredEntry>, grown: ReadonlyMap<Topic, bigint>) => {
  const added = new Map<Topic, Array<StoredEntry>>()
  for (const entry of fresh) added.set(entry.topic, [...(added.get(entry.topic) ?? []), entry])
  return Array.from(grown, ([topic, sequenceId]): TopicChange => ({ topic, sequenceId, entries: added.get(topic)! }))
}

/** Stores the appends of one group commit in one transaction; one result per append. */
const appendGroup = (sql: Sql, announcer: Announcer, group: ReadonlyArray<Waiting>) =>
  Effect.gen(function*() {
    const now = yield* Clock.currentTimeNanos
    const all = group.flatMap((w) => w.entries.map((entry, i) => ({ ...entry, digest: w.digests[i]! })))
    const topics = Array.from(new Set(all.map((e) => e.topic))).sort()
    let announcedInTransaction: ReadonlyArray<TopicChange> = []
    const { results, grown } = yield* sql.withTransaction(Effect.gen(function*() {
      const heads = yield* lockHeads(sql, topics)
      const earlier = yield* storedCopies(sql, all)
      const allocated = allocate(group, heads, earlier, now)
      yield* writeAllocated(sql, allocated.rows, allocated.grown, heads)
      const changes = changesOf(allocated.fresh, allocated.grown)
      if (changes.length > 0) {
        announcedInTransaction = changes
        yield* announcer.inTransaction(changes)
      }
      return { results: allocated.results, grown: changes }
    })).pipe(
      failedCommitAsError,
      Effect.tapErrorCause(() =>
        announcer.afterFailure === undefined || announcedInTransaction.length === 0
          ? Effect.void
          : announcer.afterFailure(announcedInTransaction)
      )
    )
    if (grown.length > 0) yield* announcer.afterCommit(grown)
    return results
  }).pipe(Effect.mapError((cause) => new DeliveryStoreError({ operation: "append", cause })))

/** The store's `append` and `appendIf`: queue the entries; one writer per event-loop turn stores the queue in group commits. */
export const makeAppend = (sql: Sql, announcer: Announcer) =>
  Effect.sync(() => {
    const waiting: Array<Waiting> = []
    /** Whether a writer is scheduled or running: it stores everything queued until the queue is empty. */
    let writing = false

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
      const together = yield* Effect.exit(appendGroup(sql, announcer, group))
      if (Exit.isSuccess(together)) {
        for (const [i, w] of group.entries()) yield* Deferred.succeed(w.done, together.value[i]!)
        return
      }
      if (group.length === 1) return yield* Deferred.failCause(group[0]!.done, together.cause)
      for (const w of group) yield* Deferred.complete(w.done, Effect.map(appendGroup(sql, announcer, [w]), (r) => r[0]!))
    }))

    /** Group commits until nothing waits; the check and the reset are one step, so no append is missed. */
    const drain: Effect.Effect<void> = Effect.suspend(() => {
      if (waiting.length > 0) return Effect.zipRight(writeNextGroup, drain)
      writing = false
      return Effect.void
    })

    /**
     * SQLite's driver is synchronous: a writer that started at once would commit before any
     * other request of this turn was even decoded, one transaction per append. The writer
     * waits for the end of this event-loop turn, so every append of the turn shares its commit
     * (and, while it writes to Postgres, the appends that arrive meanwhile queue for the next).
     * It runs on a fiber of its own: callers only wait for their result, and one that goes away
     * does not stop a commit the others wait on.
     */
    const startWriter = Effect.forkDaemon(Effect.zipRight(endOfTurn, drain).pipe(
      // Never expected (every failure of a group reaches its waiters): no append may wait forever.
      Effect.onExit((exit) =>
        Exit.isSuccess(exit) ? Effect.void : Effect.suspend(() => {
          writing = false
          return Effect.forEach(waiting.splice(0), (w) => Deferred.failCause(w.done, exit.cause), { discard: true })
        })
      )
    ))

    // Queueing and starting the writer are one uninterruptible step: a caller interrupted between
    // them (at a scheduler yield) would leave `writing` set with no writer, and every later append
    // waiting forever. Only the wait for the result can be interrupted.
    const enqueue = (
      entries: ReadonlyArray<{ readonly topic: Topic; readonly payload: Uint8Array }>,
      ifTopicEndsAt?: bigint
    ) =>
      Effect.uninterruptibleMask((restore) => Effect.suspend(() => {
        // Hashed before queueing: the writer holds the topics' locks (SQLite: the only writer).
        const self: Waiting = {
          entries,
          digests: entries.map((e) => sha256Hex(e.payload)),
          ...(ifTopicEndsAt === undefined ? {} : { ifTopicEndsAt }),
          done: Deferred.unsafeMake<Outcome, DeliveryStoreError>(FiberId.none)
        }
        waiting.push(self)
        const result = restore(Deferred.await(self.done)).pipe(
          // A caller gone before the writer took its append: nothing of it is stored.
          Effect.onInterrupt(() =>
            Effect.sync(() => {
              const at = waiting.indexOf(self)
              if (at >= 0) waiting.splice(at, 1)
            })
          )
        )
        if (writing) return result
        writing = true
        return Effect.zipRight(startWriter, result)
      }))

    const append: DeliveryStore["Type"]["append"] = (entries) =>
      entries.length === 0 ? Effect.succeed([]) : enqueue(entries).pipe(
        // Only a conditional append is ever refused.
        Effect.flatMap((outcome) => "_tag" in outcome ? Effect.dieMessage("an unconditional append was refused") : Effect.succeed(outcome)),
        serverSpan("DeliveryStore.append")
      )
    const appendIf: DeliveryStore["Type"]["appendIf"] = (entries, ifTopicEndsAt) =>
      conditionalTopic(entries).pipe(
        Effect.zipRight(enqueue(entries, ifTopicEndsAt)),
        Effect.map((outcome) => "_tag" in outcome ? outcome : ConditionalAppend.Appended({ entries: outcome })),
        serverSpan("DeliveryStore.appendIf")
      )
    return { append, appendIf }
  })
