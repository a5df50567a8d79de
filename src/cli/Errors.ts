/**
 * The CLI's own typed errors, and how every expected failure is shown: one line
 * `error: <what>: <why>`, then a `hint:` line saying what to do.
 */
import { Schema } from "effect"

/** The server could not be reached (connection refused, dropped, or no answer in time). */
export class Unreachable extends Schema.TaggedError<Unreachable>()("Unreachable", {
  server: Schema.String,
  detail: Schema.String
}) {
  override get message() {
    return `cannot reach the server ${this.server}: ${this.detail}`
  }
}

/** A flag, argument or path the user gave is unusable; names it and says how to use the command. */
export class UsageError extends Schema.TaggedError<UsageError>()("UsageError", {
  argument: Schema.String,
  reason: Schema.String,
  hint: Schema.optional(Schema.String)
}) {
  override get message() {
    return `${this.argument}: ${this.reason}`
  }
}

export interface Shown {
  readonly what: string
  readonly why: string
  readonly hint?: string
}

type Tagged = { readonly _tag: string; readonly message?: string } & Record<string, unknown>

const str = (value: unknown) => (typeof value === "string" ? value : String(value))

/** Every tagged error the commands can fail with, as the user should read it. */
export const show = (error: Tagged, command: string): Shown => {
  const usage = `converge ${command} --help`
  switch (error._tag) {
    case "UsageError":
      return { what: str(error["argument"]), why: str(error["reason"]), hint: str(error["hint"] ?? usage) }
    case "Unreachable":
      return {
        what: `cannot reach the server ${str(error["server"])}`,
        why: str(error["detail"]),
        hint: "is `converge serve` running there? (set the server with `converge init --server URL` or CONVERGE_SERVER)"
      }
    case "ConversationNotFound":
      return {
        what: `conversation ${str(error["conversationId"])}`,
        why: "not found in this profile",
        hint: "`converge conversations` lists them; `converge sync` fetches new ones"
      }
    case "NotAMember":
      return {
        what: error["inboxId"] === undefined ? "you" : `inbox ${str(error["inboxId"])}`,
        why: `not a member of group ${str(error["groupId"])}`,
        hint: `\`converge members ${str(error["groupId"])}\` lists its members`
      }
    case "InboxNotFound":
      return { what: `inbox ${str(error["inboxId"])}`, why: "not registered on the server", hint: "check the inbox id (`converge whoami` prints one's own)" }
    case "GroupInactive":
      return { what: `group ${str(error["groupId"])}`, why: "you are no longer a member" }
    case "KeyPackageUnavailable":
      return { what: `inbox ${str(error["inboxId"])}`, why: "has no key package on the server: it cannot be added yet" }
    case "IntentFailed":
      return { what: error["kind"] === "SendMessage" ? "message not sent" : "change not made", why: str(error["cause"]) }
    case "InstallationNotFound":
      return {
        what: `installation ${str(error["installationId"])}`,
        why: "not an installation of this inbox",
        hint: "`converge devices list` lists them"
      }
    case "InvalidIdentityUpdate":
      return { what: "identity change refused", why: str(error["reason"]) }
    case "InvalidInput":
      return { what: "invalid input", why: str(error["reason"]), hint: usage }
    default:
      return { what: error._tag, why: error.message ?? "" }
  }
}

/** The lines printed for a shown error. */
export const lines = (shown: Shown) => [
  `error: ${shown.what}: ${shown.why}`,
  ...(shown.hint === undefined ? [] : [`hint: ${shown.hint}`])
]
