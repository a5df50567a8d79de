/**
 * `converge consent`: show and set consent for a conversation or an inbox. `show` with nothing
 * lists every conversation (inactive and denied ones included) with its consent; `set` records
 * a decision here and sends it to the inbox's other installations when the server answers.
 * Built from the session helpers `Cli.ts` hands in (`Session.ts`), so this module does not import it back.
 */
import { Args, Command, Options } from "@effect/cli"
import { Console, Effect, Option } from "effect"
import type { ConsentState } from "../domain/Consent.ts"
import type { ConversationId, InboxId } from "../domain/Ids.ts"
import type { Conversation } from "../services/Client.ts"
import type { Client } from "../services/Client.ts"
import { UsageError } from "./Errors.ts"
import * as Output from "./Output.ts"

const ALL: ReadonlyArray<ConsentState> = ["allowed", "denied", "unknown"]

interface Deps<Session extends { readonly client: Client["Type"] }> {
  readonly profile: Options.Options<string>
  readonly json: Options.Options<boolean>
  readonly withClient: <A, E>(dir: string, f: (session: Session) => Effect.Effect<A, E>) => Effect.Effect<A, unknown>
  readonly findConversation: (session: Session, given: string) => Effect.Effect<Conversation, unknown>
}

const inbox = Options.text("inbox").pipe(
  Options.withDescription("an inbox id: its consent rather than a conversation's"),
  Options.optional
)
const conversation = Args.text({ name: "conversation-id" }).pipe(
  Args.withDescription("a conversation id, or a unique prefix of it (or of a DM peer's inbox id)"),
  Args.optional
)

export const make = <Session extends { readonly client: Client["Type"] }>(deps: Deps<Session>) => {
  /** `{ inboxId }` from --inbox, else the conversation the argument names; one of the two, not both. */
  const subjectOf = (session: Session, inboxId: Option.Option<string>, given: Option.Option<string>) =>
    Effect.gen(function*() {
      if (Option.isSome(inboxId) && Option.isSome(given)) {
        return yield* new UsageError({ argument: "--inbox", reason: "give an inbox or a conversation, not both", hint: "drop one of them" })
      }
      if (Option.isSome(inboxId)) return { label: `inbox ${inboxId.value}`, subject: { inboxId: inboxId.value as InboxId } }
      if (Option.isNone(given)) {
        return yield* new UsageError({ argument: "<conversation-id>", reason: "missing", hint: "name a conversation, or --inbox <inbox-id>" })
      }
      const found = yield* deps.findConversation(session, given.value)
      return { label: found.id, subject: { conversationId: found.id as ConversationId } }
    })

  const show = Command.make("show", { profile: deps.profile, json: deps.json, inbox, conversation }, (args) =>
    deps.withClient(args.profile, (session) =>
      Effect.gen(function*() {
        if (Option.isNone(args.inbox) && Option.isNone(args.conversation)) {
          const all = yield* session.client.conversations({ includeInactive: true, consent: ALL })
          const rows = yield* Effect.forEach(all, (c) =>
            session.client.consentOf({ conversationId: c.id }).pipe(Effect.map((consent) => ({ id: c.id, kind: c.kind, consent }))))
          if (args.json) return yield* Output.json(rows)
          return yield* Console.log(Output.table(["ID", "KIND", "CONSENT"], rows.map((r) => [r.id, r.kind, r.consent])))
        }
        const { label, subject } = yield* subjectOf(session, args.inbox, args.conversation)
        const consent = yield* session.client.consentOf(subject)
        if (args.json) return yield* Output.json({ ...subject, consent })
        yield* Console.log(consent)
        yield* Output.note(`consent of ${label}`)
      }))).pipe(Command.withDescription("show consent: of every conversation, of one, or of an inbox (--inbox)"))

  const set = Command.make(
    "set",
    {
      profile: deps.profile,
      inbox,
      state: Args.choice(ALL.map((s) => [s, s] as const), { name: "state" }).pipe(
        Args.withDescription("allowed, denied or unknown")
      ),
      conversation
    },
    (args) =>
      deps.withClient(args.profile, (session) =>
        Effect.gen(function*() {
          const { label, subject } = yield* subjectOf(session, args.inbox, args.conversation)
          yield* session.client.setConsent(subject, args.state)
          yield* Console.log(`${args.state}: ${label}`)
        }))
  ).pipe(Command.withDescription("set consent of a conversation or an inbox (--inbox); shared with your other installations"))

  return Command.make("consent").pipe(
    Command.withSubcommands([show, set]),
    Command.withDescription("show or set consent (allowed, denied, unknown) for conversations and inboxes")
  )
}
