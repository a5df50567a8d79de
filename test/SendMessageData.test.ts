/** A queued message's intent data: built by a validator made once, checked exactly as the class constructor checks it. */
import { describe, expect, it } from "@effect/vitest"
import { MAX_CONTENT_BYTES } from "../src/domain/Content.ts"
import type { GroupId, MessageId } from "../src/domain/Ids.ts"
import { makeSendMessageData, SendMessageData } from "../src/domain/Intent.ts"

const messageId = "ab".repeat(32) as MessageId
const groupId = "cd".repeat(16) as GroupId

describe("SendMessageData", () => {
  it("a message with typed content is the same value the class constructor makes", () => {
    const props = {
      messageId,
      nonce: "n1",
      text: "fallback",
      groupContext: groupId,
      content: { type: "example.org/reaction:1", bytes: new Uint8Array([1, 2, 3]) }
    }
    const made = makeSendMessageData(props)
    expect(made).toBeInstanceOf(SendMessageData)
    expect(made).toEqual(SendMessageData.make(props))
    expect(made._tag).toBe("SendMessage")
  })

  it("a malformed message id or oversized content is refused, as by the constructor", () => {
    const bad = { messageId: "not-hex" as MessageId, nonce: "n", text: "hi" }
    expect(() => SendMessageData.make(bad)).toThrow()
    expect(() => makeSendMessageData(bad)).toThrow(/64 lower-case hex/)
    const big = { messageId, nonce: "n", text: "hi", content: { type: "example.org/blob:1", bytes: new Uint8Array(MAX_CONTENT_BYTES + 1) } }
    expect(() => SendMessageData.make(big)).toThrow()
    expect(() => makeSendMessageData(big)).toThrow(/content is over/)
  })
})
