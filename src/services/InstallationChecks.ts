/**
 * Keeping a group's leaves in line with its members' identity logs: when a device was added or
 * revoked, one `UpdateInstallations` intent is queued (whoever lands it first wins; the others
 * re-derive to a no-op). Immediate against the states a sync just refreshed, and periodic
 * against fresh ones as a safety net.
 */
import { Clock, Duration, Effect, Option } from "effect"
import { settingsOrDefaults } from "../domain/GroupSettings.ts"
import type { InboxState } from "../domain/IdentityLog.ts"
import type { GroupId, InboxId } from "../domain/Ids.ts"
import type { StoredGroup } from "../domain/Stored.ts"
import { UpdateInstallationsData } from "../domain/Intent.ts"
import { type EngineContext, loadGroupRow } from "./EngineContext.ts"
import type { Roster } from "./GroupStateCache.ts"
import type * as IntentDerivation from "./IntentDerivation.ts"

/** The check's context: the engine, the diff, and when each group was last checked periodically. */
interface Checks {
  readonly ctx: EngineContext
  readonly diffAgainst: ReturnType<typeof IntentDerivation.make>["diffAgainst"]
  readonly last: Map<GroupId, bigint>
}

/**
 * Queues one `UpdateInstallations` intent if the members' leaves differ from `states`
 * (unless one is pending already: it derives from fresh logs when it is published).
 * Whether they differ.
 */
const queueIfDiffers = (
  { ctx, diffAgainst }: Checks,
  group: StoredGroup,
  roster: Roster,
  states: ReadonlyMap<InboxId, InboxState | undefined>,
  options: { readonly onlyRevoked: boolean } = { onlyRevoked: false }
) =>
  Effect.gen(function*() {
    const { storage } = ctx
    const diff = yield* diffAgainst(roster, states)
    // States held locally may be behind: a leaf they do not list is no reason to act on them.
    const removals = options.onlyRevoked ? diff.remove.filter((i) => !diff.unexplained.includes(i)) : diff.remove
    // An installation left out for being below this group's minimum is asked for again only after a wait.
    const now = yield* Clock.currentTimeNanos
    const required = diff.add.length === 0 ? 0 : settingsOrDefaults(yield* ctx.loadMetadata(group)).minProtocolVersion
    const add = diff.add.filter((w) => !ctx.skippedInstallations.waiting(w.installationId, required, now))
    if (add.length === 0 && removals.length === 0) return false
    const groupId = group.id
    const pending = yield* storage.intents.byGroup(groupId, ["ToPublish", "Published"])
    if (pending.some((intent) => intent.kind === "UpdateInstallations")) return true
    yield* storage.intents.insert({ groupId, data: UpdateInstallationsData.make({}), createdAtNs: now })
    return true
  })

/** Whether the group's periodic check is due: read without the lock, so idle groups cost a map lookup. */
const checkDue = ({ ctx, last: lastInstallationCheck }: Checks, groupId: GroupId) =>
  Effect.map(Clock.currentTimeNanos, (now) => {
    const last = lastInstallationCheck.get(groupId)
    const interval = Duration.toNanos(ctx.options.installationCheckInterval).pipe(Option.getOrElse(() => 0n))
    return last === undefined || now - last >= interval
  })

/** `checkInstallations` with the members' states already fetched (one that lacks some asks for itself). */
const checkWith = (
  c: Checks,
  checkInstallations: (groupId: GroupId) => Effect.Effect<void>,
  groupId: GroupId,
  fresh: ReadonlyMap<InboxId, InboxState | undefined>
) =>
  Effect.gen(function*() {
    const { ctx, last: lastInstallationCheck } = c
    if (!(yield* checkDue(c, groupId))) return
    const group = yield* loadGroupRow(ctx, groupId)
    if (group.membershipState !== "active") return
    const roster = yield* ctx.loadRoster(group)
    const inboxes = new Set(roster.members.map((m) => m.inboxId))
    if (![...inboxes].every((inbox) => fresh.has(inbox))) return yield* checkInstallations(groupId)
    lastInstallationCheck.set(groupId, yield* Clock.currentTimeNanos)
    yield* queueIfDiffers(c, group, roster, new Map([...inboxes].map((inbox) => [inbox, fresh.get(inbox)])))
  }).pipe(
    Effect.catchAll((e) => Effect.logWarning("installation check failed; tried again next time", e.message)),
    Effect.annotateLogs({ groupId })
  )

export const make = (ctx: EngineContext, { diffAgainst }: Pick<ReturnType<typeof IntentDerivation.make>, "diffAgainst">) => {
  const { identity } = ctx
  const c: Checks = { ctx, diffAgainst, last: new Map<GroupId, bigint>() }

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
    return yield* queueIfDiffers(c, group, roster, known, { onlyRevoked: true })
  }, (effect, groupId) =>
    effect.pipe(
      Effect.catchAll((e) => Effect.logWarning("installation check failed; tried again next time", e.message).pipe(Effect.as(true))),
      Effect.annotateLogs({ groupId })
    ))

  /**
   * Every so often, compare the members' leaves with their identity logs; if a device was added
   * or revoked, queue one `UpdateInstallations` intent (whoever lands it first wins; the others
   * re-derive to a no-op). A failed check is logged and tried again next time.
   */
  const checkInstallations = Effect.fn("Publisher.checkInstallations")(function*(groupId: GroupId) {
    if (!(yield* checkDue(c, groupId))) return
    c.last.set(groupId, yield* Clock.currentTimeNanos)
    const group = yield* loadGroupRow(ctx, groupId)
    if (group.membershipState !== "active") return
    const roster = yield* ctx.loadRoster(group)
    const states = yield* identity.refreshMany(roster.members.map((m) => m.inboxId))
    yield* queueIfDiffers(c, group, roster, states)
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
    const due = yield* Effect.filter(groupIds, (groupId) => checkDue(c, groupId))
    // Whom to ask about, from the rosters last kept: a group whose members changed since asks
    // for itself in `checkWith`, so a stale hint costs a request, never a wrong decision.
    const inboxes = new Set<InboxId>()
    for (const groupId of due) {
      const hint = yield* ctx.rosterHint(groupId)
      const roster = Option.isSome(hint)
        ? hint
        : yield* loadGroupRow(ctx, groupId).pipe(Effect.flatMap(ctx.loadRoster), Effect.option)
      if (roster._tag === "Some") for (const m of roster.value.members) inboxes.add(m.inboxId)
    }
    const fresh = inboxes.size === 0 ? undefined : yield* identity.refreshMany([...inboxes]).pipe(Effect.option)
    yield* Effect.forEach(due, (groupId) =>
      fresh === undefined || fresh._tag === "None"
        ? ctx.withGroupLock(groupId)(checkInstallations(groupId))
        : ctx.withGroupLock(groupId)(checkWith(c, checkInstallations, groupId, fresh.value)), { discard: true })
  })

  return {
    /** The periodic check, if due, under the group lock. */
    checkInstallations: (groupId: GroupId) =>
      Effect.flatMap(checkDue(c, groupId), (due) => (due ? ctx.withGroupLock(groupId)(checkInstallations(groupId)) : Effect.void)),
    /** The periodic check, the caller holding the group lock. */
    checkInstallationsLocked: checkInstallations,
    /** Whether the periodic check is due (it may queue an intent then). */
    checkDue: (groupId: GroupId) => checkDue(c, groupId),
    checkInstallationsKnown: (groupId: GroupId) => ctx.withGroupLock(groupId)(checkInstallationsKnown(groupId)),
    checkInstallationsMany
  }
}
