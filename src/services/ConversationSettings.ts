/**
 * The group-settings operations of a conversation handle: metadata, roles, permission policies
 * and the minimum protocol version, read at the epoch held and changed through intents checked
 * first against that epoch. A DM has no settings.
 */
import { Effect, Either, Schema } from "effect"
import { InvalidInput, NotAMember } from "../domain/Errors.ts"
import { type GovernanceIntent, nextSettings } from "../domain/GroupSettings.ts"
import {
  type MetadataPatch,
  SetMinProtocolVersionData,
  SetRoleData,
  UpdateMetadataData,
  UpdatePermissionsData
} from "../domain/Intent.ts"
import { GroupMetadata, METADATA_FIELDS, type MetadataField } from "../domain/Model.ts"
import type { Conversation } from "./Conversation.ts"
import type { HandleParts, HandleScope } from "./ConversationScope.ts"

type SettingsOperations = Pick<
  Conversation,
  | "updateMetadata"
  | "roles"
  | "setRole"
  | "permissions"
  | "updatePermissions"
  | "minProtocolVersion"
  | "setMinProtocolVersion"
  | "metadata"
>

/** The metadata fields of a patch or an `ifMatch`, and nothing else. */
const metadataPatchOf = (input: Partial<Record<MetadataField, unknown>>): MetadataPatch =>
  Object.fromEntries(METADATA_FIELDS.filter((f) => input[f] !== undefined).map((f) => [f, input[f]])) as MetadataPatch

export const make = (
  { checks, ctx, groups, intents }: HandleParts,
  { id, kind, span }: HandleScope
): SettingsOperations => {
  const { self } = ctx
  const { activePrimary, primaryOf } = groups
  const { checkNotPaused, groupMembers, queueIntent, resolveTyped, settingsOf } = intents

  /** Queues a settings change after checking it at the epoch held, and waits for it. */
  const changeSettings = (name: string, data: GovernanceIntent) =>
    Effect.gen(function*() {
      if (kind === "dm") return yield* new InvalidInput({ reason: "a DM has no group settings" })
      const group = yield* activePrimary(id, kind)
      yield* checkNotPaused(group)
      const members = [...(yield* groupMembers(group)).keys()]
      const current = yield* settingsOf(group)
      const next = yield* Effect.try({
        try: () => nextSettings(current, data, self, members),
        catch: (e) => new InvalidInput({ reason: `group settings: ${e instanceof Error ? e.message : String(e)}` })
      })
      if (Either.isLeft(next)) return yield* next.left
      if (next.right === undefined) return
      const intentId = yield* queueIntent(group.id, data)
      yield* resolveTyped(group.id, intentId)
    }).pipe(span(name))

  const settingsRead = <A>(read: (settings: GroupMetadata) => A, name: string) =>
    (kind === "dm" ? Effect.succeed(GroupMetadata.none) : primaryOf(id, kind).pipe(Effect.flatMap(settingsOf))).pipe(
      Effect.map(read),
      span(name)
    )

  return {
    updateMetadata: (patch, options = {}) =>
      changeSettings(
        "updateMetadata",
        UpdateMetadataData.make({
          patch: metadataPatchOf(patch),
          ...(options.ifMatch === undefined ? {} : { ifMatch: metadataPatchOf(options.ifMatch) })
        })
      ),
    roles: settingsRead((s) => ({ admins: s.admins, superAdmins: s.superAdmins }), "roles"),
    setRole: (inboxId, role) =>
      Effect.gen(function*() {
        const [valid] = yield* checks.validInboxes([inboxId])
        const group = yield* activePrimary(id, kind)
        if (!(yield* groupMembers(group)).has(valid!)) return yield* new NotAMember({ groupId: group.id, inboxId: valid! })
        yield* changeSettings("setRole", SetRoleData.make({ inboxId: valid!, role }))
      }),
    permissions: settingsRead((s) => s.policies, "permissions"),
    updatePermissions: (patch) =>
      Schema.decodeUnknown(UpdatePermissionsData)({ _tag: "UpdatePermissions", patch }).pipe(
        Effect.mapError((e) => new InvalidInput({ reason: `permissions: ${e.message}` })),
        Effect.flatMap((data) => changeSettings("updatePermissions", data))
      ),
    minProtocolVersion: settingsRead((s) => s.minProtocolVersion, "minProtocolVersion"),
    setMinProtocolVersion: (version) =>
      Schema.decodeUnknown(SetMinProtocolVersionData)({ _tag: "SetMinProtocolVersion", version }).pipe(
        Effect.mapError((e) => new InvalidInput({ reason: `minimum protocol version: ${e.message}` })),
        Effect.flatMap((data) => changeSettings("setMinProtocolVersion", data))
      ),
    metadata: kind === "dm"
      ? Effect.succeed(GroupMetadata.none)
      : primaryOf(id, kind).pipe(Effect.flatMap(settingsOf), span("metadata"))
  }
}
