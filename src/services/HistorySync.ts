/**
 * History sync between the installations of one inbox, end-to-end encrypted through an
 * own-devices MLS group: a hidden group (named `OWN_DEVICES_GROUP_NAME`) whose members are exactly
 * the inbox's current installations, kept in step with the identity log by the same installation
 * check as every group. The oldest current installation creates it once there are two.
 *
 * One `step` per `syncAll`, after the groups are read: apply what arrived (pages, consent,
 * requests; `HistoryImport`), ask for the history once (a new installation), answer requests
 * (`HistoryAnswer`) and send unsent consent records. Nothing is sent while the group holds a leaf
 * the identity log no longer lists: a revoked installation receives nothing more. Progress lives
 * in the store, so a restart resumes where the last transaction left off.
 */
import { Clock, Effect, HashMap, Option } from "effect"
import { randomBytes } from "node:crypto"
import { toHex } from "../domain/Bytes.ts"
import { isOwnDevicesGroup, MAX_CONSENT_RECORDS, MAX_PAGE_ITEMS, OWN_DEVICES_GROUP_NAME } from "../domain/HistoryArchive.ts"
import type { GroupId, InstallationId } from "../domain/Ids.ts"
import type { EngineContext } from "./EngineContext.ts"
import * as HistoryAnswer from "./HistoryAnswer.ts"
import * as HistoryImport from "./HistoryImport.ts"
import type { HistoryProgress } from "./HistoryStorage.ts"
import type { GroupSummary } from "./Storage.ts"
import type * as Publisher from "./Publisher.ts"

export interface HistoryOptions {
  /** Items per archive page (default and most: `MAX_PAGE_ITEMS`); pages are also bounded in bytes. */
  readonly historyPageItems?: number
}

/** What `Client.historySync` reports. */
export interface HistorySyncStatus {
  readonly state: HistoryProgress["state"]
  readonly pagesImported: number
  readonly messagesImported: number
}

/** Pages queued between two publishes of an answer. */
const PAGES_PER_PUBLISH = 10

interface OwnGroup {
  readonly id: GroupId
  readonly leaves: ReadonlyArray<InstallationId>
}

interface InstallationOrder {
  /** The inbox's first installation ever: it starts with the whole history. */
  readonly first: InstallationId | undefined
  readonly oldestCurrent: InstallationId | undefined
  readonly current: ReadonlySet<InstallationId>
}

export const make = (
  ctx: EngineContext,
  deps: {
    readonly publisher: ReturnType<typeof Publisher.make>
    /** Creates a group with this installation (and whichever own devices it adds) in it. */
    readonly createOwnDevicesGroup: Effect.Effect<GroupId, unknown>
  },
  options: HistoryOptions = {}
) => {
  const { crypto, identity, storage } = ctx
  const self = identity.inboxId
  const me = identity.installationId
  const pageItems = Math.max(1, Math.min(options.historyPageItems ?? MAX_PAGE_ITEMS, MAX_PAGE_ITEMS))
  const importer = HistoryImport.make(ctx)
  const answers = HistoryAnswer.make(ctx, pageItems)

  /**
   * Our inbox's installations in the order its log added them. `syncAll` has just fetched our
   * log's news with the groups' (DeviceSync), so what we hold is current: no request of its own.
   */
  const installationOrder = Effect.gen(function*() {
    const held = (yield* identity.knownStates([self])).get(self)
    const state = held ?? (yield* identity.inboxState(self))
    const entries = yield* storage.inboxLogs.entries(self)
    const added = entries.flatMap((e) => (e.update.action._tag === "AddInstallation" ? [e.update.action.installationId] : []))
    const current = added.filter((i) => HashMap.has(state.installations, i))
    return { first: added[0], oldestCurrent: current[0], current: new Set(current) } satisfies InstallationOrder
  })

  /**
   * The own-devices groups among `summaries` that we are still active in and whose every leaf is
   * one of our inbox's installations.
   */
  const ownGroupsAmong = (summaries: ReadonlyArray<GroupSummary>) =>
    Effect.gen(function*() {
      const out: Array<OwnGroup> = []
      for (const summary of summaries) {
        if (summary.name !== OWN_DEVICES_GROUP_NAME) continue
        // Only the own-devices groups' rows are read whole, and judged as they are now: the
        // summary may be from before this sync (the group gone inactive, or renamed, since).
        const row = yield* storage.groups.get(summary.id)
        if (Option.isNone(row) || row.value.membershipState === "inactive") continue
        const members = crypto.view(yield* ctx.loadState(row.value)).members
        if (!isOwnDevicesGroup(row.value.name, members.map((m) => m.inboxId), self)) continue
        out.push({ id: summary.id, leaves: members.map((m) => m.installationId) })
      }
      return out.sort((a, b) => a.id.localeCompare(b.id))
    })

  const ownGroups = storage.groups.summaries({ includeInactive: false }).pipe(Effect.flatMap(ownGroupsAmong))

  const initialProgress = (order: InstallationOrder): HistoryProgress => ({
    state: order.first === me ? "done" : "idle",
    requestId: null,
    requestedFrom: "",
    pagesImported: 0,
    messagesImported: 0
  })

  const loadProgress = (order: InstallationOrder) =>
    storage.history.progress.pipe(Effect.flatMap(Option.match({
      onSome: Effect.succeed,
      onNone: () => {
        const initial = initialProgress(order)
        return storage.history.saveProgress(initial).pipe(Effect.as(initial))
      }
    })))

  /**
   * Whether what is sent in the group reaches current installations only. If not, the
   * installation check (when due) queues the removal, and we send after it.
   */
  const sendable = (group: OwnGroup, order: InstallationOrder) =>
    group.leaves.every((leaf) => order.current.has(leaf))
      ? Effect.succeed(true)
      : deps.publisher.checkInstallations(group.id).pipe(Effect.as(false))

  const publish = (groupId: GroupId, intentId: number) =>
    deps.publisher.resolve(groupId, intentId).pipe(
      Effect.catchAll((e) => Effect.logWarning("own-devices message not published yet; retried on the next sync", e.message))
    )

  /**
   * Every installation asks the others for what they hold: a new one for the history, the others
   * for what only it holds. Asked again whenever an installation it did not ask yet appears.
   */
  const request = (progress: HistoryProgress, groups: ReadonlyArray<OwnGroup>, order: InstallationOrder) =>
    Effect.gen(function*() {
      const primary = groups[0]
      if (primary === undefined) return
      const others = primary.leaves.filter((leaf) => leaf !== me)
      const asked = new Set(progress.requestedFrom.split(",").filter((s) => s !== ""))
      if (others.length === 0 || (progress.requestId !== null && others.every((o) => asked.has(o)))) return
      if (!(yield* sendable(primary, order))) return
      const requestId = toHex(randomBytes(16))
      const now = yield* Clock.currentTimeNanos
      const intentId = yield* storage.transaction(Effect.gen(function*() {
        yield* storage.history.saveProgress({
          ...progress,
          state: progress.state === "done" ? "done" : "requesting",
          requestId,
          requestedFrom: [...others].sort().join(",")
        })
        return yield* answers.queuePayload(primary.id, { _tag: "HistoryRequest", requestId, requester: me }, now)
      }))
      yield* publish(primary.id, intentId)
    })

  /**
   * Sends each open answer as far as it goes: the backlog to its end, then what came since (a
   * live answer keeps the requester level with this installation). A few pages per publish.
   */
  const answerAll = (progress: HistoryProgress, groups: ReadonlyArray<OwnGroup>, order: InstallationOrder) =>
    Effect.gen(function*() {
      // Only an installation that holds the whole history answers: a partial answer would end an import early.
      if (progress.state !== "done") return
      for (const open of yield* storage.history.openAnswers) {
        if (!order.current.has(open.requester)) {
          // Revoked (or never ours): it gets nothing more.
          yield* storage.history.saveAnswer({ ...open, phase: "done" })
          continue
        }
        const group = groups.find((g) => g.id === open.groupId)
        if (group === undefined || !(yield* sendable(group, order))) continue
        let answer = open
        let queued = 0
        let lastIntent: number | undefined
        while (true) {
          const { exhausted, intentId, next } = yield* answers.queueNextPage(answer)
          answer = next
          if (intentId !== undefined) {
            lastIntent = intentId
            if (++queued % PAGES_PER_PUBLISH === 0) yield* publish(group.id, intentId)
          }
          if (answer.phase === "live" && (exhausted || intentId === undefined)) break
        }
        if (lastIntent !== undefined) yield* publish(group.id, lastIntent)
      }
    })

  /** Sends the consent records decided here and not sent yet. */
  const flushConsentIn = (groups: ReadonlyArray<OwnGroup>, order: InstallationOrder) =>
    Effect.gen(function*() {
      const primary = groups[0]
      if (primary === undefined || primary.leaves.length < 2 || !(yield* sendable(primary, order))) return
      while (true) {
        const records = yield* storage.consent.unsent(MAX_CONSENT_RECORDS)
        if (records.length === 0) return
        const now = yield* Clock.currentTimeNanos
        const intentId = yield* storage.transaction(Effect.gen(function*() {
          yield* storage.consent.markSent(records.map((r) => r.key))
          return yield* answers.queuePayload(primary.id, { _tag: "ConsentUpdate", records }, now)
        }))
        yield* publish(primary.id, intentId)
      }
    })

  const logged = <A>(fallback: A) => <E extends { readonly message: string }, R>(effect: Effect.Effect<A, E, R>) =>
    effect.pipe(Effect.catchAll((e) => Effect.logWarning("history sync step failed; tried again next sync", e.message).pipe(Effect.as(fallback))))

  /**
   * One round of history sync, given the summaries of the groups `syncAll` found active; returns
   * the messages imported. Never fails: it resumes next time.
   */
  const step = (active: ReadonlyArray<GroupSummary>) => Effect.gen(function*() {
    const order = yield* installationOrder
    // Revoked: it neither asks nor tells anything any more.
    if (!order.current.has(me)) return 0
    let groups = yield* ownGroupsAmong(active)
    // Created once there is another device to talk to, by the oldest: one group, not one per device.
    // Listed again first: another sync running beside this one may have created it meanwhile.
    const creates = order.oldestCurrent === me && order.current.size > 1
    if (groups.length === 0 && creates) groups = yield* ownGroups
    if (groups.length === 0 && creates) {
      yield* deps.createOwnDevicesGroup.pipe(
        Effect.catchAll((e) => Effect.logWarning("could not create the own-devices group", String(e)))
      )
      groups = yield* ownGroups
    }
    const { imported, progress } = yield* importer.applyInbound(groups.map((g) => g.id), yield* loadProgress(order))
    yield* request(progress, groups, order)
    yield* answerAll(progress, groups, order)
    yield* flushConsentIn(groups, order)
    return imported
  }).pipe(logged(0), Effect.withSpan("HistorySync.step"))

  /** Sends unsent consent records now, if an own-devices group can carry them. */
  const flushConsent = Effect.gen(function*() {
    const order = yield* installationOrder
    if (order.current.has(me)) yield* flushConsentIn(yield* ownGroups, order)
  }).pipe(logged<void>(undefined))

  const status = storage.history.progress.pipe(
    Effect.map(Option.match({
      onNone: (): HistorySyncStatus => ({ state: "idle", pagesImported: 0, messagesImported: 0 }),
      onSome: (p): HistorySyncStatus => ({ state: p.state, pagesImported: p.pagesImported, messagesImported: p.messagesImported })
    }))
  )

  return { step, flushConsent, status }
}
