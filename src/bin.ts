#!/usr/bin/env node
/**
 * The `converge` executable. Expected failures print `error: <what>: <why>` and a hint and exit
 * 1; a change queued for lack of a server exits 3; a defect prints one line and exits 2.
 * Logs go to stderr (level from CONVERGE_LOG_LEVEL, default Error); spans and metrics go to an
 * OTLP collector when CONVERGE_OTLP_URL is set (cli/Telemetry.ts).
 */
import { ValidationError } from "@effect/cli"
import { NodeContext, NodeRuntime } from "@effect/platform-node"
import { Cause, Config, Console, Effect, Logger, LogLevel } from "effect"
import { commandNames, run } from "./cli/Cli.ts"
import * as Errors from "./cli/Errors.ts"
import { colourEnabled, stripAnsi } from "./cli/Output.ts"
import * as Telemetry from "./cli/Telemetry.ts"

/** The command words of this invocation, for a usage hint: `group add`, `send`, ... */
const commandOf = (argv: ReadonlyArray<string>) => {
  const words: Array<string> = []
  for (const arg of argv.slice(2)) {
    if (!commandNames.includes(arg)) break
    words.push(arg)
  }
  return words.join(" ") || "<command>"
}
const command = commandOf(process.argv)

const writeError = (lines: ReadonlyArray<string>) => Effect.sync(() => process.stderr.write(lines.join("\n") + "\n"))

/**
 * The console @effect/cli prints help and its own validation errors through: no colour when
 * not a terminal or with NO_COLOR, and validation errors in the one error style.
 */
const cliConsole = Effect.map(Effect.console, (base): Console.Console => {
  const plainOut = !colourEnabled(process.stdout)
  return {
    ...base,
    log: (...args) => base.log(...(plainOut ? args.map((a) => (typeof a === "string" ? stripAnsi(a) : a)) : args)),
    error: (...args) => {
      const text = stripAnsi(args.map(String).join(" ")).trim().split(/\n+/).map((l) => l.trim()).filter((l) => l !== "")
      return writeError([`error: ${text.join("; ")}`, `hint: converge ${command} --help`])
    }
  }
})

const logLevel = Config.logLevel("CONVERGE_LOG_LEVEL").pipe(Config.withDefault(LogLevel.Error))

Effect.gen(function*() {
  const level = yield* logLevel
  const console = yield* cliConsole
  return yield* run(process.argv).pipe(Effect.withConsole(console), Logger.withMinimumLogLevel(level))
}).pipe(
  // Spans of a command are exported (and flushed) before its errors are printed.
  Effect.provide(Telemetry.layer(command)),
  Effect.catchAll((error) => {
    process.exitCode = 1
    // @effect/cli has already printed its own validation errors (through cliConsole).
    if (ValidationError.isValidationError(error)) return Effect.void
    const tagged = typeof error === "object" && error !== null && "_tag" in error
      ? error as unknown as Parameters<typeof Errors.show>[0]
      : { _tag: "Error", message: String(error) }
    return writeError(Errors.lines(Errors.show(tagged, command)))
  }),
  Effect.catchAllDefect((defect) => {
    process.exitCode = 2
    return writeError([`error: unexpected failure: ${Cause.pretty(Cause.die(defect)).split("\n")[0]}`])
  }),
  Effect.provide(Logger.replace(Logger.defaultLogger, Logger.withConsoleError(Logger.logfmtLogger))),
  Effect.provide(NodeContext.layer),
  NodeRuntime.runMain({ disableErrorReporting: true, disablePrettyLogger: true })
)
