/** A storage failure's text names what went wrong: the driver's words follow a generic message. */
import { SqlError } from "@effect/sql/SqlError"
import { describe, expect, it } from "@effect/vitest"
import { withDriverCause } from "../src/domain/FailureDetail.ts"
import { StorageError } from "../src/domain/Errors.ts"
import { toStorageError } from "../src/layers/SqliteStatements.ts"
import { DeliveryStoreError } from "../src/services/DeliveryStore.ts"

/** An error as better-sqlite3 throws one: a message and a SQLite code. */
const sqliteError = (message: string, code: string) => Object.assign(new Error(message), { code })

describe("withDriverCause", () => {
  it.each([
    {
      story: "a generic SqlError gets the driver's message and code",
      error: new SqlError({ cause: sqliteError("database or disk is full", "SQLITE_FULL"), message: "Failed to execute statement" }),
      text: "Failed to execute statement: database or disk is full (SQLITE_FULL)"
    },
    {
      story: "a code the driver's message already names is not repeated",
      error: new SqlError({ cause: sqliteError("SQLITE_BUSY: database is locked", "SQLITE_BUSY"), message: "Failed to execute statement" }),
      text: "Failed to execute statement: SQLITE_BUSY: database is locked"
    },
    {
      story: "a cause that is not an Error adds nothing",
      error: new SqlError({ cause: "gone", message: "Failed to execute statement" }),
      text: "Failed to execute statement"
    },
    {
      story: "a cause whose message is already in the error's is not repeated",
      error: { message: "EIO: i/o error, fdatasync", cause: new Error("EIO: i/o error, fdatasync") },
      text: "EIO: i/o error, fdatasync"
    },
    {
      story: "a cause with a code and no words gives its code",
      error: { message: "Failed to execute statement", cause: Object.assign(new AggregateError([], ""), { code: "ECONNREFUSED" }) },
      text: "Failed to execute statement (ECONNREFUSED)"
    },
    { story: "an error without a cause keeps its message", error: new Error("no such table: x"), text: "no such table: x" }
  ])("$story", ({ error, text }) => {
    expect(withDriverCause(error)).toBe(text)
  })
})

describe("the errors a caller sees", () => {
  const full = new SqlError({ cause: sqliteError("database or disk is full", "SQLITE_FULL"), message: "Failed to execute statement" })

  it("a StorageError from an SqlError says the disk is full", () => {
    const error = toStorageError("transaction")(full)
    expect(error).toBeInstanceOf(StorageError)
    expect(error.message).toBe("storage failed in transaction: Failed to execute statement: database or disk is full (SQLITE_FULL)")
  })

  it("a DeliveryStoreError over an SqlError says the disk is full, and keeps the cause itself", () => {
    const error = new DeliveryStoreError({ operation: "append", cause: full })
    expect(error.message).toBe(
      "delivery store failed in append: SqlError: Failed to execute statement: database or disk is full (SQLITE_FULL)"
    )
    expect(error.cause).toBe(full)
    expect(new DeliveryStoreError({ operation: "listen", cause: "no LISTEN within 10 seconds" }).message)
      .toBe("delivery store failed in listen: no LISTEN within 10 seconds")
  })
})
