/**
 * A group's governed settings as they change: the metadata a governance intent produces from
 * the current one, and the effects of a commit as `Governance.checkCommit` judges them. Pure:
 * the committer runs it before sending and every receiver runs it on what it processed, on
 * the same epoch's settings, so they all decide alike.
 */
import { Either, Option, Schema } from "effect"
import { bytesEqual, fromUtf8, utf8 } from "./Bytes.ts"
import { MetadataConflict, PermissionDenied } from "./Errors.ts"
import {
  changedFields,
  checkCommit,
  type CommitEffects,
  metadataConflict,
  PermissionPolicies
} from "./Governance.ts"
import type { InboxId } from "./Ids.ts"
import type { IntentData } from "./Intent.ts"
import { isLeaveBlocked, settledLeaving } from "./Leaving.ts"
import { GroupMetadata, GroupMetadataJson, governedOf, METADATA_FIELDS, PROTOCOL_VERSION } from "./Model.ts"

/**
 * Settings decoded per bytes object: every step reads them from the state (the same bytes for a
 * whole epoch), and the roles and admin lists of a big group take a while to decode. Nothing
 * writes into a state's bytes once it exists.
 */
const decodedSettings = new WeakMap<Uint8Array, Option.Option<GroupMetadata>>()
const decodeSettingsJson = Schema.decodeUnknownOption(GroupMetadataJson)

/** The settings bytes of a group's context; absent means the defaults (a group created unnamed). */
export const decodeSettings = (bytes: Uint8Array | undefined): Option.Option<GroupMetadata> => {
  if (bytes === undefined) return Option.some(GroupMetadata.none)
  const known = decodedSettings.get(bytes)
  if (known !== undefined) return known
  let decoded: Option.Option<GroupMetadata>
  try {
    decoded = decodeSettingsJson(fromUtf8(bytes))
  } catch {
    decoded = Option.none()
  }
  decodedSettings.set(bytes, decoded)
  return decoded
}

/** The settings bytes decoded, or the defaults when they do not decode (what every rule then reads). */
export const settingsOrDefaults = (bytes: Uint8Array | undefined): GroupMetadata =>
  Option.getOrElse(decodeSettings(bytes), () => GroupMetadata.none)

/**
 * A new group's settings: they admit this library's protocol version and later (or the creator's,
 * when it speaks an older one). An installation of an older version reads less of the settings
 * (version 1: not who is leaving), so it would judge some commits differently from the others.
 */
export const settingsForCreation = (settings: GroupMetadata, creatorVersion: number): GroupMetadata => {
  const floor = Math.max(settings.minProtocolVersion, Math.min(PROTOCOL_VERSION, creatorVersion))
  return floor === settings.minProtocolVersion ? settings : new GroupMetadata({ ...settings, minProtocolVersion: floor })
}

export const encodeSettings = (metadata: GroupMetadata): Uint8Array => utf8(Schema.encodeSync(GroupMetadataJson)(metadata))

/** The intents that rewrite the settings. */
export type GovernanceIntent = Extract<
  IntentData,
  { readonly _tag: "UpdateMetadata" | "SetRole" | "UpdatePermissions" | "SetMinProtocolVersion" }
>

export const isGovernanceIntent = (data: IntentData): data is GovernanceIntent =>
  data._tag === "UpdateMetadata" || data._tag === "SetRole" || data._tag === "UpdatePermissions" ||
  data._tag === "SetMinProtocolVersion"

/** A patch's set fields only (an absent field leaves the current value). */
const setFields = <A extends object>(patch: A): { [K in keyof A]-?: Exclude<A[K], undefined> } =>
  Object.fromEntries(Object.entries(patch).filter(([, v]) => v !== undefined)) as never

const withoutInbox = (list: ReadonlyArray<InboxId>, inboxId: InboxId) => list.filter((i) => i !== inboxId)

/** The settings after the intent, without any check (`nextSettings` checks). */
const applied = (current: GroupMetadata, data: GovernanceIntent): GroupMetadata => {
  switch (data._tag) {
    case "UpdateMetadata":
      return new GroupMetadata({ ...current, ...setFields(data.patch) })
    case "SetRole": {
      const admins = withoutInbox(current.admins, data.inboxId)
      const superAdmins = withoutInbox(current.superAdmins, data.inboxId)
      return new GroupMetadata({
        ...current,
        admins: data.role === "admin" ? [...admins, data.inboxId] : admins,
        superAdmins: data.role === "superAdmin" ? [...superAdmins, data.inboxId] : superAdmins
      })
    }
    case "UpdatePermissions":
      return new GroupMetadata({ ...current, policies: new PermissionPolicies({ ...current.policies, ...setFields(data.patch) }) })
    case "SetMinProtocolVersion":
      return new GroupMetadata({ ...current, minProtocolVersion: data.version })
  }
}

/** The `ifMatch` fields of an update, as `Governance.metadataConflict` compares them. */
const expectedFields = (ifMatch: Readonly<Record<string, unknown>>) =>
  Object.fromEntries(
    Object.entries(ifMatch).filter(([k]) => (METADATA_FIELDS as ReadonlyArray<string>).includes(k)).map((
      [k, v]
    ) => [k, typeof v === "bigint" ? v.toString() : v])
  )

/** What a settings-only commit by `committer` does, for `checkCommit`. */
export const settingsEffects = (
  members: ReadonlyArray<InboxId>,
  before: GroupMetadata,
  after: GroupMetadata
): CommitEffects => ({
  addedInboxes: [],
  removedInboxes: [],
  membersBefore: members,
  membersAfter: members,
  before: governedOf(before),
  after: governedOf(after)
})

/**
 * The settings a governance intent leads to at this epoch, or why it may not: an `ifMatch`
 * field that no longer holds, or a policy the committer does not meet. `undefined` when the
 * intent changes nothing (it is then done).
 */
export const nextSettings = (
  current: GroupMetadata,
  data: GovernanceIntent,
  committer: InboxId,
  members: ReadonlyArray<InboxId>
): Either.Either<GroupMetadata | undefined, MetadataConflict | PermissionDenied> => {
  if (data._tag === "UpdateMetadata" && data.ifMatch !== undefined) {
    const field = metadataConflict(governedOf(current).fields, expectedFields(data.ifMatch))
    if (field !== undefined) return Either.left(new MetadataConflict({ field }))
  }
  const changed = applied(current, data)
  const leaving = settledLeaving(current, members, changed, members)
  return checkedSettings(current, new GroupMetadata({ ...changed, leaving }), committer, members)
}

/** `next`, if `committer` may write it over `current` (as receivers judge it); `undefined` if nothing changes. */
const checkedSettings = (
  current: GroupMetadata,
  next: GroupMetadata,
  committer: InboxId,
  members: ReadonlyArray<InboxId>
): Either.Either<GroupMetadata | undefined, PermissionDenied> => {
  const verdict = checkCommit(committer, settingsEffects(members, current, next))
  if (Either.isLeft(verdict)) {
    return Either.left(new PermissionDenied({ action: verdict.left.action, required: verdict.left.required }))
  }
  const unchanged = Schema.encodeSync(GroupMetadataJson)(next) === Schema.encodeSync(GroupMetadataJson)(current)
  return Either.right(unchanged ? undefined : next)
}

/** Why the last super admin cannot leave (nobody could remove it). */
export const lastSuperAdminLeaving = new PermissionDenied({ action: "leave", required: "another super admin (setRole first)" })

/**
 * The settings that ask for `committer`'s inbox to leave: listed, with the entries that no
 * longer stand dropped. `undefined` when it is listed already; refused when it is the last super
 * admin (nobody could remove it).
 */
export const leaveSettings = (
  current: GroupMetadata,
  committer: InboxId,
  members: ReadonlyArray<InboxId>
): Either.Either<GroupMetadata | undefined, PermissionDenied> => {
  if (isLeaveBlocked(current, members, committer)) return Either.left(lastSuperAdminLeaving)
  if (current.leaving.includes(committer)) return Either.right(undefined)
  const leaving = [...settledLeaving(current, members, current, members), committer]
  return checkedSettings(current, new GroupMetadata({ ...current, leaving }), committer, members)
}

/** The settings with the leave requests that no longer stand dropped; `undefined` if none is. */
export const settledSettings = (current: GroupMetadata, members: ReadonlyArray<InboxId>): GroupMetadata | undefined =>
  settingsForAdd(current, members, [])

/**
 * The settings an add commit carries, if it must carry any: entries that no longer stand are
 * dropped (an inbox removed after it asked to leave may be among those added back).
 */
export const settingsForAdd = (
  current: GroupMetadata,
  members: ReadonlyArray<InboxId>,
  added: ReadonlyArray<InboxId>
): GroupMetadata | undefined => {
  const after = [...members, ...added.filter((i) => !members.includes(i))]
  const leaving = settledLeaving(current, members, current, after)
  return leaving.length === current.leaving.length ? undefined : new GroupMetadata({ ...current, leaving })
}

/** The effects of a received commit, from the two epochs' members and settings. */
export const commitEffects = (input: {
  readonly membersBefore: ReadonlyArray<InboxId>
  readonly membersAfter: ReadonlyArray<InboxId>
  readonly before: GroupMetadata
  readonly after: GroupMetadata
}): CommitEffects => {
  const was = new Set(input.membersBefore)
  const is = new Set(input.membersAfter)
  return {
    addedInboxes: [...is].filter((i) => !was.has(i)),
    removedInboxes: [...was].filter((i) => !is.has(i)),
    membersBefore: [...was],
    membersAfter: [...is],
    before: governedOf(input.before),
    after: governedOf(input.after)
  }
}

/** Whether `committer` may add and remove these inboxes (removing one listed as leaving is anyone's to do). */
export const membershipVerdict = (input: {
  readonly settings: GroupMetadata
  readonly committer: InboxId
  readonly members: ReadonlyArray<InboxId>
  readonly add?: ReadonlyArray<InboxId>
  readonly remove?: ReadonlyArray<InboxId>
}): Either.Either<void, PermissionDenied> => {
  const removed = new Set(input.remove ?? [])
  const effects = commitEffects({
    membersBefore: input.members,
    membersAfter: [...input.members.filter((i) => !removed.has(i)), ...(input.add ?? [])],
    before: input.settings,
    // An add carries the settings `settingsForAdd` writes, as the commit built for it will.
    after: settingsForAdd(input.settings, input.members, input.add ?? []) ?? input.settings
  })
  return Either.mapLeft(
    checkCommit(input.committer, effects),
    (violation) => new PermissionDenied({ action: violation.action, required: violation.required })
  )
}

/** Why a received commit is refused under the policy of the epoch it was built for, if it is. */
export const commitRefusal = (input: {
  readonly committer: InboxId
  readonly membersBefore: ReadonlyArray<InboxId>
  readonly membersAfter: ReadonlyArray<InboxId>
  readonly settingsBefore: Uint8Array | undefined
  readonly settingsAfter: Uint8Array | undefined
  /** The protocol versions the commit's new leaves advertise (1 for none). */
  readonly newLeafVersions: ReadonlyArray<number>
}): string | undefined => {
  // Settings that did not decode before are the defaults; new ones that do not decode are refused.
  const before = settingsOrDefaults(input.settingsBefore)
  const unchanged = input.settingsAfter === input.settingsBefore ||
    (input.settingsAfter !== undefined && input.settingsBefore !== undefined &&
      bytesEqual(input.settingsAfter, input.settingsBefore))
  const after = unchanged ? Option.some(before) : decodeSettings(input.settingsAfter)
  if (Option.isNone(after)) return "the commit's group settings do not decode"
  const verdict = checkCommit(input.committer, commitEffects({ ...input, before, after: after.value }))
  if (Either.isLeft(verdict)) return verdict.left.detail
  const floor = after.value.minProtocolVersion
  const old = input.newLeafVersions.find((v) => v < floor)
  return old === undefined ? undefined : `adds a leaf of protocol version ${old}; the group requires ${floor}`
}

/** Which settings a commit changed (empty if none), in a stable order. */
export const changedSettings = (before: Uint8Array | undefined, after: Uint8Array | undefined): ReadonlyArray<string> => {
  if (before === after || (before !== undefined && after !== undefined && bytesEqual(before, after))) return []
  const was = governedOf(settingsOrDefaults(before))
  const is = governedOf(settingsOrDefaults(after))
  const json = (x: unknown) => JSON.stringify(x)
  return [
    ...changedFields(was, is),
    ...(["admins", "superAdmins", "policies", "minProtocolVersion"] as const).filter((k) =>
      json(k === "admins" || k === "superAdmins" ? [...was[k]].sort() : was[k]) !==
        json(k === "admins" || k === "superAdmins" ? [...is[k]].sort() : is[k])
    )
  ]
}
