/**
 * `converge devices`: the installations of the profile's inbox (`list`), and revoking one
 * (`revoke <installation-id>`, any unique prefix of it). Revoking needs the inbox's root key,
 * which only the inbox's first profile holds (a profile made with `init --same-inbox-as` was
 * signed in by it and never gets the key); every group drops the revoked device in its
 * members' next sync.
 */
import { Args, Command, type Options } from "@effect/cli"
import { Console, Effect } from "effect"
import type { InstallationId } from "../domain/Ids.ts"
import type { Client } from "../services/Client.ts"
import { UsageError } from "./Errors.ts"
import * as Output from "./Output.ts"
import { reach } from "./Profile.ts"

interface Session {
  readonly client: Client["Type"]
  readonly server: string
}

export interface DevicesDeps {
  readonly profile: Options.Options<string>
  readonly json: Options.Options<boolean>
  readonly withClient: <A, E>(dir: string, f: (session: Session) => Effect.Effect<A, E>) => Effect.Effect<A, unknown>
}

/** The installation a full id or a unique prefix names, among the inbox's current ones. */
const resolveInstallation = (listed: ReadonlyArray<{ readonly installationId: InstallationId }>, given: string) => {
  const exact = listed.filter((i) => i.installationId === given)
  const matches = exact.length > 0 ? exact : listed.filter((i) => given.length > 0 && i.installationId.startsWith(given))
  if (matches.length === 1) return Effect.succeed(matches[0]!.installationId)
  // No match: the full id goes to the client, which says whether it is malformed or unknown.
  if (matches.length === 0) return Effect.succeed(given as InstallationId)
  return Effect.fail(new UsageError({
    argument: `<installation-id> ${given}`,
    reason: `matches ${matches.length} installations`,
    hint: "give more of the id (`converge devices list` lists them)"
  }))
}

export const make = ({ json, profile, withClient }: DevicesDeps) => {
  const list = Command.make("list", { profile, json }, (args) =>
    withClient(args.profile, (session) =>
      Effect.gen(function*() {
        const listed = yield* reach(session.server)(session.client.installations)
        if (args.json) return yield* Output.json(listed)
        yield* Console.log(Output.table(
          ["INSTALLATION", "CURRENT"],
          listed.map((i) => [i.installationId, i.current ? "yes (this one)" : ""])
        ))
      }))).pipe(Command.withDescription("list the installations of this profile's inbox (asks the server for its identity log)"))

  const revoke = Command.make(
    "revoke",
    { profile, installation: Args.text({ name: "installation-id" }).pipe(Args.withDescription("an installation id, or a unique prefix of it")) },
    (args) =>
      withClient(args.profile, (session) =>
        Effect.gen(function*() {
          const listed = yield* reach(session.server)(session.client.installations)
          const target = yield* resolveInstallation(listed, args.installation)
          yield* reach(session.server)(session.client.revokeInstallation(target))
          // Our own groups drop it now; the other members do in their next sync.
          yield* reach(session.server)(session.client.syncAll).pipe(Effect.catchTag("Unreachable", () => Effect.void))
          yield* Console.log(`revoked ${target}`)
        }))
  ).pipe(Command.withDescription("revoke another installation of this inbox (needs the inbox's first profile)"))

  return Command.make("devices").pipe(
    Command.withSubcommands([list, revoke]),
    Command.withDescription("the installations (devices) of this profile's inbox: list, revoke")
  )
}
