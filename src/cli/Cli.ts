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
import { Args, Command, HelpDoc, Options, ValidationError } from "@effect/cli"
import { Config, type ConfigError, Console, Effect, FiberRef, Logger, LogLevel, Option, Stream } from "effect"
import * as os from "node:os"
import { DEFAULT_SERVE_LIMITS } from "./ServeLimits.ts"
import * as path from "node:path"
import { type ConvergeError, ConversationNotFound } from "../domain/Errors.ts"
import type { GroupId, InboxId } from "../domain/Ids.ts"
import { groupTopic } from "../domain/Topics.ts"
import type { Conversation } from "../services/Client.ts"
import { Client } from "../services/Client.ts"
import { DeliveryService } from "../services/DeliveryService.ts"
import { Storage } from "../services/Storage.ts"
import * as ConsentCommand from "./ConsentCommand.ts"
import { Unreachable, UsageError } from "./Errors.ts"
import * as Devices from "./Devices.ts"
import * as MessagingCommands from "./MessagingCommands.ts"
import * as Output from "./Output.ts"
import { clientLayer, initProfile, readProfile, reach } from "./Profile.ts"

/** The exit code of a command whose change is stored and queued, not yet on the server. */
export const EXIT_QUEUED = 3

const profile = Options.directory("profile").pipe(
  Options.withDescription("folder holding this installation's database and settings; default ~/.converge (env CONVERGE_PROFILE)"),
  Options.withFallbackConfig(Config.string("CONVERGE_PROFILE")),
  Options.withDefault(path.join(os.homedir(), ".converge"))
)
const json = Options.boolean("json").pipe(Options.withDescription("print JSON instead of a table; default off"))
const conversationArg = Args.text({ name: "conversation-id" }).pipe(
  Args.withDescription("a conversation id, or a unique prefix of it (or of a DM peer's inbox id)")
)
const inboxArgs = Args.text({ name: "inbox-id" }).pipe(Args.withDescription("an inbox id"), Args.atLeast(1))

interface Session {
  readonly client: Client["Type"]
  readonly storage: Storage["Type"]
  readonly delivery: DeliveryService["Type"]
  readonly server: string
}

/** Runs `f` with the profile's client; `CONVERGE_SERVER` overrides the server the profile names. */
const withClient = <A, E>(dir: string, f: (session: Session) => Effect.Effect<A, E>) =>
  Effect.gen(function*() {
    const saved = yield* readProfile(dir)
    const server = yield* Config.string("CONVERGE_SERVER").pipe(Config.withDefault(saved.server))
    return yield* Effect.gen(function*() {
      const session: Session = { client: yield* Client, storage: yield* Storage, delivery: yield* DeliveryService, server }
      return yield* f(session)
    }).pipe(Effect.provide(clientLayer(dir, server)))
  })

/** The other inbox of a DM id `dm:<lower>:<higher>`. */
const peerOf = (conversationId: string, self: string) => {
  const [, a, b] = conversationId.split(":")
  return a === self ? b ?? "" : a ?? ""
}

/** What a person calls a conversation: its group name, or the DM's peer. */
const labelOf = (conversation: Conversation, self: string) =>
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
const findConversation = (session: Session, given: string) =>
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
const change = <E>(session: Session, what: string, action: Effect.Effect<void, E>, done: string) =>
  Effect.gen(function*() {
    const before = new Set(yield* pendingIntentIds(session))
    const outcome = yield* Effect.either(reach(session.server)(action))
    if (outcome._tag === "Right") return yield* Console.log(done)
    if (!(outcome.left instanceof Unreachable)) return yield* Effect.fail(outcome.left)
    const queued = (yield* pendingIntentIds(session)).some((id) => !before.has(id))
    if (!queued) return yield* Effect.fail(outcome.left)
    yield* queuedOutcome(outcome.left, what)
  })

const queuedOutcome = (unreachable: Unreachable, what: string) =>
  Effect.gen(function*() {
    yield* Output.note(`warning: ${unreachable.message}`)
    yield* Console.log(`queued: will be sent on the next sync (${what})`)
    process.exitCode = EXIT_QUEUED
  })

// ---- commands ----

const init = Command.make(
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

const whoami = Command.make("whoami", { profile, json }, ({ json, profile }) =>
  withClient(profile, ({ client, server }) =>
    json
      ? Output.json({ inboxId: client.inboxId, installationId: client.installationId, server, profile })
      : Console.log(client.inboxId))).pipe(Command.withDescription("print the inbox id"))

const groupCreate = Command.make(
  "create",
  {
    profile,
    name: Options.text("name").pipe(Options.withDescription("the group's name"), Options.optional),
    description: Options.text("description").pipe(Options.withDescription("the group's description"), Options.optional),
    members: Args.text({ name: "inbox-id" }).pipe(Args.withDescription("inbox ids of the first members"), Args.repeated)
  },
  ({ description, members, name, profile }) =>
    withClient(profile, (session) =>
      Effect.gen(function*() {
        const group = yield* reach(session.server)(session.client.createGroup(members as unknown as ReadonlyArray<InboxId>, {
          ...Option.match(name, { onNone: () => ({}), onSome: (name) => ({ name }) }),
          ...Option.match(description, { onNone: () => ({}), onSome: (description) => ({ description }) })
        }))
        yield* Console.log(group.id)
        yield* Output.note(`created the group ${yield* labelOf(group, session.client.inboxId)} with ${members.length} other member(s)`)
      }))
).pipe(Command.withDescription("create a group with these members (and a name); prints its conversation id"))

/** Inbox ids as given, or unique prefixes of the group's members' inbox ids. */
const resolveMembers = (conversation: Conversation, given: ReadonlyArray<string>) =>
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

const groupAdd = Command.make("add", { profile, conversation: conversationArg, inboxIds: inboxArgs }, (args) =>
  withClient(args.profile, (session) =>
    Effect.gen(function*() {
      const conversation = yield* findConversation(session, args.conversation)
      const label = yield* labelOf(conversation, session.client.inboxId)
      const n = args.inboxIds.length
      yield* change(session, `adding ${n} member(s) to ${label}`, conversation.addMembers(args.inboxIds as unknown as ReadonlyArray<InboxId>), `added ${n} member(s) to ${label} (${conversation.id})`)
    }))).pipe(Command.withDescription("add members to a group"))

const groupRemove = Command.make("remove", { profile, conversation: conversationArg, inboxIds: inboxArgs }, (args) =>
  withClient(args.profile, (session) =>
    Effect.gen(function*() {
      const conversation = yield* findConversation(session, args.conversation)
      const label = yield* labelOf(conversation, session.client.inboxId)
      const inboxIds = yield* resolveMembers(conversation, args.inboxIds)
      const n = inboxIds.length
      yield* change(session, `removing ${n} member(s) from ${label}`, conversation.removeMembers(inboxIds), `removed ${n} member(s) from ${label} (${conversation.id})`)
    }))).pipe(Command.withDescription("remove members from a group (unique prefixes of members' inbox ids accepted)"))

const groupRename = Command.make(
  "rename",
  { profile, conversation: conversationArg, name: Args.text({ name: "name" }).pipe(Args.withDescription("the new name")) },
  (args) =>
    withClient(args.profile, (session) =>
      Effect.gen(function*() {
        const conversation = yield* findConversation(session, args.conversation)
        const label = yield* labelOf(conversation, session.client.inboxId)
        // Only if nobody renamed it since this installation last read it.
        const { name } = yield* conversation.metadata
        yield* change(
          session,
          `renaming ${label}`,
          conversation.updateMetadata({ name: args.name }, { ifMatch: { name } }),
          `renamed ${label} to ${args.name} (${conversation.id})`
        )
      }))
).pipe(Command.withDescription("rename a group (fails if someone renamed it since your last sync)"))

const groupRole = Command.make(
  "role",
  {
    profile,
    conversation: conversationArg,
    inboxId: Args.text({ name: "inbox-id" }).pipe(Args.withDescription("a member's inbox id (or a unique prefix)")),
    role: Args.choice([["member", "member"], ["admin", "admin"], ["superAdmin", "superAdmin"]] as const, { name: "role" })
  },
  (args) =>
    withClient(args.profile, (session) =>
      Effect.gen(function*() {
        const conversation = yield* findConversation(session, args.conversation)
        const [inboxId] = yield* resolveMembers(conversation, [args.inboxId])
        yield* change(
          session,
          `making ${inboxId} ${args.role}`,
          conversation.setRole(inboxId!, args.role),
          `${inboxId} is now ${args.role} of ${conversation.id}`
        )
      }))
).pipe(Command.withDescription("make a member a member, admin or super admin (super admins only)"))

const policyOption = (name: string, what: string) =>
  Options.choice(name, ["everyone", "admins", "superAdmins", "nobody"] as const).pipe(
    Options.withDescription(`who may ${what}`),
    Options.optional
  )

const groupPolicy = Command.make(
  "policy",
  {
    profile,
    conversation: conversationArg,
    addMember: policyOption("add-member", "add members"),
    removeMember: policyOption("remove-member", "remove members"),
    updateMetadata: policyOption("update-metadata", "rename the group and change its metadata"),
    setMinProtocolVersion: policyOption("set-min-version", "raise the minimum protocol version")
  },
  (args) =>
    withClient(args.profile, (session) =>
      Effect.gen(function*() {
        const conversation = yield* findConversation(session, args.conversation)
        const patch = Object.fromEntries(
          (["addMember", "removeMember", "updateMetadata", "setMinProtocolVersion"] as const)
            .flatMap((k) => Option.match(args[k], { onNone: () => [], onSome: (v) => [[k, v]] }))
        )
        yield* change(session, "changing the group's policies", conversation.updatePermissions(patch), `policies of ${conversation.id} changed`)
      }))
).pipe(Command.withDescription("change a group's permission policies (super admins only)"))

const groupInfo = Command.make("info", { profile, json, conversation: conversationArg }, (args) =>
  withClient(args.profile, (session) =>
    Effect.gen(function*() {
      const conversation = yield* findConversation(session, args.conversation)
      const metadata = yield* conversation.metadata
      const info = {
        id: conversation.id,
        name: metadata.name,
        description: metadata.description,
        imageUrl: metadata.imageUrl,
        appData: metadata.appData,
        admins: metadata.admins,
        superAdmins: metadata.superAdmins,
        policies: { ...metadata.policies },
        minProtocolVersion: metadata.minProtocolVersion,
        disappearAfterNs: metadata.disappearAfterNs
      }
      if (args.json) return yield* Output.json(info)
      yield* Console.log(Output.table(["FIELD", "VALUE"], [
        ["name", info.name ?? ""],
        ["description", info.description ?? ""],
        ["image URL", info.imageUrl ?? ""],
        ["super admins", info.superAdmins.join(", ")],
        ["admins", info.admins.join(", ")],
        ...Object.entries(info.policies).map(([k, v]): [string, string] => [`policy ${k}`, v]),
        ["min protocol version", String(info.minProtocolVersion)],
        ["disappear after", info.disappearAfterNs === null ? "off" : MessagingCommands.formatDisappearAfter(info.disappearAfterNs)]
      ]))
    }))).pipe(Command.withDescription("show a group's metadata, roles, policies and minimum version (local)"))

const messaging = MessagingCommands.make<Session, ConvergeError | UsageError | ConfigError.ConfigError | Unreachable>({
  profile,
  conversationArg,
  withClient,
  findConversation,
  conversations: (session: Session) => session.client.conversations(),
  resolveMembers,
  change,
  reach: (session, effect) => reach(session.server)(effect)
})

const group = Command.make("group").pipe(
  Command.withSubcommands([groupCreate, groupAdd, groupRemove, groupRename, groupRole, groupPolicy, groupInfo, messaging.groupSet]),
  Command.withDescription("create groups, change their members, metadata, roles and policies")
)

const dm = Command.make("dm", { profile, peer: Args.text({ name: "inbox-id" }).pipe(Args.withDescription("the peer's inbox id")) }, ({ peer, profile }) =>
  withClient(profile, (session) =>
    reach(session.server)(session.client.findOrCreateDm(peer as InboxId)).pipe(Effect.flatMap((c) => Console.log(c.id))))).pipe(
    Command.withDescription("find or create the DM with an inbox; prints its conversation id")
  )

const to = Options.text("to").pipe(
  Options.withDescription("send to this member of the group only (inbox id or unique prefix), in your DM with them"),
  Options.optional
)

const send = Command.make("send", { profile, to, conversation: conversationArg, text: Args.text({ name: "text" }).pipe(Args.withDescription("the message")) }, (args) =>
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

const conversations = Command.make("conversations", { profile, json }, ({ json, profile }) =>
  withClient(profile, (session) =>
    Effect.gen(function*() {
      const rows = yield* conversationRows(session)
      if (json) return yield* Output.json(rows)
      yield* Console.log(Output.table(
        ["ID", "KIND", "STATE", "NAME"],
        rows.map((r) => [r.id, r.kind, r.state, r.kind === "dm" ? `DM with ${r.peer}` : r.name ?? ""])
      ))
    }))).pipe(Command.withDescription("list conversations (local; no server needed): id, kind, state, name or DM peer"))

const members = Command.make("members", { profile, json, conversation: conversationArg }, (args) =>
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

const messages = Command.make("messages", { profile, json, conversation: conversationArg }, (args) =>
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

const sync = Command.make("sync", { profile, json }, ({ json, profile }) =>
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

const leave = Command.make("leave", { profile, conversation: conversationArg }, (args) =>
  withClient(args.profile, (session) =>
    Effect.gen(function*() {
      const conversation = yield* findConversation(session, args.conversation)
      const label = yield* labelOf(conversation, session.client.inboxId)
      yield* change(session, `leaving ${label}`, conversation.leave, `asked to leave ${label} (${conversation.id}): the other members remove you on their next sync`)
    }))).pipe(Command.withDescription("leave a group (every installation of your inbox)"))

const watch = Command.make("watch", { profile }, ({ profile }) =>
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

/** Envelopes on the server after each group's stored cursor, counted up to `STATUS_PAGE` ("100+" beyond). */
const STATUS_PAGE = 100
const behindOf = (session: Session, groupIds: ReadonlyArray<GroupId>) =>
  Effect.gen(function*() {
    const queries = yield* Effect.forEach(groupIds, (groupId) =>
      Effect.map(session.storage.cursors.get(groupTopic(groupId)), (afterSequenceId) => ({ groupId, afterSequenceId, limit: STATUS_PAGE })))
    const pages = yield* reach(session.server)(session.delivery.batchQueryGroupMessages(queries))
    const count = pages.reduce((n, page) => n + page.items.length, 0)
    return pages.some((page) => page.next !== undefined) ? `${count}+` : String(count)
  })

const statusRow = (session: Session, online: { value: boolean }) => (c: Conversation) =>
  Effect.gen(function*() {
    const info = yield* c.debugInfo
    const pending = yield* Effect.forEach(info.groupIds, (g) => session.storage.intents.byGroup(g, ["ToPublish", "Published", "Committed"]))
    const behind = online.value
      ? yield* behindOf(session, info.groupIds).pipe(Effect.catchTag("Unreachable", (e) => {
        online.value = false
        return Effect.as(Output.note(`warning: ${e.message}; lag unknown`), null)
      }))
      : null
    return {
      id: c.id,
      kind: c.kind,
      state: yield* c.state,
      label: yield* labelOf(c, session.client.inboxId),
      epoch: info.epoch,
      pendingIntents: pending.flat().length,
      behind,
      maybeForked: info.maybeForked
    }
  })

const status = Command.make("status", { profile, json }, ({ json, profile }) =>
  withClient(profile, (session) =>
    Effect.gen(function*() {
      const online = { value: true }
      const rows = yield* Effect.forEach(yield* session.client.conversations({ includeInactive: true }), statusRow(session, online))
      const header = { profile, server: session.server, inboxId: session.client.inboxId, installationId: session.client.installationId }
      if (json) return yield* Output.json({ ...header, conversations: rows })
      yield* Console.log(`profile ${profile}  server ${session.server}\ninbox   ${session.client.inboxId}\n`)
      yield* Console.log(Output.table(
        ["ID", "KIND", "STATE", "EPOCH", "PENDING", "BEHIND", "FORKED", "NAME"],
        rows.map((r) => [r.id, r.kind, r.state, String(r.epoch), String(r.pendingIntents), r.behind ?? "?", r.maybeForked ? "maybe" : "no", r.label])
      ))
    }))).pipe(Command.withDescription(
    "per conversation: state, epoch, pending intents, envelopes not yet synced (BEHIND) and fork suspicion"
  ))

const port = Options.integer("port").pipe(
  Options.withDescription("TCP port to listen on, 0 picks a free one; default 5555 (env CONVERGE_PORT)"),
  Options.withFallbackConfig(Config.integer("CONVERGE_PORT")),
  Options.withDefault(5555),
  Options.mapEffect((n) =>
    n >= 0 && n <= 65535
      ? Effect.succeed(n)
      : Effect.fail(ValidationError.invalidValue(HelpDoc.p(`--port ${n}: a port is a number from 0 to 65535`)))
  )
)

/** A positive integer option of `serve` with its default and what it bounds. */
const limit = (name: string, fallback: number, description: string) =>
  Options.integer(name).pipe(Options.withDefault(fallback), Options.withDescription(description))

const defaults = DEFAULT_SERVE_LIMITS

const serve = Command.make(
  "serve",
  {
    port,
    host: Options.text("host").pipe(
      Options.withDescription("interface to listen on, 0.0.0.0 for all; default 127.0.0.1 (env CONVERGE_HOST)"),
      Options.withFallbackConfig(Config.string("CONVERGE_HOST")),
      Options.withDefault("127.0.0.1")
    ),
    db: Options.file("db").pipe(
      Options.withDescription("SQLite file of the delivery service, created if missing; default ./converge-ds.sqlite (env CONVERGE_DB)"),
      Options.withFallbackConfig(Config.string("CONVERGE_DB")),
      Options.withDefault("./converge-ds.sqlite")
    ),
    metricsPort: Options.integer("metrics-port").pipe(
      Options.withDescription("serve Prometheus metrics on GET /metrics of this port; default off (env CONVERGE_METRICS_PORT)"),
      Options.withFallbackConfig(Config.integer("CONVERGE_METRICS_PORT")),
      Options.optional
    ),
    xmtpPort: Options.integer("xmtp-port").pipe(
      Options.withDescription("also serve XMTP's V3 gRPC API (MlsApi, IdentityApi; h2c) on this port, same database; default off (env CONVERGE_XMTP_PORT)"),
      Options.withFallbackConfig(Config.integer("CONVERGE_XMTP_PORT")),
      Options.optional
    ),
    postgres: Options.text("postgres").pipe(
      Options.withDescription("store in Postgres at this URL instead of SQLite (env CONVERGE_POSTGRES)"),
      Options.withFallbackConfig(Config.string("CONVERGE_POSTGRES")),
      Options.optional
    ),
    maxBodyBytes: limit("max-body-bytes", defaults.maxBodyBytes, "largest HTTP body and WebSocket message"),
    maxConnections: limit("max-connections", defaults.maxConnections, "open connections; more get 503"),
    maxInFlight: limit("max-in-flight", defaults.maxInFlight, "calls running at once per connection"),
    maxSubscriptions: limit("max-subscriptions", defaults.maxSubscriptions, "subscriptions per connection"),
    maxIdentityEntries: limit("max-identity-entries", defaults.maxIdentityEntries, "identity-log entries per answer"),
    headersTimeout: limit("headers-timeout", defaults.headersTimeout, "seconds to receive request headers"),
    requestTimeout: limit("request-timeout", defaults.requestTimeout, "seconds to receive a whole request"),
    keepAliveTimeout: limit("keep-alive-timeout", defaults.keepAliveTimeout, "seconds an idle HTTP connection stays"),
    idleTimeout: limit("idle-timeout", defaults.idleTimeout, "seconds a silent WebSocket stays"),
    slowReaderTimeout: limit("slow-reader-timeout", defaults.slowReaderTimeout, "seconds an unread HTTP stream stays")
  },
  // Loaded only here: the server, its stores and drivers (pg) are not part of any client command's start-up.
  // Info by default, so refusals show; `--log-level` (before or after the command) overrides it.
  (options) =>
    Effect.promise(() => import("./Serve.ts")).pipe(
      Effect.flatMap((Serve) =>
        Effect.flatMap(FiberRef.get(explicitLogLevel), (explicit) =>
          explicit ? Serve.serve(options) : Serve.serve(options).pipe(Logger.withMinimumLogLevel(LogLevel.Info)))
      )
    )
).pipe(Command.withDescription("run a delivery service (SQLite by default, or Postgres)"))

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

/** Whether the command line set `--log-level` (@effect/cli's built-in option, valid on every command). */
const explicitLogLevel = FiberRef.unsafeMake(false)

const cli = Command.run(root, { name: "converge", version: "0.1.0" })

export const run = (argv: ReadonlyArray<string>) =>
  cli(argv).pipe(
    Effect.locally(explicitLogLevel, argv.some((arg) => arg === "--log-level" || arg.startsWith("--log-level=")))
  )

