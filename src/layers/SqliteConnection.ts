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
import { Context, Effect, Exit, FiberRef, Layer, type Scope } from "effect"
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

/** The connection's lock, as the lane and the transactions share it. */
interface ConnectionLock {
  readonly semaphore: Effect.Semaphore
  /** A transaction holds the connection from BEGIN to its end: the lane reads it without a step. */
  held: boolean
}

/** BEGIN, COMMIT or ROLLBACK now: `undefined`, or why SQLite refused it. */
const control = (prepare: (sql: string) => Sqlite.Statement, sql: "BEGIN" | "COMMIT" | "ROLLBACK"): SqlError | undefined => {
  try {
    prepare(sql).run()
    return undefined
  } catch (cause) {
    return failed(cause, `Failed to execute ${sql}`)
  }
}

/**
 * Ends the transaction as `exit` says. A refused COMMIT is a defect carrying its `SqlError`, as
 * @effect/sql has it (`FailedCommit` makes it an error); one that left the transaction open (a
 * deferred constraint) is rolled back first, so the connection goes on with nothing of it.
 */
const end = <A, E>(db: Sqlite.Database, prepare: (sql: string) => Sqlite.Statement, exit: Exit.Exit<A, E>) => {
  if (Exit.isFailure(exit)) {
    const refused = control(prepare, "ROLLBACK")
    return refused === undefined ? exit : Exit.die(refused)
  }
  const refused = control(prepare, "COMMIT")
  if (refused === undefined) return exit
  if (db.inTransaction) control(prepare, "ROLLBACK")
  return Exit.die(refused)
}

/**
 * `withTransaction` for an outermost transaction in a few runtime steps: @effect/sql's costs about
 * 90 of the 310 an optimistic send takes (a span, a scope with its finalizer, BEGIN and COMMIT as
 * effects). The same contract: the connection's lock from BEGIN to the end, the transaction's
 * connection in the context (its statements run on it; a nested `withTransaction` takes a
 * savepoint through @effect/sql), COMMIT on success, ROLLBACK on a failure, a defect or an
 * interruption. No `sql.transaction` span: the engine step around it has one.
 */
const outermostTransaction = (
  db: Sqlite.Database,
  prepare: (sql: string) => Sqlite.Statement,
  connection: Connection,
  lock: ConnectionLock
) =>
<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | SqlError, R> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.zipRight(
      restore(lock.semaphore.take(1)),
      Effect.withFiberRuntime<A, E | SqlError, R>((fiber) => {
        lock.held = true
        const release = (exit: Exit.Exit<A, E | SqlError>) =>
          Effect.suspend(() => {
            lock.held = false
            return Effect.zipRight(lock.semaphore.release(1), exit)
          })
        const began = control(prepare, "BEGIN")
        if (began !== undefined) return release(Exit.fail(began))
        const context = Context.add(fiber.currentContext, SqlClient.TransactionConnection, [connection, 0] as const)
        return Effect.flatMap(
          Effect.exit(restore(Effect.locally(effect, FiberRef.currentContext, context))),
          (exit) => release(end(db, prepare, exit))
        )
      })
    )
  )

/**
 * The client with `withTransaction` taking the lean path when no transaction is open on the
 * fiber, and @effect/sql's (a savepoint) inside one.
 */
const withLeanTransactions = (client: SqlClient.SqlClient, outermost: ReturnType<typeof outermostTransaction>) => {
  const nested = client.withTransaction
  return Object.assign(client, {
    withTransaction: <A, E, R>(effect: Effect.Effect<A, E, R>) =>
      Effect.withFiberRuntime<A, E | SqlError, R>((fiber) =>
        Context.getOption(fiber.currentContext, SqlClient.TransactionConnection)._tag === "Some"
          ? nested(effect)
          : outermost(effect)
      )
  })
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

    const lock: ConnectionLock = { semaphore: yield* Effect.makeSemaphore(1), held: false }
    const { semaphore } = lock
    // `reserve` (@effect/sql's own transactions' acquirer) takes the same lock.
    const transactionAcquirer = Effect.uninterruptibleMask((restore) =>
      Effect.zipRight(
        restore(semaphore.take(1)),
        Effect.suspend(() => {
          lock.held = true
          const release = Effect.suspend(() => {
            lock.held = false
            return semaphore.release(1)
          })
          return Effect.as(Effect.addFinalizer(() => release), connection)
        })
      )
    )
    const made = yield* SqlClient.make({
      acquirer: semaphore.withPermits(1)(Effect.succeed(connection)),
      compiler: Statement.makeCompilerSqlite(),
      transactionAcquirer,
      spanAttributes: [["db.system.name", "sqlite"]]
    }).pipe(Effect.provide(Reactivity.layer))
    const client = withLeanTransactions(made, outermostTransaction(db, prepare, connection, lock))

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
          if (!lock.held || inOwnTransaction(context)) return now()
          return semaphore.withPermits(1)(Effect.suspend(now))
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
