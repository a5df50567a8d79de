/** The governance rules as a table: no SQLite, no ts-mls. */
import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import {
  actionsOf,
  allows,
  checkCommit,
  type CommitEffects,
  type Governed,
  isPaused,
  metadataConflict,
  type Policy,
  presets,
  type Role
} from "../src/domain/Governance.ts"
import type { InboxId } from "../src/domain/Ids.ts"
import { isLastSuperAdmin } from "../src/domain/Leaving.ts"

const inbox = (c: string) => c.repeat(64) as InboxId
const [owner, admin, member, newcomer, leaver] = ["a", "b", "c", "d", "e"].map(inbox) as [
  InboxId,
  InboxId,
  InboxId,
  InboxId,
  InboxId
]

const group = (overrides: Partial<Governed> = {}): Governed => ({
  fields: { name: "Club", description: null },
  admins: [admin],
  superAdmins: [owner],
  policies: presets.adminsOnly,
  minProtocolVersion: 1,
  leaving: [],
  ...overrides
})

const commit = (overrides: Partial<CommitEffects> = {}): CommitEffects => ({
  addedInboxes: [],
  removedInboxes: [],
  membersBefore: [owner, admin, member, leaver],
  membersAfter: [owner, admin, member, leaver],
  before: group(),
  after: group(),
  ...overrides
})

const verdict = (committer: InboxId, effects: CommitEffects) =>
  Either.match(checkCommit(committer, effects), { onLeft: (v) => `denied ${v.action}`, onRight: () => "allowed" })

describe("policies", () => {
  const table: ReadonlyArray<readonly [Policy, Role, boolean]> = [
    ["everyone", "member", true],
    ["admins", "member", false],
    ["admins", "admin", true],
    ["admins", "superAdmin", true],
    ["superAdmins", "admin", false],
    ["superAdmins", "superAdmin", true],
    ["nobody", "superAdmin", false]
  ]
  it.each(table)("%s allows a %s: %s", (policy, role, expected) => {
    expect(allows(policy, role)).toBe(expected)
  })

  it("the presets: everyone may do all but raise the version; adminsOnly keeps membership and metadata to admins", () => {
    expect(presets.everyone).toMatchObject({ addMember: "everyone", setMinProtocolVersion: "superAdmins" })
    expect(presets.adminsOnly).toMatchObject({ addMember: "admins", removeMember: "admins", updateMetadata: "admins" })
  })
})

describe("what a commit did", () => {
  it("names each action once, and a leaver's removal is nobody's permission", () => {
    expect(actionsOf(commit({ addedInboxes: [newcomer] }))).toEqual(["addMember"])
    expect(actionsOf(commit({ removedInboxes: [leaver], before: group({ leaving: [leaver] }) }))).toEqual([])
    expect(actionsOf(commit({ removedInboxes: [member] }))).toEqual(["removeMember"])
    expect(actionsOf(commit({ after: group({ fields: { name: "Other", description: null } }) }))).toEqual([
      "updateMetadata"
    ])
    expect(actionsOf(commit({ after: group({ admins: [admin, member] }) }))).toEqual(["setRoles"])
    expect(actionsOf(commit({ after: group({ policies: presets.everyone }) }))).toEqual(["updatePermissions"])
    expect(actionsOf(commit({ after: group({ minProtocolVersion: 2 }) }))).toEqual(["setMinProtocolVersion"])
    // The same roles in another order are no change.
    expect(actionsOf(commit({ before: group({ admins: [admin, member] }), after: group({ admins: [member, admin] }) })))
      .toEqual([])
  })
})

describe("every receiver's check of a commit", () => {
  const cases: ReadonlyArray<readonly [string, InboxId, CommitEffects, string]> = [
    ["a member adds in an admins-only group", member, commit({ addedInboxes: [newcomer] }), "denied addMember"],
    ["an admin adds in an admins-only group", admin, commit({ addedInboxes: [newcomer] }), "allowed"],
    [
      "a member adds in an everyone group",
      member,
      commit({
        addedInboxes: [newcomer],
        before: group({ policies: presets.everyone }),
        after: group({ policies: presets.everyone })
      }),
      "allowed"
    ],
    [
      "a member commits a listed leaver's removal",
      member,
      commit({
        removedInboxes: [leaver],
        membersAfter: [owner, admin, member],
        before: group({ leaving: [leaver] }),
        after: group({ leaving: [leaver] })
      }),
      "allowed"
    ],
    [
      "a member removes an inbox that is not listed as leaving",
      member,
      commit({ removedInboxes: [leaver], membersAfter: [owner, admin, member] }),
      "denied removeMember"
    ],
    ["a member lists itself as leaving", member, commit({ after: group({ leaving: [member] }) }), "allowed"],
    ["a member lists someone else as leaving", member, commit({ after: group({ leaving: [leaver] }) }), "denied leave"],
    ["the last super admin lists itself as leaving", owner, commit({ after: group({ leaving: [owner] }) }), "denied leave"],
    [
      "a member drops a request to leave that still stands",
      member,
      commit({ before: group({ leaving: [leaver] }), after: group() }),
      "denied leave"
    ],
    [
      "a commit in a group whose settings repeat an entry (as its creator wrote them) is not stopped by it",
      member,
      commit({ before: group({ leaving: [leaver, leaver] }), after: group({ leaving: [leaver, leaver] }) }),
      "allowed"
    ],
    ["a member lists itself twice", member, commit({ after: group({ leaving: [member, member] }) }), "denied leave"],
    [
      "a member drops the request of an inbox already gone",
      member,
      commit({ before: group({ leaving: [newcomer] }), after: group() }),
      "allowed"
    ],
    [
      "an admin adds back an inbox still listed as leaving",
      admin,
      commit({
        addedInboxes: [newcomer],
        membersAfter: [owner, admin, member, leaver, newcomer],
        before: group({ leaving: [newcomer] }),
        after: group({ leaving: [newcomer] })
      }),
      "denied leave"
    ],
    [
      "a member removes a listed leaver who is the last super admin",
      member,
      commit({ removedInboxes: [owner], membersAfter: [admin, member, leaver], before: group({ leaving: [owner] }) }),
      "denied removeMember"
    ],
    [
      "the super admin demotes the other one and drops its own request, void from then on",
      owner,
      commit({
        before: group({ superAdmins: [owner, admin], leaving: [owner] }),
        after: group({ superAdmins: [owner], admins: [admin] })
      }),
      "allowed"
    ],
    [
      "a member renames an admins-only group",
      member,
      commit({ after: group({ fields: { name: "Mine", description: null } }) }),
      "denied updateMetadata"
    ],
    ["an admin promotes a member", admin, commit({ after: group({ admins: [admin, member] }) }), "denied setRoles"],
    ["the super admin promotes a member", owner, commit({ after: group({ admins: [admin, member] }) }), "allowed"],
    [
      "an admin changes the policies",
      admin,
      commit({ after: group({ policies: presets.everyone }) }),
      "denied updatePermissions"
    ],
    [
      "the last super admin demotes itself",
      owner,
      commit({ after: group({ superAdmins: [] }) }),
      "denied setRoles"
    ],
    [
      "the super admin names a successor and steps down",
      owner,
      commit({ after: group({ superAdmins: [admin], admins: [] }) }),
      "allowed"
    ],
    [
      "an admin removes the last super admin",
      admin,
      commit({ removedInboxes: [owner], membersAfter: [admin, member, leaver] }),
      "denied removeMember"
    ],
    ["the super admin raises the version", owner, commit({ after: group({ minProtocolVersion: 3 }) }), "allowed"],
    [
      "the super admin lowers the version",
      owner,
      commit({ before: group({ minProtocolVersion: 3 }), after: group({ minProtocolVersion: 2 }) }),
      "denied setMinProtocolVersion"
    ],
    [
      "a judgement uses the epoch the commit was built for, not the one after",
      member,
      commit({ addedInboxes: [newcomer], after: group({ policies: presets.everyone }) }),
      "denied addMember"
    ]
  ]
  it.each(cases)("%s", (_, committer, effects, expected) => {
    expect(verdict(committer, effects)).toBe(expected)
  })
})

describe("compare-and-swap and the version floor", () => {
  it("names the first field that no longer holds", () => {
    expect(metadataConflict({ name: "Club", description: "x" }, { name: "Club" })).toBeUndefined()
    expect(metadataConflict({ name: "Other", description: "x" }, { name: "Club", description: "x" })).toBe("name")
    expect(metadataConflict({ name: "Club" }, { imageUrl: null })).toBeUndefined()
  })

  it("an installation below the floor is paused", () => {
    expect(isPaused({ minProtocolVersion: 2 }, 1)).toBe(true)
    expect(isPaused({ minProtocolVersion: 2 }, 2)).toBe(false)
  })
})

describe("a leave the group cannot honour", () => {
  const roles = { superAdmins: [owner, admin] }
  const cases: ReadonlyArray<readonly [string, ReadonlyArray<InboxId>, InboxId, boolean]> = [
    ["another super admin is a member: the leave can go ahead", [owner, admin, member], owner, false],
    ["the other super admin is gone: the owner is the last", [owner, member], owner, true],
    ["a super admin no longer a member does not count", [admin, member], admin, true],
    ["a plain member may always leave", [owner, member], member, false],
    ["an inbox not in the group is nobody's last super admin", [member], owner, false]
  ]
  it.each(cases)("%s", (_, members, inboxId, expected) => {
    expect(isLastSuperAdmin(roles, members, inboxId)).toBe(expected)
  })
})
