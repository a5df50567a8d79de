/**
 * The pure rules behind history sync and consent, as tables: which consent record wins, the
 * consent a conversation shows, how archive pages are cut, and which group counts as the inbox's
 * own. No SQLite, no ts-mls.
 */
import { describe, expect, it } from "@effect/vitest"
import { Either, Schema } from "effect"
import {
  ConsentRecord,
  type ConsentKey,
  type ConsentState,
  effectiveConsent,
  merge,
  nextStamp,
  subjectKey,
  wins
} from "../src/domain/Consent.ts"
import {
  isOwnDevicesGroup,
  MAX_PAGE_ITEMS,
  nextPhase,
  OWN_DEVICES_GROUP_NAME,
  pageCut,
  SyncPayloadJson
} from "../src/domain/HistoryArchive.ts"
import { type ConversationId, dmId, type InboxId, type InstallationId } from "../src/domain/Ids.ts"

const inbox = (c: string) => c.repeat(64) as InboxId
const installation = (c: string) => c.repeat(64) as InstallationId
const key = "conversation:" + "a".repeat(32) as ConsentKey
const record = (state: ConsentState, atNs: bigint, by: string) =>
  new ConsentRecord({ key, state, atNs, by: installation(by) })

describe("consent records merge by last writer", () => {
  const cases: ReadonlyArray<[string, ConsentRecord, ConsentRecord, boolean]> = [
    ["a later stamp wins", record("allowed", 2n, "1"), record("denied", 1n, "9"), true],
    ["an earlier stamp loses", record("denied", 1n, "9"), record("allowed", 2n, "1"), false],
    ["same stamp: the higher installation id wins", record("allowed", 5n, "9"), record("denied", 5n, "1"), true],
    ["same stamp and writer: the stricter state wins", record("denied", 5n, "3"), record("allowed", 5n, "3"), true],
    ["a record does not win over itself", record("unknown", 5n, "3"), record("unknown", 5n, "3"), false]
  ]
  for (const [name, a, b, expected] of cases) {
    it(name, () => expect(wins(a, b)).toBe(expected))
  }

  it("merging is order-independent: every installation ends on the same record", () => {
    const records = [record("allowed", 3n, "2"), record("denied", 3n, "7"), record("unknown", 1n, "f"), record("allowed", 4n, "0")]
    const orders = [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]]
    const results = orders.map((order) => order.reduce<ConsentRecord | undefined>((acc, i) => merge(acc, records[i]), undefined))
    for (const result of results) expect(result).toEqual(records[3])
  })

  const stamps: ReadonlyArray<[bigint, bigint, bigint]> = [[10n, 3n, 10n], [10n, 10n, 11n], [0n, 0n, 1n], [5n, 40n, 41n]]
  for (const [now, highest, expected] of stamps) {
    it(`a decision at clock ${now} after stamps up to ${highest} is stamped ${expected}`, () =>
      expect(nextStamp(now, highest)).toBe(expected))
  }
})

describe("the consent a conversation shows", () => {
  const self = inbox("1")
  const peer = inbox("2")
  const dm = dmId(self, peer)
  const group = "b".repeat(32) as ConversationId
  const rec = (subject: string, state: ConsentState) => new ConsentRecord({ key: subject as ConsentKey, state, atNs: 1n, by: installation("1") })
  const cases: ReadonlyArray<[string, ConversationId, ReadonlyArray<ConsentRecord>, ConsentState]> = [
    ["a group without records is unknown", group, [], "unknown"],
    ["a group's own record decides", group, [rec(subjectKey({ conversationId: group }), "allowed")], "allowed"],
    ["a DM follows its peer's inbox", dm, [rec(subjectKey({ inboxId: peer }), "denied")], "denied"],
    ["a DM's own record beats its peer's", dm, [rec(subjectKey({ inboxId: peer }), "denied"), rec(subjectKey({ conversationId: dm }), "allowed")], "allowed"],
    ["a group ignores inbox records of its members", group, [rec(subjectKey({ inboxId: peer }), "denied")], "unknown"]
  ]
  for (const [name, id, records, expected] of cases) {
    it(name, () => {
      const byKey = new Map(records.map((r) => [r.key as string, r]))
      expect(effectiveConsent(id, self, (k) => byKey.get(k))).toBe(expected)
    })
  }
})

describe("archive pages", () => {
  const cases: ReadonlyArray<[string, ReadonlyArray<number>, number, number, number]> = [
    ["nothing to send: an empty page", [], 10, 100, 0],
    ["all fit", [10, 10, 10], 10, 100, 3],
    ["the item count bounds a page", [1, 1, 1, 1, 1], 3, 100, 3],
    ["the byte budget bounds a page", [40, 40, 40], 10, 100, 2],
    ["an oversized item still travels, alone", [500, 1], 10, 100, 1],
    ["exactly the budget fits", [50, 50, 1], 10, 100, 2]
  ]
  for (const [name, sizes, maxItems, maxBytes, expected] of cases) {
    it(name, () => expect(pageCut(sizes, { maxItems, maxBytes })).toBe(expected))
  }

  it("an answer sends the backlog, then consent, then stays live; a closed one stays closed", () => {
    expect([nextPhase("feed"), nextPhase("consent"), nextPhase("live"), nextPhase("done")]).toEqual([
      "consent",
      "live",
      "live",
      "done"
    ])
  })

  it("a page with more items than the bound does not decode", () => {
    const consent = Array.from({ length: MAX_PAGE_ITEMS + 1 }, () => Schema.encodeSync(ConsentRecord)(record("allowed", 1n, "1")))
    const page = { _tag: "HistoryPage", requestId: "c".repeat(32), responder: "1".repeat(64), index: 0, last: true, groups: [], messages: [], consent }
    expect(Either.isLeft(Schema.decodeUnknownEither(SyncPayloadJson)(JSON.stringify(page)))).toBe(true)
    const fine = { ...page, consent: consent.slice(1) }
    expect(Either.isRight(Schema.decodeUnknownEither(SyncPayloadJson)(JSON.stringify(fine)))).toBe(true)
  })
})

describe("which group is the inbox's own", () => {
  const self = inbox("1")
  const cases: ReadonlyArray<[string, string | null, ReadonlyArray<InboxId>, boolean]> = [
    ["named and all leaves ours", OWN_DEVICES_GROUP_NAME, [self, self], true],
    ["a stranger among the leaves", OWN_DEVICES_GROUP_NAME, [self, inbox("2")], false],
    ["another name", "Club", [self], false],
    ["no leaves", OWN_DEVICES_GROUP_NAME, [], false]
  ]
  for (const [name, groupName, leaves, expected] of cases) {
    it(name, () => expect(isOwnDevicesGroup(groupName, leaves, self)).toBe(expected))
  }
})
