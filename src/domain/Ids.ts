/**
 * Branded identifiers. All are lower-case hex except `ConversationId`, which is
 * `dm:<lower inbox>:<higher inbox>` for DMs and the group id for groups.
 */
import { Schema } from "effect"

const hex = (length: number) => new RegExp(`^[0-9a-f]{${length}}$`)

/** An inbox: one user. The SHA-256 of the inbox's root public key. */
export const InboxId = Schema.String.pipe(
  Schema.pattern(hex(64), { message: () => "an inbox id is 64 lower-case hex characters" }),
  Schema.brand("InboxId")
)
export type InboxId = typeof InboxId.Type

/** One device of one inbox: the SHA-256 of its MLS signature public key. */
export const InstallationId = Schema.String.pipe(
  Schema.pattern(hex(64), { message: () => "an installation id is 64 lower-case hex characters" }),
  Schema.brand("InstallationId")
)
export type InstallationId = typeof InstallationId.Type

/** One MLS group: 16 random bytes. */
export const GroupId = Schema.String.pipe(
  Schema.pattern(hex(32), { message: () => "a group id is 32 lower-case hex characters" }),
  Schema.brand("GroupId")
)
export type GroupId = typeof GroupId.Type

/** One message, derived from its sender and content (see `Content.messageIdOf`). */
export const MessageId = Schema.String.pipe(
  Schema.pattern(hex(64), { message: () => "a message id is 64 lower-case hex characters" }),
  Schema.brand("MessageId")
)
export type MessageId = typeof MessageId.Type

/** What the application sees: one id per DM (whatever groups lie beneath) or the group id. */
export const ConversationId = Schema.String.pipe(
  Schema.pattern(/^(dm:[0-9a-f]{64}:[0-9a-f]{64}|[0-9a-f]{32})$/, {
    message: () => "a conversation id is a group id (32 hex) or dm:<inbox>:<inbox>"
  }),
  Schema.brand("ConversationId")
)
export type ConversationId = typeof ConversationId.Type

/** The position of an envelope on a delivery-service topic; 0 means "before the first". */
export const SequenceId = Schema.BigIntFromSelf.pipe(Schema.brand("SequenceId"))
export type SequenceId = typeof SequenceId.Type

/** The conversation id of the DM between two inboxes: `dm:` + the two ids sorted, lower-cased. */
export const dmId = (a: InboxId, b: InboxId): ConversationId => {
  const [lower, higher] = [a.toLowerCase(), b.toLowerCase()].sort() as [string, string]
  return `dm:${lower}:${higher}` as ConversationId
}

/** The other party of a DM id, seen from `self`; `undefined` if `self` is not in it. */
export const dmPeer = (id: ConversationId, self: InboxId): InboxId | undefined => {
  const match = /^dm:([0-9a-f]{64}):([0-9a-f]{64})$/.exec(id)
  if (match === null) return undefined
  const [, a, b] = match as unknown as [string, InboxId, InboxId]
  return a === self ? b : b === self ? a : undefined
}

export const isDmId = (id: string): boolean => id.startsWith("dm:")
