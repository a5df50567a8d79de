/**
 * The `converge` command line: `serve`, and client commands over a profile folder.
 *
 * - Results go to stdout (a table with a header, or JSON with `--json`); notes and errors to
 *   stderr. Every expected failure prints `error: <what>: <why>` and a hint, and exits 1.
 * - Reading (`conversations`, `members`, `messages`) works from the local database while the
 *   server is down; `messages` syncs first when it can.
 * - A change that cannot reach the server stays queued: the command says so and exits 3, and
 *   the next command that talks to the server (`sync`, `messages`, `send`, ...) sends it, once.
 * - Ids are printed in full; any unique prefix of a conversation id (or of a DM peer's inbox
 *   id, or of a member's inbox id for `group remove`) is accepted.
 */
import { Command } from "@effect/cli"
import { Effect } from "effect"
import * as ConsentCommand from "./ConsentCommand.ts"
import { conversations, dm, leave, members, messages, send, sync, watch } from "./ConversationCommands.ts"
import * as Devices from "./Devices.ts"
import { group } from "./GroupCommands.ts"
import { messaging } from "./MessagingWiring.ts"
import { init, whoami } from "./ProfileCommands.ts"
import { explicitLogLevel, serve } from "./ServeCommand.ts"
import { findConversation, withClient } from "./Session.ts"
import { json, profile } from "./SharedOptions.ts"
import { status } from "./StatusCommand.ts"

export { EXIT_QUEUED } from "./Session.ts"

const devices = Devices.make({ profile, json, withClient })

export const commandNames = [
  "serve", "init", "whoami", "group", "create", "add", "remove", "dm", "conversations", "members", "send",
  "messages", "sync", "leave", "watch", "status", "devices", "list", "revoke", "delete", "set", "consent", "show",
  "rename", "role", "policy", "info"
]

const consent = ConsentCommand.make({ profile, json, withClient, findConversation })

export const root = Command.make("converge").pipe(
  Command.withSubcommands([
    serve, init, whoami, group, dm, conversations, members, send, messages, sync, leave, watch, status, devices,
    messaging.deleteCommand, consent
  ]),
  Command.withDescription("Converge: MLS group messaging")
)

const cli = Command.run(root, { name: "converge", version: "0.1.0" })

export const run = (argv: ReadonlyArray<string>) =>
  cli(argv).pipe(
    Effect.locally(explicitLogLevel, argv.some((arg) => arg === "--log-level" || arg.startsWith("--log-level=")))
  )
