/**
 * Ids every member derives on its own (a text's id from its nonce, a commit's transcript entries
 * from the epoch) must come out as the same bytes on every version of the engine, or members and
 * stored rows would disagree. The values below were computed by the earlier implementation.
 */
import { describe, expect, it } from "@effect/vitest"
import { labelledHash, labelledHashHex, labelledHashHexOfText, sha256Hex, toHex, utf8 } from "../src/domain/Bytes.ts"
import { membershipChangeIdOf, messageIdOf, metadataChangeIdOf, TextContent, timeOrderedNonce } from "../src/domain/Content.ts"
import { Schema } from "effect"
import type { GroupId, InstallationId } from "../src/domain/Ids.ts"
import { groupOfTopic, groupTopic, welcomeTopic } from "../src/domain/Topics.ts"

const groupId = "0a".repeat(16) as GroupId
const long = new Uint8Array(300).map((_, i) => (i * 37 + 11) & 255)

describe("Derived ids", () => {
  it("are the same bytes as before, for texts, transcript entries and labelled hashes", () => {
    // A nonce comes from the network: non-ASCII and a lone surrogate are hashed as before too.
    expect(messageIdOf(groupId, "1b".repeat(32) as InstallationId, "nonce-\u00e9\ud800-x"))
      .toBe("6ddef3aa42fa62d1df1b04348c34f3d770da883ebed8982db382ebaff81289d5")
    expect(membershipChangeIdOf(groupId, 7n)).toBe("f70ba71d393d45c4fde99acd9771c190c1f4d205f20781428119845f1f23cf14")
    expect(metadataChangeIdOf(groupId, 12345678901234567890n))
      .toBe("976a96e85d91758c0a82d877b351e9d8c97056a49084a2ef53290ffbf9de7dd6")
    expect(toHex(labelledHash("empty"))).toBe("3ef893a51c3486d2f6de9bc367e954642bd0b3ff44ea84ca192caac4c1406972")
    const parts = [new Uint8Array(0), long, utf8("x")]
    expect(toHex(labelledHash("parts", ...parts))).toBe("00159e331b1288cd53829ef5669ddd8d573e0f1dff79fcadac7cd96b272b1cdc")
    expect(labelledHashHex("parts", ...parts)).toBe("00159e331b1288cd53829ef5669ddd8d573e0f1dff79fcadac7cd96b272b1cdc")
    expect(sha256Hex(long)).toBe("9b854f0a59eabeac0b0ecaee1f5cd7ab3bfbc93e9b33e2a89ac338b237f300f2")
    // Text parts written into one reused buffer: the same digest, for parts longer than the buffer too.
    for (const texts of [[], [""], ["nonce-\u00e9\ud800-x", "\ud83d\ude00"], ["y".repeat(1000), "z"]]) {
      expect(labelledHashHexOfText("parts", ...texts)).toBe(labelledHashHex("parts", ...texts.map(utf8)))
    }
  })

  it("keep every part's length in the hash: moving a byte from one part to the next changes the id", () => {
    expect(labelledHashHex("message", utf8("ab"), utf8("c"))).not.toBe(labelledHashHex("message", utf8("a"), utf8("bc")))
    expect(labelledHashHex("message", utf8("ab"))).not.toBe(labelledHashHex("message2", utf8("ab")))
  })
})

describe("Time-ordered message ids", () => {
  const alice = "1b".repeat(32) as InstallationId
  const mallory = "2c".repeat(32) as InstallationId
  const random = new Uint8Array(10).fill(0xab)
  // 2026-12-04T09:00:00.123Z
  const nowNs = 1_796_374_800_123_000_000n

  it("begin with the sender's clock in milliseconds, then random bytes, in a nonce every receiver accepts", () => {
    const nonce = timeOrderedNonce(nowNs, random)
    expect(nonce).toBe(`${(1_796_374_800_123).toString(16).padStart(12, "0")}${"ab".repeat(10)}`)
    expect(Schema.is(TextContent)({ _tag: "Text", nonce, text: "hi", idOrder: "time" })).toBe(true)
    // 48 bits of milliseconds wrap instead of growing past 12 characters.
    expect(timeOrderedNonce((1n << 48n) * 1_000_000n + 5_000_000n, random).slice(0, 12)).toBe("000000000005")
  })

  it("are the nonce's clock and the rest of the same hash as an id all hash", () => {
    const nonce = timeOrderedNonce(nowNs, random)
    const hash = messageIdOf(groupId, alice, nonce)
    const ordered = messageIdOf(groupId, alice, nonce, "time")
    expect(ordered).toMatch(/^[0-9a-f]{64}$/)
    expect(ordered.slice(0, 12)).toBe(nonce.slice(0, 12))
    expect(ordered.slice(12)).toBe(hash.slice(12))
    // The same bytes on every version of the engine.
    expect(messageIdOf(groupId, alice, "0123456789ab" + "cd".repeat(10), "time"))
      .toBe("0123456789ab" + messageIdOf(groupId, alice, "0123456789ab" + "cd".repeat(10)).slice(12))
  })

  it("sort in the order they were sent, and stay bound to their sender", () => {
    const ids = [0n, 1n, 1_000n, 86_400_000n].map((ms) =>
      messageIdOf(groupId, alice, timeOrderedNonce(nowNs + ms * 1_000_000n, new Uint8Array(10).fill(Number(ms % 200n))), "time")
    )
    expect([...ids].sort()).toEqual(ids)
    // Another member sending with the same nonce gets another id: only the clock part is shared.
    const nonce = timeOrderedNonce(nowNs, random)
    expect(messageIdOf(groupId, mallory, nonce, "time")).not.toBe(messageIdOf(groupId, alice, nonce, "time"))
  })

  it("fall back to the hash for a nonce that does not begin with a clock", () => {
    expect(messageIdOf(groupId, alice, "nonce-x", "time")).toBe(messageIdOf(groupId, alice, "nonce-x"))
  })
})

describe("Topic names", () => {
  it("name a group's topic and give the group back; other topics name no group", () => {
    const cases: ReadonlyArray<readonly [string, string | undefined]> = [
      [groupTopic(groupId), groupId],
      [welcomeTopic("1b".repeat(32)), undefined],
      ["", undefined],
      ["g", undefined],
      ["x/g/abc", undefined]
    ]
    for (const [topic, group] of cases) expect(groupOfTopic(topic), topic).toBe(group)
    expect(groupTopic(groupId)).toBe(`g/${groupId}`)
  })
})
