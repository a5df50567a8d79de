/**
 * Ids every member derives on its own (a text's id from its nonce, a commit's transcript entries
 * from the epoch) must come out as the same bytes on every version of the engine, or members and
 * stored rows would disagree. The values below were computed by the earlier implementation.
 */
import { describe, expect, it } from "@effect/vitest"
import { labelledHash, labelledHashHex, sha256Hex, toHex, utf8 } from "../src/domain/Bytes.ts"
import { membershipChangeIdOf, messageIdOf, metadataChangeIdOf } from "../src/domain/Content.ts"
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
  })

  it("keep every part's length in the hash: moving a byte from one part to the next changes the id", () => {
    expect(labelledHashHex("message", utf8("ab"), utf8("c"))).not.toBe(labelledHashHex("message", utf8("a"), utf8("bc")))
    expect(labelledHashHex("message", utf8("ab"))).not.toBe(labelledHashHex("message2", utf8("ab")))
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
