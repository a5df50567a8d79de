/**
 * Leaving a group as part of its state. An inbox asks to leave by a commit of its own that
 * lists it in the group's settings (`GroupMetadata.leaving`, the "pending removals" of
 * libxmtp #441); anyone may then commit its removal. Because the list lives in the group's MLS
 * context, a member added later reads exactly what the others hold, and every member judges a
 * removal alike (an application message asking to leave was read only by those in its epoch).
 *
 * Pure rules: the committer runs them before it sends, every receiver on what it processed.
 */
import type { InboxId } from "./Ids.ts"

/** The part of a group's settings these rules read. */
export interface LeavingSettings {
  readonly superAdmins: ReadonlyArray<InboxId>
  readonly leaving: ReadonlyArray<InboxId>
}

/**
 * Whether `inboxId` is the only super admin among the members: nobody may remove it, so a leave
 * it asked for cannot be carried out (every member reads this off the same epoch).
 */
export const isLastSuperAdmin = (
  roles: { readonly superAdmins: ReadonlyArray<InboxId> },
  members: ReadonlyArray<InboxId>,
  inboxId: InboxId
): boolean =>
  roles.superAdmins.includes(inboxId) && members.includes(inboxId) &&
  !roles.superAdmins.some((other) => other !== inboxId && members.includes(other))

/**
 * Whether a leave of `inboxId` cannot be carried out in this epoch: it is the last super admin
 * and others remain to be governed. (A leaver whose inbox is all that is left deserts instead.)
 */
export const isLeaveBlocked = (
  settings: Pick<LeavingSettings, "superAdmins">,
  members: ReadonlyArray<InboxId>,
  inboxId: InboxId
): boolean => members.some((other) => other !== inboxId) && isLastSuperAdmin(settings, members, inboxId)

/** Whether a listed leaver is anyone's to remove in this epoch: still a member, and not blocked. */
const isLive = (settings: Pick<LeavingSettings, "superAdmins">, members: ReadonlyArray<InboxId>, inboxId: InboxId) =>
  members.includes(inboxId) && !isLeaveBlocked(settings, members, inboxId)

/** The listed inboxes anyone may remove in this epoch. */
export const liveLeavers = (settings: LeavingSettings, members: ReadonlyArray<InboxId>): ReadonlyArray<InboxId> =>
  settings.leaving.filter((inboxId) => isLive(settings, members, inboxId))

/**
 * The list a commit writes when it carries settings: entries that no longer stand (their inbox
 * is gone, or its leave became impossible) dropped, so a re-added inbox is not taken for a
 * leaver, and a voided request does not come back when the leave becomes possible again.
 */
export const settledLeaving = (
  before: LeavingSettings,
  membersBefore: ReadonlyArray<InboxId>,
  after: Pick<LeavingSettings, "superAdmins">,
  membersAfter: ReadonlyArray<InboxId>
): ReadonlyArray<InboxId> =>
  [...new Set(before.leaving)].filter((inboxId) =>
    isLive(before, membersBefore, inboxId) && isLive(after, membersAfter, inboxId)
  )

/** What a commit did to the list, as every member reads it off the two epochs. */
export interface LeavingChange {
  readonly committer: InboxId
  readonly membersBefore: ReadonlyArray<InboxId>
  readonly membersAfter: ReadonlyArray<InboxId>
  readonly addedInboxes: ReadonlyArray<InboxId>
  readonly before: LeavingSettings
  readonly after: LeavingSettings
}

/**
 * Why a commit's change to the list is not allowed, if it is not: an inbox lists itself only
 * (the commit is its consent), and only while its leave can be carried out; an entry goes only
 * once it no longer stands, in the epoch before or after; an inbox the commit adds is not listed;
 * an entry is not repeated (judged on what the commit adds, so that a state that holds a repeat
 * never stops every later commit).
 */
export const leavingChangeProblem = (change: LeavingChange): string | undefined => {
  const { after, before, committer } = change
  // Counted in one pass each: a list is as long as a hostile commit makes it.
  const countsBefore = counts(before.leaving)
  const countsAfter = counts(after.leaving)
  for (const [inboxId, n] of countsAfter) {
    if (n > Math.max(1, countsBefore.get(inboxId) ?? 0)) return `the leaving list names ${inboxId} twice`
  }
  const listedAfter = new Set(after.leaving)
  for (const inboxId of listedAfter) {
    if (countsBefore.has(inboxId)) continue
    if (inboxId !== committer) return `${committer} listed ${inboxId} as leaving: only an inbox may ask to leave`
    if (!isLive(after, change.membersAfter, inboxId)) {
      return `${inboxId} asked to leave, but its leave cannot be carried out (the last super admin)`
    }
  }
  for (const inboxId of countsBefore.keys()) {
    if (listedAfter.has(inboxId)) continue
    if (isLive(before, change.membersBefore, inboxId) && isLive(after, change.membersAfter, inboxId)) {
      return `${committer} dropped ${inboxId}'s request to leave while it stands`
    }
  }
  const relisted = change.addedInboxes.find((inboxId) => listedAfter.has(inboxId))
  return relisted === undefined ? undefined : `${relisted} is added while listed as leaving`
}

const counts = (list: ReadonlyArray<InboxId>): Map<InboxId, number> => {
  const seen = new Map<InboxId, number>()
  for (const inboxId of list) seen.set(inboxId, (seen.get(inboxId) ?? 0) + 1)
  return seen
}

/**
 * This installation's membership as an epoch's settings have it: its inbox newly listed and
 * anyone's to remove means it is on its way out (another device of the inbox may have asked); a
 * request it made that can no longer be carried out (it became the last super admin) is void,
 * and it is active again. An entry listed already (`listedBefore`) does not take an active member
 * out again: that is a void request whose withdrawal has not landed yet, and the leave it would
 * revive (left alone, the last super admin is no longer blocked) was cancelled. Whatever else
 * stays as it was (a request of ours not yet out among it).
 */
export const membershipIn = <M extends "active" | "pendingRemove" | "inactive">(
  settings: LeavingSettings,
  members: ReadonlyArray<InboxId>,
  self: InboxId,
  membership: M,
  listedBefore: boolean
): M | "active" | "pendingRemove" => {
  if (membership === "inactive") return membership
  const live = liveLeavers(settings, members).includes(self)
  if (live && !(membership === "active" && listedBefore)) return "pendingRemove"
  return membership === "pendingRemove" && isLeaveBlocked(settings, members, self) ? "active" : membership
}
