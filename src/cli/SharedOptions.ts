/** The options and arguments several `converge` commands share: the profile folder, `--json`, ids. */
import { Args, Options } from "@effect/cli"
import { Config } from "effect"
import * as os from "node:os"
import * as path from "node:path"

export const profile = Options.directory("profile").pipe(
  Options.withDescription("folder holding this installation's database and settings; default ~/.converge (env CONVERGE_PROFILE)"),
  Options.withFallbackConfig(Config.string("CONVERGE_PROFILE")),
  Options.withDefault(path.join(os.homedir(), ".converge"))
)
export const json = Options.boolean("json").pipe(Options.withDescription("print JSON instead of a table; default off"))
export const conversationArg = Args.text({ name: "conversation-id" }).pipe(
  Args.withDescription("a conversation id, or a unique prefix of it (or of a DM peer's inbox id)")
)
export const inboxArgs = Args.text({ name: "inbox-id" }).pipe(Args.withDescription("an inbox id"), Args.atLeast(1))
