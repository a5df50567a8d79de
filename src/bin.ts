#!/usr/bin/env node
/** The `converge` executable. Expected failures print one line and exit 1. */
import { ValidationError } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Cause, Effect, Logger, LogLevel } from "effect"
import { run } from "./cli/Cli.ts"

const oneLine = (error: unknown): string => {
  if (typeof error === "object" && error !== null && "_tag" in error) {
    const tagged = error as { readonly _tag: string; readonly message?: string }
    return `${tagged._tag}: ${tagged.message ?? ""}`.trim()
  }
  return String(error)
}

run(process.argv).pipe(
  Effect.catchAll((error) =>
    Effect.sync(() => {
      // The CLI has already printed usage help for its own validation errors.
      if (!ValidationError.isValidationError(error)) process.stderr.write(`error: ${oneLine(error)}\n`)
      process.exitCode = 1
    })
  ),
  Effect.catchAllDefect((defect) =>
    Effect.sync(() => {
      process.stderr.write(`error: unexpected failure: ${Cause.pretty(Cause.die(defect)).split("\n")[0]}\n`)
      process.exitCode = 2
    })
  ),
  Logger.withMinimumLogLevel(LogLevel.Error),
  Effect.provide(NodeContext.layer),
  NodeRuntime.runMain({ disableErrorReporting: true })
)
