/**
 * Deriving an intent's payload at the current epoch: an application message (encrypting
 * advances the sender ratchet), or a commit (members added or removed, installations brought in
 * line with the identity logs, settings rewritten, a key update), each checked first as every
 * receiver will check it. Nothing here writes: the publisher writes the result ahead.
 */
import { Clock, Effect, Either, HashSet, Option, Schema } from "effect"
import { utf8 } from "../domain/Bytes.ts"
import { type ApplicationContent, ApplicationContentJson } from "../domain/Content.ts"
import {
  CryptoError,
  InvalidInput,
  InboxNotFound,
  ProtocolVersionTooOld
} from "../domain/Errors.ts"
import { currentInstallations, type InboxState } from "../domain/IdentityLog.ts"
import type { InboxId, InstallationId } from "../domain/Ids.ts"
import { isPaused } from "../domain/Governance.ts"
import {
  decodeSettings,
  settingsOrDefaults,
  encodeSettings,
  type GovernanceIntent,
  isGovernanceIntent,
  leaveSettings,
  membershipVerdict,
  nextSettings,
  settingsForAdd,
  settledSettings
} from "../domain/GroupSettings.ts"
import { liveLeavers } from "../domain/Leaving.ts"
import { GroupMetadata } from "../domain/Model.ts"
import { makePostCommitData, type PostCommitData, type RemoveMembersData } from "../domain/Intent.ts"
import type { IntentData } from "../domain/Intent.ts"
import type { EngineContext } from "./EngineContext.ts"
import type { Roster } from "./GroupStateCache.ts"
import { type Admitted, admittedPackages, NOBODY, type Wanted } from "./KeyPackageAdmission.ts"
import type { MlsGroupState } from "./MlsCrypto.ts"

export type { Wanted } from "./KeyPackageAdmission.ts"

/** A payload derived from an intent at the current epoch, or nothing to do. */
export type Derived =
  | { readonly _tag: "NoOp" }
  | {
    readonly _tag: "Payload"
    readonly payload: Uint8Array
    readonly state: MlsGroupState | undefined
    readonly staged: MlsGroupState | undefined
    readonly postCommit: PostCommitData | undefined
  }

/**
 * The installation diff of some inboxes against their identity logs: current installations
 * missing from the group, and leaves whose installation is no longer current (revoked).
 */
const installationDiff = (ctx: EngineContext, state: MlsGroupState, inboxIds: Iterable<InboxId>) =>
  Effect.flatMap(ctx.identity.refreshMany([...inboxIds]), (states) => diffAgainst(ctx.crypto.view(state), states))

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

/** A commit adding (with welcomes) and removing installations; nothing to do if it would change nothing. */
const membershipCommit = (
  ctx: EngineContext,
  state: MlsGroupState,
  { packages, wanted }: Admitted,
  remove: ReadonlyArray<InstallationId>,
  metadata?: GroupMetadata
) =>
  Effect.gen(function*() {
    if (wanted.length === 0 && remove.length === 0 && metadata === undefined) return { _tag: "NoOp" } as Derived
    const result = yield* ctx.crypto.createCommit(state, {
      add: packages,
      remove,
      ...(metadata === undefined ? {} : { metadata: encodeSettings(metadata) })
    })
    return {
      _tag: "Payload",
      payload: result.commit,
      state: undefined,
      staged: result.staged,
      postCommit: result.welcome === undefined
        ? undefined
        : makePostCommitData({
          welcome: result.welcome,
          installationIds: wanted.map((w) => w.installationId),
          keyPackages: packages
        })
    } as Derived
  })

/** The group's settings at this state's epoch; settings that do not decode stop governance changes. */
const settingsAt = (ctx: EngineContext, state: MlsGroupState) =>
  Option.match(decodeSettings(ctx.crypto.view(state).metadata), {
    onNone: () => Effect.fail(new CryptoError({ reason: "Malformed", detail: "the group's settings do not decode" })),
    onSome: Effect.succeed
  })

const memberInboxes = (ctx: EngineContext, state: MlsGroupState) => [...new Set(ctx.crypto.view(state).members.map((m) => m.inboxId))]

/** The committer's own check, the same every receiver runs on the commit (Governance.checkCommit). */
const checkMembership = (
  ctx: EngineContext,
  state: MlsGroupState,
  change: { readonly add?: ReadonlyArray<InboxId>; readonly remove?: ReadonlyArray<InboxId> }
) =>
  Effect.gen(function*() {
    const members = memberInboxes(ctx, state)
    const verdict = membershipVerdict({
      settings: yield* settingsAt(ctx, state),
      committer: ctx.identity.inboxId,
      members,
      ...change,
      add: (change.add ?? []).filter((i) => !members.includes(i))
    })
    if (Either.isLeft(verdict)) return yield* verdict.left
  })

/** A commit that rewrites the group's settings (metadata, roles, policies, minimum version). */
const deriveSettings = (ctx: EngineContext, state: MlsGroupState, data: GovernanceIntent) =>
  Effect.gen(function*() {
    const current = yield* settingsAt(ctx, state)
    const next = yield* Effect.try({
      try: () => nextSettings(current, data, ctx.identity.inboxId, memberInboxes(ctx, state)),
      catch: (e) => new InvalidInput({ reason: `group settings: ${e instanceof Error ? e.message : String(e)}` })
    })
    if (Either.isLeft(next)) return yield* next.left
    return yield* settingsCommit(ctx, state, next.right)
  })

/** A commit of new settings alone; nothing to do without any. */
const settingsCommit = (ctx: EngineContext, state: MlsGroupState, settings: GroupMetadata | undefined) =>
  Effect.gen(function*() {
    if (settings === undefined) return { _tag: "NoOp" } as Derived
    const result = yield* ctx.crypto.createCommit(state, { metadata: encodeSettings(settings) })
    return { _tag: "Payload", payload: result.commit, state: undefined, staged: result.staged, postCommit: undefined } as Derived
  })

/**
 * Every installation of each inbox that is not in the group yet, and this inbox's other devices.
 * The settings come along when leave requests that no longer stand must go (an inbox added back
 * after it left is not a leaver).
 */
const deriveAdd = (ctx: EngineContext, state: MlsGroupState, inboxIds: ReadonlyArray<InboxId>) =>
  Effect.gen(function*() {
    yield* checkMembership(ctx, state, { add: inboxIds })
    const { add } = yield* installationDiff(ctx, state, [...inboxIds, ctx.identity.inboxId])
    if (add.length === 0) return { _tag: "NoOp" } as Derived
    // An inbox a concurrent add brought in already is no longer asked for: its old devices may stay out.
    const members = memberInboxes(ctx, state)
    const admitted = yield* admittedPackages(ctx, state, add, new Set(inboxIds.filter((i) => !members.includes(i))))
    if (admitted.wanted.length === 0) return { _tag: "NoOp" } as Derived
    const settings = settingsForAdd(yield* settingsAt(ctx, state), members, admitted.wanted.map((w) => w.inboxId))
    return yield* membershipCommit(ctx, state, admitted, [], settings)
  })

/** Lists this inbox as leaving, in a commit of its own (`domain/Leaving`); nothing to do if it is listed. */
const deriveLeave = (ctx: EngineContext, state: MlsGroupState) =>
  Effect.gen(function*() {
    const next = leaveSettings(yield* settingsAt(ctx, state), ctx.identity.inboxId, memberInboxes(ctx, state))
    if (Either.isLeft(next)) return yield* next.left
    return yield* settingsCommit(ctx, state, next.right)
  })

/** Drops the leave requests that no longer stand (ours, void, among them); nothing to do if all stand. */
const deriveSettledLeaving = (ctx: EngineContext, state: MlsGroupState) =>
  Effect.gen(function*() {
    return yield* settingsCommit(ctx, state, settledSettings(yield* settingsAt(ctx, state), memberInboxes(ctx, state)))
  })

/** Brings every member inbox's leaves in line with its identity log. */
const deriveInstallationUpdate = (ctx: EngineContext, state: MlsGroupState) =>
  Effect.gen(function*() {
    const inboxes = [...new Set(ctx.crypto.view(state).members.map((m) => m.inboxId))]
    // The states a sync just refreshed in its batched query, unless they cannot explain a
    // leaf (behind, or never fetched): then one request for fresh ones.
    const known = yield* ctx.identity.knownStates(inboxes)
    const fromKnown = [...known.values()].every((inbox) => inbox !== undefined)
      ? yield* diffAgainst(ctx.crypto.view(state), known)
      : undefined
    const { add, remove } = fromKnown !== undefined && fromKnown.unexplained.length === 0
      ? fromKnown
      : yield* installationDiff(ctx, state, inboxes)
    // Removals first, on their own: a new leaf may take a removed device's slot, and ts-mls
    // 1.6.4 then cannot show the removed device its removal. The adds follow in the next check.
    if (remove.length > 0) return yield* membershipCommit(ctx, state, NOBODY, remove)
    // A device whose key package another group's add just found unusable is not asked for again
    // by each of its groups in turn (the wait is the installation checks' own).
    const now = yield* Clock.currentTimeNanos
    const tried = add.filter((w) => !ctx.skippedInstallations.waiting(w.installationId, 0, now))
    return yield* membershipCommit(ctx, state, tried.length === 0 ? NOBODY : yield* admittedPackages(ctx, state, tried), [])
  })

/**
 * Removes every installation of the inboxes; for our own inbox (a lone leaver), the others. A
 * removal queued for a leaver removes it only while the group still lists it as leaving.
 */
const deriveRemove = (ctx: EngineContext, state: MlsGroupState, data: RemoveMembersData) =>
  Effect.gen(function*() {
    const view = ctx.crypto.view(state)
    const inboxIds = data.forLeaveRequest ? yield* standingLeavers(ctx, state, data.inboxIds) : data.inboxIds
    const targets = new Set<string>(inboxIds)
    const present = inboxIds.filter((i) => i !== ctx.identity.inboxId && view.members.some((m) => m.inboxId === i))
    if (present.length > 0) yield* checkMembership(ctx, state, { remove: present })
    const leaving = view.members
      .filter((m) => targets.has(m.inboxId) && m.leafIndex !== view.ownLeafIndex)
      .map((m) => m.installationId)
    if (leaving.length === 0) return { _tag: "NoOp" } as Derived
    const result = yield* ctx.crypto.createCommit(state, { remove: leaving })
    return { _tag: "Payload", payload: result.commit, state: undefined, staged: result.staged, postCommit: undefined } as Derived
  })

/** Those of `inboxIds` the group lists as leaving in this epoch (our own inbox: as a lone leaver, always). */
const standingLeavers = (ctx: EngineContext, state: MlsGroupState, inboxIds: ReadonlyArray<InboxId>) =>
  Effect.map(settingsAt(ctx, state), (settings) => {
    const leaving = liveLeavers(settings, memberInboxes(ctx, state))
    return inboxIds.filter((i) => i === ctx.identity.inboxId || leaving.includes(i))
  })

/** Built once: every message published is encoded with it (built per call, it took 2.5 of 4 us). */
const encodeContent = Schema.encodeSync(ApplicationContentJson)

/** Encrypting advances the sender ratchet: the new state is saved with the write-ahead. */
const applicationMessage = (ctx: EngineContext, state: MlsGroupState, content: ApplicationContent) =>
  ctx.crypto.encrypt(state, utf8(encodeContent(content))).pipe(
    Effect.map((encrypted): Derived => ({
      _tag: "Payload",
      payload: encrypted.message,
      state: encrypted.state,
      staged: undefined,
      postCommit: undefined
    }))
  )

/** Below the group's minimum version this installation reads but writes nothing (its own leave aside). */
const checkNotPaused = (ctx: EngineContext, state: MlsGroupState, data: IntentData) => {
  const writes = data._tag === "SendMessage" || data._tag === "DeleteMessage" || data._tag === "AddMembers" || data._tag === "RemoveMembers" ||
    isGovernanceIntent(data)
  const settings = settingsOrDefaults(ctx.crypto.view(state).metadata)
  const current = ctx.options.protocolVersion
  return writes && isPaused(settings, current)
    ? Effect.fail(new ProtocolVersionTooOld({ required: settings.minProtocolVersion, current }))
    : Effect.void
}

const derive = (ctx: EngineContext, state: MlsGroupState, data: IntentData) =>
  Effect.gen(function*() {
    yield* checkNotPaused(ctx, state, data)
    switch (data._tag) {
      case "SendMessage":
        return yield* applicationMessage(ctx, state, {
          _tag: "Text",
          nonce: data.nonce,
          text: data.text,
          ...(data.idOrder === undefined ? {} : { idOrder: data.idOrder }),
          ...(data.groupContext === undefined ? {} : { groupContext: data.groupContext }),
          ...(data.content === undefined ? {} : { content: data.content })
        })
      case "DeleteMessage":
        return yield* applicationMessage(ctx, state, { _tag: "Delete", nonce: data.nonce, target: data.target })
      case "AddMembers":
        return yield* deriveAdd(ctx, state, data.inboxIds)
      case "RemoveMembers":
        return yield* deriveRemove(ctx, state, data)
      case "Leave":
        return yield* deriveLeave(ctx, state)
      case "SettleLeaving":
        return yield* deriveSettledLeaving(ctx, state)
      case "UpdateInstallations":
        return yield* deriveInstallationUpdate(ctx, state)
      case "UpdateMetadata":
      case "SetRole":
      case "UpdatePermissions":
      case "SetMinProtocolVersion":
        return yield* deriveSettings(ctx, state, data)
      case "KeyUpdate": {
        const result = yield* ctx.crypto.createCommit(state, {})
        return { _tag: "Payload", payload: result.commit, state: undefined, staged: result.staged, postCommit: undefined } as Derived
      }
    }
  })

/** The derivation of one client's intents: its crypto, identity and delivery service. */
export const make = (ctx: EngineContext) => ({
  derive: (state: MlsGroupState, data: IntentData) => derive(ctx, state, data),
  diffAgainst
})
