/**
 * A backstop for ts-mls 1.6.4's unobserved rejections. Its Add validation runs in an async
 * `reduce` that starts every check before awaiting the previous one: with two failing Adds, one
 * rejection is never awaited, and Node ends the process on an unhandled rejection. Converge runs
 * the same checks one at a time before ts-mls sees a commit (`TsMlsCommits.checkAdds`), so this
 * should never fire; if it does, a ts-mls error is logged and swallowed (the awaited copy of it has
 * already failed the operation), and anything else ends the process as Node would have.
 */
import { Effect } from "effect"
import { MlsError } from "ts-mls/mlsError.js"

let installed = false

export const installRejectionGuard = (): void => {
  if (installed) return
  installed = true
  globalThis.process.on("unhandledRejection", (reason) => {
    if (!(reason instanceof MlsError)) throw reason
    Effect.runFork(Effect.logWarning(`ignored an unobserved ts-mls rejection: ${reason.name}: ${reason.message}`))
  })
}
