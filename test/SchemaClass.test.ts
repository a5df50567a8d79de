/**
 * The hot-path constructors make what the classes' own `make` makes: same defaults, same
 * refusals (they exist only because `make` builds its validator anew on every call).
 */
import { describe, expect, it } from "@effect/vitest"
import { makeSyncSummary, makeMember, Member, SyncSummary } from "../src/domain/Model.ts"
import { IdentityUpdate, IdentityUpdateEnvelope, makeIdentityUpdateEnvelope, makeWelcomeMessageInput, WelcomeMessageInput } from "../src/domain/Wire.ts"

const inbox = "a".repeat(64)
const installation = "b".repeat(64)
const update = new IdentityUpdate({
  inboxId: inbox as never,
  sequence: 1,
  previousHash: "",
  action: { _tag: "CreateInbox", rootPublicKey: "c".repeat(64) },
  signature: "d".repeat(128)
})

/** What throwing `f` says, or "ok". */
const outcome = (f: () => unknown) => {
  try {
    f()
    return "ok"
  } catch (e) {
    return String((e as Error).message)
  }
}

/** [what, the fast maker, the class's make, whether it is refused] */
const cases: ReadonlyArray<readonly [string, () => unknown, () => unknown, boolean]> = [
  ["a summary without its defaulted field", () => makeSyncSummary({ received: 1, messages: 1, commits: 0, skipped: 0, skippedBy: {}, published: 0, joined: 0 }), () => SyncSummary.make({ received: 1, messages: 1, commits: 0, skipped: 0, skippedBy: {}, published: 0, joined: 0 }), false],
  ["a summary with a string count", () => makeSyncSummary({ received: "1" as never, messages: 1, commits: 0, skipped: 0, skippedBy: {}, published: 0, joined: 0 }), () => SyncSummary.make({ received: "1" as never, messages: 1, commits: 0, skipped: 0, skippedBy: {}, published: 0, joined: 0 }), true],
  ["a member", () => makeMember({ inboxId: inbox as never, installationIds: [installation as never] }), () => Member.make({ inboxId: inbox as never, installationIds: [installation as never] }), false],
  ["a member with a malformed installation id", () => makeMember({ inboxId: inbox as never, installationIds: ["nope" as never] }), () => Member.make({ inboxId: inbox as never, installationIds: ["nope" as never] }), true],
  ["an identity envelope", () => makeIdentityUpdateEnvelope({ sequenceId: 3n, serverTimeNs: 4n, update }), () => IdentityUpdateEnvelope.make({ sequenceId: 3n, serverTimeNs: 4n, update }), false],
  ["an identity envelope with a number for its cursor", () => makeIdentityUpdateEnvelope({ sequenceId: 3 as never, serverTimeNs: 4n, update }), () => IdentityUpdateEnvelope.make({ sequenceId: 3 as never, serverTimeNs: 4n, update }), true],
  ["a welcome input", () => makeWelcomeMessageInput({ installationId: installation as never, payload: new Uint8Array([1]) }), () => WelcomeMessageInput.make({ installationId: installation as never, payload: new Uint8Array([1]) }), false],
  ["a welcome input without bytes", () => makeWelcomeMessageInput({ installationId: installation as never, payload: "AQ==" as never }), () => WelcomeMessageInput.make({ installationId: installation as never, payload: "AQ==" as never }), true],
]

describe("hot-path constructors", () => {
  it.each(cases)("%s: as the class's make", (_, fast, slow, refused) => {
    const [a, b] = [outcome(fast), outcome(slow)]
    expect([a === "ok", b === "ok"]).toEqual([!refused, !refused])
    if (a === "ok") {
      const [x, y] = [fast(), slow()]
      expect(Object.getPrototypeOf(x)).toBe(Object.getPrototypeOf(y))
      expect({ ...(x as object) }).toEqual({ ...(y as object) })
    } else {
      // The same checks fail: each message names the field that was wrong.
      expect(a.split("\n").slice(-2)).toEqual(b.split("\n").slice(-2))
    }
  })
})
