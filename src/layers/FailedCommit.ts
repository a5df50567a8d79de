/**
 * A transaction whose COMMIT fails, as an ordinary failure. @effect/sql runs the COMMIT under
 * `orDie`, so a commit the database refuses (SQLite on a full disk or an I/O error while it writes
 * the log; Postgres on a serialization failure) ends the transaction with a defect carrying the
 * driver's `SqlError`. The database has rolled the transaction back by then (SQLite does for
 * SQLITE_FULL and SQLITE_IOERR, Postgres always): nothing of it is stored, and the caller can act
 * on it (free space, retry), so it belongs in the error channel, not among the bugs.
 */
import type { SqlError } from "@effect/sql/SqlError"
import { Effect, Option, Predicate } from "effect"

const isSqlError = (u: unknown): u is SqlError => Predicate.isTagged(u, "SqlError")

/** `transaction` with a refused COMMIT's `SqlError` in its error channel instead of a defect. */
export const failedCommitAsError = <A, E, R>(transaction: Effect.Effect<A, E, R>): Effect.Effect<A, E | SqlError, R> =>
  Effect.catchSomeDefect(transaction, (defect) => isSqlError(defect) ? Option.some(Effect.fail(defect)) : Option.none())
