/**
 * The messaging rules as tables: which group a direct message is shown with, who may delete
 * what (and a deletion waiting for its target), when a message disappears, and the wire format
 * read by a receiver that predates typed content.
 */
import { describe, expect, it } from "@effect/vitest"
import { Option, Schema } from "effect"
import { ApplicationContentJson, WireTypedContent } from "../src/domain/Content.ts"
import type { ConversationId, GroupId, InboxId } from "../src/domain/Ids.ts"
import {
  type DeletionFacts,
  DeletionVerdict,
  deletionVerdict,
  expiresAt,
  type GroupContextFacts,
  GroupContextVerdict,
  groupContextVerdict,
  pendingDeletionApplies
} from "../src/domain/Messaging.ts"

const inbox = (c: string) => c.repeat(64) as InboxId
const [alice, bob, carol] = [inbox("a"), inbox("b"), inbox("c")]
const G = "1".repeat(32) as GroupId

describe("groupContextVerdict", () => {
  const base: GroupContextFacts = {
    claimed: G,
    arrivedIn: "dm",
    sender: alice,
    self: bob,
    group: { membership: "active", members: [alice, bob, carol] }
  }
  const rows: ReadonlyArray<readonly [string, GroupContextFacts, GroupContextVerdict]> = [
    ["both in the group: attached", base, GroupContextVerdict.Attached({ groupId: G })],
    ["the recipient on its way out still reads it with the group", { ...base, group: { ...base.group!, membership: "pendingRemove" } }, GroupContextVerdict.Attached({ groupId: G })],
    ["a group the recipient does not hold", { ...base, group: undefined }, GroupContextVerdict.RecipientNotInGroup()],
    ["a group the recipient was removed from", { ...base, group: { membership: "inactive", members: [alice, bob] } }, GroupContextVerdict.RecipientNotInGroup()],
    ["a group without the recipient", { ...base, group: { membership: "active", members: [alice, carol] } }, GroupContextVerdict.RecipientNotInGroup()],
    ["a group without the sender", { ...base, group: { membership: "active", members: [bob, carol] } }, GroupContextVerdict.SenderNotInGroup()],
    ["a claim inside a group message", { ...base, arrivedIn: "group" }, GroupContextVerdict.NotADirectMessage()]
  ]
  it.each(rows)("%s", (_, facts, expected) => expect(groupContextVerdict(facts)).toEqual(expected))
})

describe("deletionVerdict", () => {
  const conversationId = G as unknown as ConversationId
  const dm = `dm:${alice}:${bob}` as ConversationId
  const target = { conversationId, senderInboxId: bob, kind: "text", deleted: false }
  const base: DeletionFacts = { deleter: bob, conversationId, conversationKind: "group", deleterIsSuperAdmin: false, target }
  const rows: ReadonlyArray<readonly [string, DeletionFacts, DeletionVerdict]> = [
    ["the sender deletes its message", base, DeletionVerdict.Apply()],
    ["another member may not", { ...base, deleter: carol }, DeletionVerdict.Refused({ reason: "notAllowed" })],
    ["a super admin may", { ...base, deleter: alice, deleterIsSuperAdmin: true }, DeletionVerdict.Apply()],
    ["twice: ignored", { ...base, target: { ...target, deleted: true } }, DeletionVerdict.Refused({ reason: "alreadyDeleted" })],
    ["a transcript entry is never deleted", { ...base, target: { ...target, kind: "membershipChange" } }, DeletionVerdict.Refused({ reason: "notDeletable" })],
    ["a message of another conversation", { ...base, target: { ...target, conversationId: dm } }, DeletionVerdict.Refused({ reason: "foreignConversation" })],
    [
      "in a DM, the sender only (no one is a super admin there)",
      { ...base, deleter: alice, conversationId: dm, conversationKind: "dm", deleterIsSuperAdmin: true, target: { ...target, conversationId: dm } },
      DeletionVerdict.Refused({ reason: "notAllowed" })
    ],
    ["the target has not arrived: remembered", { ...base, target: undefined }, DeletionVerdict.Pending({ bySuperAdmin: false })],
    ["remembered with the super admin's right", { ...base, deleter: alice, deleterIsSuperAdmin: true, target: undefined }, DeletionVerdict.Pending({ bySuperAdmin: true })]
  ]
  it.each(rows)("%s", (_, facts, expected) => expect(deletionVerdict(facts)).toEqual(expected))

  it("a remembered deletion takes the late message only if it could have deleted it", () => {
    const late = { conversationId, senderInboxId: bob, kind: "text", deleted: false }
    expect(pendingDeletionApplies({ conversationId, deleterInboxId: bob, bySuperAdmin: false }, late)).toBe(true)
    expect(pendingDeletionApplies({ conversationId, deleterInboxId: carol, bySuperAdmin: false }, late)).toBe(false)
    expect(pendingDeletionApplies({ conversationId, deleterInboxId: alice, bySuperAdmin: true }, late)).toBe(true)
    expect(pendingDeletionApplies({ conversationId: dm, deleterInboxId: bob, bySuperAdmin: false }, late)).toBe(false)
  })
})

describe("expiresAt", () => {
  it.each([
    ["no setting: never", 100n, null, null],
    ["server time plus the setting", 100n, 50n, 150n]
  ] as const)("%s", (_, sentAt, after, expected) => expect(expiresAt(sentAt, after)).toBe(expected))
})

describe("the wire format of a message", () => {
  const encode = Schema.encodeSync(ApplicationContentJson)
  const typed = Schema.decodeSync(WireTypedContent)({ type: "app.example/poll:1", bytes: "AQID" })
  const wire = encode({ _tag: "Text", nonce: "ab".repeat(16), text: "a poll", groupContext: G, content: typed })

  it("round-trips typed content and the group context", () => {
    const decoded = Schema.decodeSync(ApplicationContentJson)(wire)
    expect(decoded).toMatchObject({ _tag: "Text", text: "a poll", groupContext: G, content: { type: "app.example/poll:1" } })
  })

  it("a receiver that predates typed content reads the fallback text", () => {
    const FirstRelease = Schema.parseJson(Schema.TaggedStruct("Text", { nonce: Schema.String, text: Schema.String }))
    expect(Option.map(Schema.decodeUnknownOption(FirstRelease)(wire), (m) => m.text)).toEqual(Option.some("a poll"))
  })

  it.each([
    ["an empty type", ""],
    ["a type with spaces", "app example"],
    ["a type over 128 characters", "x".repeat(129)],
    ["a type starting with a symbol", "/reply"]
  ])("refuses %s", (_, type) => {
    expect(Schema.decodeUnknownOption(WireTypedContent)({ type, bytes: "AQID" })).toEqual(Option.none())
  })

  it("refuses content over 64 KiB", () => {
    const bytes = Buffer.alloc(64 * 1024 + 1).toString("base64")
    expect(Option.isNone(Schema.decodeUnknownOption(WireTypedContent)({ type: "a/b:1", bytes }))).toBe(true)
  })
})
