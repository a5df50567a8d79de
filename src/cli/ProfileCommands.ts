/** `converge init` (create or join an inbox in a profile folder) and `converge whoami`. */
import { Command, Options } from "@effect/cli"
import { Config, Console, Effect, Option } from "effect"
import { UsageError } from "./Errors.ts"
import * as Output from "./Output.ts"
import { initProfile, readProfile } from "./Profile.ts"
import { withClient } from "./Session.ts"
import { json, profile } from "./SharedOptions.ts"

export const init = Command.make(
  "init",
  {
    profile,
    server: Options.text("server").pipe(
      Options.withDescription("delivery service URL, e.g. http://127.0.0.1:5555 (env CONVERGE_SERVER); with --same-inbox-as, default that profile's"),
      Options.withFallbackConfig(Config.string("CONVERGE_SERVER")),
      Options.optional
    ),
    sameInboxAs: Options.directory("same-inbox-as").pipe(
      Options.withDescription(
        "make this a further installation (device) of the inbox of that profile folder, which signs it in; its root key stays there"
      ),
      Options.optional
    )
  },
  ({ profile, sameInboxAs, server }) =>
    Effect.gen(function*() {
      const first = Option.getOrUndefined(sameInboxAs)
      const url = Option.isSome(server)
        ? server.value
        : first !== undefined
        ? (yield* readProfile(first)).server
        : yield* new UsageError({ argument: "--server", reason: "missing", hint: "converge init --profile DIR --server URL" })
      const inboxId = yield* initProfile(profile, url, first)
      yield* Console.log(inboxId)
      yield* Output.note(first === undefined
        ? `created the profile ${profile} on ${url}`
        : `created the profile ${profile} on ${url}: a further installation of the inbox of ${first}`)
    })
).pipe(Command.withDescription(
  "create this installation's inbox (or, with --same-inbox-as, join an existing one) and register it with the server; prints the inbox id"
))

export const whoami = Command.make("whoami", { profile, json }, ({ json, profile }) =>
  withClient(profile, ({ client, server }) =>
    json
      ? Output.json({ inboxId: client.inboxId, installationId: client.installationId, server, profile })
      : Console.log(client.inboxId))).pipe(Command.withDescription("print the inbox id"))
