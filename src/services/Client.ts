/**
 * The public face of one installation: `Client` and its `Conversation` handles
 * (the contract is `shared/API.md`). Every user action queues an intent in one transaction
 * and then runs the typed `resolve` program; reads come from the local store.
 *
 * This module holds the `Client` tag and wires its parts: the shared context (`ClientContext`),
 * the handles (`ConversationHandle`), creating, listing and syncing conversations
 * (`GroupCreation`, `ConversationListing`, `ClientSync`), devices, history and consent.
 */
import { Context, Effect, Layer, Schema, type Stream } from "effect"
import { ConsentState, ConsentSubject } from "../domain/Consent.ts"
import {
  type ConvergeError,
  type InboxNotFound,
  type InstallationNotFound,
  InvalidInput,
  type KeyPackageUnavailable,
  type ProtocolVersionTooOld,
  type StorageError
} from "../domain/Errors.ts"
import { OWN_DEVICES_GROUP_NAME } from "../domain/HistoryArchive.ts"
import type { ConversationId, GroupId, InboxId, InstallationId } from "../domain/Ids.ts"
import { GroupMetadata, type Message, type SyncSummary } from "../domain/Model.ts"
import * as ClientContext from "./ClientContext.ts"
import * as EngineMetrics from "./EngineMetrics.ts"
import type { ClientOptions } from "./ClientContext.ts"
import * as ClientMessages from "./ClientMessages.ts"
import * as ClientSync from "./ClientSync.ts"
import type { ActionError, Conversation, LookupError, SyncError } from "./Conversation.ts"
import * as ConversationGroups from "./ConversationGroups.ts"
import * as ConversationHandle from "./ConversationHandle.ts"
import * as ConversationListing from "./ConversationListing.ts"
import type { HandleParts } from "./ConversationScope.ts"
import { DeliveryService } from "./DeliveryService.ts"
import * as Devices from "./Devices.ts"
import * as GroupCreation from "./GroupCreation.ts"
import type { CreateGroupOptions } from "./GroupCreation.ts"
import * as GroupIntents from "./GroupIntents.ts"
import * as HistorySync from "./HistorySync.ts"
import type { IdentityError } from "./Identity.ts"
import * as MemberChecks from "./MemberChecks.ts"
import { MlsCrypto } from "./MlsCrypto.ts"
import { Storage } from "./Storage.ts"

// Moved to modules of their own; named here too, where the API's users and the CLI import them.
export type { ClientOptions } from "./ClientContext.ts"
export { MAX_TEXT_BYTES } from "./ClientMessages.ts"
export type {
  ActionError,
  Conversation,
  ConversationDebugInfo,
  GovernanceActionError,
  LookupError,
  ReadError,
  SyncError
} from "./Conversation.ts"
export type { CreateGroupOptions } from "./GroupCreation.ts"

export class Client extends Context.Tag("converge/Client")<Client, {
  readonly inboxId: InboxId
  readonly installationId: InstallationId
  readonly createGroup: (
    members: ReadonlyArray<InboxId>,
    options?: CreateGroupOptions
  ) => Effect.Effect<Conversation, ActionError | InvalidInput | InboxNotFound | KeyPackageUnavailable | ProtocolVersionTooOld>
  readonly findOrCreateDm: (
    peer: InboxId
  ) => Effect.Effect<Conversation, ActionError | InvalidInput | InboxNotFound | KeyPackageUnavailable>
  readonly conversation: (id: ConversationId) => Effect.Effect<Conversation, LookupError | InvalidInput>
  readonly conversations: (options?: {
    readonly kind?: "group" | "dm"
    readonly includeInactive?: boolean
    /** Default: allowed and unknown. */
    readonly consent?: ReadonlyArray<ConsentState>
  }) => Effect.Effect<ReadonlyArray<Conversation>, StorageError>
  /** Welcomes first, then every active group that has news or pending intents. */
  readonly syncAll: Effect.Effect<SyncSummary, SyncError>
  /** New messages across all conversations, including groups joined while streaming; denied ones left out. */
  readonly streamMessages: Stream.Stream<Message, SyncError>
  /** The inbox's current installations (refreshed from its identity log); `current` marks this one. */
  readonly installations: Effect.Effect<ReadonlyArray<Devices.InstallationInfo>, IdentityError | InboxNotFound>
  /**
   * Revokes another installation of this inbox (needs the root key); every group drops it in
   * its members' next `syncAll`. `InvalidInput` for a malformed id or this installation,
   * `InstallationNotFound` for one the inbox never had; revoking a revoked one does nothing.
   */
  readonly revokeInstallation: (
    id: InstallationId
  ) => Effect.Effect<void, IdentityError | InboxNotFound | InvalidInput | InstallationNotFound>
  /** Where the import of the history held by the inbox's other installations stands. */
  readonly historySync: Effect.Effect<HistorySync.HistorySyncStatus, StorageError>
  /** Records a consent decision here and sends it to the inbox's other installations. */
  readonly setConsent: (subject: ConsentSubject, state: ConsentState) => Effect.Effect<void, StorageError | InvalidInput>
  readonly consentOf: (subject: ConsentSubject) => Effect.Effect<ConsentState, StorageError | InvalidInput>
}>() {
  /**
   * A client over any local `Storage`, a delivery service and MLS crypto. Creates the identity
   * on first open and loads it afterwards. (`Client.layer` in the package root is this over
   * SQLite, as the API contract has it.)
   */
  static readonly layerWithStorage = (
    options: ClientOptions = {}
  ): Layer.Layer<Client, ConvergeError, DeliveryService | MlsCrypto | Storage> => Layer.scoped(this, make(options))
}

export const make = (options: ClientOptions = {}) =>
  Effect.gen(function*() {
    const ctx = yield* ClientContext.make(options)
    yield* EngineMetrics.registerCounters
    const { consent, self } = ctx
    const checks = MemberChecks.make(ctx)
    const intents = GroupIntents.make(ctx)
    const parts: HandleParts = { ctx, checks, intents, groups: ConversationGroups.make(ctx.env.storage) }
    // The handles send direct messages through `findOrCreateDm`, which makes handles: tied here.
    const handles = ConversationHandle.make(parts, ClientMessages.make(ctx, intents), (peer) => creation.findOrCreateDm(peer))
    const creation = GroupCreation.make(parts, handles)
    const history = HistorySync.make(ctx.env, {
      publisher: ctx.publisher,
      // Every version: it holds exactly this inbox's installations and never a leaver, and every
      // build reads history, so a device of an earlier build gets its history too.
      createOwnDevicesGroup: creation.newGroup([], {
        metadata: new GroupMetadata({ name: OWN_DEVICES_GROUP_NAME, description: null, superAdmins: [self] }),
        everyVersion: true
      }).pipe(Effect.map((c) => c.id as unknown as GroupId))
    }, options)
    const listing = ConversationListing.make(parts, handles.handleOf)
    const syncing = ClientSync.make(ctx, history)

    const validSubject = (subject: ConsentSubject) =>
      Schema.decodeUnknown(ConsentSubject)(subject).pipe(
        Effect.mapError(() => new InvalidInput({ reason: "a consent subject is { conversationId } or { inboxId }" }))
      )

    const setConsent = Effect.fn("Client.setConsent")(function*(subject: ConsentSubject, state: ConsentState) {
      const valid = yield* validSubject(subject)
      if (!Schema.is(ConsentState)(state)) return yield* new InvalidInput({ reason: `not a consent state: ${String(state)}` })
      yield* consent.set(valid, state)
      // Sent now when it can be; otherwise with the next sync.
      yield* history.flushConsent
    })

    const consentOf = Effect.fn("Client.consentOf")(function*(subject: ConsentSubject) {
      return yield* consent.stateOf(yield* validSubject(subject))
    })

    return Client.of({
      inboxId: self,
      installationId: ctx.env.identity.installationId,
      createGroup: creation.createGroup,
      findOrCreateDm: creation.findOrCreateDm,
      conversation: listing.conversation,
      conversations: listing.conversations,
      syncAll: syncing.syncAll,
      streamMessages: syncing.streamMessages,
      historySync: history.status,
      setConsent,
      consentOf,
      ...Devices.make(ctx.env.identity)
    })
  })
