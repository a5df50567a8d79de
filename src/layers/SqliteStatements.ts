/**
 * How the SQLite repositories run their statements: `run` (safe integers, the storage key, every
 * failure a `StorageError` naming the operation), and small helpers over the rows they return.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import type * as Statement from "@effect/sql/Statement"
import { Context, Effect, Option, type ParseResult, Schema } from "effect"
import { StorageError } from "../domain/Errors.ts"
import { withDriverCause } from "../domain/FailureDetail.ts"
import type { SqliteLane } from "./SqliteConnection.ts"
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
export interface Run {
  <A>(
    operation: string,
    effect: Effect.Effect<A, SqlError | ParseResult.ParseError, StorageKey>
  ): Effect.Effect<A, StorageError>
  /**
   * A statement of the hot paths (a send, a queued message, a received page): in one step on the
   * connection's `SqliteLane` when the storage has one, else as @effect/sql runs it.
   */
  readonly exec: <A extends object>(statement: Statement.Statement<A>) => Effect.Effect<ReadonlyArray<A>, SqlError>
  /** `effect` with what every statement needs (safe integers, the storage key) provided once. */
  readonly withRunContext: <A, E, R>(
    effect: Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E, Exclude<R, StorageKey | SqlClient.SafeIntegers>>
}

/** How a hot statement runs: on `lane` when the connection has one, else as @effect/sql runs it. */
export const execOn = (lane: SqliteLane["Type"] | undefined): Run["exec"] =>
  lane === undefined ? (statement) => statement : lane.execute

/** The `run` of a storage opened with `key`, over `lane` if its connection has one. */
export const makeRun = (key: StorageKey["Type"], lane?: SqliteLane["Type"]): Run => {
  /**
   * Runs a statement with safe integers, mapping errors to `StorageError`. No span: these are
   * the hot paths of every sync, traced by the engine step that calls them.
   */
  const runContext = Context.make(SqlClient.SafeIntegers, true).pipe(Context.add(StorageKey, key))
  // A storage transaction provides both once (`withRunContext`): its statements skip the change.
  const provided = (context: Context.Context<never>) =>
    Context.get(context, SqlClient.SafeIntegers) &&
    Option.getOrUndefined(Context.getOption(context, StorageKey)) === key
  const run = <A>(operation: string, effect: Effect.Effect<A, SqlError | ParseResult.ParseError, StorageKey>) =>
    Effect.withFiberRuntime<A, StorageError>((fiber) => {
      const ready = provided(fiber.currentContext)
        ? (effect as Effect.Effect<A, SqlError | ParseResult.ParseError>)
        : Effect.provide(effect, runContext)
      return Effect.mapError(ready, toStorageError(operation))
    })
  const exec = execOn(lane)
  const withRunContext = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.provide(effect, runContext)
  return Object.assign(run, { exec, withRunContext })
}

/** The first row, if any. */
export const first = <A>(rows: ReadonlyArray<A>) => Option.fromNullable(rows[0])
