/**
 * How the SQLite repositories run their statements: `run` (safe integers, the storage key, every
 * failure a `StorageError` naming the operation), and small helpers over the rows they return.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Context, Effect, Option, type ParseResult, Schema } from "effect"
import { StorageError } from "../domain/Errors.ts"
import { withDriverCause } from "../domain/FailureDetail.ts"
import { StorageKey } from "./StorageKey.ts"

/** A failure as the `StorageError` of `operation`, the driver's words included (`withDriverCause`). */
export const toStorageError = (operation: string) => (error: SqlError | ParseResult.ParseError | { readonly message: string }) =>
  new StorageError({ operation, detail: withDriverCause(error) })

const JournalMode = Schema.Array(Schema.Struct({ journal_mode: Schema.String }))
const DatabaseList = Schema.Array(Schema.Struct({ name: Schema.String, file: Schema.String }))

/**
 * The main database's file when the connection writes ahead to a log on disk (WAL mode), else
 * `undefined` (in memory, temporary, or another journal mode): what a WAL file's sync and
 * checkpoints work on.
 */
export const walDatabaseFile = (
  sql: SqlClient.SqlClient
): Effect.Effect<string | undefined, SqlError | ParseResult.ParseError> =>
  Effect.gen(function*() {
    const [mode] = yield* sql`PRAGMA journal_mode`.pipe(Effect.flatMap(Schema.decodeUnknown(JournalMode)))
    const databases = yield* sql`PRAGMA database_list`.pipe(Effect.flatMap(Schema.decodeUnknown(DatabaseList)))
    const file = databases.find((database) => database.name === "main")?.file ?? ""
    return mode?.journal_mode.toLowerCase() === "wal" && file !== "" ? file : undefined
  })

/** Consecutive slices of at most `size` (one statement each). */
export const chunksOf = <A>(items: ReadonlyArray<A>, size: number): Array<ReadonlyArray<A>> =>
  Array.from({ length: Math.ceil(items.length / size) }, (_, i) => items.slice(i * size, (i + 1) * size))

/** A stored row as SQLite returns it, before decoding. */
export type RawRow = { readonly [column: string]: unknown }

/** Runs a repository's statement: see `makeRun`. */
export type Run = <A>(
  operation: string,
  effect: Effect.Effect<A, SqlError | ParseResult.ParseError, StorageKey>
) => Effect.Effect<A, StorageError>

/** The `run` of a storage opened with `key`. */
export const makeRun = (key: StorageKey["Type"]): Run => {
  /**
   * Runs a statement with safe integers, mapping errors to `StorageError`. No span: these are
   * the hot paths of every sync, traced by the engine step that calls them.
   */
  const runContext = Context.make(SqlClient.SafeIntegers, true).pipe(Context.add(StorageKey, key))
  const run = <A>(operation: string, effect: Effect.Effect<A, SqlError | ParseResult.ParseError, StorageKey>) =>
    effect.pipe(
      // Both services in one context change: every statement pays for it.
      Effect.provide(runContext),
      Effect.mapError(toStorageError(operation))
    )
  return run
}

/** The first row, if any. */
export const first = <A>(rows: ReadonlyArray<A>) => Option.fromNullable(rows[0])
