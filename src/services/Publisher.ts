/**
 * Publishing intents. Per group, under that group's lock: derive each pending intent's
 * payload at the current epoch, write ahead (intent `Published` with the payload, its hash,
 * the epoch, the staged state and the welcomes), then send. A payload whose send failed or
 * whose outcome is unknown is re-sent byte for byte while its epoch is current, and
 * re-derived only once the epoch has moved on: never re-encrypted in the same epoch.
 *
 * `resolve` is the typed program behind every user action: sync, publish, sync, post-commit,
 * until the intent is Processed. A lost epoch race is an `EpochConflict` in its error channel,
 * retried under the conflict schedule; transport failures retry under their own schedule.
 */
import { Clock, Data, Duration, Effect, Either, HashSet, Metric, Option, Schema } from "effect"
import { sha256Hex, utf8 } from "../domain/Bytes.ts"
import { type ApplicationContent, ApplicationContentJson } from "../domain/Content.ts"
import {
  CryptoError,
  DeliveryError,
  encodeGovernanceError,
  EpochConflict,
  InvalidInput,
  InboxNotFound,
  IntentFailed,
  KeyPackageUnavailable,
  ProtocolVersionTooOld,
  type StorageError
} from "../domain/Errors.ts"
import { currentInstallations, type InboxState } from "../domain/IdentityLog.ts"
import type { GroupId, InboxId, InstallationId } from "../domain/Ids.ts"
import { isPaused } from "../domain/Governance.ts"
import {
  decodeSettings,
  encodeSettings,
  type GovernanceIntent,
  isGovernanceIntent,
  membershipVerdict,
  nextSettings
} from "../domain/GroupSettings.ts"
import { GroupMetadata } from "../domain/Model.ts"
import {
  isCommitKind,
  PostCommitData,
  type RemoveMembersData,
  type SendMessageData,
  UpdateInstallationsData
} from "../domain/Intent.ts"
import type { IntentData } from "../domain/Intent.ts"
import { validatedMaker } from "../domain/SchemaClass.ts"
import type { StoredIntent } from "../domain/Stored.ts"
import { type GroupMessageEnvelope, GroupMessageInput } from "../domain/Wire.ts"
import { fetchKeyPackagesInChunks } from "./DeliveryService.ts"
import { type EngineContext, loadGroupRow } from "./EngineContext.ts"
import * as EngineMetrics from "./EngineMetrics.ts"
import { failIntent as failIntentIn, failPendingIntents } from "./IntentQueue.ts"
import type { Roster } from "./GroupStateCache.ts"
import type * as GroupSync from "./GroupSync.ts"
import * as LeafAuthentication from "./LeafAuthentication.ts"
import type { MlsGroupState } from "./MlsCrypto.ts"

/** An installation to add, and the inbox it must belong to. */
interface Wanted {
  readonly installationId: InstallationId
  readonly inboxId: InboxId
}

/** Internal: the intent is neither done nor failed yet (waiting behind a commit, or not yet seen). */
class IntentPending extends Data.TaggedError("IntentPending")<{ readonly intentId: number; readonly state: string }> {}

/** A payload derived from an intent at the current epoch, or nothing to do. */
type Derived =
  | { readonly _tag: "NoOp" }
  | {
    readonly _tag: "Payload"
    readonly payload: Uint8Array
    readonly state: MlsGroupState | undefined
    readonly staged: MlsGroupState | undefined
    readonly postCommit: PostCommitData | undefined
  }

/**
 * An intent as its writer just stored it: the first round of `resolve` takes it as read instead
 * of reading it back (later rounds read it).
 */
export interface KnownIntent {
  readonly conflicts: number
  readonly publishedEpoch: bigint | null
}

/** Every published payload goes out as one: its validator built once. */
const makeGroupMessageInput = validatedMaker(GroupMessageInput)

export const make = (ctx: EngineContext, sync: ReturnType<typeof GroupSync.make>) => {
  const { crypto, ds, identity, storage } = ctx

  const failIntent = (intent: StoredIntent, cause: string) => storage.transaction(failIntentIn(ctx, intent, cause))

  /**
   * The installation diff of some inboxes against their identity logs: current installations
   * missing from the group, and leaves whose installation is no longer current (revoked).
   */
  const installationDiff = (state: MlsGroupState, inboxIds: Iterable<InboxId>) =>
    Effect.flatMap(identity.refreshMany([...inboxIds]), (states) => diffAgainst(crypto.view(state), states))

  /** The same diff against identity states already at hand (the leaves of a view or a roster). */
  const diffAgainst = (view: Pick<Roster, "ownLeafIndex" | "members">, states: ReadonlyMap<InboxId, InboxState | undefined>) =>
    Effect.gen(function*() {
      const present = new Set(view.members.map((m) => m.installationId))
      const add: Array<Wanted> = []
      const remove: Array<InstallationId> = []
      /** Leaves to remove that the states do not list as revoked either: the states may be behind. */
      const unexplained: Array<InstallationId> = []
      for (const [inboxId, inbox] of states) {
        if (inbox === undefined) return yield* new InboxNotFound({ inboxId })
        const current = new Set(currentInstallations(inbox))
        for (const installationId of current) if (!present.has(installationId)) add.push({ installationId, inboxId })
        for (const leaf of view.members) {
          if (leaf.inboxId === inboxId && !current.has(leaf.installationId) && leaf.leafIndex !== view.ownLeafIndex) {
            remove.push(leaf.installationId)
            if (!HashSet.has(inbox.revoked, leaf.installationId)) unexplained.push(leaf.installationId)
          }
        }
      }
      return { add, remove, unexplained }
    })

  /**
   * The key packages of the installations to add, each checked to be the one asked for
   * (`LeafAuthentication.fetchedKeyPackageProblem`): the delivery service is not trusted with them.
   */
  const fetchKeyPackages = (add: ReadonlyArray<Wanted>) =>
    Effect.gen(function*() {
      if (add.length === 0) return []
      const fetched = yield* fetchKeyPackagesInChunks(ds, add.map((w) => w.installationId))
      const packages: Array<Uint8Array> = []
      for (const wanted of add) {
        const keyPackage = fetched.find((f) => f.installationId === wanted.installationId)?.keyPackage
        const problem = keyPackage === undefined
          ? "no key package"
          : yield* LeafAuthentication.fetchedKeyPackageProblem(crypto, identity, wanted, keyPackage)
        if (problem !== undefined) {
          yield* Effect.logWarning(`refusing the key package of ${wanted.installationId}: ${problem}`)
          // No package, or an installation no longer current: the add cannot be done. Any other
          // answer is not the package asked for (a lying or broken service): asked again later,
          // the intent waits rather than fails.
          if (keyPackage === undefined || / is not a current installation /.test(problem)) {
            return yield* new KeyPackageUnavailable({ inboxId: wanted.inboxId, installationIds: [wanted.installationId] })
          }
          return yield* new DeliveryError({
            reason: "InvalidKeyPackage",
            retryable: true,
            detail: `the delivery service answered for ${wanted.installationId} with another key package: ${problem}`
          })
        }
        packages.push(keyPackage!)
      }
      return packages
    })

  /** A commit adding (with welcomes) and removing installations; nothing to do if both are empty. */
  const membershipCommit = (state: MlsGroupState, add: ReadonlyArray<Wanted>, remove: ReadonlyArray<InstallationId>) =>
    Effect.gen(function*() {
      if (add.length === 0 && remove.length === 0) return { _tag: "NoOp" } as Derived
      const packages = yield* fetchKeyPackages(add)
      yield* checkAddedVersions(state, packages)
      const result = yield* crypto.createCommit(state, { add: packages, remove })
      return {
        _tag: "Payload",
        payload: result.commit,
        state: undefined,
        staged: result.staged,
        postCommit: result.welcome === undefined
          ? undefined
          : PostCommitData.make({
            welcome: result.welcome,
            installationIds: add.map((w) => w.installationId),
            keyPackages: packages
          })
      } as Derived
    })

  /** The group's settings at this state's epoch; settings that do not decode stop governance changes. */
  const settingsAt = (state: MlsGroupState) =>
    Option.match(decodeSettings(crypto.view(state).metadata), {
      onNone: () => Effect.fail(new CryptoError({ reason: "Malformed", detail: "the group's settings do not decode" })),
      onSome: Effect.succeed
    })

  const memberInboxes = (state: MlsGroupState) => [...new Set(crypto.view(state).members.map((m) => m.inboxId))]

  /** The committer's own check, the same every receiver runs on the commit (Governance.checkCommit). */
  const checkMembership = (
    state: MlsGroupState,
    change: { readonly add?: ReadonlyArray<InboxId>; readonly remove?: ReadonlyArray<InboxId>; readonly leaving?: ReadonlyArray<InboxId> }
  ) =>
    Effect.gen(function*() {
      const members = memberInboxes(state)
      const verdict = membershipVerdict({
        settings: yield* settingsAt(state),
        committer: identity.inboxId,
        members,
        ...change,
        add: (change.add ?? []).filter((i) => !members.includes(i))
      })
      if (Either.isLeft(verdict)) return yield* verdict.left
    })

  /** A commit that rewrites the group's settings (metadata, roles, policies, minimum version). */
  const deriveSettings = (state: MlsGroupState, data: GovernanceIntent) =>
    Effect.gen(function*() {
      const current = yield* settingsAt(state)
      const next = yield* Effect.try({
        try: () => nextSettings(current, data, identity.inboxId, memberInboxes(state)),
        catch: (e) => new InvalidInput({ reason: `group settings: ${e instanceof Error ? e.message : String(e)}` })
      })
      if (Either.isLeft(next)) return yield* next.left
      if (next.right === undefined) return { _tag: "NoOp" } as Derived
      const result = yield* crypto.createCommit(state, { metadata: encodeSettings(next.right) })
      return { _tag: "Payload", payload: result.commit, state: undefined, staged: result.staged, postCommit: undefined } as Derived
    })

  /** Every installation of each inbox that is not in the group yet, and this inbox's other devices. */
  const deriveAdd = (state: MlsGroupState, inboxIds: ReadonlyArray<InboxId>) =>
    Effect.gen(function*() {
      yield* checkMembership(state, { add: inboxIds })
      const { add } = yield* installationDiff(state, [...inboxIds, identity.inboxId])
      return yield* membershipCommit(state, add, [])
    })

  /** Brings every member inbox's leaves in line with its identity log. */
  const deriveInstallationUpdate = (state: MlsGroupState) =>
    Effect.gen(function*() {
      const inboxes = [...new Set(crypto.view(state).members.map((m) => m.inboxId))]
      // The states a sync just refreshed in its batched query, unless they cannot explain a
      // leaf (behind, or never fetched): then one request for fresh ones.
      const known = yield* identity.knownStates(inboxes)
      const fromKnown = [...known.values()].every((inbox) => inbox !== undefined)
        ? yield* diffAgainst(crypto.view(state), known)
        : undefined
      const { add, remove } = fromKnown !== undefined && fromKnown.unexplained.length === 0
        ? fromKnown
        : yield* installationDiff(state, inboxes)
      // Removals first, on their own: a new leaf may take a removed device's slot, and ts-mls
      // 1.6.4 then cannot show the removed device its removal. The adds follow in the next check.
      return yield* (remove.length > 0 ? membershipCommit(state, [], remove) : membershipCommit(state, add, []))
    })

  /** Removes every installation of the inboxes; for our own inbox (a lone leaver), the others. */
  const deriveRemove = (state: MlsGroupState, data: RemoveMembersData) =>
    Effect.gen(function*() {
      const { inboxIds } = data
      const targets = new Set<string>(inboxIds)
      const view = crypto.view(state)
      const present = inboxIds.filter((i) => i !== identity.inboxId && view.members.some((m) => m.inboxId === i))
      if (present.length > 0) {
        yield* checkMembership(state, { remove: present, leaving: data.forLeaveRequest ? present : [] })
      }
      const leaving = view.members
        .filter((m) => targets.has(m.inboxId) && m.leafIndex !== view.ownLeafIndex)
        .map((m) => m.installationId)
      if (leaving.length === 0) return { _tag: "NoOp" } as Derived
      const result = yield* crypto.createCommit(state, { remove: leaving })
      return { _tag: "Payload", payload: result.commit, state: undefined, staged: result.staged, postCommit: undefined } as Derived
    })

  /** Encrypting advances the sender ratchet: the new state is saved with the write-ahead. */
  const applicationMessage = (state: MlsGroupState, content: ApplicationContent) =>
    crypto.encrypt(state, utf8(Schema.encodeSync(ApplicationContentJson)(content))).pipe(
      Effect.map((encrypted): Derived => ({
        _tag: "Payload",
        payload: encrypted.message,
        state: encrypted.state,
        staged: undefined,
        postCommit: undefined
      }))
    )

  /** Below the group's minimum version this installation reads but writes nothing (leave requests aside). */
  const checkNotPaused = (state: MlsGroupState, data: IntentData) => {
    const writes = data._tag === "SendMessage" || data._tag === "DeleteMessage" || data._tag === "AddMembers" || data._tag === "RemoveMembers" ||
      isGovernanceIntent(data)
    const settings = Option.getOrElse(decodeSettings(crypto.view(state).metadata), () => GroupMetadata.none)
    const current = ctx.options.protocolVersion
    return writes && isPaused(settings, current)
      ? Effect.fail(new ProtocolVersionTooOld({ required: settings.minProtocolVersion, current }))
      : Effect.void
  }

  /** Key packages below the group's minimum version cannot be added (every receiver refuses them too). */
  const checkAddedVersions = (state: MlsGroupState, keyPackages: ReadonlyArray<Uint8Array>) =>
    Effect.gen(function*() {
      const required = Option.getOrElse(decodeSettings(crypto.view(state).metadata), () => GroupMetadata.none)
        .minProtocolVersion
      if (required <= 1) return
      for (const keyPackage of keyPackages) {
        const current = (yield* crypto.keyPackageInfo(keyPackage)).protocolVersion ?? 1
        if (current < required) return yield* new ProtocolVersionTooOld({ required, current })
      }
    })

  const derive = (state: MlsGroupState, data: IntentData) =>
    Effect.gen(function*() {
      yield* checkNotPaused(state, data)
      switch (data._tag) {
        case "SendMessage":
          return yield* applicationMessage(state, {
            _tag: "Text",
            nonce: data.nonce,
            text: data.text,
            ...(data.groupContext === undefined ? {} : { groupContext: data.groupContext }),
            ...(data.content === undefined ? {} : { content: data.content })
          })
        case "DeleteMessage":
          return yield* applicationMessage(state, { _tag: "Delete", nonce: data.nonce, target: data.target })
        case "AddMembers":
          return yield* deriveAdd(state, data.inboxIds)
        case "RemoveMembers":
          return yield* deriveRemove(state, data)
        case "Leave":
          return yield* applicationMessage(state, { _tag: "LeaveRequest", nonce: data.nonce })
        case "UpdateInstallations":
          return yield* deriveInstallationUpdate(state)
        case "UpdateMetadata":
        case "SetRole":
        case "UpdatePermissions":
        case "SetMinProtocolVersion":
          return yield* deriveSettings(state, data)
        case "KeyUpdate": {
          const result = yield* crypto.createCommit(state, {})
          return { _tag: "Payload", payload: result.commit, state: undefined, staged: result.staged, postCommit: undefined } as Derived
        }
      }
    })

  /** Most application messages written ahead in one transaction and sent in one call. */
  const MAX_BATCH = 50

  /**
   * Publishes the group's pending intents in order, stopping after a commit: at most one
   * commit is in flight per group, and what follows it is derived once it has landed.
   * Application messages go in batches: derived one after the other, written ahead in one
   * transaction (their payloads and the group state after the last), then sent in one call.
   * Runs under the group lock.
   */
  const publishPending = Effect.fn("Publisher.publishPending")(function*(groupId: GroupId) {
    const group = yield* loadGroupRow(ctx, groupId)
    const pending = yield* storage.intents.byGroup(groupId, ["Published", "ToPublish"])
    /**
     * Every payload sent, in order, and the service's answers: how the round reads them back. With
     * them, the application messages' intents as stored by the write-ahead, so reading them back
     * asks for none of them again.
     */
    const sent = {
      payloads: [] as Array<Uint8Array>,
      answer: [] as Array<GroupMessageEnvelope>,
      intents: [] as Array<StoredIntent>
    }
    if (pending.length === 0) return sent
    if (group.membershipState === "inactive") {
      yield* storage.transaction(failPendingIntents(ctx, groupId))
      return sent
    }
    let state = yield* ctx.loadState(group)
    /** The row as stored: nothing here changes it but its state, and each state is written ahead. */
    let row = group
    const done = () => ({ ...sent, held: { group: row, state } })
    /** Payloads to send next, in order; those derived in this round still to be written ahead. */
    let batch: Array<Uint8Array> = []
    let writeAhead: Array<Effect.Effect<void, StorageError>> = []
    /** The application messages of `batch` to mark Published: one statement for them all. */
    let marks: Array<{ id: number; payloadHash: string; payload: Uint8Array; publishedEpoch: bigint }> = []
    let stateToSave: MlsGroupState | undefined

    const flush = Effect.gen(function*() {
      if (batch.length === 0) return
      if (marks.length > 0) writeAhead.push(storage.intents.markPublishedMany(marks))
      if (writeAhead.length > 0) {
        yield* ctx.options.crashPoint("publish.beforeWriteAhead")
        const writes = writeAhead
        const saved = stateToSave
        // Write ahead: after this, a crash resends exactly these bytes.
        yield* storage.transaction(Effect.gen(function*() {
          if (saved !== undefined) {
            const stored = { epoch: crypto.view(saved).epoch, mlsState: ctx.encodeState(groupId, saved) }
            yield* storage.groups.saveState(groupId, stored)
            row = { ...row, ...stored }
          }
          for (const write of writes) yield* write
        }))
        yield* ctx.options.crashPoint("publish.afterWriteAheadBeforeSend")
      }
      const payloads = batch
      for (let i = 0; i < payloads.length; i += MAX_BATCH) {
        const chunk = payloads.slice(i, i + MAX_BATCH)
        const answer = yield* ds.sendGroupMessages(chunk.map((payload) => makeGroupMessageInput({ groupId, payload })))
        sent.payloads.push(...chunk)
        sent.answer.push(...answer)
      }
      yield* ctx.options.crashPoint("publish.afterSendBeforeSync")
      batch = []
      writeAhead = []
      marks = []
      stateToSave = undefined
    })

    for (const intent of pending) {
      const commit = isCommitKind(intent.kind)
      // A commit goes alone, after everything before it.
      if (commit) yield* flush
      const epoch = crypto.view(state).epoch
      if (intent.state === "Published") {
        if (intent.publishedEpoch === epoch && intent.payload !== null) {
          batch.push(intent.payload)
          sent.intents.push(intent)
          if (commit) {
            yield* flush
            return done()
          }
          if (batch.length >= MAX_BATCH) yield* flush
          continue
        }
        // Never seen on the topic and its epoch is gone: derive it afresh below.
        yield* storage.intents.resetToPublish(intent.id, { conflict: false })
      }
      const derived = yield* derive(state, intent.data).pipe(
        Effect.catchTags({
          CryptoError: (e) => failIntent(intent, e.message).pipe(Effect.as(undefined)),
          KeyPackageUnavailable: (e) => failIntent(intent, e.message).pipe(Effect.as(undefined)),
          InboxNotFound: (e) => failIntent(intent, e.message).pipe(Effect.as(undefined)),
          InvalidInput: (e) => failIntent(intent, e.message).pipe(Effect.as(undefined)),
          // Stored typed, so the action that queued the intent fails with the same error.
          PermissionDenied: (e) => failIntent(intent, encodeGovernanceError(e)).pipe(Effect.as(undefined)),
          MetadataConflict: (e) => failIntent(intent, encodeGovernanceError(e)).pipe(Effect.as(undefined)),
          ProtocolVersionTooOld: (e) => failIntent(intent, encodeGovernanceError(e)).pipe(Effect.as(undefined))
        })
      )
      if (derived === undefined) continue
      if (derived._tag === "NoOp") {
        yield* storage.intents.markProcessed(intent.id)
        continue
      }
      const payloadHash = sha256Hex(derived.payload)
      if (derived.staged === undefined && derived.postCommit === undefined) {
        marks.push({ id: intent.id, payloadHash, payload: derived.payload, publishedEpoch: epoch })
        // The row as `markPublishedMany` leaves it (it was ToPublish, read under this lock).
        sent.intents.push({
          ...intent,
          state: "Published",
          payloadHash,
          payload: derived.payload,
          publishedEpoch: epoch,
          stagedState: null,
          postCommit: null,
          attempts: intent.attempts + 1
        })
      } else {
        writeAhead.push(storage.intents.markPublished(intent.id, {
          payloadHash,
          payload: derived.payload,
          publishedEpoch: epoch,
          stagedState: derived.staged === undefined ? null : ctx.encodeStaged(groupId, derived.staged),
          postCommit: derived.postCommit ?? null
        }))
      }
      batch.push(derived.payload)
      if (derived.state !== undefined) {
        state = derived.state
        stateToSave = derived.state
      }
      if (commit) {
        yield* flush
        return done()
      }
      if (batch.length >= MAX_BATCH) yield* flush
    }
    yield* flush
    return done()
  })

  /**
   * `send` with nothing queued ahead in the group: the message is derived at once, under the
   * group lock, and stored together with its intent already written ahead (Published, with its
   * payload, hash and epoch) and the state after it: one transaction instead of two (queue, then
   * write-ahead), with the same crash points around it. The next round sends those bytes as it
   * sends any written-ahead payload (re-derived if the epoch has moved on by then). Returns the
   * intent's id and what `resolve` may take as known of it, or `undefined` when something is
   * queued ahead, the group is not active or the message cannot be derived here: then the caller
   * queues it as usual, and the usual publish path deals with it.
   */
  const queueWrittenAhead = Effect.fn("Publisher.queueWrittenAhead")(function*(
    groupId: GroupId,
    data: SendMessageData,
    createdAtNs: bigint,
    storeMessage: Effect.Effect<void, StorageError>
  ) {
    return yield* ctx.withGroupLock(groupId)(Effect.gen(function*() {
      const group = yield* loadGroupRow(ctx, groupId)
      if (group.membershipState !== "active") return undefined
      if ((yield* storage.intents.byGroup(groupId, ["ToPublish", "Published"])).length > 0) return undefined
      const state = yield* ctx.loadState(group)
      const derived = yield* derive(state, data).pipe(Effect.orElseSucceed(() => undefined))
      if (derived?._tag !== "Payload" || derived.state === undefined) return undefined
      const after = derived.state
      const epoch = crypto.view(state).epoch
      yield* ctx.options.crashPoint("publish.beforeWriteAhead")
      const intentId = yield* storage.transaction(Effect.gen(function*() {
        yield* storeMessage
        const id = yield* storage.intents.insertPublished({ groupId, data, createdAtNs }, {
          payloadHash: sha256Hex(derived.payload),
          payload: derived.payload,
          publishedEpoch: epoch
        })
        yield* storage.groups.saveState(groupId, { epoch: crypto.view(after).epoch, mlsState: ctx.encodeState(groupId, after) })
        return id
      }))
      yield* ctx.options.crashPoint("publish.afterWriteAheadBeforeSend")
      const known: KnownIntent = { conflicts: 0, publishedEpoch: epoch }
      return { intentId, known }
    }))
  }, (effect, groupId) => Effect.annotateLogs(effect, { groupId }))

  const lastInstallationCheck = new Map<GroupId, bigint>()

  /**
   * Queues one `UpdateInstallations` intent if the members' leaves differ from `states`
   * (unless one is pending already: it derives from fresh logs when it is published).
   * Whether they differ.
   */
  const queueIfDiffers = (
    groupId: GroupId,
    roster: Roster,
    states: ReadonlyMap<InboxId, InboxState | undefined>,
    options: { readonly onlyRevoked: boolean } = { onlyRevoked: false }
  ) =>
    Effect.gen(function*() {
      const { add, remove, unexplained } = yield* diffAgainst(roster, states)
      // States held locally may be behind: a leaf they do not list is no reason to act on them.
      const removals = options.onlyRevoked ? remove.filter((i) => !unexplained.includes(i)) : remove
      if (add.length === 0 && removals.length === 0) return false
      const pending = yield* storage.intents.byGroup(groupId, ["ToPublish", "Published"])
      if (pending.some((intent) => intent.kind === "UpdateInstallations")) return true
      yield* storage.intents.insert({
        groupId,
        data: UpdateInstallationsData.make({}),
        createdAtNs: yield* Clock.currentTimeNanos
      })
      return true
    })

  /**
   * Immediate join and revocation: the members' leaves against the identity states this
   * installation already holds (just refreshed by a sync's batched query), no request. Run
   * for every active group on every `syncAll`; the periodic `checkInstallations` stays as a
   * safety net for states this installation has not heard of. Under the group lock. Whether
   * the leaves differ from the states (a failed check counts as differing: check again).
   */
  const checkInstallationsKnown = Effect.fn("Publisher.checkInstallationsKnown")(function*(groupId: GroupId) {
    const group = yield* loadGroupRow(ctx, groupId)
    if (group.membershipState !== "active") return false
    const roster = yield* ctx.loadRoster(group)
    const inboxes = new Set(roster.members.map((m) => m.inboxId))
    const states = yield* identity.knownStates([...inboxes])
    // An inbox we hold nothing of is the safety net's business (it asks the network).
    const known = new Map([...states].filter(([, inbox]) => inbox !== undefined))
    if (known.size === 0) return false
    return yield* queueIfDiffers(groupId, roster, known, { onlyRevoked: true })
  }, (effect, groupId) =>
    effect.pipe(
      Effect.catchAll((e) => Effect.logWarning("installation check failed; tried again next time", e.message).pipe(Effect.as(true))),
      Effect.annotateLogs({ groupId })
    ))

  /** Whether the group's periodic check is due: read without the lock, so idle groups cost a map lookup. */
  const checkDue = (groupId: GroupId) =>
    Effect.map(Clock.currentTimeNanos, (now) => {
      const last = lastInstallationCheck.get(groupId)
      const interval = Duration.toNanos(ctx.options.installationCheckInterval).pipe(Option.getOrElse(() => 0n))
      return last === undefined || now - last >= interval
    })

  /**
   * Every so often, compare the members' leaves with their identity logs; if a device was added
   * or revoked, queue one `UpdateInstallations` intent (whoever lands it first wins; the others
   * re-derive to a no-op). A failed check is logged and tried again next time.
   */
  const checkInstallations = Effect.fn("Publisher.checkInstallations")(function*(groupId: GroupId) {
    if (!(yield* checkDue(groupId))) return
    lastInstallationCheck.set(groupId, yield* Clock.currentTimeNanos)
    const group = yield* loadGroupRow(ctx, groupId)
    if (group.membershipState !== "active") return
    const roster = yield* ctx.loadRoster(group)
    const states = yield* identity.refreshMany(roster.members.map((m) => m.inboxId))
    yield* queueIfDiffers(groupId, roster, states)
  }, (effect, groupId) =>
    effect.pipe(
      Effect.catchAll((e) => Effect.logWarning("installation check failed; tried again next time", e.message)),
      Effect.annotateLogs({ groupId })
    ))

  /**
   * The periodic check of many groups (a `syncAll`'s), with one identity request per hundred
   * distinct member inboxes instead of one per group: a client in 1,000 groups of the same
   * people asked the same logs 1,000 times. Each group is then judged under its lock against
   * the fresh states of its own members, exactly as `checkInstallations` judges it. If the
   * shared request fails (one inbox's log does not verify), each group asks on its own, so one
   * bad log holds back only the groups it is in.
   */
  const checkInstallationsMany = Effect.fn("Publisher.checkInstallationsMany")(function*(groupIds: ReadonlyArray<GroupId>) {
    const due = yield* Effect.filter(groupIds, checkDue)
    const inboxes = new Set<InboxId>()
    for (const groupId of due) {
      const roster = yield* loadGroupRow(ctx, groupId).pipe(Effect.flatMap(ctx.loadRoster), Effect.option)
      if (roster._tag === "Some") for (const m of roster.value.members) inboxes.add(m.inboxId)
    }
    const fresh = inboxes.size === 0 ? undefined : yield* identity.refreshMany([...inboxes]).pipe(Effect.option)
    yield* Effect.forEach(due, (groupId) =>
      fresh === undefined || fresh._tag === "None"
        ? ctx.withGroupLock(groupId)(checkInstallations(groupId))
        : ctx.withGroupLock(groupId)(checkWith(groupId, fresh.value)), { discard: true })
  })

  /** `checkInstallations` with the members' states already fetched (one that lacks some asks for itself). */
  const checkWith = (groupId: GroupId, fresh: ReadonlyMap<InboxId, InboxState | undefined>) =>
    Effect.gen(function*() {
      if (!(yield* checkDue(groupId))) return
      const group = yield* loadGroupRow(ctx, groupId)
      if (group.membershipState !== "active") return
      const roster = yield* ctx.loadRoster(group)
      const inboxes = new Set(roster.members.map((m) => m.inboxId))
      if (![...inboxes].every((inbox) => fresh.has(inbox))) return yield* checkInstallations(groupId)
      lastInstallationCheck.set(groupId, yield* Clock.currentTimeNanos)
      yield* queueIfDiffers(groupId, roster, new Map([...inboxes].map((inbox) => [inbox, fresh.get(inbox)])))
    }).pipe(
      Effect.catchAll((e) => Effect.logWarning("installation check failed; tried again next time", e.message)),
      Effect.annotateLogs({ groupId })
    )

  /** One round: read, publish, read what we published, send welcomes. Under the group lock. */
  const round = Effect.fn("Publisher.round")(function*(groupId: GroupId) {
    return yield* ctx.withGroupLock(groupId)(Effect.gen(function*() {
      const before = yield* sync.receive(groupId)
      yield* checkInstallations(groupId)
      const sent = yield* publishPending(groupId)
      const published = sent.payloads.length
      // What we sent is read back from the send's answer when it continues our cursor.
      const after = published > 0 ? yield* sync.receiveSent(groupId, sent) : undefined
      yield* sync.postCommit(groupId)
      return { before, published, after }
    }))
  }, (effect, groupId) => Effect.annotateLogs(effect, { groupId }))

  /** An intent we cannot read back (its row quarantined as unreadable) has failed. */
  const getIntent = (intentId: number) =>
    storage.intents.get(intentId).pipe(
      Effect.flatMap(Option.match({
        onSome: Effect.succeed,
        onNone: () =>
          Effect.fail(new IntentFailed({ intentId, kind: "unknown", attempts: 0, cause: "its stored row is unreadable" }))
      }))
    )

  /** Runs rounds until the intent is Processed; typed failures say why it is not. */
  const resolve = Effect.fn("Publisher.resolve")(
    function*(groupId: GroupId, intentId: number, known?: KnownIntent) {
      return yield* resolveRounds(groupId, intentId, known).pipe(Metric.trackDuration(EngineMetrics.publishDuration))
    },
    (effect, groupId, intentId) => Effect.annotateLogs(effect, { groupId, intentId })
  )

  const resolveRounds = (groupId: GroupId, intentId: number, known: KnownIntent | undefined) => {
    let first = known
    const attempt = Effect.gen(function*() {
      const before = first ?? (yield* getIntent(intentId))
      first = undefined
      yield* round(groupId)
      const intent = yield* getIntent(intentId)
      switch (intent.state) {
        case "Processed":
          return
        case "Error":
          return yield* new IntentFailed({
            intentId,
            kind: intent.kind,
            attempts: intent.attempts,
            cause: intent.error ?? "unknown"
          })
        default: {
          if (intent.conflicts > before.conflicts) {
            yield* Metric.increment(EngineMetrics.epochConflicts)
            const group = yield* loadGroupRow(ctx, groupId)
            return yield* new EpochConflict({
              groupId,
              intentId,
              publishedEpoch: before.publishedEpoch ?? group.epoch,
              currentEpoch: group.epoch
            })
          }
          return yield* new IntentPending({ intentId, state: intent.state })
        }
      }
    })
    const retryable = (e: { readonly _tag: string; readonly retryable?: boolean }) =>
      e._tag === "IntentPending" || (e._tag === "DeliveryError" && e.retryable === true)
    return attempt.pipe(
      Effect.tapError((e) => (retryable(e) ? Metric.increment(EngineMetrics.transportRetries) : Effect.void)),
      Effect.retry({ schedule: ctx.options.transportSchedule, while: retryable }),
      Effect.retry({ schedule: ctx.options.conflictSchedule, while: (e) => e._tag === "EpochConflict" }),
      Effect.catchTags({
        EpochConflict: (conflict) =>
          Effect.gen(function*() {
            const intent = yield* getIntent(intentId)
            yield* failIntent(intent, conflict.message)
            return yield* new IntentFailed({
              intentId,
              kind: intent.kind,
              attempts: intent.attempts,
              cause: `epoch conflicts exhausted: ${conflict.message}`
            })
          }),
        IntentPending: (pending) =>
          Effect.fail(
            new DeliveryError({
              reason: "Timeout",
              retryable: true,
              detail: `intent ${pending.intentId} still ${pending.state}; it will be published on a later sync`
            })
          )
      })
    )
  }

  return {
    publishPending,
    queueWrittenAhead,
    round,
    resolve,
    checkInstallations: (groupId: GroupId) =>
      Effect.flatMap(checkDue(groupId), (due) => (due ? ctx.withGroupLock(groupId)(checkInstallations(groupId)) : Effect.void)),
    checkInstallationsKnown: (groupId: GroupId) => ctx.withGroupLock(groupId)(checkInstallationsKnown(groupId)),
    checkInstallationsMany
  }
}

