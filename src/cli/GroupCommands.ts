/** `converge group ...`: create groups, change their members, metadata, roles and policies, show them. */
import { Args, Command, Options } from "@effect/cli"
import { Console, Effect, Option } from "effect"
import type { InboxId } from "../domain/Ids.ts"
import * as MessagingCommands from "./MessagingCommands.ts"
import { messaging } from "./MessagingWiring.ts"
import * as Output from "./Output.ts"
import { reach } from "./Profile.ts"
import { change, findConversation, labelOf, resolveMembers, withClient } from "./Session.ts"
import { conversationArg, inboxArgs, json, profile } from "./SharedOptions.ts"

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

export const group = Command.make("group").pipe(
  Command.withSubcommands([groupCreate, groupAdd, groupRemove, groupRename, groupRole, groupPolicy, groupInfo, messaging.groupSet]),
  Command.withDescription("create groups, change their members, metadata, roles and policies")
)
