/**
 * Creating conversations: an MLS group with this installation alone in it, its members added by
 * an intent queued with it; `createGroup` with its settings, and `findOrCreateDm`.
 */
import { Clock, Effect, Schema } from "effect"
import { randomBytes } from "node:crypto"
import { toHex } from "../domain/Bytes.ts"
import { InvalidInput } from "../domain/Errors.ts"
import { PermissionPolicies, type PolicyPreset, presets } from "../domain/Governance.ts"
import { encodeSettings, settingsForCreation } from "../domain/GroupSettings.ts"
import { OWN_DEVICES_GROUP_NAME } from "../domain/HistoryArchive.ts"
import { type ConversationId, dmId, type GroupId, type InboxId } from "../domain/Ids.ts"
import { AddMembersData } from "../domain/Intent.ts"
import { GroupMetadata } from "../domain/Model.ts"
import { StoredGroup } from "../domain/Stored.ts"
import type { HandleParts } from "./ConversationScope.ts"
import type { Conversation } from "./Conversation.ts"
import type * as ConversationHandle from "./ConversationHandle.ts"

export interface CreateGroupOptions {
  readonly name?: string
  readonly description?: string
  readonly imageUrl?: string
  readonly appData?: string
  /** A preset (default `"everyone"`) or every policy spelled out. */
  readonly permissions?: PolicyPreset | PermissionPolicies
}

/**
 * What a new group is: one with settings (their minimum version raised to this library's unless
 * `everyVersion`), or a DM's group (no settings: it admits every version).
 */
type NewGroupKind =
  | { readonly metadata: GroupMetadata; readonly everyVersion?: boolean }
  | { readonly dmId: ConversationId }

/** Creates an MLS group with this installation as its only member, then adds `members`. */
const newGroupIn = (
  { ctx, intents }: HandleParts,
  handleOf: ReturnType<typeof ConversationHandle.make>["handleOf"],
  members: ReadonlyArray<InboxId>,
  meta: NewGroupKind
) =>
  Effect.gen(function*() {
    const { publisher, self } = ctx
    const { crypto, identity, storage } = ctx.env
    const engineOptions = ctx.env.options
    const groupId = toHex(randomBytes(16)) as GroupId
    const keyPackage = yield* crypto.generateKeyPackage(
      { inboxId: self, installationId: identity.installationId },
      identity.signatureKeys,
      { protocolVersion: engineOptions.protocolVersion }
    )
    const metadata = !("metadata" in meta)
      ? GroupMetadata.none
      : meta.everyVersion === true
      ? meta.metadata
      : settingsForCreation(meta.metadata, engineOptions.protocolVersion)
    const dmId = "dmId" in meta ? meta.dmId : undefined
    // In the group context, so every member reads the same, as the creator signed it. A DM has none.
    const state = yield* crypto.createGroup(groupId, keyPackage, dmId === undefined ? encodeSettings(metadata) : undefined)
    const now = yield* Clock.currentTimeNanos
    const row = StoredGroup.make({
      id: groupId,
      kind: dmId === undefined ? "group" : "dm",
      dmId: dmId ?? null,
      membershipState: "active",
      epoch: crypto.view(state).epoch,
      mlsState: crypto.serialize(state),
      maybeForked: false,
      forkDetails: null,
      quarantine: null,
      name: metadata.name,
      description: metadata.description,
      addedByInboxId: self,
      createdAtNs: now,
      lastMessageNs: now
    })
    // The add intent is queued with the group, so a crash cannot leave a group without its members.
    const intentId = yield* storage.transaction(Effect.gen(function*() {
      yield* storage.groups.insert(row)
      return yield* intents.queueIntent(groupId, AddMembersData.make({ inboxIds: members }))
    }))
    yield* publisher.resolve(groupId, intentId)
    return handleOf(row)
  })

export const make = (
  parts: HandleParts,
  { handle, handleOf }: Pick<ReturnType<typeof ConversationHandle.make>, "handle" | "handleOf">
) => {
  const { checks, ctx } = parts
  const { consent, self } = ctx
  const { storage } = ctx.env

  const newGroup = (members: ReadonlyArray<InboxId>, meta: NewGroupKind) => newGroupIn(parts, handleOf, members, meta)

  const createGroup = Effect.fn("Client.createGroup")(function*(
    members: ReadonlyArray<InboxId>,
    groupOptions: CreateGroupOptions = {}
  ) {
    const ids = yield* checks.validInboxes(members)
    const permissions = groupOptions.permissions ?? "everyone"
    // The creator is the group's first super admin.
    const metadata = yield* Schema.decodeUnknown(GroupMetadata)({
      name: groupOptions.name ?? null,
      description: groupOptions.description ?? null,
      imageUrl: groupOptions.imageUrl ?? null,
      appData: groupOptions.appData ?? null,
      superAdmins: [self],
      policies: Schema.encodeSync(PermissionPolicies)(typeof permissions === "string" ? presets[permissions] : permissions)
    }).pipe(Effect.mapError((e) => new InvalidInput({ reason: `group name or description (or image URL, app data, permissions): ${e.message}` })))
    if (metadata.name === OWN_DEVICES_GROUP_NAME) return yield* new InvalidInput({ reason: "that group name is reserved" })
    // Checked against the minimum the group will have, before anything is stored.
    const { minProtocolVersion } = settingsForCreation(metadata, ctx.env.options.protocolVersion)
    yield* checks.checkNewMembers(ids, new Set(), minProtocolVersion)
    const created = yield* newGroup(ids, { metadata })
    yield* consent.setIfUnset(created.id, "allowed")
    return created
  })

  const findOrCreateDm = Effect.fn("Client.findOrCreateDm")(function*(peer: InboxId) {
    const [valid] = yield* checks.validInboxes([peer])
    if (valid === self) return yield* new InvalidInput({ reason: "a DM needs another inbox than your own" })
    const id = dmId(self, valid!)
    const existing = yield* storage.groups.byDmId(id)
    const dm: Conversation = existing.some((g) => g.membershipState !== "inactive")
      ? handle(id, "dm")
      : yield* checks.checkAddable([valid!]).pipe(Effect.zipRight(newGroup([valid!], { dmId: id })))
    // Starting (or opening) a DM allows it, unless a decision was made.
    yield* consent.setIfUnset(id, "allowed")
    return dm
  })

  return { newGroup, createGroup, findOrCreateDm }
}
