/**
 * The identity part of the SQL delivery store: inbox log heads (`ds_inboxes`), the log itself
 * (`ds_identity_updates`), current and revoked installations. An identity update is
 * compare-and-set on the inbox's log head: the caller verifies against `loadInbox`, the append
 * fails as `Stale` if the head moved meanwhile.
 */
import type { SqlClient } from "@effect/sql"
import { Clock, Data, Effect, HashMap, HashSet } from "effect"
import type { InboxState } from "../domain/IdentityLog.ts"
import type { InboxId, InstallationId } from "../domain/Ids.ts"
import { type IdentityUpdate, makeIdentityUpdateEnvelope } from "../domain/Wire.ts"
import type { AppendIdentityResult, CurrentInstallation, DeliveryStore } from "../services/DeliveryStore.ts"
import { failedCommitAsError } from "./FailedCommit.ts"
import { big, decodeUpdate, encodeUpdate, failed } from "./SqlDeliveryRows.ts"
import { makeTurnBatcher } from "./TurnBatcher.ts"

type Service = DeliveryStore["Type"]
type Sql = SqlClient.SqlClient

/**
 * Postgres READ COMMITTED takes a fresh snapshot per statement: lock the rows a decision
 * rests on. SQLite runs one transaction at a time and knows neither clause.
 */
export const rowLocks = (sql: Sql) => ({
  forUpdate: sql.onDialectOrElse({ pg: () => sql.literal("FOR UPDATE"), orElse: () => sql.literal("") }),
  forShare: sql.onDialectOrElse({ pg: () => sql.literal("FOR SHARE"), orElse: () => sql.literal("") })
})

type Locks = ReturnType<typeof rowLocks>

/** Rolls back an identity append whose installation is taken. */
class InstallationTaken extends Data.TaggedError("InstallationTaken")<{ readonly owner: InboxId }> {}

const loadInbox = (sql: Sql, { forShare }: Locks, inboxId: InboxId) =>
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
  })).pipe(failedCommitAsError, failed("loadInbox"))

/**
 * Moves the inbox's log head to `update` (creating the inbox for `CreateInbox`); `Stale` when
 * the head is not the one the update follows. The update's server time: never before the last.
 */
const advanceHead = (sql: Sql, { forUpdate }: Locks, update: IdentityUpdate, headHash: string, now: bigint) =>
  Effect.gen(function*() {
    const inboxId = update.inboxId
    const action = update.action
    if (action._tag === "CreateInbox") {
      const created = yield* sql`
              INSERT INTO ds_inboxes (inbox_id, root_public_key, sequence, head_hash, last_time_ns)
              VALUES (${inboxId}, ${action.rootPublicKey}, ${update.sequence}, ${headHash}, ${String(now)})
              ON CONFLICT (inbox_id) DO NOTHING RETURNING inbox_id`
      if (created.length === 0) return { _tag: "Stale" } as const
      return { _tag: "Advanced", timeNs: now } as const
    }
    const [head] = yield* sql<{ sequence: unknown; head_hash: string; last_time_ns: unknown }>`
              SELECT sequence, head_hash, last_time_ns FROM ds_inboxes WHERE inbox_id = ${inboxId} ${forUpdate}`
    if (
      head === undefined || Number(head.sequence) !== update.sequence - 1 ||
      head.head_hash !== update.previousHash
    ) return { _tag: "Stale" } as const
    const last = big(head.last_time_ns)
    const timeNs = now > last ? now : last
    yield* sql`UPDATE ds_inboxes
              SET sequence = ${update.sequence}, head_hash = ${headHash}, last_time_ns = ${String(timeNs)}
              WHERE inbox_id = ${inboxId}`
    return { _tag: "Advanced", timeNs } as const
  })

/** What the update does to installations: claims one (`InstallationTaken` if another inbox has it) or revokes one. */
const applyInstallationChange = (sql: Sql, update: IdentityUpdate) =>
  Effect.gen(function*() {
    const inboxId = update.inboxId
    const action = update.action
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
  })

const appendIdentityUpdate = (sql: Sql, locks: Locks, update: IdentityUpdate, headHash: string) =>
  Effect.gen(function*() {
    const now = yield* Clock.currentTimeNanos
    const inboxId = update.inboxId
    const body = encodeUpdate(update)
    return yield* sql.withTransaction(Effect.gen(function*() {
      const head = yield* advanceHead(sql, locks, update, headHash, now)
      if (head._tag === "Stale") return head
      const timeNs = head.timeNs
      yield* applyInstallationChange(sql, update)
      const [row] = yield* sql<{ id: unknown }>`
            INSERT INTO ds_identity_updates (inbox_id, sequence, server_time_ns, body)
            VALUES (${inboxId}, ${update.sequence}, ${String(timeNs)}, ${body}) RETURNING id`
      if (row === undefined) return yield* Effect.dieMessage("identity update insert returned no id")
      const envelope = makeIdentityUpdateEnvelope({ sequenceId: big(row.id), serverTimeNs: timeNs, update })
      return { _tag: "Appended", envelope } as const
    })).pipe(failedCommitAsError)
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
const makeInstallationLookup = (sql: Sql): Service["installation"] =>
  makeTurnBatcher((ids: ReadonlyArray<InstallationId>) =>
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

const identityUpdates = (sql: Sql, inboxId: InboxId, afterSequence: number) =>
  Effect.gen(function*() {
    const rows = yield* sql<{ id: unknown; server_time_ns: unknown; body: string }>`
          SELECT id, server_time_ns, body FROM ds_identity_updates
          WHERE inbox_id = ${inboxId} AND sequence > ${afterSequence} ORDER BY sequence`
    return yield* Effect.forEach(rows, (row) =>
      Effect.map(decodeUpdate(row.body), (update) =>
        makeIdentityUpdateEnvelope({ sequenceId: big(row.id), serverTimeNs: big(row.server_time_ns), update })))
  }).pipe(failed("identityUpdates"))

const identityChanges = (sql: Sql, cursors: Parameters<Service["identityChanges"]>[0], limit: number) =>
  Effect.gen(function*() {
    if (cursors.length === 0 || limit <= 0) return []
    // One range per inbox on the (inbox_id, sequence) index, OR-ed: nothing new is one cheap read.
    const ranges = cursors.map((c) => sql`(inbox_id = ${c.inboxId} AND sequence > ${c.afterSequence})`)
    const rows = yield* sql<{ id: unknown; server_time_ns: unknown; body: string }>`
          SELECT id, server_time_ns, body FROM ds_identity_updates
          WHERE ${sql.or(ranges)} ORDER BY inbox_id, sequence LIMIT ${limit}`
    return yield* Effect.forEach(rows, (row) =>
      Effect.map(decodeUpdate(row.body), (update) =>
        makeIdentityUpdateEnvelope({ sequenceId: big(row.id), serverTimeNs: big(row.server_time_ns), update })))
  }).pipe(failed("identityChanges"))

/** The identity operations of the store on `sql`. */
export const make = (sql: Sql, locks: Locks) => {
  const service: Pick<Service, "loadInbox" | "appendIdentityUpdate" | "installation" | "identityUpdates" | "identityChanges"> = {
    loadInbox: (inboxId) => loadInbox(sql, locks, inboxId),
    appendIdentityUpdate: (update, headHash) => appendIdentityUpdate(sql, locks, update, headHash),
    installation: makeInstallationLookup(sql),
    identityUpdates: (inboxId, afterSequence) => identityUpdates(sql, inboxId, afterSequence),
    identityChanges: (cursors, limit) => identityChanges(sql, cursors, limit)
  }
  return service
}
