/**
 * A transaction whose COMMIT fails, as an ordinary failure. @effect/sql runs the COMMIT under
 * `orDie`, so a commit the database refuses (SQLite on a full disk or an I/O error while it writes
 * the log; Postgres on a serialization failure) ends the transaction with a defect carrying the
 * driver's `SqlError`. SQLite has rolled the transaction back by then (it does for SQLITE_FULL and
 * SQLITE_IOERR), and Postgres too unless the connection dropped during COMMIT, when the outcome is
 * unknown (the stores' writes are safe to repeat: resends are matched by digest, a repeated
 * identity update is stale). The caller can act on it (free space, retry), so it belongs in the
 * error channel, not among the bugs. Only around an outermost transaction: a savepoint's failure
 * stays what it was, so no caller goes on inside a transaction SQLite has already ended.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Effect, Option, Predicate } from "effect"

const isSqlError = (u: unknown): u is SqlError => Predicate.isTagged(u, "SqlError")

/**
 * `transaction` (a `withTransaction`) with a refused COMMIT's `SqlError` in its error channel
 * instead of a defect; unchanged when it runs inside another transaction (a savepoint).
 */
export const failedCommitAsError = <A, E, R>(transaction: Effect.Effect<A, E, R>): Effect.Effect<A, E | SqlError, R> =>
  Effect.flatMap(Effect.serviceOption(SqlClient.TransactionConnection), (outer) =>
    Option.isSome(outer)
      ? transaction
      : Effect.catchSomeDefect(transaction, (defect) => isSqlError(defect) ? Option.some(Effect.fail(defect)) : Option.none()))
