/**
 * A client command's session: the profile's client, storage and delivery service, and the steps
 * the commands share on it: finding a conversation by an id prefix, naming it, and running a
 * change that may end up queued when the server cannot be reached.
 */
import { Config, Console, Effect } from "effect"
import { ConversationNotFound } from "../domain/Errors.ts"
import type { InboxId } from "../domain/Ids.ts"
import type { Conversation } from "../services/Client.ts"
import { Client } from "../services/Client.ts"
import { DeliveryService } from "../services/DeliveryService.ts"
import { Storage } from "../services/Storage.ts"
import { Unreachable, UsageError } from "./Errors.ts"
import * as Output from "./Output.ts"
import { clientLayer, readProfile, reach } from "./Profile.ts"

/** The exit code of a command whose change is stored and queued, not yet on the server. */
export const EXIT_QUEUED = 3

export interface Session {
  readonly client: Client["Type"]
  readonly storage: Storage["Type"]
  readonly delivery: DeliveryService["Type"]
  readonly server: string
}

/** Runs `f` with the profile's client; `CONVERGE_SERVER` overrides the server the profile names. */
export const withClient = <A, E>(dir: string, f: (session: Session) => Effect.Effect<A, E>) =>
  Effect.gen(function*() {
    const saved = yield* readProfile(dir)
    const server = yield* Config.string("CONVERGE_SERVER").pipe(Config.withDefault(saved.server))
    return yield* Effect.gen(function*() {
      const session: Session = { client: yield* Client, storage: yield* Storage, delivery: yield* DeliveryService, server }
      return yield* f(session)
    }).pipe(Effect.provide(clientLayer(dir, server)))
  })

/** The other inbox of a DM id `dm:<lower>:<higher>`. */
export const peerOf = (conversationId: string, self: string) => {
  const [, a, b] = conversationId.split(":")
  return a === self ? b ?? "" : a ?? ""
}

/** What a person calls a conversation: its group name, or the DM's peer. */
export const labelOf = (conversation: Conversation, self: string) =>
  conversation.kind === "dm"
    ? Effect.succeed(`DM with ${peerOf(conversation.id, self)}`)
    : Effect.map(conversation.metadata, ({ name }) => (name === null ? "(unnamed group)" : name))

/** Conversations whose id, or DM peer's inbox id, starts with `given`. */
const matching = (session: Session, given: string) =>
  Effect.map(session.client.conversations({ includeInactive: true, consent: ["allowed", "denied", "unknown"] }), (all) => {
    const exact = all.filter((c) => c.id === given)
    if (exact.length > 0 || given.length === 0) return exact
    const self = session.client.inboxId
    return all.filter((c) => c.id.startsWith(given) || (c.kind === "dm" && peerOf(c.id, self).startsWith(given)))
  })

/**
 * The conversation a full id or a unique prefix names. One not known here yet may be a group
 * this installation was just invited to: fetch welcomes once (if the server answers) and look again.
 */
export const findConversation = (session: Session, given: string) =>
  Effect.gen(function*() {
    let matches = yield* matching(session, given)
    if (matches.length === 0) {
      yield* reach(session.server)(session.client.syncAll).pipe(Effect.catchTag("Unreachable", () => Effect.void))
      matches = yield* matching(session, given)
    }
    if (matches.length === 1) return matches[0]!
    if (matches.length === 0) return yield* new ConversationNotFound({ conversationId: given })
    return yield* new UsageError({
      argument: `<conversation-id> ${given}`,
      reason: `matches ${matches.length} conversations (${matches.map((c) => c.id).join(", ")})`,
      hint: "give more of the id"
    })
  })

const pendingIntentIds = (session: Session) =>
  Effect.map(session.storage.intents.byState(["ToPublish", "Published", "Committed"]), (rows) => rows.map((r) => r.id))

/**
 * Runs a change against the server. If the server cannot be reached after the change was
 * queued, says so honestly (queued, sent by the next command that reaches the server) and
 * exits with `EXIT_QUEUED`; if it could not even be queued, the `Unreachable` error stands.
 */
export const change = <E>(session: Session, what: string, action: Effect.Effect<void, E>, done: string) =>
  Effect.gen(function*() {
    const before = new Set(yield* pendingIntentIds(session))
    const outcome = yield* Effect.either(reach(session.server)(action))
    if (outcome._tag === "Right") return yield* Console.log(done)
    if (!(outcome.left instanceof Unreachable)) return yield* Effect.fail(outcome.left)
    const queued = (yield* pendingIntentIds(session)).some((id) => !before.has(id))
    if (!queued) return yield* Effect.fail(outcome.left)
    yield* queuedOutcome(outcome.left, what)
  })

export const queuedOutcome = (unreachable: Unreachable, what: string) =>
  Effect.gen(function*() {
    yield* Output.note(`warning: ${unreachable.message}`)
    yield* Console.log(`queued: will be sent on the next sync (${what})`)
    process.exitCode = EXIT_QUEUED
  })

/** Inbox ids as given, or unique prefixes of the group's members' inbox ids. */
export const resolveMembers = (conversation: Conversation, given: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const members = (yield* conversation.members).map((m) => m.inboxId as string)
    return yield* Effect.forEach(given, (text) => {
      const matches = members.filter((m) => m.startsWith(text))
      if (members.includes(text) || matches.length === 0) return Effect.succeed(text as InboxId)
      if (matches.length === 1) return Effect.succeed(matches[0]! as InboxId)
      return Effect.fail(new UsageError({
        argument: `<inbox-id> ${text}`,
        reason: `matches ${matches.length} members (${matches.join(", ")})`,
        hint: "give more of the id"
      }))
    })
  })
