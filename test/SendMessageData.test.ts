/** Values made on every send (intent data, published payloads): validators built once, the same checks as the class constructors. */
import { describe, expect, it } from "@effect/vitest"
import { MAX_CONTENT_BYTES } from "../src/domain/Content.ts"
import type { GroupId, MessageId } from "../src/domain/Ids.ts"
import { makeSendMessageData, SendMessageData } from "../src/domain/Intent.ts"
import { validatedMaker } from "../src/domain/SchemaClass.ts"
import { GroupMessageInput } from "../src/domain/Wire.ts"
import { Message } from "../src/domain/Model.ts"
import { makeStoredMessage, StoredMessage } from "../src/domain/Stored.ts"

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

describe("validatedMaker", () => {
  const makeInput = validatedMaker(GroupMessageInput)

  it("a published payload is the same value GroupMessageInput.make makes", () => {
    const props = { groupId, payload: new Uint8Array([9, 8, 7]) }
    const made = makeInput(props)
    expect(made).toBeInstanceOf(GroupMessageInput)
    expect(made).toEqual(GroupMessageInput.make(props))
  })

  it("a payload for a malformed group id is refused, as by GroupMessageInput.make", () => {
    const bad = { groupId: "not-a-group" as GroupId, payload: new Uint8Array([1]) }
    expect(() => GroupMessageInput.make(bad)).toThrow()
    expect(() => makeInput(bad)).toThrow()
  })

  it("a message read back is the same value Message.make makes, and a bad one is refused", () => {
    const makeMessage = validatedMaker(Message)
    const props = {
      id: messageId,
      conversationId: groupId as unknown as Message["conversationId"],
      groupId,
      senderInboxId: "ef".repeat(32) as Message["senderInboxId"],
      senderInstallationId: "01".repeat(32) as Message["senderInstallationId"],
      sentAtNs: 5n,
      kind: "text" as const,
      text: "hello",
      deliveryStatus: "published" as const,
      groupContext: null,
      content: { type: "example.org/reaction:1", bytes: new Uint8Array([1]) },
      deleted: false
    }
    expect(makeMessage(props)).toEqual(Message.make(props))
    expect(makeMessage(props)).toBeInstanceOf(Message)
    expect(() => makeMessage({ ...props, sentAtNs: "5" as unknown as bigint })).toThrow()
  })
})

describe("structMaker", () => {
  const row = {
    id: messageId,
    groupId,
    conversationId: groupId as unknown as StoredMessage["conversationId"],
    senderInboxId: "ef".repeat(32) as StoredMessage["senderInboxId"],
    senderInstallationId: "01".repeat(32) as StoredMessage["senderInstallationId"],
    sentAtNs: 5n,
    sequenceId: null,
    kind: "text" as const,
    content: "hello",
    membershipChange: null,
    deliveryStatus: "unpublished" as const,
    insertedAtNs: 5n
  }

  it("a message stored as it is sent is the same value StoredMessage.make makes, defaults filled in", () => {
    const made = makeStoredMessage(row)
    expect(made).toEqual(StoredMessage.make(row))
    expect([made.groupContext, made.contentType, made.contentBytes, made.deleted, made.expiresAtNs]).toEqual([null, null, null, false, null])
    const typed = { ...row, contentType: "example.org/reaction:1", contentBytes: new Uint8Array([1]) }
    expect(makeStoredMessage(typed)).toEqual(StoredMessage.make(typed))
  })

  it("a malformed row is refused, as by StoredMessage.make", () => {
    const bad = { ...row, id: "not-hex" as MessageId }
    expect(() => StoredMessage.make(bad)).toThrow()
    expect(() => makeStoredMessage(bad)).toThrow()
    const wrongKind = { ...row, kind: "poem" as unknown as "text" }
    expect(() => makeStoredMessage(wrongKind)).toThrow()
  })
})
