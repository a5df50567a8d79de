/**
 * Group governance as pure rules: who holds which role, what each policy allows, and whether
 * a commit's changes were allowed to its committer. Every member runs the same function on the
 * group context of the epoch the commit was built for, so all members decide alike (the
 * group does not fork over a permission).
 *
 * The settings live in the group's MLS context (the metadata extension), so a member added
 * later reads exactly what everyone else holds.
 */
import { Either, Schema } from "effect"
import { InboxId } from "./Ids.ts"
import { leavingChangeProblem, liveLeavers } from "./Leaving.ts"

export const Role = Schema.Literal("member", "admin", "superAdmin")
export type Role = typeof Role.Type

export const Policy = Schema.Literal("everyone", "admins", "superAdmins", "nobody")
export type Policy = typeof Policy.Type

export class PermissionPolicies extends Schema.Class<PermissionPolicies>("PermissionPolicies")({
  addMember: Policy,
  removeMember: Policy,
  updateMetadata: Policy,
  setMinProtocolVersion: Policy
}) {}

export const PolicyPreset = Schema.Literal("everyone", "adminsOnly")
export type PolicyPreset = typeof PolicyPreset.Type

export const presets: Record<PolicyPreset, PermissionPolicies> = {
  everyone: new PermissionPolicies({
    addMember: "everyone",
    removeMember: "everyone",
    updateMetadata: "everyone",
    setMinProtocolVersion: "superAdmins"
  }),
  adminsOnly: new PermissionPolicies({
    addMember: "admins",
    removeMember: "admins",
    updateMetadata: "admins",
    setMinProtocolVersion: "superAdmins"
  })
}

/** What a commit may change, each under its own policy. Roles and policies: super admins only. */
export type Action = keyof PermissionPolicies | "setRoles" | "updatePermissions"

export const roleOf = (
  roles: { readonly admins: ReadonlyArray<InboxId>; readonly superAdmins: ReadonlyArray<InboxId> },
  inboxId: InboxId
): Role => roles.superAdmins.includes(inboxId) ? "superAdmin" : roles.admins.includes(inboxId) ? "admin" : "member"

export const allows = (policy: Policy, role: Role): boolean => {
  switch (policy) {
    case "everyone":
      return true
    case "admins":
      return role === "admin" || role === "superAdmin"
    case "superAdmins":
      return role === "superAdmin"
    case "nobody":
      return false
  }
}

/** The policy an action is judged by in a group with these policies. */
export const policyFor = (policies: PermissionPolicies, action: Action): Policy =>
  action === "setRoles" || action === "updatePermissions" ? "superAdmins" : policies[action]

/** The governed part of a group's context, as one epoch holds it. */
export interface Governed {
  readonly fields: Readonly<Record<string, unknown>>
  readonly admins: ReadonlyArray<InboxId>
  readonly superAdmins: ReadonlyArray<InboxId>
  readonly policies: PermissionPolicies
  readonly minProtocolVersion: number
  /** Inboxes that asked to leave (`Leaving`): their removal is anyone's to do while it stands. */
  readonly leaving: ReadonlyArray<InboxId>
}

/** What a commit did, as every member can read it off the commit and the two epochs' contexts. */
export interface CommitEffects {
  /** Inboxes that had no installation before and have one after. */
  readonly addedInboxes: ReadonlyArray<InboxId>
  /** Inboxes that had an installation before and have none after. */
  readonly removedInboxes: ReadonlyArray<InboxId>
  readonly membersBefore: ReadonlyArray<InboxId>
  readonly membersAfter: ReadonlyArray<InboxId>
  readonly before: Governed
  readonly after: Governed
}

export class PermissionViolation extends Schema.TaggedClass<PermissionViolation>()("PermissionViolation", {
  action: Schema.String,
  required: Policy,
  detail: Schema.String
}) {}

const sameList = (a: ReadonlyArray<string>, b: ReadonlyArray<string>) =>
  a.length === b.length && [...a].sort().every((x, i) => x === [...b].sort()[i])

const samePolicies = (a: PermissionPolicies, b: PermissionPolicies) =>
  a.addMember === b.addMember && a.removeMember === b.removeMember && a.updateMetadata === b.updateMetadata &&
  a.setMinProtocolVersion === b.setMinProtocolVersion

/** The metadata fields whose values differ between two epochs. */
export const changedFields = (before: Governed, after: Governed): ReadonlyArray<string> => {
  const keys = new Set([...Object.keys(before.fields), ...Object.keys(after.fields)])
  return [...keys].filter((k) => JSON.stringify(before.fields[k] ?? null) !== JSON.stringify(after.fields[k] ?? null))
    .sort()
}

/** The actions a commit performed, each once. */
export const actionsOf = (effects: CommitEffects): ReadonlyArray<Action> => {
  const { after, before } = effects
  const actions: Array<Action> = []
  if (effects.addedInboxes.length > 0) actions.push("addMember")
  // Removing inboxes that asked to leave is everyone's to do (their listing is the consent).
  const leaving = liveLeavers(before, effects.membersBefore)
  if (effects.removedInboxes.some((inbox) => !leaving.includes(inbox))) actions.push("removeMember")
  if (changedFields(before, after).length > 0) actions.push("updateMetadata")
  if (!sameList(before.admins, after.admins) || !sameList(before.superAdmins, after.superAdmins)) {
    actions.push("setRoles")
  }
  if (!samePolicies(before.policies, after.policies)) actions.push("updatePermissions")
  if (before.minProtocolVersion !== after.minProtocolVersion) actions.push("setMinProtocolVersion")
  return actions
}

/**
 * Whether `committer` was allowed to make this commit, judged against the epoch it was built
 * for (`effects.before`). The rules every member applies to every commit.
 */
export const checkCommit = (
  committer: InboxId,
  effects: CommitEffects
): Either.Either<void, PermissionViolation> => {
  const role = roleOf(effects.before, committer)
  for (const action of actionsOf(effects)) {
    const required = policyFor(effects.before.policies, action)
    if (!allows(required, role)) {
      return Either.left(
        new PermissionViolation({ action, required, detail: `${committer} is ${role}; ${action} needs ${required}` })
      )
    }
  }
  // Roles may name inboxes no longer in the group (a removal cannot rewrite the context in the
  // same commit, ts-mls #742): what counts is the super admins who are members.
  const present = (g: Governed, members: ReadonlyArray<InboxId>) => g.superAdmins.filter((i) => members.includes(i))
  if (
    present(effects.before, effects.membersBefore).length > 0 &&
    present(effects.after, effects.membersAfter).length === 0
  ) {
    return Either.left(new PermissionViolation({
      action: effects.removedInboxes.length > 0 ? "removeMember" : "setRoles",
      required: "superAdmins",
      detail: "the last super admin cannot be demoted or removed"
    }))
  }
  const leaving = leavingChangeProblem({ committer, ...effects })
  if (leaving !== undefined) {
    return Either.left(new PermissionViolation({ action: "leave", required: "nobody", detail: leaving }))
  }
  if (effects.after.minProtocolVersion < effects.before.minProtocolVersion) {
    return Either.left(new PermissionViolation({
      action: "setMinProtocolVersion",
      required: policyFor(effects.before.policies, "setMinProtocolVersion"),
      detail: "the minimum protocol version never goes down"
    }))
  }
  return Either.right(undefined)
}

/** The first field of `expected` that no longer holds in `current`, if any (compare-and-swap of metadata). */
export const metadataConflict = (
  current: Readonly<Record<string, unknown>>,
  expected: Readonly<Record<string, unknown>>
): string | undefined =>
  Object.keys(expected).sort().find((k) =>
    JSON.stringify(current[k] ?? null) !== JSON.stringify(expected[k] ?? null)
  )

/** An installation below the group's floor may read but not write. */
export const isPaused = (group: Pick<Governed, "minProtocolVersion">, protocolVersion: number): boolean =>
  protocolVersion < group.minProtocolVersion

export const isInboxId = Schema.is(InboxId)
