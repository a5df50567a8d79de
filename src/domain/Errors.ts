/**
 * Every error a caller can act on. Each is a `Schema.TaggedError` so it can cross a wire
 * or be persisted, and callers `Effect.catchTag` them by name.
 */
import { Schema } from "effect"

export class ConversationNotFound extends Schema.TaggedError<ConversationNotFound>()("ConversationNotFound", {
  conversationId: Schema.String
}) {
  override get message() {
    return `conversation ${this.conversationId} not found`
  }
}

export class InvalidInput extends Schema.TaggedError<InvalidInput>()("InvalidInput", {
  reason: Schema.String
}) {
  override get message() {
    return this.reason
  }
}

export class NotAMember extends Schema.TaggedError<NotAMember>()("NotAMember", {
  groupId: Schema.String,
  inboxId: Schema.optional(Schema.String)
}) {}

export class GroupInactive extends Schema.TaggedError<GroupInactive>()("GroupInactive", {
  groupId: Schema.String
}) {
  override get message() {
    return `group ${this.groupId} is inactive: this installation is no longer a member`
  }
}

export class InboxNotFound extends Schema.TaggedError<InboxNotFound>()("InboxNotFound", {
  inboxId: Schema.String
}) {
  override get message() {
    return `inbox ${this.inboxId} is not registered`
  }
}

/** A well-formed installation id that is not a current installation of this inbox (nor a revoked one). */
export class InstallationNotFound extends Schema.TaggedError<InstallationNotFound>()("InstallationNotFound", {
  installationId: Schema.String
}) {
  override get message() {
    return `installation ${this.installationId} is not an installation of this inbox`
  }
}

export class KeyPackageUnavailable extends Schema.TaggedError<KeyPackageUnavailable>()("KeyPackageUnavailable", {
  inboxId: Schema.String,
  installationIds: Schema.Array(Schema.String)
}) {
  override get message() {
    return `no key package for ${this.installationIds.length} installation(s) of inbox ${this.inboxId}`
  }
}

/** Why ts-mls refused something, in terms a caller can switch on. */
export const CryptoErrorReason = Schema.Literal(
  "WrongEpoch",
  "CannotDecrypt",
  "BadSignature",
  "NotAMember",
  "Malformed",
  "Unauthenticated",
  "Internal"
)
export type CryptoErrorReason = typeof CryptoErrorReason.Type

export class CryptoError extends Schema.TaggedError<CryptoError>()("CryptoError", {
  reason: CryptoErrorReason,
  detail: Schema.String
}) {
  override get message() {
    return `${this.reason}: ${this.detail}`
  }
}

/** Own commit lost the race for its epoch. Internal to publish; surfaces only inside `IntentFailed`. */
export class EpochConflict extends Schema.TaggedError<EpochConflict>()("EpochConflict", {
  groupId: Schema.String,
  intentId: Schema.Number,
  publishedEpoch: Schema.BigIntFromSelf,
  currentEpoch: Schema.BigIntFromSelf
}) {
  override get message() {
    return `commit of intent ${this.intentId} for epoch ${this.publishedEpoch} lost to another; group is at ${this.currentEpoch}`
  }
}

export const DeliveryErrorReason = Schema.Literal(
  "Unavailable",
  "Timeout",
  "PayloadTooLarge",
  "BatchTooLarge",
  "InvalidRequest",
  "InvalidIdentityUpdate",
  "InvalidKeyPackage",
  "LimitExceeded",
  /** The request carries no valid signature of a current installation (or a replayed one). */
  "Unauthenticated",
  /** The caller is authenticated but may not do this (e.g. read another installation's welcomes). */
  "Forbidden",
  /** Too many requests or bytes from one installation: retry later (retryable). */
  "RateLimited"
)
export type DeliveryErrorReason = typeof DeliveryErrorReason.Type

export class DeliveryError extends Schema.TaggedError<DeliveryError>()("DeliveryError", {
  reason: DeliveryErrorReason,
  retryable: Schema.Boolean,
  detail: Schema.String
}) {
  override get message() {
    return `${this.reason}${this.retryable ? " (retryable)" : ""}: ${this.detail}`
  }
}

export class StorageError extends Schema.TaggedError<StorageError>()("StorageError", {
  operation: Schema.String,
  detail: Schema.String
}) {
  override get message() {
    return `storage failed in ${this.operation}: ${this.detail}`
  }
}

/** An identity log entry that does not verify: a bad signature, a replay, a gap. */
export class InvalidIdentityUpdate extends Schema.TaggedError<InvalidIdentityUpdate>()("InvalidIdentityUpdate", {
  inboxId: Schema.String,
  reason: Schema.String
}) {
  override get message() {
    return `identity update for ${this.inboxId} rejected: ${this.reason}`
  }
}

export class IntentFailed extends Schema.TaggedError<IntentFailed>()("IntentFailed", {
  intentId: Schema.Number,
  kind: Schema.String,
  attempts: Schema.Number,
  cause: Schema.String
}) {
  override get message() {
    return `${this.kind} intent ${this.intentId} failed after ${this.attempts} attempt(s): ${this.cause}`
  }
}

/** The group's policy does not let this inbox do this (checked before sending, and by every receiver). */
export class PermissionDenied extends Schema.TaggedError<PermissionDenied>()("PermissionDenied", {
  action: Schema.String,
  required: Schema.String
}) {
  override get message() {
    return `${this.action} needs ${this.required}`
  }
}

/** An `ifMatch` field no longer held at the epoch where the update would apply. */
export class MetadataConflict extends Schema.TaggedError<MetadataConflict>()("MetadataConflict", {
  field: Schema.String
}) {
  override get message() {
    return `group ${this.field} changed since it was read`
  }
}

/** This installation is below the group's minimum protocol version: it may read, not write. */
export class ProtocolVersionTooOld extends Schema.TaggedError<ProtocolVersionTooOld>()("ProtocolVersionTooOld", {
  required: Schema.Number,
  current: Schema.Number
}) {
  override get message() {
    return `the group requires protocol version ${this.required}; this installation speaks ${this.current}`
  }
}

/** A well-formed message id that names no message of this conversation (as this installation holds it). */
export class MessageNotFound extends Schema.TaggedError<MessageNotFound>()("MessageNotFound", {
  messageId: Schema.String
}) {
  override get message() {
    return `message ${this.messageId} not found in this conversation`
  }
}

/** The message is already deleted for everyone (or its deletion is on its way). */
export class MessageAlreadyDeleted extends Schema.TaggedError<MessageAlreadyDeleted>()("MessageAlreadyDeleted", {
  messageId: Schema.String
}) {
  override get message() {
    return `message ${this.messageId} is already deleted`
  }
}

/** The governance refusals an intent can end with: stored with the intent, returned typed. */
export const GovernanceError = Schema.Union(PermissionDenied, MetadataConflict, ProtocolVersionTooOld)
export type GovernanceError = typeof GovernanceError.Type
export const GovernanceErrorJson = Schema.parseJson(GovernanceError)
/** How an intent records a governance refusal (its `error`), so the caller gets it back typed. */
export const encodeGovernanceError = (e: GovernanceError): string => Schema.encodeSync(GovernanceErrorJson)(e)
/** The governance refusal an intent's failure cause holds, if it is one. */
export const decodeGovernanceError = Schema.decodeUnknownOption(GovernanceErrorJson)

export type ConvergeError =
  | ConversationNotFound
  | InvalidInput
  | NotAMember
  | GroupInactive
  | InboxNotFound
  | InstallationNotFound
  | KeyPackageUnavailable
  | IntentFailed
  | EpochConflict
  | DeliveryError
  | StorageError
  | CryptoError
  | InvalidIdentityUpdate
  | PermissionDenied
  | MetadataConflict
  | ProtocolVersionTooOld
  | MessageNotFound
  | MessageAlreadyDeleted
