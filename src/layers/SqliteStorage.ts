/**
 * `Storage` over `@effect/sql` (SQLite). Integers are read as safe integers (bigint): times
 * are nanoseconds. Rows are decoded into the port's domain values by the repository modules
 * (`SqliteGroupStorage`, `SqliteMessageStorage`, `SqliteIntentStorage`, `SqliteCursorStorage`,
 * `SqliteIdentityStorage`, `SqliteHistoryStorage`, `SqliteRosterStorage`), stored JSON included;
 * a row that does not decode is logged, quarantined (an intent fails, its group is flagged, a
 * cursor starts over) and skipped (`SqliteQuarantine`), so one bad row never stops a group. Every failure is a
 * `StorageError` naming the operation. This module opens the database and assembles them.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Config, type ConfigError, Effect, Layer, Option, type Redacted } from "effect"
import { StorageError } from "../domain/Errors.ts"
import { Storage } from "../services/Storage.ts"
import { failedCommitAsError } from "./FailedCommit.ts"
import * as Migrations from "./Migrations.ts"
import * as SqliteCursorStorage from "./SqliteCursorStorage.ts"
import { SqliteLane } from "./SqliteConnection.ts"
import * as SqliteDurability from "./SqliteDurability.ts"
import * as SqliteGroupStorage from "./SqliteGroupStorage.ts"
import * as SqliteHistoryStorage from "./SqliteHistoryStorage.ts"
import * as SqliteIdentityStorage from "./SqliteIdentityStorage.ts"
import * as SqliteIntentStorage from "./SqliteIntentStorage.ts"
import * as SqliteMessageStorage from "./SqliteMessageStorage.ts"
import * as SqliteQuarantine from "./SqliteQuarantine.ts"
import * as SqliteRosterStorage from "./SqliteRosterStorage.ts"
import { makeRun, toStorageError } from "./SqliteStatements.ts"
import * as StorageKeys from "./StorageKey.ts"
import { SealedWith, StorageKey } from "./StorageKey.ts"

/** The storage; with a key, the secrets in it are sealed at rest (see `StorageKey`). */
export const makeWith = (key: StorageKey["Type"], options: SqliteStorageOptions = {}) => Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  // When commits reach the disk: before anything that depends on them leaves (SqliteDurability).
  const durability = yield* SqliteDurability.make(sql, options.durability ?? "publish")
  yield* Migrations.run.pipe(Effect.mapError(toStorageError("migrate")))
  // Deleted and expired messages are overwritten on disk, not only unlinked (SQLite only).
  yield* sql`PRAGMA secure_delete = ON`.pipe(Effect.ignore)

  // The hot paths' statements in one step when the connection has a lane (`SqliteConnection`).
  const run = makeRun(key, Option.getOrUndefined(yield* Effect.serviceOption(SqliteLane)))
  const quarantine = SqliteQuarantine.make(sql)
  const sealedWithKey = (column: string) => SealedWith(key, column)

  const { decodeGroups, groups } = SqliteGroupStorage.make(sql, run, sealedWithKey, quarantine)
  const { decodeMessages, messages } = SqliteMessageStorage.make(sql, run, quarantine)
  const intents = SqliteIntentStorage.make(sql, run, sealedWithKey, quarantine)
  const cursors = SqliteCursorStorage.make(sql, run, quarantine)
  const { identity, inboxLogs, keyPackages } = SqliteIdentityStorage.make(sql, run, sealedWithKey, quarantine)

  const transaction = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    // Safe integers and the key for all its statements at once (each would change the context).
    sql.withTransaction(run.withRunContext(effect)).pipe(
      failedCommitAsError,
      Effect.catchIf(
        (e): e is SqlError => (e as { _tag?: string })._tag === "SqlError",
        (e) => Effect.fail(toStorageError("transaction")(e))
      )
    ) as Effect.Effect<A, E | StorageError, R>

  const { consent, ensureFeedTriggers, history } = SqliteHistoryStorage.make(sql, run, decodeGroups, decodeMessages)
  yield* ensureFeedTriggers

  const rosters = SqliteRosterStorage.make(sql, run)
  // What opening wrote (migrations) survives a power loss before anything is sent.
  yield* durability.flush

  return Storage.of({
    groups,
    messages,
    intents,
    cursors,
    identity,
    keyPackages,
    inboxLogs,
    consent,
    history,
    rosters,
    transaction,
    flush: durability.flush,
    unflushedWrites: durability.unflushedWrites
  })
})

/** How the SQLite storage is opened. */
export interface SqliteStorageOptions {
  /**
   * When commits reach the disk (see `SqliteDurability`). Default `"publish"`: before anything
   * that depends on them leaves the device. `"commit"`: before each commit returns.
   */
  readonly durability?: SqliteDurability.Durability
}

const durabilityConfig = Config.literal("publish", "commit")("CONVERGE_DURABILITY").pipe(Config.withDefault("publish" as const))

/** The storage without a key: secrets are stored as they are. */
export const make = makeWith(StorageKey.none)

/** SQLite (or any `SqlClient`): runs the migrations, then serves the repositories. No storage key. */
export const layer: Layer.Layer<Storage, StorageError, SqlClient.SqlClient> = Layer.scoped(Storage, make)

/** The same, with the secrets sealed at rest under `key` (32 bytes; see `StorageKey`). */
export const layerWithKey = (
  key: Redacted.Redacted<Uint8Array>
): Layer.Layer<Storage, StorageError, SqlClient.SqlClient> => Layer.scoped(Storage, makeWith(Option.some(key)))

/** With options: a storage key to seal secrets under, and when commits reach the disk. */
export const layerWith = (
  options: SqliteStorageOptions & { readonly key?: Redacted.Redacted<Uint8Array> }
): Layer.Layer<Storage, StorageError, SqlClient.SqlClient> =>
  Layer.scoped(Storage, makeWith(Option.fromNullable(options.key), options))

/**
 * The key from `CONVERGE_STORAGE_KEY` (64 hex characters) if it is set, else none; the
 * durability from `CONVERGE_DURABILITY` (`publish` or `commit`), else `publish`.
 */
export const layerConfig: Layer.Layer<Storage, StorageError | ConfigError.ConfigError, SqlClient.SqlClient> = Layer
  .scoped(
    Storage,
    Effect.flatMap(
      Effect.all([StorageKeys.fromConfig, durabilityConfig]),
      ([key, durability]) => makeWith(key, { durability })
    )
  )
