/**
 * The receive protocol's rules, one row each: plain facts in, a decision out. No SQLite, no
 * ts-mls: these are the rules `GroupSync` applies to every envelope of a group topic.
 */
import { describe, expect, it } from "@effect/vitest"
import { Option } from "effect"
import { utf8 } from "../src/domain/Bytes.ts"
import type { InboxId, InstallationId } from "../src/domain/Ids.ts"
import {
  addSkipCounts,
  ApplicationDecision,
  applicationSkipReason,
  classifyApplication,
  classifyEnvelope,
  commitChanges,
  EnvelopeDecision,
  type EnvelopeFacts,
  type EnvelopeHeader,
  type GroupSnapshot,
  type Leaf,
  newLeaves,
  type OwnIntent,
  ownCommitChanges,
  skipReasonOf
} from "../src/domain/ReceiveDecision.ts"

const inbox = (c: string) => c.repeat(64) as InboxId
const installation = (c: string) => c.repeat(64) as InstallationId
const leaf = (i: string, d: string, leafIndex: number): Leaf => ({ inboxId: inbox(i), installationId: installation(d), leafIndex })

const GROUP = "0".repeat(32)
const me = inbox("a")
const myLeaf = leaf("a", "1", 0)
const myOtherDevice = leaf("a", "2", 3)
const bob = leaf("b", "3", 1)
const carol = leaf("c", "4", 2)

const group: GroupSnapshot = {
  groupId: GROUP,
  kind: "group",
  membership: "active",
  epoch: 10n,
  ownLeafIndex: 0,
  members: [myLeaf, bob, carol]
}

const header = (kind: EnvelopeHeader["kind"], epoch: bigint, groupId: string | undefined = GROUP) =>
  Option.some<EnvelopeHeader>({ kind, epoch, groupId })

const intent = (over: Partial<OwnIntent> = {}): Option.Option<OwnIntent> =>
  Option.some({ id: 7, kind: "SendMessage", state: "Published", hasStagedState: false, ...over })

const facts = (over: Partial<EnvelopeFacts> = {}): EnvelopeFacts => ({
  sequenceId: 100n,
  cursor: 50n,
  header: header("application", 10n),
  ownIntent: Option.none(),
  handledIntents: new Set(),
  group,
  maxPastEpochs: 3,
  ...over
})

describe("classifyEnvelope", () => {
  const rows: ReadonlyArray<readonly [string, EnvelopeFacts, EnvelopeDecision]> = [
    ["an envelope at the cursor was read by an earlier page", facts({ sequenceId: 50n }), EnvelopeDecision.AlreadyRead()],
    [
      "a removed installation reads nothing, not even garbage",
      facts({ group: { ...group, membership: "inactive" }, header: Option.none() }),
      EnvelopeDecision.NotAMemberAnymore()
    ],
    ["bytes that are no MLS message are malformed", facts({ header: Option.none() }), EnvelopeDecision.Malformed()],
    [
      "a message of another group on our topic is foreign",
      facts({ header: header("application", 10n, "f".repeat(32)) }),
      EnvelopeDecision.ForeignGroup({ groupId: "f".repeat(32) })
    ],
    [
      "a message without a group id is foreign",
      facts({ header: Option.some({ kind: "commit", epoch: 10n, groupId: undefined }), ownIntent: intent() }),
      EnvelopeDecision.ForeignGroup({ groupId: undefined })
    ],
    [
      "our published text landing is our own message",
      facts({ ownIntent: intent() }),
      EnvelopeDecision.OwnMessage({ intentId: 7 })
    ],
    [
      "our leave is a commit: first for its epoch, it wins",
      facts({ header: header("commit", 10n), ownIntent: intent({ kind: "Leave", hasStagedState: true }) }),
      EnvelopeDecision.OwnCommitWon({ intentId: 7 })
    ],
    [
      "our text maxPastEpochs back is still our own message",
      facts({ header: header("application", 7n), ownIntent: intent() }),
      EnvelopeDecision.OwnMessage({ intentId: 7 })
    ],
    [
      "our text further back is skipped by every member: sent again",
      facts({ header: header("application", 6n), ownIntent: intent() }),
      EnvelopeDecision.OwnMessageTooOld({ intentId: 7, epoch: 6n, currentEpoch: 10n })
    ],
    [
      "our payload seen twice in one page is a duplicate",
      facts({ ownIntent: intent(), handledIntents: new Set([7]) }),
      EnvelopeDecision.Duplicate({ intentId: 7 })
    ],
    [
      "our payload whose intent already moved on is a duplicate",
      facts({ ownIntent: intent({ state: "Processed" }) }),
      EnvelopeDecision.Duplicate({ intentId: 7 })
    ],
    [
      "our commit for the current epoch wins",
      facts({ header: header("commit", 10n), ownIntent: intent({ kind: "AddMembers", hasStagedState: true }) }),
      EnvelopeDecision.OwnCommitWon({ intentId: 7 })
    ],
    [
      "our commit for a past epoch lost",
      facts({ header: header("commit", 9n), ownIntent: intent({ kind: "RemoveMembers", hasStagedState: true }) }),
      EnvelopeDecision.OwnCommitLost({ intentId: 7, epoch: 9n, currentEpoch: 10n })
    ],
    [
      "our commit without its staged state cannot be adopted: it lost",
      facts({ header: header("commit", 10n), ownIntent: intent({ kind: "KeyUpdate", hasStagedState: false }) }),
      EnvelopeDecision.OwnCommitLost({ intentId: 7, epoch: 10n, currentEpoch: 10n })
    ],
    [
      "someone's commit for a past epoch lost the race",
      facts({ header: header("commit", 9n) }),
      EnvelopeDecision.PastEpochCommit({ epoch: 9n })
    ],
    [
      "someone's commit for a future epoch means we may be forked",
      facts({ header: header("commit", 12n) }),
      EnvelopeDecision.FutureEpochCommit({ epoch: 12n, currentEpoch: 10n })
    ],
    ["someone's commit for our epoch is processed", facts({ header: header("commit", 10n) }), EnvelopeDecision.Commit()],
    ["a proposal is unexpected", facts({ header: header("proposal", 10n) }), EnvelopeDecision.Unexpected({ kind: "proposal" })],
    ["a welcome on a group topic is unexpected", facts({ header: header("welcome", 10n) }), EnvelopeDecision.Unexpected({ kind: "welcome" })],
    [
      "an application message maxPastEpochs back still decrypts",
      facts({ header: header("application", 7n) }),
      EnvelopeDecision.ApplicationMessage({ epoch: 7n })
    ],
    [
      "an application message further back is too old",
      facts({ header: header("application", 6n) }),
      EnvelopeDecision.TooOldApplication({ epoch: 6n })
    ],
    [
      "a pendingRemove member still reads",
      facts({ group: { ...group, membership: "pendingRemove" } }),
      EnvelopeDecision.ApplicationMessage({ epoch: 10n })
    ]
  ]
  for (const [rule, input, expected] of rows) {
    it(rule, () => expect(classifyEnvelope(input)).toEqual(expected))
  }

  it("we count our text as delivered exactly when every other member decrypts it", () => {
    for (let epoch = 0n; epoch <= 10n; epoch++) {
      const theirs = classifyEnvelope(facts({ header: header("application", epoch) }))
      const ours = classifyEnvelope(facts({ header: header("application", epoch), ownIntent: intent() }))
      expect([epoch, ours._tag === "OwnMessage"]).toEqual([epoch, theirs._tag === "ApplicationMessage"])
    }
  })

  it("only applied envelopes and those already read are not skips", () => {
    const applied = rows.map(([, input]) => classifyEnvelope(input)).filter((d) => skipReasonOf(d) === undefined)
    expect(new Set(applied.map((d) => d._tag))).toEqual(
      new Set(["AlreadyRead", "OwnMessage", "OwnCommitWon", "Commit", "ApplicationMessage"])
    )
  })
})

describe("commitChanges", () => {
  const dave = leaf("d", "5", 3)

  it("an add records the inboxes that came in", () => {
    const changes = commitChanges(group, { epoch: 11n, active: true, members: [...group.members, dave] }, me)
    expect(changes).toEqual({
      transcript: { epoch: 11n, added: [inbox("d")], removed: [] },
      leftGroup: false
    })
  })

  it("a key update changes nobody: no transcript entry", () => {
    const changes = commitChanges(group, { epoch: 11n, active: true, members: group.members }, me)
    expect(changes).toEqual({ transcript: undefined, leftGroup: false })
  })

  it("a new device of a member is no inbox change", () => {
    const bobsPhone = leaf("b", "6", 3)
    const changes = commitChanges(group, { epoch: 11n, active: true, members: [...group.members, bobsPhone] }, me)
    expect(changes).toEqual({ transcript: undefined, leftGroup: false })
  })

  it("our removal records our inbox leaving, dated by the epoch the commit starts", () => {
    const changes = commitChanges(group, { epoch: 10n, active: false, members: [bob, carol] }, me)
    expect(changes).toEqual({ transcript: { epoch: 11n, added: [], removed: [me] }, leftGroup: true })
  })

  it("a revoked device's removal, while another device of ours stays, records no inbox change", () => {
    const withTwoDevices = { ...group, members: [myLeaf, bob, carol, myOtherDevice] }
    const changes = commitChanges(withTwoDevices, { epoch: 10n, active: false, members: [bob, carol, myOtherDevice] }, me)
    expect(changes).toEqual({ transcript: undefined, leftGroup: true })
  })

  it("a leaving inbox's removal is the inbox's even if another device of ours is still listed", () => {
    const leaving = { ...group, membership: "pendingRemove" as const, members: [myLeaf, bob, carol, myOtherDevice] }
    const changes = commitChanges(leaving, { epoch: 10n, active: false, members: [bob, carol] }, me)
    expect(changes.transcript).toEqual({ epoch: 11n, added: [], removed: [me] })
  })

  it("our own winning commit records what the others record", () => {
    expect(ownCommitChanges(group, { epoch: 11n, active: true, members: [myLeaf, bob] })).toEqual({
      transcript: { epoch: 11n, added: [], removed: [inbox("c")] },
      leftGroup: false
    })
  })

  it("new leaves are those not in the group before, a re-used leaf index included", () => {
    const replaced = leaf("c", "7", 2)
    expect(newLeaves(group.members, [myLeaf, bob, replaced, dave])).toEqual([replaced, dave])
  })
})

describe("classifyApplication", () => {
  const text = (t: string) => utf8(JSON.stringify({ _tag: "Text", nonce: "ab".repeat(16), text: t }))
  const leaveRequest = utf8(JSON.stringify({ _tag: "LeaveRequest", nonce: "cd".repeat(16) }))
  const from = (l: Leaf) => ({ inboxId: l.inboxId, installationId: l.installationId })
  const base = { epoch: 10n, sender: from(bob), plaintext: text("hi"), group, ownInboxId: me }

  const rows: ReadonlyArray<readonly [string, Parameters<typeof classifyApplication>[0], ApplicationDecision]> = [
    [
      "a text of an earlier sender (its id all hash) is stored",
      base,
      ApplicationDecision.Text({ nonce: "ab".repeat(16), text: "hi", idOrder: undefined, groupContext: undefined, content: undefined })
    ],
    [
      "a text with its id in time order is stored, and says so",
      { ...base, plaintext: utf8(JSON.stringify({ _tag: "Text", nonce: "ab".repeat(16), text: "hi", idOrder: "time" })) },
      ApplicationDecision.Text({ nonce: "ab".repeat(16), text: "hi", idOrder: "time", groupContext: undefined, content: undefined })
    ],
    [
      "a text with an id order nobody knows is undecodable",
      { ...base, plaintext: utf8(JSON.stringify({ _tag: "Text", nonce: "ab".repeat(16), text: "hi", idOrder: "random" })) },
      ApplicationDecision.UndecodableContent()
    ],
    [
      "a text from an old epoch by a member still in is stored",
      { ...base, epoch: 8n },
      ApplicationDecision.Text({ nonce: "ab".repeat(16), text: "hi", idOrder: undefined, groupContext: undefined, content: undefined })
    ],
    [
      "a text from an old epoch by someone removed since is refused",
      { ...base, epoch: 8n, sender: from(leaf("e", "8", 4)) },
      ApplicationDecision.SenderRemoved({ installationId: installation("8") })
    ],
    ["content that is no known payload is undecodable", { ...base, plaintext: utf8("{\"_tag\":\"Poll\"}") }, ApplicationDecision.UndecodableContent()],
    ["a text with a malformed nonce is undecodable", { ...base, plaintext: utf8(JSON.stringify({ _tag: "Text", nonce: "x", text: "hi" })) }, ApplicationDecision.UndecodableContent()],
    [
      "an old leave request is content this version does not read: leaving is a commit now",
      { ...base, plaintext: leaveRequest },
      ApplicationDecision.UndecodableContent()
    ]
  ]
  for (const [rule, input, expected] of rows) {
    it(rule, () => expect(classifyApplication(input)).toEqual(expected))
  }

  it("refused and ignored payloads count as skips; texts and deletions do not", () => {
    const skips = rows.map(([, input]) => applicationSkipReason(classifyApplication(input)))
    expect(skips).toEqual([
      undefined,
      undefined,
      "undecodableContent",
      undefined,
      "senderRemoved",
      "undecodableContent",
      "undecodableContent",
      "undecodableContent"
    ])
  })
})

describe("skip counts", () => {
  it("sum per reason and leave absent reasons absent", () => {
    expect(addSkipCounts({ malformed: 1, duplicate: 2 }, { duplicate: 1, foreignGroup: 4 })).toEqual({
      malformed: 1,
      duplicate: 3,
      foreignGroup: 4
    })
  })
})
