/**
 * What a storage failure says to the person reading it. A database client's error often has a
 * generic message of its own (@effect/sql's `SqlError`: "Failed to execute statement"), and the
 * driver's words and code, the part that says what went wrong ("database or disk is full",
 * SQLITE_FULL), sit in its `cause`.
 */

/** The failure's message, then its driver cause's message and code when they add anything. */
export const withDriverCause = (error: { readonly message: string; readonly cause?: unknown }): string => {
  const cause = error.cause
  if (!(cause instanceof Error)) return error.message
  const code = (cause as { readonly code?: unknown }).code
  const words = error.message.includes(cause.message) ? "" : cause.message
  const codeText = typeof code === "string" && code !== "" && !`${error.message} ${words}`.includes(code) ? code : ""
  if (words === "" && codeText === "") return error.message
  if (words === "") return `${error.message} (${codeText})`
  return `${error.message}: ${words}${codeText === "" ? "" : ` (${codeText})`}`
}
