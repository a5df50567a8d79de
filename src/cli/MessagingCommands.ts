/**
 * The messaging commands of `converge`: `send --to` (a direct message inside a group), `delete`
 * (a message, for everyone) and `group set --disappear-after`. They are built from the CLI's
 * session helpers (`Session.ts`), passed in by `MessagingWiring.ts`, so this module does not import them.
 */
import { Args, Command, Options } from "@effect/cli"
import { Console, Effect, Option } from "effect"
import type { InboxId, MessageId } from "../domain/Ids.ts"
import type { Conversation } from "../services/Client.ts"
import { UsageError } from "./Errors.ts"

/** What the commands need from the session helpers. */
export interface CliHelpers<Session, E> {
  readonly profile: Options.Options<string>
  readonly conversationArg: Args.Args<string>
  readonly withClient: <A, E2>(dir: string, f: (session: Session) => Effect.Effect<A, E2>) => Effect.Effect<A, E2 | E>
  readonly findConversation: (session: Session, given: string) => Effect.Effect<Conversation, E>
  readonly conversations: (session: Session) => Effect.Effect<ReadonlyArray<Conversation>, E>
  readonly resolveMembers: (conversation: Conversation, given: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<InboxId>, E>
  readonly change: <E2>(session: Session, what: string, action: Effect.Effect<void, E2>, done: string) => Effect.Effect<void, E2 | E>
  readonly reach: <A, E2>(session: Session, effect: Effect.Effect<A, E2>) => Effect.Effect<A, E2 | E>
}

const UNITS: Record<string, bigint> = {
  ms: 1_000_000n,
  s: 1_000_000_000n,
  m: 60_000_000_000n,
  h: 3_600_000_000_000n,
  d: 86_400_000_000_000n,
  w: 604_800_000_000_000n
}

/** `30s`, `15m`, `12h`, `7d`, `2w` (or `ms`) as nanoseconds; `off` as null. At most 10 years. */
export const parseDisappearAfter = (text: string): bigint | null | undefined => {
  if (text === "off") return null
  const match = /^(\d{1,9})(ms|s|m|h|d|w)$/.exec(text.trim())
  if (match === null) return undefined
  const ns = BigInt(match[1]!) * UNITS[match[2]!]!
  return ns > 0n && ns <= 3650n * UNITS["d"]! ? ns : undefined
}

/** A duration in the largest unit that divides it (for confirmations). */
export const formatDisappearAfter = (ns: bigint): string => {
  for (const unit of ["w", "d", "h", "m", "s", "ms"]) {
    if (ns % UNITS[unit]! === 0n) return `${ns / UNITS[unit]!}${unit}`
  }
  return `${ns}ns`
}

export const make = <Session, E>(h: CliHelpers<Session, E>) => {
  /** `send --to <inbox>`: the message goes to one member, in the DM of the two inboxes. */
  const sendDirect = (session: Session, conversation: Conversation, to: string, text: string) =>
    Effect.gen(function*() {
      const [member] = yield* h.resolveMembers(conversation, [to])
      const messageId = yield* h.reach(session, conversation.sendDirect(member!, text))
      yield* Console.log(messageId)
    })

  /** The message a full id or a unique prefix names, and its conversation. */
  const findMessage = (session: Session, given: string) =>
    Effect.gen(function*() {
      const found: Array<{ readonly conversation: Conversation; readonly id: MessageId }> = []
      for (const conversation of yield* h.conversations(session)) {
        for (const m of yield* conversation.messages()) {
          if (m.kind === "text" && m.id.startsWith(given)) found.push({ conversation, id: m.id })
        }
      }
      const exact = found.filter((f) => f.id === given)
      const matches = exact.length > 0 ? exact : found
      if (matches.length === 1 && given.length > 0) return matches[0]!
      return yield* new UsageError({
        argument: `<message-id> ${given}`,
        reason: matches.length === 0 ? "no such message in any conversation" : `matches ${matches.length} messages`,
        hint: matches.length === 0 ? "run `converge messages <conversation>` to see message ids" : "give more of the id"
      })
    })

  const deleteCommand = Command.make(
    "delete",
    { profile: h.profile, message: Args.text({ name: "message-id" }).pipe(Args.withDescription("a message id, or a unique prefix of it")) },
    (args) =>
      h.withClient(args.profile, (session) =>
        Effect.gen(function*() {
          const { conversation, id } = yield* findMessage(session, args.message)
          yield* h.change(session, `deleting ${id}`, conversation.deleteMessage(id), `deleted ${id} for everyone in ${conversation.id}`)
        }))
  ).pipe(Command.withDescription("delete a message for every member (your own; in a group, a super admin deletes any)"))

  const groupSet = Command.make(
    "set",
    {
      profile: h.profile,
      conversation: h.conversationArg,
      disappearAfter: Options.text("disappear-after").pipe(
        Options.withDescription("messages sent from now on disappear this long after they were sent: 30s, 15m, 12h, 7d, 2w, or off"),
        Options.optional
      )
    },
    (args) =>
      h.withClient(args.profile, (session) =>
        Effect.gen(function*() {
          const conversation = yield* h.findConversation(session, args.conversation)
          if (Option.isNone(args.disappearAfter)) {
            return yield* new UsageError({ argument: "--disappear-after", reason: "nothing to set", hint: "give --disappear-after 7d (or off)" })
          }
          const disappearAfterNs = parseDisappearAfter(args.disappearAfter.value)
          if (disappearAfterNs === undefined) {
            return yield* new UsageError({
              argument: `--disappear-after ${args.disappearAfter.value}`,
              reason: "not a duration",
              hint: "a whole number and a unit (ms, s, m, h, d, w), at most 10 years; or off"
            })
          }
          const done = disappearAfterNs === null
            ? `messages sent to ${conversation.id} from now on no longer disappear`
            : `messages sent to ${conversation.id} from now on disappear after ${formatDisappearAfter(disappearAfterNs)}`
          yield* h.change(session, "changing disappearing messages", conversation.updateMetadata({ disappearAfterNs }), done)
        }))
  ).pipe(Command.withDescription("change a group's settings: --disappear-after (policy: update-metadata)"))

  return { sendDirect, deleteCommand, groupSet }
}
