/** Leaving as the group's settings carry it: who may be removed, and what each member's state becomes. Tables, no I/O. */
import { describe, expect, it } from "@effect/vitest"
import type { InboxId } from "../src/domain/Ids.ts"
import { type LeavingSettings, liveLeavers, membershipIn, settledLeaving } from "../src/domain/Leaving.ts"

const inbox = (c: string) => c.repeat(64) as InboxId
const [owner, admin, member, gone] = ["a", "b", "c", "d"].map(inbox) as [InboxId, InboxId, InboxId, InboxId]
const members = [owner, admin, member]
const settings = (leaving: ReadonlyArray<InboxId>, superAdmins: ReadonlyArray<InboxId> = [owner]): LeavingSettings => ({
  superAdmins,
  leaving
})

describe("who anyone may remove", () => {
  it.each([
    ["a listed member", settings([member]), [member]],
    ["an inbox listed but gone since", settings([gone]), []],
    ["the last super admin, listed while another stood", settings([owner]), []],
    ["a super admin with another beside it", settings([owner], [owner, admin]), [owner]]
  ] as const)("%s", (_, group, expected) => {
    expect(liveLeavers(group, members)).toEqual(expected)
  })
})

describe("this installation's membership after a commit", () => {
  it.each([
    ["our inbox newly listed (another device asked): on our way out", settings([member]), members, member, "active", false, "pendingRemove"],
    ["our request not out yet: still on our way out", settings([]), members, member, "pendingRemove", false, "pendingRemove"],
    ["our request void (we are the last super admin): active again", settings([owner]), members, owner, "pendingRemove", true, "active"],
    ["our void request, not withdrawn yet, when we are left alone: still active", settings([owner]), [owner], owner, "active", true, "active"],
    ["someone else listed: nothing for us", settings([member]), members, admin, "active", false, "active"],
    ["out of the group: stays out", settings([member]), members, member, "inactive", true, "inactive"]
  ] as const)("%s", (_, group, present, self, before, listedBefore, expected) => {
    expect(membershipIn(group, present, self, before, listedBefore)).toBe(expected)
  })
})

describe("the list a commit with settings writes", () => {
  it("keeps the requests that stand and drops the rest", () => {
    expect(settledLeaving(settings([member, gone, owner]), members, settings([]), members)).toEqual([member])
  })
  it("drops a request the commit makes void (the other super admin stepped down)", () => {
    expect(settledLeaving(settings([owner], [owner, admin]), members, settings([], [owner]), members)).toEqual([])
  })
  it("drops an inbox the commit adds back", () => {
    expect(settledLeaving(settings([gone, member]), members, settings([]), [...members, gone])).toEqual([member])
  })
})
