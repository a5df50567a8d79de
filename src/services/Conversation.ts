/**
 * The contract of a conversation handle (`shared/API.md`) and the error unions its operations
 * declare. `Client` re-exports them; `ConversationHandle` builds the handles.
 */
import type { Effect } from "effect"
import type {
  ConversationNotFound,
  CryptoError,
  DeliveryError,
  GroupInactive,
  InboxNotFound,
  IntentFailed,
  InvalidIdentityUpdate,
  GovernanceError,
  InvalidInput,
  KeyPackageUnavailable,
  MessageAlreadyDeleted,
  MessageNotFound,
  MetadataConflict,
  NotAMember,
  PermissionDenied,
  ProtocolVersionTooOld,
  StorageError
} from "../domain/Errors.ts"
import type { PermissionPolicies, Role } from "../domain/Governance.ts"
import type { ConversationId, GroupId, InboxId, MessageId } from "../domain/Ids.ts"
import type { MetadataPatch } from "../domain/Intent.ts"
import type { GroupMetadata, Member, Message, SyncSummary } from "../domain/Model.ts"
import type { MembershipState } from "../domain/Stored.ts"

export interface ConversationDebugInfo {
  readonly groupIds: ReadonlyArray<GroupId>
  readonly epoch: bigint
  readonly epochAuthenticator: string
  readonly maybeForked: boolean
}

/** Reading what the local store holds: the conversation may be unknown, the store may fail. */
export type LookupError = ConversationNotFound | StorageError
/** Reading a group's MLS state as well. */
export type ReadError = LookupError | CryptoError
/**
 * Syncing and publishing: the network, the store and MLS can fail, and a member's identity log
 * may not verify. (`EpochConflict` never escapes: it is retried, then becomes `IntentFailed`.)
 */
export type SyncError = ReadError | DeliveryError | InvalidIdentityUpdate
/** A user action that queues an intent and waits until it is published and seen. */
export type ActionError = SyncError | GroupInactive | IntentFailed

export interface Conversation {
  readonly id: ConversationId
  readonly kind: "group" | "dm"
  /** Resolves once the message is published and seen on the group topic. */
  readonly send: (text: string) => Effect.Effect<MessageId, ActionError | InvalidInput | ProtocolVersionTooOld>
  /** Stores the message as `unpublished` now; `publishPending` (or any sync) publishes it. */
  readonly sendOptimistic: (
    text: string
  ) => Effect.Effect<MessageId, ReadError | GroupInactive | InvalidInput | ProtocolVersionTooOld>
  readonly publishPending: Effect.Effect<void, SyncError | IntentFailed>
  readonly sync: Effect.Effect<SyncSummary, SyncError>
  readonly messages: (options?: {
    readonly limit?: number
    readonly direction?: "asc" | "desc"
    readonly afterNs?: bigint
  }) => Effect.Effect<ReadonlyArray<Message>, StorageError | InvalidInput>
  readonly members: Effect.Effect<ReadonlyArray<Member>, ReadError>
  readonly addMembers: (
    inboxIds: ReadonlyArray<InboxId>
  ) => Effect.Effect<void, ActionError | InvalidInput | InboxNotFound | KeyPackageUnavailable | GovernanceError>
  readonly removeMembers: (
    inboxIds: ReadonlyArray<InboxId>
  ) => Effect.Effect<void, ActionError | InvalidInput | NotAMember | GovernanceError>
  /** Rotates this installation's leaf key (a self-update commit). */
  readonly updateKeys: Effect.Effect<void, ActionError>
  readonly leave: Effect.Effect<void, ActionError | InvalidInput | NotAMember | PermissionDenied>
  readonly state: Effect.Effect<MembershipState, LookupError>
  /** The group's settings at the epoch this installation holds; none for a DM. */
  readonly metadata: Effect.Effect<GroupMetadata, ReadError>
  readonly debugInfo: Effect.Effect<ConversationDebugInfo, ReadError>
  /** Sets metadata fields; `ifMatch` fields must still hold at the epoch the change lands in. */
  readonly updateMetadata: (
    patch: MetadataPatch,
    options?: { readonly ifMatch?: Partial<GroupMetadata> }
  ) => Effect.Effect<void, GovernanceActionError>
  readonly roles: Effect.Effect<
    { readonly admins: ReadonlyArray<InboxId>; readonly superAdmins: ReadonlyArray<InboxId> },
    ReadError
  >
  readonly setRole: (inboxId: InboxId, role: Role) => Effect.Effect<void, GovernanceActionError | NotAMember>
  readonly permissions: Effect.Effect<PermissionPolicies, ReadError>
  readonly updatePermissions: (patch: Partial<PermissionPolicies>) => Effect.Effect<void, GovernanceActionError>
  readonly minProtocolVersion: Effect.Effect<number, ReadError>
  readonly setMinProtocolVersion: (version: number) => Effect.Effect<void, GovernanceActionError>
  /** A message to one member of this group only: it travels in the DM of the two inboxes. */
  readonly sendDirect: (
    member: InboxId,
    text: string
  ) => Effect.Effect<
    MessageId,
    ActionError | InvalidInput | NotAMember | InboxNotFound | KeyPackageUnavailable | ProtocolVersionTooOld
  >
  /** The direct messages this installation sent or received in this group's context, in order. */
  readonly directMessages: (options?: {
    readonly limit?: number
    readonly direction?: "asc" | "desc"
  }) => Effect.Effect<ReadonlyArray<Message>, StorageError | InvalidInput>
  /** Typed content; `fallback` is the text shown by clients that do not know the type. */
  readonly sendContent: (content: {
    readonly type: string
    readonly bytes: Uint8Array
    readonly fallback?: string
  }) => Effect.Effect<MessageId, ActionError | InvalidInput | ProtocolVersionTooOld>
  /** Deletes a message for every member: its sender may, and in a group a super admin. */
  readonly deleteMessage: (
    id: MessageId
  ) => Effect.Effect<
    void,
    ActionError | InvalidInput | MessageNotFound | MessageAlreadyDeleted | PermissionDenied | ProtocolVersionTooOld
  >
}

/** A settings change: refused by the group's policy, overtaken by a concurrent change, or as any action. */
export type GovernanceActionError =
  | ActionError
  | InvalidInput
  | PermissionDenied
  | MetadataConflict
  | ProtocolVersionTooOld
