/**
 * The public face of one installation: `Client` and its `Conversation` handles
 * (the contract is `shared/API.md`). Every user action queues an intent in one transaction
 * and then runs the typed `resolve` program; reads come from the local store.
 */
import {
  Clock,
  Context,
  Effect,
  Either,
  HashMap,
  Layer,
  Option,
  PubSub,
  Schedule,
  Schema,
  Stream
} from "effect"
import { randomBytes } from "node:crypto"
import { toHex } from "../domain/Bytes.ts"
import { messageIdOf } from "../domain/Content.ts"
import {
  type ConvergeError,
  ConversationNotFound,
  type CryptoError,
  type DeliveryError,
  GroupInactive,
  InboxNotFound,
  type InstallationNotFound,
  type IntentFailed,
  InvalidIdentityUpdate,
  decodeGovernanceError,
  type GovernanceError,
  InvalidInput,
  type MetadataConflict,
  NotAMember,
  PermissionDenied,
  ProtocolVersionTooOld,
  KeyPackageUnavailable,
  type MessageAlreadyDeleted,
  type MessageNotFound,
  type StorageError
} from "../domain/Errors.ts"
import { ConsentState, ConsentSubject, DEFAULT_VISIBLE } from "../domain/Consent.ts"
import { OWN_DEVICES_GROUP_NAME } from "../domain/HistoryArchive.ts"
import { currentInstallations } from "../domain/IdentityLog.ts"
import { ConversationId, dmId, type GroupId, InboxId, type InstallationId, type MessageId } from "../domain/Ids.ts"
import {
  AddMembersData,
  KeyUpdateData,
  makeSendMessageData,
  type MetadataPatch,
  RemoveMembersData,
  SetMinProtocolVersionData,
  SetRoleData,
  UpdateMetadataData,
  UpdatePermissionsData
} from "../domain/Intent.ts"
import type { IntentData } from "../domain/Intent.ts"
import { isLastSuperAdmin, isPaused, PermissionPolicies, type PolicyPreset, presets, type Role } from "../domain/Governance.ts"
import { decodeSettings, encodeSettings, type GovernanceIntent, membershipVerdict, nextSettings } from "../domain/GroupSettings.ts"
import { GroupMetadata, Member, Message, METADATA_FIELDS, type MetadataField, SyncSummary } from "../domain/Model.ts"
import { validatedMaker } from "../domain/SchemaClass.ts"
import { makeStoredMessage, StoredGroup, StoredMessage } from "../domain/Stored.ts"
import type { MembershipState } from "../domain/Stored.ts"
import { authenticatedAs, installationSigner } from "./DeliveryAuth.ts"
import { DeliveryService, fetchKeyPackagesInChunks } from "./DeliveryService.ts"
import { groupTopic, welcomeTopic } from "../domain/Topics.ts"
import { defaultEngineOptions, type EngineContext, type EngineOptions } from "./EngineContext.ts"
import * as ConversationMessaging from "./ConversationMessaging.ts"
import * as ConsentBook from "./ConsentBook.ts"
import * as GroupStateCache from "./GroupStateCache.ts"
import * as HistorySync from "./HistorySync.ts"
import { failPendingIntents, newLeaveRequest, queueIntent as queueIntentIn } from "./IntentQueue.ts"
import * as Devices from "./Devices.ts"
import * as DeviceSync from "./DeviceSync.ts"
import * as GroupSync from "./GroupSync.ts"
import type { IdentityError, IdentityOptions } from "./Identity.ts"
import * as IdentityService from "./Identity.ts"
import * as LeafAuthentication from "./LeafAuthentication.ts"
import { MlsCrypto } from "./MlsCrypto.ts"
import * as Publisher from "./Publisher.ts"
import { type MessageQuery, Storage } from "./Storage.ts"
import * as Welcomes from "./Welcomes.ts"
import * as DisappearingMessages from "./DisappearingMessages.ts"

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

export interface CreateGroupOptions {
  readonly name?: string
  readonly description?: string
  readonly imageUrl?: string
  readonly appData?: string
  /** A preset (default `"everyone"`) or every policy spelled out. */
  readonly permissions?: PolicyPreset | PermissionPolicies
}

export interface ClientOptions extends Partial<EngineOptions>, IdentityOptions, HistorySync.HistoryOptions {}

/** Largest text `send` accepts; the delivery service also caps whole payloads. */
export const MAX_TEXT_BYTES = 64 * 1024

export class Client extends Context.Tag("converge/Client")<Client, {
  readonly inboxId: InboxId
  readonly installationId: InstallationId
  readonly createGroup: (
    members: ReadonlyArray<InboxId>,
    options?: CreateGroupOptions
  ) => Effect.Effect<Conversation, ActionError | InvalidInput | InboxNotFound | KeyPackageUnavailable>
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

const decodeInbox = Schema.decodeUnknown(InboxId)
/** Every message read goes through it: `Message.make` builds its validator anew per call (~0.15 ms). */
const makeMessage = validatedMaker(Message)

/** The metadata fields of a patch or an `ifMatch`, and nothing else. */
const metadataPatchOf = (input: Partial<Record<MetadataField, unknown>>): MetadataPatch =>
  Object.fromEntries(METADATA_FIELDS.filter((f) => input[f] !== undefined).map((f) => [f, input[f]])) as MetadataPatch

export const make = (options: ClientOptions = {}) =>
  Effect.gen(function*() {
    const storage = yield* Storage
    const unauthenticated = yield* MlsCrypto
    const network = yield* DeliveryService
    const identity = yield* IdentityService.make(options).pipe(
      Effect.provideService(Storage, storage),
      Effect.provideService(MlsCrypto, unauthenticated),
      Effect.provideService(DeliveryService, network)
    )
    // Every request of this installation is signed by it (DeliveryAuth).
    const ds = authenticatedAs(network, installationSigner(identity.installationId, identity.signatureKeys.privateKey))
    // Every leaf ts-mls validates is checked against the identity log (RFC 9420 §5.3.1).
    const runtime = yield* Effect.runtime<never>()
    const crypto = unauthenticated.authenticatedBy(
      LeafAuthentication.authenticateWith(identity, runtime),
      LeafAuthentication.prepareWith(identity, runtime)
    )
    const engineOptions: EngineOptions = {
      maxPastEpochs: options.maxPastEpochs ?? defaultEngineOptions.maxPastEpochs,
      conflictSchedule: options.conflictSchedule ?? defaultEngineOptions.conflictSchedule,
      transportSchedule: options.transportSchedule ?? defaultEngineOptions.transportSchedule,
      pageSize: options.pageSize ?? defaultEngineOptions.pageSize,
      installationCheckInterval: options.installationCheckInterval ?? defaultEngineOptions.installationCheckInterval,
      crashPoint: options.crashPoint ?? defaultEngineOptions.crashPoint,
      protocolVersion: options.protocolVersion ?? defaultEngineOptions.protocolVersion
    }
    const locks = new Map<GroupId, Effect.Semaphore>()
    const lockOf = (groupId: GroupId) => {
      let lock = locks.get(groupId)
      if (lock === undefined) {
        lock = Effect.unsafeMakeSemaphore(1)
        locks.set(groupId, lock)
      }
      return lock
    }
    const stored = yield* Effect.acquireRelease(PubSub.unbounded<StoredMessage>(), PubSub.shutdown)
    const env: EngineContext = {
      storage,
      crypto,
      ds,
      identity,
      options: engineOptions,
      withGroupLock: (groupId) => lockOf(groupId).withPermits(1),
      ...GroupStateCache.make(crypto, GroupStateCache.DEFAULT_MAX_BYTES, { stored: storage.rosters }),
      stored
    }
    const sync = GroupSync.make(env)
    // Disappearing messages go when the clock passes their deadline, whatever else runs.
    const wakeSweeper = yield* DisappearingMessages.start(storage)
    const publisher = Publisher.make(env, sync)
    const welcomes = Welcomes.make(env, sync)
    const deviceSync = DeviceSync.make(env, publisher)
    const consent = ConsentBook.make(env)
    const self = identity.inboxId

    // ---- input checks ----

    const validInboxes = (inboxIds: ReadonlyArray<unknown>) =>
      Effect.forEach(inboxIds, (id) =>
        decodeInbox(id).pipe(Effect.mapError(() => new InvalidInput({ reason: `not an inbox id: ${String(id)}` }))))

    /** Every inbox must exist and have a key package for each of its current installations. */
    const checkAddable = (inboxIds: ReadonlyArray<InboxId>) =>
      Effect.gen(function*() {
        if (inboxIds.length === 0) return
        const states = yield* identity.refreshMany(inboxIds)
        const installationsOf = new Map<InboxId, ReadonlyArray<InstallationId>>()
        for (const inboxId of inboxIds) {
          const inbox = states.get(inboxId)
          if (inbox === undefined) return yield* new InboxNotFound({ inboxId })
          installationsOf.set(inboxId, currentInstallations(inbox))
        }
        const all = [...installationsOf.values()].flat()
        const fetched = all.length === 0 ? [] : yield* fetchKeyPackagesInChunks(ds, all)
        const missing = new Set<InstallationId>()
        for (const [inboxId, installations] of installationsOf) {
          for (const installationId of installations) {
            const keyPackage = fetched.find((f) => f.installationId === installationId)?.keyPackage
            const problem = keyPackage === undefined
              ? "no key package"
              : yield* LeafAuthentication.fetchedKeyPackageProblem(crypto, identity, { installationId, inboxId }, keyPackage)
            if (problem !== undefined) missing.add(installationId)
          }
        }
        for (const [inboxId, installations] of installationsOf) {
          const lacking = installations.filter((i) => missing.has(i))
          if (installations.length === 0 || lacking.length > 0) {
            return yield* new KeyPackageUnavailable({ inboxId, installationIds: lacking })
          }
        }
      })

    const checkNewMembers = (inboxIds: ReadonlyArray<InboxId>, present: ReadonlySet<InboxId>) =>
      Effect.gen(function*() {
        if (inboxIds.includes(self)) return yield* new InvalidInput({ reason: "cannot add yourself" })
        const seen = new Set<string>()
        for (const id of inboxIds) {
          if (seen.has(id)) return yield* new InvalidInput({ reason: `inbox ${id} is listed twice` })
          if (present.has(id)) return yield* new InvalidInput({ reason: `inbox ${id} is already a member` })
          seen.add(id)
        }
        yield* checkAddable(inboxIds)
      })

    // ---- intents ----

    const queueIntent = (groupId: GroupId, data: IntentData) =>
      Clock.currentTimeNanos.pipe(Effect.flatMap((now) => queueIntentIn(env, groupId, data, now)))

    /** The settings in the group's context at the epoch held (defaults if they do not decode). */
    const settingsOf = (group: StoredGroup) =>
      env.loadMetadata(group).pipe(
        Effect.map((metadata) => Option.getOrElse(decodeSettings(metadata), () => GroupMetadata.none))
      )

    /** Below the group's minimum protocol version this installation reads and syncs, but writes nothing. */
    const checkNotPaused = (group: StoredGroup) =>
      Effect.gen(function*() {
        const settings = yield* settingsOf(group)
        const current = engineOptions.protocolVersion
        if (isPaused(settings, current)) {
          return yield* new ProtocolVersionTooOld({ required: settings.minProtocolVersion, current })
        }
      })

    /** Waits for an intent; a governance refusal it ended with comes back as its typed error. */
    const resolveTyped = (groupId: GroupId, intentId: number) =>
      publisher.resolve(groupId, intentId).pipe(
        Effect.catchTag("IntentFailed", (failed) =>
          Option.match(decodeGovernanceError(failed.cause), {
            onNone: (): Effect.Effect<never, IntentFailed | GovernanceError> => Effect.fail(failed),
            onSome: (refusal) => Effect.fail(refusal)
          }))
      )

    const groupMembers = (group: StoredGroup) =>
      env.loadState(group).pipe(Effect.map((state) => GroupSync.membersByInbox(crypto.view(state))))

    /**
     * Stores the message as unpublished and queues its intent, in one transaction. `writtenAhead`
     * (for `send`): if nothing is queued ahead, the intent is stored already written ahead.
     */
    const queueMessage = (
      group: StoredGroup,
      text: string,
      extras: ConversationMessaging.MessageExtras = {},
      options: { readonly writtenAhead?: boolean } = {}
    ) =>
      Effect.gen(function*() {
        yield* checkNotPaused(group)
        if (new TextEncoder().encode(text).length > MAX_TEXT_BYTES) {
          return yield* new InvalidInput({ reason: `message text is over ${MAX_TEXT_BYTES} bytes` })
        }
        // Answering a DM allows it (unless a decision was made).
        if (group.dmId !== null) yield* consent.setIfUnset(group.dmId, "allowed")
        const nonce = toHex(randomBytes(16))
        const messageId = messageIdOf(group.id, identity.installationId, nonce)
        const now = yield* Clock.currentTimeNanos
        const row = makeStoredMessage({
          id: messageId,
          groupId: group.id,
          conversationId: group.dmId ?? (group.id as unknown as ConversationId),
          senderInboxId: self,
          senderInstallationId: identity.installationId,
          sentAtNs: now,
          sequenceId: null,
          kind: "text",
          content: text,
          membershipChange: null,
          deliveryStatus: "unpublished",
          insertedAtNs: now,
          groupContext: extras.groupContext ?? null,
          contentType: extras.content?.type ?? null,
          contentBytes: extras.content?.bytes ?? null
        })
        const data = makeSendMessageData({ messageId, nonce, text, ...extras })
        // Stored `unpublished`, it moves the group up the list as it is inserted (a trigger: one statement).
        const storeMessage = Effect.asVoid(storage.messages.insert(row))
        const writtenAhead = options.writtenAhead === true
          ? yield* publisher.queueWrittenAhead(group.id, data, now, storeMessage)
          : undefined
        const intentId = writtenAhead?.intentId ??
          (yield* storage.transaction(Effect.zipRight(storeMessage, queueIntent(group.id, data))))
        yield* PubSub.publish(stored, row)
        return { messageId, intentId, known: writtenAhead?.known }
      })

    const toMessage = (row: StoredMessage) =>
      makeMessage({
        id: row.id,
        conversationId: row.conversationId,
        groupId: row.groupId,
        senderInboxId: row.senderInboxId,
        senderInstallationId: row.senderInstallationId,
        sentAtNs: row.sentAtNs,
        kind: row.kind,
        text: row.content,
        deliveryStatus: row.deliveryStatus,
        groupContext: row.groupContext,
        content: row.contentType === null ? null : { type: row.contentType, bytes: row.contentBytes ?? new Uint8Array() },
        deleted: row.deleted
      })

    const summarize = (outcome: GroupSync.PageOutcome | undefined, extra: Partial<SyncSummary> = {}) =>
      SyncSummary.make({
        received: outcome?.received ?? 0,
        messages: outcome?.messages ?? 0,
        commits: outcome?.commits ?? 0,
        skipped: outcome?.skipped ?? 0,
        skippedBy: outcome?.skippedBy ?? {},
        published: extra.published ?? 0,
        joined: extra.joined ?? 0
      })

    const syncGroup = (groupId: GroupId) =>
      publisher.round(groupId).pipe(
        Effect.map(({ after, before, published }) =>
          SyncSummary.combine(summarize(before, { published }), summarize(after))
        ),
        Effect.tap(wakeSweeper)
      )

    // ---- conversations ----

    /** The MLS groups behind a conversation: one for a group, possibly several for a DM, most recent first. */
    const groupsOf = (id: ConversationId, kind: "group" | "dm") =>
      kind === "dm"
        ? storage.groups.byDmId(id)
        : storage.groups.get(id as unknown as GroupId).pipe(Effect.map(Option.toArray))

    /** The group the next send uses: the most recently used one this installation is active in. */
    const primaryOf = (id: ConversationId, kind: "group" | "dm") =>
      Effect.gen(function*() {
        const groups = yield* groupsOf(id, kind)
        const primary = groups.find((g) => g.membershipState !== "inactive") ?? groups[0]
        if (primary === undefined) return yield* new ConversationNotFound({ conversationId: id })
        return primary
      })

    const activePrimary = (id: ConversationId, kind: "group" | "dm") =>
      primaryOf(id, kind).pipe(
        Effect.filterOrFail((g) => g.membershipState !== "inactive", (g) => new GroupInactive({ groupId: g.id }))
      )

    const messagingOf = ConversationMessaging.make<ActionError>({
      ctx: env,
      primaryOf,
      groupMembers,
      settingsOf,
      checkNotPaused,
      queueMessage,
      queueIntent,
      resolve: (groupId, intentId) => publisher.resolve(groupId, intentId).pipe(Effect.tap(wakeSweeper)),
      // A deletion ends refused only with PermissionDenied or ProtocolVersionTooOld, never a metadata conflict.
      resolveTyped: (groupId, intentId) => resolveTyped(groupId, intentId).pipe(Effect.catchTag("MetadataConflict", Effect.die)),
      findOrCreateDm: (peer) => findOrCreateDm(peer),
      toMessage
    })

    const handle = (id: ConversationId, kind: "group" | "dm"): Conversation => {
      const traced = { attributes: { conversationId: id } }
      /** For the operations that are effects rather than functions (`Effect.fn` needs a function). */
      const span = (name: string) => <A, E, R>(effect: Effect.Effect<A, E, R>) =>
        effect.pipe(Effect.annotateLogs({ conversationId: id }), Effect.withSpan(`Conversation.${name}`, traced))
      const annotated = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.annotateLogs(effect, { conversationId: id })

      const changeMembers = <E>(
        name: string,
        check: (ids: ReadonlyArray<InboxId>, present: ReadonlySet<InboxId>, groupId: GroupId) => Effect.Effect<void, E>,
        data: (ids: ReadonlyArray<InboxId>) => IntentData
      ) =>
        Effect.fn(`Conversation.${name}`, traced)(function*(inboxIds: ReadonlyArray<InboxId>) {
          if (kind === "dm") return yield* new InvalidInput({ reason: "a DM's membership cannot change" })
          const ids = yield* validInboxes(inboxIds)
          if (ids.length === 0) return yield* new InvalidInput({ reason: "the member list is empty" })
          const group = yield* activePrimary(id, kind)
          if (group.membershipState === "pendingRemove") {
            // An inbox on its way out does not shape the group it leaves (and members it added
            // could not read its request; GroupSync has it repeat the request for them).
            return yield* new InvalidInput({ reason: "this inbox has asked to leave the group: it can no longer change its members" })
          }
          yield* checkNotPaused(group)
          const present = new Set((yield* groupMembers(group)).keys())
          yield* check(ids, present, group.id)
          // Fail fast on the policy; the publisher checks again at the epoch the commit is built for.
          const change = name === "addMembers" ? { add: ids } : { remove: ids }
          const verdict = membershipVerdict({ settings: yield* settingsOf(group), committer: self, members: [...present], ...change })
          if (Either.isLeft(verdict)) return yield* verdict.left
          const intentId = yield* queueIntent(group.id, data(ids))
          yield* resolveTyped(group.id, intentId)
        }, annotated)

      /** Queues a settings change after checking it at the epoch held, and waits for it. */
      const changeSettings = (name: string, data: GovernanceIntent) =>
        Effect.gen(function*() {
          if (kind === "dm") return yield* new InvalidInput({ reason: "a DM has no group settings" })
          const group = yield* activePrimary(id, kind)
          yield* checkNotPaused(group)
          const members = [...(yield* groupMembers(group)).keys()]
          const current = yield* settingsOf(group)
          const next = yield* Effect.try({
            try: () => nextSettings(current, data, self, members),
            catch: (e) => new InvalidInput({ reason: `group settings: ${e instanceof Error ? e.message : String(e)}` })
          })
          if (Either.isLeft(next)) return yield* next.left
          if (next.right === undefined) return
          const intentId = yield* queueIntent(group.id, data)
          yield* resolveTyped(group.id, intentId)
        }).pipe(span(name))

      const settingsRead = <A>(read: (settings: GroupMetadata) => A, name: string) =>
        (kind === "dm" ? Effect.succeed(GroupMetadata.none) : primaryOf(id, kind).pipe(Effect.flatMap(settingsOf))).pipe(
          Effect.map(read),
          span(name)
        )

      const forEachGroup = <A, E>(f: (group: StoredGroup) => Effect.Effect<A, E>) =>
        groupsOf(id, kind).pipe(Effect.flatMap((groups) => Effect.forEach(groups, f)))

      return {
        id,
        kind,
        ...messagingOf(id, kind),
        send: Effect.fn("Conversation.send", traced)(function*(text: string) {
          const group = yield* activePrimary(id, kind)
          const { intentId, known, messageId } = yield* queueMessage(group, text, {}, { writtenAhead: true })
          yield* publisher.resolve(group.id, intentId, known)
          yield* wakeSweeper
          return messageId
        }, annotated),
        sendOptimistic: Effect.fn("Conversation.sendOptimistic", traced)(function*(text: string) {
          const queued = yield* queueMessage(yield* activePrimary(id, kind), text)
          return queued.messageId
        }, annotated),
        publishPending: forEachGroup((group) =>
          Effect.gen(function*() {
            let ids = yield* storage.intents.idsByGroup(group.id, ["ToPublish", "Published", "Committed"])
            while (ids.length > 0) {
              yield* publisher.resolve(group.id, ids[0]!)
              // One round usually settles every queued message: read their states back in one go
              // and go on from the first one still open (an unreadable row too: resolving it says so).
              const rest = ids.slice(1)
              const now = yield* storage.intents.statesOf(rest)
              const open = rest.findIndex((id) => now.get(id) !== "Processed")
              ids = open < 0 ? [] : rest.slice(open)
            }
          })
        ).pipe(Effect.asVoid, Effect.tap(wakeSweeper), span("publishPending")),
        sync: forEachGroup((group) =>
          group.membershipState === "inactive" ? Effect.succeed(SyncSummary.empty) : syncGroup(group.id)
        ).pipe(Effect.map((all) => all.reduce(SyncSummary.combine, SyncSummary.empty)), span("sync")),
        messages: Effect.fn("Conversation.messages", traced)(function*(query: MessageQuery = {}) {
          if (query.limit !== undefined && (!Number.isInteger(query.limit) || query.limit < 1)) {
            return yield* new InvalidInput({ reason: "limit must be a positive integer" })
          }
          const rows = yield* storage.messages.byConversation(id, query)
          return rows.map(toMessage)
        }, annotated),
        members: Effect.gen(function*() {
          // The roster kept for the stored state: listing members decodes no state.
          const roster = yield* env.loadRoster(yield* primaryOf(id, kind))
          const byInbox = new Map<InboxId, Array<InstallationId>>()
          for (const leaf of roster.members) byInbox.set(leaf.inboxId, [...(byInbox.get(leaf.inboxId) ?? []), leaf.installationId])
          return [...byInbox.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([inboxId, installationIds]) =>
            Member.make({ inboxId, installationIds: installationIds.sort() })
          )
        }).pipe(span("members")),
        addMembers: changeMembers("addMembers", checkNewMembers, (ids) => AddMembersData.make({ inboxIds: ids })),
        removeMembers: changeMembers("removeMembers", (ids, present, groupId) =>
          Effect.gen(function*() {
            if (ids.includes(self)) return yield* new InvalidInput({ reason: "to remove yourself, leave the group" })
            const absent = ids.find((i) => !present.has(i))
            if (absent !== undefined) return yield* new NotAMember({ groupId, inboxId: absent })
          }), (ids) => RemoveMembersData.make({ inboxIds: ids })),
        updateKeys: Effect.gen(function*() {
          const group = yield* activePrimary(id, kind)
          const intentId = yield* queueIntent(group.id, KeyUpdateData.make({}))
          yield* publisher.resolve(group.id, intentId)
        }).pipe(span("updateKeys")),
        leave: Effect.gen(function*() {
          if (kind === "dm") return yield* new InvalidInput({ reason: "a DM cannot be left" })
          const group = yield* primaryOf(id, kind)
          if (group.membershipState === "inactive") return yield* new NotAMember({ groupId: group.id, inboxId: self })
          const members = yield* groupMembers(group)
          if (members.size < 2) return yield* new InvalidInput({ reason: "you are the only member; nobody would remove you" })
          // Every receiver refuses the removal of the last super admin: name another one first.
          if (isLastSuperAdmin(yield* settingsOf(group), [...members.keys()], self)) {
            return yield* new PermissionDenied({ action: "leave", required: "another super admin (setRole first)" })
          }
          if (group.membershipState === "pendingRemove") {
            // Already asked (here or on another of our devices): just make sure it is out.
            const pending = yield* storage.intents.byGroup(group.id, ["ToPublish", "Published"])
            for (const intent of pending) yield* publisher.resolve(group.id, intent.id)
            return
          }
          // Pending-remove from now on, and the request queued, in one transaction.
          const intentId = yield* storage.transaction(Effect.gen(function*() {
            yield* storage.groups.setMembership(group.id, "pendingRemove")
            return yield* queueIntent(group.id, newLeaveRequest())
          }))
          yield* publisher.resolve(group.id, intentId)
        }).pipe(span("leave")),
        state: primaryOf(id, kind).pipe(Effect.map((g) => g.membershipState), span("state")),
        updateMetadata: (patch, options = {}) =>
          changeSettings(
            "updateMetadata",
            UpdateMetadataData.make({
              patch: metadataPatchOf(patch),
              ...(options.ifMatch === undefined ? {} : { ifMatch: metadataPatchOf(options.ifMatch) })
            })
          ),
        roles: settingsRead((s) => ({ admins: s.admins, superAdmins: s.superAdmins }), "roles"),
        setRole: (inboxId, role) =>
          Effect.gen(function*() {
            const [valid] = yield* validInboxes([inboxId])
            const group = yield* activePrimary(id, kind)
            if (!(yield* groupMembers(group)).has(valid!)) return yield* new NotAMember({ groupId: group.id, inboxId: valid! })
            yield* changeSettings("setRole", SetRoleData.make({ inboxId: valid!, role }))
          }),
        permissions: settingsRead((s) => s.policies, "permissions"),
        updatePermissions: (patch) =>
          Schema.decodeUnknown(UpdatePermissionsData)({ _tag: "UpdatePermissions", patch }).pipe(
            Effect.mapError((e) => new InvalidInput({ reason: `permissions: ${e.message}` })),
            Effect.flatMap((data) => changeSettings("updatePermissions", data))
          ),
        minProtocolVersion: settingsRead((s) => s.minProtocolVersion, "minProtocolVersion"),
        setMinProtocolVersion: (version) =>
          Schema.decodeUnknown(SetMinProtocolVersionData)({ _tag: "SetMinProtocolVersion", version }).pipe(
            Effect.mapError((e) => new InvalidInput({ reason: `minimum protocol version: ${e.message}` })),
            Effect.flatMap((data) => changeSettings("setMinProtocolVersion", data))
          ),
        metadata: kind === "dm"
          ? Effect.succeed(GroupMetadata.none)
          : primaryOf(id, kind).pipe(Effect.flatMap(settingsOf), span("metadata")),
        debugInfo: Effect.gen(function*() {
          const groups = yield* groupsOf(id, kind)
          const primary = yield* primaryOf(id, kind)
          const view = crypto.view(yield* env.loadState(primary))
          return {
            groupIds: [primary.id, ...groups.filter((g) => g.id !== primary.id).map((g) => g.id)],
            epoch: view.epoch,
            epochAuthenticator: view.epochAuthenticator,
            maybeForked: groups.some((g) => g.maybeForked)
          }
        }).pipe(span("debugInfo"))
      }
    }

    /** A handle holds nothing but its id and kind, and costs spans and traced functions to build: one each. */
    const handles = new Map<string, Conversation>()
    const handleOf = (group: Pick<StoredGroup, "id" | "dmId" | "kind">) => {
      const id = group.dmId ?? (group.id as unknown as ConversationId)
      const key = `${group.kind} ${id}`
      const known = handles.get(key)
      if (known !== undefined) return known
      const made = handle(id, group.kind)
      handles.set(key, made)
      return made
    }

    /** Creates an MLS group with this installation as its only member, then adds `members`. */
    const newGroup = (
      members: ReadonlyArray<InboxId>,
      meta: { readonly metadata: GroupMetadata } | { readonly dmId: ConversationId }
    ) =>
      Effect.gen(function*() {
        const groupId = toHex(randomBytes(16)) as GroupId
        const keyPackage = yield* crypto.generateKeyPackage(
          { inboxId: self, installationId: identity.installationId },
          identity.signatureKeys,
          { protocolVersion: engineOptions.protocolVersion }
        )
        const metadata = "metadata" in meta ? meta.metadata : GroupMetadata.none
        const dmId = "dmId" in meta ? meta.dmId : undefined
        // In the group context, so every member reads the same, as the creator signed it. A DM has none.
        const state = yield* crypto.createGroup(groupId, keyPackage, dmId === undefined ? encodeSettings(metadata) : undefined)
        const now = yield* Clock.currentTimeNanos
        const row = StoredGroup.make({
          id: groupId,
          kind: dmId === undefined ? "group" : "dm",
          dmId: dmId ?? null,
          membershipState: "active",
          epoch: crypto.view(state).epoch,
          mlsState: crypto.serialize(state),
          maybeForked: false,
          forkDetails: null,
          quarantine: null,
          name: metadata.name,
          description: metadata.description,
          addedByInboxId: self,
          createdAtNs: now,
          lastMessageNs: now
        })
        // The add intent is queued with the group, so a crash cannot leave a group without its members.
        const intentId = yield* storage.transaction(Effect.gen(function*() {
          yield* storage.groups.insert(row)
          return yield* queueIntent(groupId, AddMembersData.make({ inboxIds: members }))
        }))
        yield* publisher.resolve(groupId, intentId)
        return handleOf(row)
      })

    const history = HistorySync.make(env, {
      publisher,
      createOwnDevicesGroup: newGroup([], {
        metadata: new GroupMetadata({ name: OWN_DEVICES_GROUP_NAME, description: null, superAdmins: [self] })
      }).pipe(Effect.map((c) => c.id as unknown as GroupId))
    }, options)

    const createGroup = Effect.fn("Client.createGroup")(function*(
      members: ReadonlyArray<InboxId>,
      groupOptions: CreateGroupOptions = {}
    ) {
      const ids = yield* validInboxes(members)
      const permissions = groupOptions.permissions ?? "everyone"
      // The creator is the group's first super admin.
      const metadata = yield* Schema.decodeUnknown(GroupMetadata)({
        name: groupOptions.name ?? null,
        description: groupOptions.description ?? null,
        imageUrl: groupOptions.imageUrl ?? null,
        appData: groupOptions.appData ?? null,
        superAdmins: [self],
        policies: Schema.encodeSync(PermissionPolicies)(typeof permissions === "string" ? presets[permissions] : permissions)
      }).pipe(Effect.mapError((e) => new InvalidInput({ reason: `group name or description (or image URL, app data, permissions): ${e.message}` })))
      if (metadata.name === OWN_DEVICES_GROUP_NAME) return yield* new InvalidInput({ reason: "that group name is reserved" })
      yield* checkNewMembers(ids, new Set())
      const created = yield* newGroup(ids, { metadata })
      yield* consent.setIfUnset(created.id, "allowed")
      return created
    })

    const findOrCreateDm = Effect.fn("Client.findOrCreateDm")(function*(peer: InboxId) {
      const [valid] = yield* validInboxes([peer])
      if (valid === self) return yield* new InvalidInput({ reason: "a DM needs another inbox than your own" })
      const id = dmId(self, valid!)
      const existing = yield* storage.groups.byDmId(id)
      const dm = existing.some((g) => g.membershipState !== "inactive")
        ? handle(id, "dm")
        : yield* checkAddable([valid!]).pipe(Effect.zipRight(newGroup([valid!], { dmId: id })))
      // Starting (or opening) a DM allows it, unless a decision was made.
      yield* consent.setIfUnset(id, "allowed")
      return dm
    })

    const conversation = Effect.fn("Client.conversation")(function*(id: ConversationId) {
      const valid = yield* Schema.decodeUnknown(ConversationId)(id).pipe(
        Effect.mapError(() => new InvalidInput({ reason: `not a conversation id: ${String(id)}` }))
      )
      const kind = valid.startsWith("dm:") ? "dm" : "group"
      const rows = yield* groupsOf(valid, kind)
      if (rows[0] === undefined || rows[0].name === OWN_DEVICES_GROUP_NAME) {
        return yield* new ConversationNotFound({ conversationId: valid })
      }
      // The id of one of a DM's groups opens the DM: its membership must not change.
      return handleOf(rows[0])
    })

    const conversations = Effect.fn("Client.conversations")(function*(
      query: {
        readonly kind?: "group" | "dm"
        readonly includeInactive?: boolean
        readonly consent?: ReadonlyArray<ConsentState>
      } = {}
    ) {
      const rows = yield* storage.groups.summaries({ includeInactive: query.includeInactive ?? false })
      const recordOf = yield* consent.snapshot
      const shown = new Set(query.consent ?? DEFAULT_VISIBLE)
      const seen = new Set<string>()
      const out: Array<Conversation> = []
      for (const row of rows) {
        if (query.kind !== undefined && row.kind !== query.kind) continue
        if (row.name === OWN_DEVICES_GROUP_NAME) continue
        const key = row.dmId ?? row.id
        if (!shown.has(consent.stateIn(recordOf, { conversationId: key as ConversationId }))) continue
        if (seen.has(key)) continue
        seen.add(key)
        out.push(handleOf(row))
      }
      return out
    })

    /** Whether our own inbox's log no longer lists this installation (it was revoked). */
    const revokedItself = identity.inboxState(identity.inboxId).pipe(
      Effect.map((state) => !HashMap.has(state.installations, identity.installationId)),
      Effect.orElseSucceed(() => false)
    )

    const syncAll = Effect.gen(function*() {
      // A revoked installation is refused its welcomes, but may still read its groups' topics:
      // it syncs them, reads its removal and goes inactive there.
      let refused = false
      const joined = yield* welcomes.syncWelcomes.pipe(
        Effect.catchIf(
          (e) => e._tag === "DeliveryError" && e.reason === "Unauthenticated",
          (e) =>
            Effect.logWarning("the delivery service refuses this installation its welcomes", e.message).pipe(
              Effect.tap(() => {
                refused = true
              }),
              Effect.as({ joined: [], skipped: 0 })
            )
        )
      )
      yield* consent.onJoined(joined.joined).pipe(
        Effect.catchAll((e) => Effect.logWarning("consent of joined groups not settled", e.message))
      )
      const active = yield* storage.groups.summaries({ includeInactive: false })
      // News, and members' new or revoked devices as UpdateInstallations intents (pending below),
      // in one batched round trip; the periodic check behind it is a safety net.
      const news = yield* deviceSync.newsAndDevices(active)
      yield* publisher.checkInstallationsMany(active.map((g) => g.id))
      const pending = new Set((yield* storage.intents.byState(["ToPublish", "Published", "Committed"])).map((i) => i.groupId))
      let summary = SyncSummary.make({
        ...SyncSummary.empty,
        joined: joined.joined.length,
        skipped: joined.skipped,
        skippedBy: joined.skipped === 0 ? {} : { badWelcome: joined.skipped }
      })
      for (const group of active) {
        if (!news.has(group.id) && !pending.has(group.id)) continue
        // Revoked: the service takes no commit or message from us any more; read on, then go inactive below.
        const synced = yield* syncGroup(group.id).pipe(
          Effect.catchIf(
            (e) => refused && e._tag === "DeliveryError" && e.reason === "Unauthenticated",
            (e) => Effect.logWarning("the delivery service refuses this installation's publishing", e.message).pipe(
              Effect.as(SyncSummary.empty)
            )
          )
        )
        summary = SyncSummary.combine(summary, synced)
      }
      // Revoked (the identity log says so, not only the service): this installation is done.
      // What was there to read has been read above; it takes part in no group any more.
      if (refused && (yield* revokedItself)) {
        for (const group of active) {
          yield* storage.transaction(Effect.gen(function*() {
            yield* storage.groups.setMembership(group.id, "inactive")
            yield* failPendingIntents(env, group.id)
          }))
        }
      }
      // Removed after one of our commits landed: its welcomes are still owed to those it added.
      const activeIds = new Set(active.map((g) => g.id))
      const owed = new Set((yield* storage.intents.byState(["Committed"])).map((i) => i.groupId))
      for (const groupId of owed) {
        if (!activeIds.has(groupId)) yield* env.withGroupLock(groupId)(sync.postCommit(groupId))
      }
      const historyImported = yield* history.step
      return SyncSummary.combine(summary, SyncSummary.make({ ...SyncSummary.empty, historyImported }))
    }).pipe(Effect.withSpan("Client.syncAll"))

    /**
     * Keeps the local store current from the delivery service's pushes: every group topic and
     * the welcome topic, resubscribing (from the stored cursors) whenever a group is joined.
     */
    const followNetwork = Effect.gen(function*() {
      yield* syncAll
      const active = yield* storage.groups.list({ includeInactive: false })
      const filters = yield* Effect.forEach(active, (g) =>
        storage.cursors.get(groupTopic(g.id)).pipe(Effect.map((afterSequenceId) => ({ groupId: g.id, afterSequenceId }))))
      const welcomeCursor = yield* storage.cursors.get(welcomeTopic(identity.installationId))
      const groupEvents = filters.length === 0
        ? Stream.never
        : ds.subscribeGroupMessages(filters).pipe(Stream.map((e) => ({ _tag: "group" as const, groupId: e.groupId })))
      const welcomeEvents = ds.subscribeWelcomeMessages({
        installationId: identity.installationId,
        afterSequenceId: welcomeCursor
      }).pipe(Stream.map(() => ({ _tag: "welcome" as const })))
      yield* Stream.merge(groupEvents, welcomeEvents).pipe(
        Stream.mapEffect((event) =>
          event._tag === "group"
            ? syncGroup(event.groupId).pipe(Effect.as(false))
            : welcomes.syncWelcomes.pipe(
              Effect.tap((r) => consent.onJoined(r.joined).pipe(Effect.catchAll(() => Effect.void))),
              Effect.map((r) => r.joined.length > 0)
            )
        ),
        Stream.takeUntil((joinedNewGroup) => joinedNewGroup),
        Stream.runDrain
      )
    }).pipe(
      Effect.tapError((e) => Effect.logWarning("message stream failed; resubscribing", e.message)),
      Effect.retry(Schedule.spaced("100 millis")),
      Effect.forever
    )

    const streamMessages: Stream.Stream<Message, SyncError> = Stream.unwrapScoped(
      Effect.gen(function*() {
        // Subscribe before following the network, so nothing stored in between is missed.
        const subscription = yield* PubSub.subscribe(stored)
        yield* Effect.forkScoped(followNetwork)
        return Stream.fromQueue(subscription).pipe(Stream.filterEffect(streamed), Stream.map(toMessage))
      })
    ).pipe(Stream.withSpan("Client.streamMessages"))

    /** Whether a stored message is streamed: not an own-devices payload, not in a denied conversation. */
    const streamed = (row: StoredMessage) =>
      Effect.gen(function*() {
        const group = yield* storage.groups.get(row.groupId)
        if (Option.isSome(group) && group.value.name === OWN_DEVICES_GROUP_NAME) return false
        return (yield* consent.stateOf({ conversationId: row.conversationId })) !== "denied"
      }).pipe(Effect.orElseSucceed(() => true))

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
      installationId: identity.installationId,
      createGroup,
      findOrCreateDm,
      conversation,
      conversations,
      syncAll,
      streamMessages,
      historySync: history.status,
      setConsent,
      consentOf,
      ...Devices.make(identity)
    })
  })

