/** How governance intents rewrite a group's settings, and how receivers judge a commit's settings: tables, no I/O. */
import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import { utf8 } from "../src/domain/Bytes.ts"
import { presets } from "../src/domain/Governance.ts"
import {
  changedSettings,
  commitRefusal,
  decodeSettings,
  encodeSettings,
  type GovernanceIntent,
  leaveSettings,
  nextSettings,
  settingsForAdd
} from "../src/domain/GroupSettings.ts"
import type { InboxId } from "../src/domain/Ids.ts"
import {
  SetMinProtocolVersionData,
  SetRoleData,
  UpdateMetadataData,
  UpdatePermissionsData
} from "../src/domain/Intent.ts"
import { GroupMetadata } from "../src/domain/Model.ts"

const inbox = (c: string) => c.repeat(64) as InboxId
const [owner, admin, member, outsider] = ["a", "b", "c", "d"].map(inbox) as [InboxId, InboxId, InboxId, InboxId]
const members = [owner, admin, member]

const club = new GroupMetadata({
  name: "Club",
  description: null,
  admins: [admin],
  superAdmins: [owner],
  policies: presets.adminsOnly
})

const outcome = (data: GovernanceIntent, committer: InboxId) =>
  Either.match(nextSettings(club, data, committer, members), {
    onLeft: (e) => e._tag === "MetadataConflict" ? `conflict ${e.field}` : `denied ${e.action}`,
    onRight: (next) => next === undefined ? "no-op" : "changed"
  })

describe("nextSettings", () => {
  const rename = (name: string, ifMatch?: string) =>
    UpdateMetadataData.make({ patch: { name }, ...(ifMatch === undefined ? {} : { ifMatch: { name: ifMatch } }) })
  const table: ReadonlyArray<readonly [string, GovernanceIntent, InboxId, string]> = [
    ["an admin renames", rename("New"), admin, "changed"],
    ["a member renames in an admins-only group", rename("New"), member, "denied updateMetadata"],
    ["a rename to the same name", rename("Club"), admin, "no-op"],
    ["ifMatch that still holds", rename("New", "Club"), admin, "changed"],
    ["ifMatch that no longer holds", rename("New", "Old"), admin, "conflict name"],
    ["the super admin promotes a member", SetRoleData.make({ inboxId: member, role: "admin" }), owner, "changed"],
    ["an admin promotes a member", SetRoleData.make({ inboxId: member, role: "admin" }), admin, "denied setRoles"],
    ["the last super admin demotes itself", SetRoleData.make({ inboxId: owner, role: "admin" }), owner, "denied setRoles"],
    ["an admin changes a policy", UpdatePermissionsData.make({ patch: { addMember: "everyone" } }), admin, "denied updatePermissions"],
    ["the super admin changes a policy", UpdatePermissionsData.make({ patch: { addMember: "everyone" } }), owner, "changed"],
    ["the super admin raises the minimum version", SetMinProtocolVersionData.make({ version: 3 }), owner, "changed"],
    ["an admin raises the minimum version", SetMinProtocolVersionData.make({ version: 3 }), admin, "denied setMinProtocolVersion"]
  ]
  it.each(table)("%s: %s", (_, data, committer, expected) => {
    expect(outcome(data, committer)).toBe(expected)
  })

  it("a promotion replaces the inbox's former role", () => {
    const next = nextSettings(club, SetRoleData.make({ inboxId: admin, role: "superAdmin" }), owner, members)
    expect(Either.getOrThrow(next)).toMatchObject({ admins: [], superAdmins: [owner, admin] })
  })
})

describe("commitRefusal", () => {
  const bytes = encodeSettings(club)
  const judge = (overrides: Partial<Parameters<typeof commitRefusal>[0]>) =>
    commitRefusal({
      committer: member,
      membersBefore: members,
      membersAfter: members,
      settingsBefore: bytes,
      settingsAfter: bytes,
      newLeafVersions: [],
      ...overrides
    }) ?? "accepted"

  it.each([
    ["a member's self-update", {}, "accepted"],
    ["a member adds an inbox", { membersAfter: [...members, outsider], newLeafVersions: [1] }, "denied"],
    ["an admin adds an inbox", { committer: admin, membersAfter: [...members, outsider], newLeafVersions: [1] }, "accepted"],
    [
      "a member removes an inbox listed as leaving",
      {
        membersAfter: [owner, member],
        settingsBefore: encodeSettings(new GroupMetadata({ ...club, leaving: [admin] })),
        settingsAfter: encodeSettings(new GroupMetadata({ ...club, leaving: [admin] }))
      },
      "accepted"
    ],
    ["a member lists itself as leaving", { settingsAfter: encodeSettings(new GroupMetadata({ ...club, leaving: [member] })) }, "accepted"],
    [
      "a member lists itself twice",
      { settingsAfter: encodeSettings(new GroupMetadata({ ...club, leaving: [member, member] })) },
      "denied"
    ],
    ["a member removes an inbox that did not ask", { membersAfter: [owner, member] }, "denied"],
    ["an admin removes the last super admin", { committer: admin, membersAfter: [admin, member] }, "denied"],
    ["a member rewrites the name", { settingsAfter: encodeSettings(new GroupMetadata({ ...club, name: "Mine" })) }, "denied"],
    ["settings that do not decode", { committer: owner, settingsAfter: utf8("{not json") }, "denied"],
    [
      "an admin adds a leaf below the minimum version",
      {
        committer: admin,
        settingsBefore: encodeSettings(new GroupMetadata({ ...club, minProtocolVersion: 2 })),
        settingsAfter: encodeSettings(new GroupMetadata({ ...club, minProtocolVersion: 2 })),
        membersAfter: [...members, outsider],
        newLeafVersions: [1]
      },
      "denied"
    ]
  ] as const)("%s: %s", (_, overrides, expected) => {
    expect(judge(overrides) === "accepted" ? "accepted" : "denied").toBe(expected)
  })
})

describe("settings bytes", () => {
  it("old settings (name and description only) decode with everyone-may defaults", () => {
    const old = decodeSettings(utf8(JSON.stringify({ name: "Old", description: null })))
    expect(old._tag === "Some" && old.value.policies).toEqual(presets.everyone)
    expect(old._tag === "Some" && old.value.superAdmins).toEqual([])
  })

  it("changedSettings names the fields and roles a commit changed", () => {
    const after = new GroupMetadata({ ...club, name: "New", admins: [admin, member], disappearAfterNs: 5n })
    expect(changedSettings(encodeSettings(club), encodeSettings(after))).toEqual(["disappearAfterNs", "name", "admins"])
    expect(changedSettings(encodeSettings(club), encodeSettings(club))).toEqual([])
  })
})

describe("leaving, as the settings carry it", () => {
  const asks = (committer: InboxId, current = club) =>
    Either.match(leaveSettings(current, committer, members), {
      onLeft: (e) => `denied: ${e.required}`,
      onRight: (next) => next === undefined ? "no-op" : `listed ${next.leaving.map((i) => i[0]).join(",")}`
    })

  it.each([
    ["a member asks to leave: it is listed", member, club, "listed c"],
    ["it asks again: nothing to do", member, new GroupMetadata({ ...club, leaving: [member] }), "no-op"],
    ["an inbox gone since it asked is dropped as another asks", admin, new GroupMetadata({ ...club, leaving: [outsider] }), "listed b"],
    ["the only super admin cannot ask: nobody could remove it", owner, club, "denied: another super admin (setRole first)"]
  ] as const)("%s", (_, committer, current, expected) => {
    expect(asks(committer, current)).toBe(expected)
  })

  it("a request voided by the last super admin's promotion of another does not come back", () => {
    // The owner asked while a second super admin stood; that one left, so the request is void.
    const voided = new GroupMetadata({ ...club, superAdmins: [owner], leaving: [owner] })
    const next = nextSettings(voided, SetRoleData.make({ inboxId: admin, role: "superAdmin" }), owner, members)
    expect(Either.getOrThrow(next)).toMatchObject({ superAdmins: [owner, admin], leaving: [] })
  })

  it("an add carries settings only when a listed inbox no longer stands (it may be the one added back)", () => {
    expect(settingsForAdd(club, members, [outsider])).toBeUndefined()
    const listed = new GroupMetadata({ ...club, leaving: [outsider, member] })
    expect(settingsForAdd(listed, members, [outsider])?.leaving).toEqual([member])
  })
})
