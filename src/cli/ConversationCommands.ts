/**
 * The commands on conversations: `dm`, `send`, `conversations`, `members`, `messages`, `sync`,
 * `leave` and `watch`. Reading works from the local database while the server is down.
 */
import { Args, Command, Options } from "@effect/cli"
import { Console, Effect, Option, Stream } from "effect"
import type { InboxId } from "../domain/Ids.ts"
import { Unreachable } from "./Errors.ts"
import { messaging } from "./MessagingWiring.ts"
import * as Output from "./Output.ts"
import { reach } from "./Profile.ts"
import { change, EXIT_QUEUED, findConversation, labelOf, peerOf, queuedOutcome, type Session, withClient } from "./Session.ts"
import { conversationArg, json, profile } from "./SharedOptions.ts"

export const dm = Command.make("dm", { profile, peer: Args.text({ name: "inbox-id" }).pipe(Args.withDescription("the peer's inbox id")) }, ({ peer, profile }) =>
  withClient(profile, (session) =>
    reach(session.server)(session.client.findOrCreateDm(peer as InboxId)).pipe(Effect.flatMap((c) => Console.log(c.id))))).pipe(
    Command.withDescription("find or create the DM with an inbox; prints its conversation id")
  )

const to = Options.text("to").pipe(
  Options.withDescription("send to this member of the group only (inbox id or unique prefix), in your DM with them"),
  Options.optional
)

export const send = Command.make("send", { profile, to, conversation: conversationArg, text: Args.text({ name: "text" }).pipe(Args.withDescription("the message")) }, (args) =>
  withClient(args.profile, (session) =>
    Effect.gen(function*() {
      const conversation = yield* findConversation(session, args.conversation)
      if (Option.isSome(args.to)) return yield* messaging.sendDirect(session, conversation, args.to.value, args.text)
      // Stored first: whatever happens next, this message is sent once, now or by a later command.
      const messageId = yield* conversation.sendOptimistic(args.text)
      const outcome = yield* Effect.either(reach(session.server)(conversation.publishPending))
      if (outcome._tag === "Right") return yield* Console.log(messageId)
      if (!(outcome.left instanceof Unreachable)) return yield* Effect.fail(outcome.left)
      yield* queuedOutcome(outcome.left, messageId)
    }))).pipe(Command.withDescription(
      `send a text message; prints its message id (exit ${EXIT_QUEUED}: server unreachable, queued for the next sync)`
    ))

const conversationRows = (session: Session) =>
  Effect.gen(function*() {
    const self = session.client.inboxId
    return yield* Effect.forEach(yield* session.client.conversations({ includeInactive: true }), (c) =>
      Effect.all({
        id: Effect.succeed(c.id),
        kind: Effect.succeed(c.kind),
        state: c.state,
        name: c.kind === "group" ? Effect.map(c.metadata, (m) => m.name) : Effect.succeed(null),
        peer: Effect.succeed(c.kind === "dm" ? peerOf(c.id, self) : null)
      }))
  })

export const conversations = Command.make("conversations", { profile, json }, ({ json, profile }) =>
  withClient(profile, (session) =>
    Effect.gen(function*() {
      const rows = yield* conversationRows(session)
      if (json) return yield* Output.json(rows)
      yield* Console.log(Output.table(
        ["ID", "KIND", "STATE", "NAME"],
        rows.map((r) => [r.id, r.kind, r.state, r.kind === "dm" ? `DM with ${r.peer}` : r.name ?? ""])
      ))
    }))).pipe(Command.withDescription("list conversations (local; no server needed): id, kind, state, name or DM peer"))

export const members = Command.make("members", { profile, json, conversation: conversationArg }, (args) =>
  withClient(args.profile, (session) =>
    Effect.gen(function*() {
      const conversation = yield* findConversation(session, args.conversation)
      const list = yield* conversation.members
      if (args.json) return yield* Output.json(list.map((m) => ({ inboxId: m.inboxId, installationIds: m.installationIds })))
      const self = session.client.inboxId
      yield* Console.log(Output.table(
        ["INBOX", "INSTALLATIONS"],
        list.map((m) => [m.inboxId === self ? `${m.inboxId} (you)` : m.inboxId, String(m.installationIds.length)])
      ))
    }))).pipe(Command.withDescription("list a conversation's members as this installation knows them (local)"))

export const messages = Command.make("messages", { profile, json, conversation: conversationArg }, (args) =>
  withClient(args.profile, (session) =>
    Effect.gen(function*() {
      const conversation = yield* findConversation(session, args.conversation)
      // Fresh when the server answers; the local history when it does not.
      yield* reach(session.server)(conversation.sync).pipe(
        Effect.catchTag("Unreachable", (e) => Output.note(`warning: ${e.message}; showing local messages`))
      )
      const list = yield* conversation.messages()
      if (args.json) return yield* Output.json(list.map(Output.messageJson))
      const self = session.client.inboxId
      const name = (inboxId: string) => (inboxId === self ? "you" : inboxId)
      yield* Console.log(Output.table(
        ["TIME", "SENDER", "MESSAGE", "STATUS"],
        list.map((m) => [Output.time(m.sentAtNs), name(m.senderInboxId), Output.messageText(m, name), m.deliveryStatus])
      ))
    }))).pipe(Command.withDescription("sync a conversation (if the server answers) and print its messages"))

export const sync = Command.make("sync", { profile, json }, ({ json, profile }) =>
  withClient(profile, (session) =>
    Effect.gen(function*() {
      const first = yield* reach(session.server)(session.client.syncAll)
      const all = yield* session.client.conversations()
      const showProgress = all.length > 5 && process.stderr.isTTY === true && !json
      let done = 0
      for (const conversation of all) {
        yield* reach(session.server)(conversation.sync)
        done++
        if (showProgress) process.stderr.write(`\rsyncing conversations ${done}/${all.length}`)
      }
      if (showProgress) process.stderr.write("\n")
      if (json) return yield* Output.json({ conversations: all.length, ...first })
      yield* Console.log(
        `${all.length} conversation(s), joined ${first.joined}, ${first.messages} new message(s), ${first.commits} commit(s)`
      )
    }))).pipe(Command.withDescription("fetch welcomes and new messages, and send what is queued"))

export const leave = Command.make("leave", { profile, conversation: conversationArg }, (args) =>
  withClient(args.profile, (session) =>
    Effect.gen(function*() {
      const conversation = yield* findConversation(session, args.conversation)
      const label = yield* labelOf(conversation, session.client.inboxId)
      yield* change(session, `leaving ${label}`, conversation.leave, `asked to leave ${label} (${conversation.id}): the other members remove you on their next sync`)
    }))).pipe(Command.withDescription("leave a group (every installation of your inbox)"))

export const watch = Command.make("watch", { profile }, ({ profile }) =>
  withClient(profile, ({ client }) =>
    Effect.gen(function*() {
      const self = client.inboxId
      const count = (yield* client.conversations()).length
      yield* Output.note(`watching ${count} conversation(s) and new ones for messages (Ctrl-C to stop)`)
      yield* client.streamMessages.pipe(
        Stream.filter((m) => m.senderInboxId !== self || m.deliveryStatus === "published"),
        Stream.runForEach((m) => Console.log(`${m.conversationId}  ${Output.formatMessage(m, (i) => (i === self ? "you" : i))}`))
      )
    }))).pipe(Command.withDescription("print new messages of every conversation as they arrive"))
