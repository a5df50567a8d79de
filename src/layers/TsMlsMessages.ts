/**
 * Group messages as they arrive: decoded once, their headers (`inspect`, `header`), and the screen
 * every received message passes before anything is decrypted.
 */
import { Effect } from "effect"
import type { ClientState, MLSMessage } from "ts-mls"
import { bytesEqual, toHex } from "../domain/Bytes.ts"
import { CryptoError, type CryptoErrorReason } from "../domain/Errors.ts"
import type { GroupId } from "../domain/Ids.ts"
import type { MessageHeader, MlsCryptoShape } from "../services/MlsCrypto.ts"
import { decodeMlsMessage } from "./TsMlsDecoders.ts"
import { decodeAllOrError } from "./TsMlsErrors.ts"

type Service = MlsCryptoShape

/**
 * Messages a receiver's `header` decoded, by their bytes object, until the next read of the same
 * bytes (`inspect` or `process`) takes them: the envelope is decoded once. Taken, not kept: an
 * in-memory delivery service holds its payloads for good, and inspects every one it stores.
 */
const decodedMessages = new WeakMap<Uint8Array, MLSMessage>()
const decodeMessageOrError = (bytes: Uint8Array, keep = false): MLSMessage | CryptoError => {
  const known = decodedMessages.get(bytes)
  if (known !== undefined) {
    if (!keep) decodedMessages.delete(bytes)
    return known
  }
  const decoded = decodeAllOrError("MLS message", decodeMlsMessage, bytes)
  if (decoded instanceof CryptoError) return decoded
  if (keep) decodedMessages.set(bytes, decoded.ok)
  return decoded.ok
}
export const decodeMessage = (bytes: Uint8Array): Effect.Effect<MLSMessage, CryptoError> => {
  const decoded = decodeMessageOrError(bytes)
  return decoded instanceof CryptoError ? Effect.fail(decoded) : Effect.succeed(decoded)
}

const kindOf = (contentType: "application" | "proposal" | "commit"): MessageHeader["kind"] =>
  contentType === "application" ? "application" : contentType

/** A group id is 16 bytes in this project; anything else is not one of ours. */
const groupIdOf = (bytes: Uint8Array): GroupId | undefined => bytes.length === 16 ? toHex(bytes) as GroupId : undefined

const headerOf = (message: MLSMessage): MessageHeader => {
  switch (message.wireformat) {
    case "mls_private_message": {
      const pm = message.privateMessage
      return { kind: kindOf(pm.contentType), groupId: groupIdOf(pm.groupId), epoch: pm.epoch }
    }
    case "mls_public_message": {
      const content = message.publicMessage.content
      return { kind: kindOf(content.contentType), groupId: groupIdOf(content.groupId), epoch: content.epoch }
    }
    case "mls_welcome":
      // A welcome's group id and epoch are inside its encrypted GroupInfo.
      return { kind: "welcome", groupId: undefined, epoch: 0n }
    case "mls_group_info": {
      const context = message.groupInfo.groupContext
      return { kind: "other", groupId: groupIdOf(context.groupId), epoch: context.epoch }
    }
    case "mls_key_package":
      return { kind: "other", groupId: undefined, epoch: 0n }
  }
}

export const inspect: Service["inspect"] = Effect.fn("MlsCrypto.inspect")(function*(bytes) {
  return headerOf(yield* decodeMessage(bytes))
})

export const inspectAll: Service["inspectAll"] = Effect.fn("MlsCrypto.inspectAll")(function*(messages) {
  return messages.map((bytes) => {
    const message = decodeMessageOrError(bytes)
    return message instanceof CryptoError ? message : headerOf(message)
  })
})

export const header: Service["header"] = (bytes) => {
  const message = decodeMessageOrError(bytes, true)
  return message instanceof CryptoError ? undefined : headerOf(message)
}

/** What `process` checks before any decryption: the refusal, or the group message and its header. */
export const screen = (client: ClientState, bytes: Uint8Array) => {
  const refuse = (reason: CryptoErrorReason, detail: string) => new CryptoError({ reason, detail })
  const message = decodeMessageOrError(bytes)
  if (message instanceof CryptoError) return message
  if (message.wireformat !== "mls_private_message" && message.wireformat !== "mls_public_message") {
    return refuse("Malformed", `${message.wireformat} is not a group message`)
  }
  const header = headerOf(message)
  const groupId = message.wireformat === "mls_private_message"
    ? message.privateMessage.groupId
    : message.publicMessage.content.groupId
  if (!bytesEqual(groupId, client.groupContext.groupId)) {
    const ours = toHex(client.groupContext.groupId)
    return refuse("CannotDecrypt", `message is for group ${toHex(groupId)}, not ${ours}`)
  }
  // We never send standalone proposals, and an accepted one would block sending (notes §2).
  if (header.kind === "proposal") return refuse("Malformed", "standalone proposals are not accepted")
  if (header.kind === "application" && message.wireformat === "mls_public_message") {
    return refuse("Malformed", "application messages must be private")
  }
  const epoch = client.groupContext.epoch
  if (header.epoch > epoch) {
    // ts-mls would fail with an undifferentiated CryptoError; a removed member never catches up.
    return client.groupActiveState.kind === "removedFromGroup"
      ? refuse("NotAMember", `removed at epoch ${epoch}; message is from epoch ${header.epoch}`)
      : refuse("WrongEpoch", `message is from future epoch ${header.epoch}; group is at ${epoch}`)
  }
  if (header.kind === "commit" && header.epoch < epoch) {
    return refuse("WrongEpoch", `commit for past epoch ${header.epoch}; group is at ${epoch}`)
  }
  return { message, header }
}
