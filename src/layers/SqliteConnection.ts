/**
 * The client's SQLite: one better-sqlite3 connection, served as @effect/sql's `SqlClient` (every
 * repository's statements and transactions) and as `SqliteLane`, which runs a compiled statement
 * in one step. `SqliteClient.layer` of `@effect/sql-sqlite-node` costs about 100 runtime steps and
 * 36 KiB of garbage per statement (a span, a scope, a permit and a cache lookup around a call that
 * takes half a microsecond); a `send` runs nine. The lane keeps @effect/sql's compiler, its errors
 * and its transactions: a statement runs inside the transaction of its fiber, or at once when no
 * transaction holds the connection, or else after that transaction ends.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import { SqlClient } from "@effect/sql"
import type { Connection } from "@effect/sql/SqlConnection"
import { SqlError } from "@effect/sql/SqlError"
import * as Statement from "@effect/sql/Statement"
import Sqlite from "better-sqlite3"
import { Context, Effect, Layer, type Scope } from "effect"
import { LruCache } from "../domain/LruCache.ts"

/** Runs compiled statements on the client's connection without @effect/sql's per-statement machinery. */
export class SqliteLane extends Context.Tag("converge/SqliteLane")<SqliteLane, {
  /** The statement's rows (none for a write), decoded by the caller; integers as `SafeIntegers` says. */
  readonly execute: <A extends object = SqlRow>(
    statement: Statement.Statement<A>
  ) => Effect.Effect<ReadonlyArray<A>, SqlError>
}>() {}

/** A row as SQLite returns it. */
export type SqlRow = { readonly [column: string]: unknown }

export interface SqliteConnectionOptions {
  readonly filename: string
  /** Prepared statements kept (least recently used dropped beyond). Default 200. */
  readonly prepareCacheSize?: number
}

const failed = (cause: unknown, message: string) => new SqlError({ cause, message })

const safeIntegersIn = (context: Context.Context<never>) => Context.get(context, SqlClient.SafeIntegers)

/** The database's statements, prepared once each (least recently used dropped beyond `size`). */
const preparedStatements = (db: Sqlite.Database, size: number) => {
  const cache = new LruCache<Sqlite.Statement>(size)
  return (sql: string): Sqlite.Statement => {
    let statement = cache.get(sql)
    if (statement === undefined) {
      statement = db.prepare(sql)
      cache.set(sql, statement)
    }
    return statement
  }
}

/** One statement, now: its rows for a reader, `[]` (or the driver's result when `raw`) for a write. */
const runNow = (
  statement: Sqlite.Statement,
  params: ReadonlyArray<unknown>,
  safeIntegers: boolean,
  raw: boolean
): Effect.Effect<any, SqlError> => {
  try {
    statement.safeIntegers(safeIntegers)
    if (statement.reader) return Effect.succeed(statement.all(...params))
    const result = statement.run(...params)
    return Effect.succeed(raw ? result : [])
  } catch (cause) {
    return Effect.fail(failed(cause, "Failed to execute statement"))
  }
}

/** The statement `sql` prepared, or why SQLite refused it. */
const preparing = (prepare: (sql: string) => Sqlite.Statement, sql: string) => {
  try {
    return prepare(sql)
  } catch (cause) {
    return failed(cause, "Failed to prepare statement")
  }
}

/** @effect/sql's view of the connection: what `SqlClient.make` runs its statements on. */
const connectionOver = (prepare: (sql: string) => Sqlite.Statement): Connection => {
  const run = (sql: string, params: ReadonlyArray<unknown>, raw: boolean) =>
    Effect.withFiberRuntime<any, SqlError>((fiber) => {
      const statement = preparing(prepare, sql)
      return statement instanceof SqlError
        ? Effect.fail(statement)
        : runNow(statement, params, safeIntegersIn(fiber.currentContext), raw)
    })
  const rows: Connection["execute"] = (sql, params, transformRows) =>
    transformRows ? Effect.map(run(sql, params, false), transformRows) : run(sql, params, false)
  return {
    execute: rows,
    executeRaw: (sql, params) => run(sql, params, true),
    executeValues: (sql, params) =>
      Effect.try({
        try: () => {
          const statement = prepare(sql)
          if (!statement.reader) {
            statement.run(...params)
            return []
          }
          statement.raw(true)
          try {
            return statement.all(...params) as ReadonlyArray<ReadonlyArray<unknown>>
          } finally {
            statement.raw(false)
          }
        },
        catch: (cause) => failed(cause, "Failed to execute statement")
      }),
    // BEGIN, COMMIT and SAVEPOINT come this way, twice a transaction: prepared once, like the rest.
    executeUnprepared: rows,
    executeStream: () => Effect.dieMessage("executeStream is not implemented for SQLite") as never
  }
}

export const make = (
  options: SqliteConnectionOptions
): Effect.Effect<{ readonly client: SqlClient.SqlClient; readonly lane: SqliteLane["Type"] }, SqlError, Scope.Scope> =>
  Effect.gen(function*() {
    const db = yield* Effect.acquireRelease(
      Effect.try({
        try: () => new Sqlite(options.filename),
        catch: (cause) => failed(cause, "Failed to open the database")
      }),
      (db) => Effect.sync(() => db.close())
    )
    yield* Effect.try({
      try: () => db.pragma("journal_mode = WAL"),
      catch: (cause) => failed(cause, "Failed to enter WAL mode")
    })
    const prepare = preparedStatements(db, options.prepareCacheSize ?? 200)
    const connection = connectionOver(prepare)

    // A transaction holds the connection from BEGIN to its end; `held` says so without a step.
    const lock = yield* Effect.makeSemaphore(1)
    let held = false
    const transactionAcquirer = Effect.uninterruptibleMask((restore) =>
      Effect.zipRight(
        restore(lock.take(1)),
        Effect.suspend(() => {
          held = true
          const release = Effect.suspend(() => {
            held = false
            return lock.release(1)
          })
          return Effect.as(Effect.addFinalizer(() => release), connection)
        })
      )
    )
    const client = yield* SqlClient.make({
      acquirer: lock.withPermits(1)(Effect.succeed(connection)),
      compiler: Statement.makeCompilerSqlite(),
      transactionAcquirer,
      spanAttributes: [["db.system.name", "sqlite"]]
    }).pipe(Effect.provide(Reactivity.layer))

    const inOwnTransaction = (context: Context.Context<never>) => {
      const transaction = Context.getOption(context, SqlClient.TransactionConnection)
      return transaction._tag === "Some" && transaction.value[0] === connection
    }
    const lane: SqliteLane["Type"] = {
      execute: <A extends object>(statement: Statement.Statement<A>) =>
        Effect.withFiberRuntime<ReadonlyArray<A>, SqlError>((fiber) => {
          const context = fiber.currentContext
          const [sql, params] = statement.compile()
          const prepared = preparing(prepare, sql)
          if (prepared instanceof SqlError) return Effect.fail(prepared)
          const now = () => runNow(prepared, params, safeIntegersIn(context), false)
          // Synchronous: nothing can begin or end a transaction while it runs.
          if (!held || inOwnTransaction(context)) return now()
          return lock.withPermits(1)(Effect.suspend(now))
        })
    }
    return { client, lane }
  })

/** `SqlClient` and `SqliteLane` over one connection to `filename` (WAL mode). */
export const layer = (options: SqliteConnectionOptions): Layer.Layer<SqlClient.SqlClient | SqliteLane, SqlError> =>
  Layer.scopedContext(
    Effect.map(make(options), ({ client, lane }) =>
      Context.make(SqlClient.SqlClient, client).pipe(Context.add(SqliteLane, lane)))
  )
