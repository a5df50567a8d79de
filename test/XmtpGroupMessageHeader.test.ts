/**
 * The XMTP server reads a group message's header by hand (`MlsInspect.inspectGroupMessage`)
 * instead of decoding it whole with ts-mls: it must read what ts-mls reads (group id, content
 * type) from every kind of group message ts-mls encodes, refuse what is not one, and take no
 * longer for a large commit than for a small one.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import { decodeMlsMessage, encodeMlsMessage, type MLSMessage } from "ts-mls"
import type { Sender } from "ts-mls/sender.js"
import { inspectGroupMessage } from "../src/xmtp/MlsInspect.ts"
import { hostileCommit, hostileWelcome } from "./support/HostileMls.ts"

const group = new Uint8Array(16).fill(9)
const bytes = (n: number, fill = 1) => new Uint8Array(n).fill(fill)

const senders: ReadonlyArray<Sender> = [
  { senderType: "member", leafIndex: 3 },
  { senderType: "external", senderIndex: 1 },
  { senderType: "new_member_proposal" },
  { senderType: "new_member_commit" }
]

const publicMessage = (sender: Sender, contentType: "application" | "proposal" | "commit"): MLSMessage => {
  const content = { groupId: group, epoch: 7n, sender, authenticatedData: bytes(70) }
  const info = contentType === "application"
    ? { contentType, applicationData: bytes(300) } as const
    : contentType === "proposal"
    ? { contentType, proposal: { proposalType: "remove", remove: { removed: 1 } } } as const
    : { contentType, commit: { proposals: [{ proposalOrRefType: "reference", reference: bytes(32) }], path: undefined } } as const
  const auth = contentType === "commit"
    ? { contentType, signature: bytes(64), confirmationTag: bytes(32) } as const
    : { contentType, signature: bytes(64) } as const
  const tail = sender.senderType === "member" ? { senderType: "member", membershipTag: bytes(32) } as const : { senderType: sender.senderType } as const
  return { version: "mls10", wireformat: "mls_public_message", publicMessage: { content: { ...content, ...info }, auth, ...tail } } as MLSMessage
}

const privateMessage = (contentType: "application" | "proposal" | "commit"): MLSMessage => ({
  version: "mls10",
  wireformat: "mls_private_message",
  privateMessage: { groupId: group, epoch: 1n, contentType, authenticatedData: bytes(3), encryptedSenderData: bytes(40), ciphertext: bytes(20000) }
})

const inspect = (data: Uint8Array) => Effect.runSync(Effect.either(inspectGroupMessage(data)))

describe("a group message's header, read by hand", () => {
  const contentTypes = ["application", "proposal", "commit"] as const
  const messages = [
    ...contentTypes.map((type) => [`private ${type}`, privateMessage(type)] as const),
    ...senders.flatMap((sender) => contentTypes.map((type) => [`public ${type} from ${sender.senderType}`, publicMessage(sender, type)] as const))
  ]

  it.each(messages)("reads what ts-mls reads from a %s", (_, message) => {
    const encoded = encodeMlsMessage(message)
    const decoded = decodeMlsMessage(encoded, 0)![0]
    const facts = Either.getOrThrow(inspect(encoded))
    const expected = decoded.wireformat === "mls_private_message" ? decoded.privateMessage : (decoded as any).publicMessage.content
    expect(facts.groupId).toEqual(expected.groupId)
    expect(facts.isCommit).toBe(expected.contentType !== "application")
  })

  it("refuses what is not a group message, truncated, or followed by more bytes", () => {
    const refused = (data: Uint8Array) => Either.isLeft(inspect(data))
    expect(refused(hostileWelcome(1))).toBe(true)
    expect(refused(new Uint8Array([1, 2, 3]))).toBe(true)
    expect(refused(new Uint8Array(0))).toBe(true)
    for (const message of [privateMessage("application"), publicMessage(senders[0]!, "application")]) {
      const encoded = encodeMlsMessage(message)
      expect(refused(encoded.subarray(0, encoded.length - 1))).toBe(true)
      expect(refused(new Uint8Array([...encoded, 0]))).toBe(true)
    }
    // An empty group id, a varint with the reserved prefix, an unknown content type.
    expect(refused(encodeMlsMessage({ ...privateMessage("commit"), privateMessage: { ...(privateMessage("commit") as any).privateMessage, groupId: new Uint8Array(0) } } as MLSMessage))).toBe(true)
    expect(refused(new Uint8Array([0, 1, 0, 2, 0xc0, 0, 0, 0]))).toBe(true)
    const unknownType = encodeMlsMessage(privateMessage("application"))
    unknownType[4 + 1 + 16 + 8] = 4
    expect(refused(unknownType)).toBe(true)
  })

  it("reads a 1 MiB commit of 520,000 proposal references in constant time", () => {
    const big = hostileCommit(520_000)
    const start = performance.now()
    for (let i = 0; i < 100; i++) expect(Either.getOrThrow(inspect(big)).isCommit).toBe(true)
    // ts-mls decoded it at about 0.4 s a MiB: 40 s for these 100.
    expect(performance.now() - start).toBeLessThan(2_000)
  })
})
