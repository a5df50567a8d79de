/**
 * The `converge` command line: `serve`, and client commands over a profile folder.
 * Every expected failure prints as one line and exits non-zero; `--help` works everywhere.
 */
import { Args, Command, Options } from "@effect/cli"
import { Console, Effect, Option, Schema, Stream } from "effect"
import * as path from "node:path"
import { MembershipChangeJson } from "../domain/Content.ts"
import { ConversationId, InboxId } from "../domain/Ids.ts"
import type { Message } from "../domain/Model.ts"
import { Client } from "../services/Client.ts"
import { clientLayer, ProfileFile, readProfile, writeProfile } from "./Profile.ts"

const profile = Options.directory("profile").pipe(
  Options.withDescription("folder holding this installation's database and settings"),
  Options.withDefault(path.join(process.env["HOME"] ?? ".", ".converge"))
)
const conversationId = Args.text({ name: "conversation-id" }).pipe(Args.withSchema(ConversationId))
const inboxIds = Args.text({ name: "inbox-id" }).pipe(Args.withSchema(InboxId), Args.atLeast(1))

/** Runs `f` with the profile's client. */
const withClient = <A, E>(dir: string, f: (client: Client["Type"]) => Effect.Effect<A, E>) =>
  Effect.gen(function*() {
    const { server } = yield* readProfile(dir)
    return yield* Effect.flatMap(Client, f).pipe(Effect.provide(clientLayer(dir, server)))
  })

const short = (id: string) => id.slice(0, 8)
/** The server's timestamp; one out of Date's range (a broken or hostile server) is shown raw. */
const time = (ns: bigint) => {
  const date = new Date(Number(ns / 1_000_000n))
  return Number.isFinite(date.getTime()) ? date.toISOString() : `${ns}ns`
}

export const formatMessage = (m: Message) => {
  if (m.kind === "membershipChange") {
    const change = Schema.decodeOption(MembershipChangeJson)(m.text)
    if (Option.isSome(change)) {
      const parts = [
        ...change.value.addedInboxes.map((i) => `+${short(i)}`),
        ...change.value.removedInboxes.map((i) => `-${short(i)}`)
      ]
      return `${time(m.sentAtNs)}  * ${short(m.senderInboxId)} changed members: ${parts.join(" ")}`
    }
  }
  const status = m.deliveryStatus === "published" ? "" : `  (${m.deliveryStatus})`
  return `${time(m.sentAtNs)}  ${short(m.senderInboxId)}  ${m.text}${status}`
}

const init = Command.make(
  "init",
  { profile, server: Options.text("server").pipe(Options.withDescription("delivery service URL, e.g. http://127.0.0.1:5555")) },
  ({ profile, server }) =>
    Effect.gen(function*() {
      yield* writeProfile(profile, ProfileFile.make({ server }))
      const inboxId = yield* withClient(profile, (client) => Effect.succeed(client.inboxId))
      yield* Console.log(inboxId)
    })
).pipe(Command.withDescription("create this installation's inbox and register it with the server"))

const whoami = Command.make("whoami", { profile }, ({ profile }) =>
  withClient(profile, (client) => Console.log(client.inboxId))).pipe(Command.withDescription("print the inbox id"))

const groupCreate = Command.make(
  "create",
  {
    profile,
    name: Options.text("name").pipe(Options.optional),
    description: Options.text("description").pipe(Options.optional),
    members: Args.text({ name: "inbox-id" }).pipe(Args.withSchema(InboxId), Args.repeated)
  },
  ({ description, members, name, profile }) =>
    withClient(profile, (client) =>
      client.createGroup(members, {
        ...Option.match(name, { onNone: () => ({}), onSome: (name) => ({ name }) }),
        ...Option.match(description, { onNone: () => ({}), onSome: (description) => ({ description }) })
      }).pipe(Effect.flatMap((conversation) => Console.log(conversation.id))))
).pipe(Command.withDescription("create a group with these members (and a name); prints its conversation id"))

const groupAdd = Command.make("add", { profile, conversationId, inboxIds }, ({ conversationId, inboxIds, profile }) =>
  withClient(profile, (client) =>
    client.conversation(conversationId).pipe(Effect.flatMap((c) => c.addMembers(inboxIds))))).pipe(
    Command.withDescription("add members to a group")
  )

const groupRemove = Command.make("remove", { profile, conversationId, inboxIds }, ({ conversationId, inboxIds, profile }) =>
  withClient(profile, (client) =>
    client.conversation(conversationId).pipe(Effect.flatMap((c) => c.removeMembers(inboxIds))))).pipe(
    Command.withDescription("remove members from a group")
  )

const group = Command.make("group").pipe(
  Command.withSubcommands([groupCreate, groupAdd, groupRemove]),
  Command.withDescription("create groups and change their members")
)

const dm = Command.make("dm", { profile, peer: Args.text({ name: "inbox-id" }).pipe(Args.withSchema(InboxId)) }, ({ peer, profile }) =>
  withClient(profile, (client) => client.findOrCreateDm(peer).pipe(Effect.flatMap((c) => Console.log(c.id))))).pipe(
    Command.withDescription("find or create the DM with an inbox; prints its conversation id")
  )

const send = Command.make("send", { profile, conversationId, text: Args.text({ name: "text" }) }, ({ conversationId, profile, text }) =>
  withClient(profile, (client) =>
    client.conversation(conversationId).pipe(
      Effect.flatMap((c) => c.send(text)),
      Effect.flatMap((id) => Console.log(id))
    ))).pipe(Command.withDescription("send a text message; prints its message id"))

const messages = Command.make("messages", { profile, conversationId }, ({ conversationId, profile }) =>
  withClient(profile, (client) =>
    Effect.gen(function*() {
      const conversation = yield* client.conversation(conversationId)
      yield* conversation.sync
      for (const message of yield* conversation.messages()) yield* Console.log(formatMessage(message))
    }))).pipe(Command.withDescription("sync a conversation and print its messages"))

/** Syncs welcomes, then each conversation, showing progress when there is much to do. */
const sync = Command.make("sync", { profile }, ({ profile }) =>
  withClient(profile, (client) =>
    Effect.gen(function*() {
      const first = yield* client.syncAll
      const conversations = yield* client.conversations()
      const showProgress = conversations.length > 5 && process.stderr.isTTY !== false
      let done = 0
      for (const conversation of conversations) {
        yield* conversation.sync
        done++
        if (showProgress) process.stderr.write(`\rsyncing conversations ${done}/${conversations.length}`)
      }
      if (showProgress) process.stderr.write("\n")
      yield* Console.log(
        `${conversations.length} conversation(s), joined ${first.joined}, ${first.messages} new message(s), ${first.commits} commit(s)`
      )
    }))).pipe(Command.withDescription("fetch welcomes and new messages"))

/** One line a conversation: id, kind, state and, for a group, its name. */
const conversations = Command.make("conversations", { profile }, ({ profile }) =>
  withClient(profile, (client) =>
    Effect.gen(function*() {
      for (const conversation of yield* client.conversations({ includeInactive: true })) {
        const { name } = yield* conversation.metadata
        const state = yield* conversation.state
        yield* Console.log([conversation.id, conversation.kind, state, ...(name === null ? [] : [name])].join("  "))
      }
    }))).pipe(Command.withDescription("list conversations with their kind, state and name"))

const leave = Command.make("leave", { profile, conversationId }, ({ conversationId, profile }) =>
  withClient(profile, (client) => client.conversation(conversationId).pipe(Effect.flatMap((c) => c.leave)))).pipe(
    Command.withDescription("leave a group (every installation of your inbox)")
  )

const watch = Command.make("watch", { profile }, ({ profile }) =>
  withClient(profile, (client) =>
    client.streamMessages.pipe(
      Stream.filter((m) => m.senderInboxId !== client.inboxId || m.deliveryStatus === "published"),
      Stream.runForEach((m) => Console.log(`${m.conversationId}  ${formatMessage(m)}`))
    ))).pipe(Command.withDescription("print new messages of every conversation as they arrive"))

const serve = Command.make(
  "serve",
  {
    port: Options.integer("port").pipe(Options.withDefault(5555)),
    host: Options.text("host").pipe(Options.withDefault("127.0.0.1")),
    db: Options.file("db").pipe(Options.withDefault("./converge-ds.sqlite")),
    postgres: Options.text("postgres").pipe(Options.optional)
  },
  // Loaded only here: the server, its stores and drivers (pg) are not part of any client command's start-up.
  (options) => Effect.promise(() => import("./Serve.ts")).pipe(Effect.flatMap((Serve) => Serve.serve(options)))
).pipe(Command.withDescription("run a delivery service (SQLite by default, or Postgres)"))

export const root = Command.make("converge").pipe(
  Command.withSubcommands([serve, init, whoami, group, dm, conversations, send, messages, sync, leave, watch]),
  Command.withDescription("Converge: MLS group messaging")
)

export const run = Command.run(root, { name: "converge", version: "0.1.0" })

