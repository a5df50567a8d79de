/**
 * The rule that lets a sender read back what it published from the service's answer: only an
 * answer that is exactly the topic's next entries after the cursor, with the bytes sent, counts.
 */
import { describe, expect, it } from "@effect/vitest"
import { continuesCursor } from "../src/domain/SentAnswer.ts"

const group = "group-1"
const a = new Uint8Array([1, 2, 3])
const b = new Uint8Array([4, 5, 6])
const at = (sequenceId: bigint, payload: Uint8Array, groupId = group) => ({ groupId, sequenceId, payload })

describe("a send's answer as the next page", () => {
  it("counts when the answer holds what was sent, in order, right after the cursor", () => {
    expect(continuesCursor(group, 7n, [a], [at(8n, a)])).toBe(true)
    expect(continuesCursor(group, 7n, [a, b], [at(8n, a), at(9n, b)])).toBe(true)
    expect(continuesCursor(group, 0n, [a], [at(1n, a)])).toBe(true)
  })

  it.each([
    ["someone's entry came first (a gap after the cursor)", [a], [at(9n, a)]],
    ["a resend the service already held (an id at or before the cursor)", [a], [at(7n, a)]],
    ["ids not consecutive", [a, b], [at(8n, a), at(10n, b)]],
    ["the answer's order differs from the request's", [a, b], [at(8n, b), at(9n, a)]],
    ["other bytes than those sent", [a], [at(8n, b)]],
    ["an envelope of another group", [a], [at(8n, a, "group-2")]],
    ["a short answer", [a, b], [at(8n, a)]],
    ["a long answer", [a], [at(8n, a), at(9n, b)]],
    ["nothing sent", [], []]
  ] as const)("does not count: %s", (_, sent, answer) => {
    expect(continuesCursor(group, 7n, sent, answer)).toBe(false)
  })
})
