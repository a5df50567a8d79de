/**
 * Immediate join and revocation. The first step of `syncAll` asks, in the same batched round
 * trips (`DeliveryService.syncQuery`), which active groups have news and what changed in the
 * identity logs of every inbox this installation shares a group with (its own included). A new
 * installation of such an inbox, or a revoked one, becomes an `UpdateInstallations` intent in
 * each group at once (`Publisher.checkInstallationsKnown`), published in the same `syncAll`:
 * whichever member syncs first adds or removes it, the others' commits lose the race and
 * re-derive to nothing. No interval to wait out, and no identity request per group: a round
 * with nothing new costs the one batched query it always cost.
 */
import { Effect } from "effect"
import type { GroupId, InboxId } from "../domain/Ids.ts"
import { groupTopic } from "../domain/Topics.ts"
import { type GroupQuery, type IdentityQuery, type InboxUpdates, MAX_IDS_PER_LOOKUP } from "./DeliveryService.ts"
import type { EngineContext } from "./EngineContext.ts"
import type { GroupSummary } from "./Storage.ts"

/** Topics per round trip: the service's batch limit. */
const GROUPS_PER_CALL = 50
/** Inboxes per round trip: the service's lookup limit. */
const INBOXES_PER_CALL = MAX_IDS_PER_LOOKUP

export const make = (
  ctx: EngineContext,
  publisher: { readonly checkInstallationsKnown: (groupId: GroupId) => Effect.Effect<boolean> }
) => {
  const { ds, identity, storage } = ctx
  /** Member inboxes per group at an epoch (membership changes only with the epoch). */
  const inboxesOf = new Map<GroupId, { readonly epoch: bigint; readonly inboxes: ReadonlyArray<InboxId> }>()
  /**
   * Groups found in line with the identity states at an epoch and identity version: checked
   * again only when either moves, so a quiet round costs no per-group work.
   */
  const inLine = new Map<GroupId, { readonly epoch: bigint; readonly version: number }>()

  const membersOf = (group: GroupSummary) =>
    Effect.gen(function*() {
      const memo = inboxesOf.get(group.id)
      if (memo !== undefined && memo.epoch === group.epoch) return memo.inboxes
      // Summaries carry no MLS state: the row is read once per epoch of the group.
      const row = yield* storage.groups.get(group.id)
      if (row._tag === "None") return []
      const roster = yield* ctx.loadRoster(row.value).pipe(Effect.option)
      if (roster._tag === "None") return []
      const inboxes = [...new Set(roster.value.members.map((m) => m.inboxId))]
      inboxesOf.set(group.id, { epoch: group.epoch, inboxes })
      return inboxes
    })

  const memberInboxes = (groups: ReadonlyArray<GroupSummary>) =>
    Effect.gen(function*() {
      const inboxes = new Set<InboxId>([identity.inboxId])
      for (const group of groups) for (const inbox of yield* membersOf(group)) inboxes.add(inbox)
      return [...inboxes]
    })

  /** Checks the group against the identity states held, unless nothing moved since it was in line. */
  const checkGroup = (group: GroupSummary, version: number) =>
    Effect.gen(function*() {
      const last = inLine.get(group.id)
      if (last !== undefined && last.epoch === group.epoch && last.version === version) return
      const differs = yield* publisher.checkInstallationsKnown(group.id)
      if (differs) inLine.delete(group.id)
      else inLine.set(group.id, { epoch: group.epoch, version })
    })

  /**
   * One or more `syncQuery` round trips (one unless there are over 50 groups or 100 inboxes):
   * the groups with news, and the identity changes, verified and kept.
   */
  const fetch = (groups: ReadonlyArray<GroupSummary>) =>
    Effect.gen(function*() {
      const cursors = yield* storage.cursors.getMany(groups.map((g) => groupTopic(g.id)))
      const groupQueries: Array<GroupQuery> = groups.map((g) => ({
        groupId: g.id,
        afterSequenceId: cursors.get(groupTopic(g.id)) ?? 0n,
        limit: 1
      }))
      const inboxes = yield* memberInboxes(groups)
      const known = yield* identity.knownStates(inboxes)
      const identityQueries: Array<IdentityQuery> = inboxes.map((inboxId) => ({
        inboxId,
        afterSequence: known.get(inboxId)?.sequence ?? 0
      }))
      const calls = Math.max(
        Math.ceil(groupQueries.length / GROUPS_PER_CALL),
        Math.ceil(identityQueries.length / INBOXES_PER_CALL)
      )
      const news = new Set<GroupId>()
      const changes: Array<InboxUpdates> = []
      for (let i = 0; i < calls; i++) {
        const chunk = groupQueries.slice(i * GROUPS_PER_CALL, (i + 1) * GROUPS_PER_CALL)
        const answer = yield* ds.syncQuery({
          groups: chunk,
          identities: identityQueries.slice(i * INBOXES_PER_CALL, (i + 1) * INBOXES_PER_CALL)
        })
        answer.groups.forEach((page, j) => {
          // An empty page that points on was not read (the answer's byte budget was spent on
          // other topics): it may hold news, and reading the group finds out.
          if ((page.items.length > 0 || page.next !== undefined) && chunk[j] !== undefined) news.add(chunk[j].groupId)
        })
        changes.push(...answer.identities)
      }
      const changed = changes.length === 0 ? new Set<InboxId>() : yield* identity.absorb(changes)
      return { news, changed }
    })

  /**
   * Which active groups have news; on the way, every group whose members' devices differ from
   * their identity logs gets its `UpdateInstallations` intent (pending, so `syncAll` publishes it).
   */
  const newsAndDevices = Effect.fn("DeviceSync.newsAndDevices")(function*(groups: ReadonlyArray<GroupSummary>) {
    // Asked even with no group: our own log's news (a sibling device registered since) is what
    // history sync reads to create the own-devices group, and a groupless device still has siblings.
    const { news } = yield* fetch(groups)
    // Every group whose epoch or held identity states moved since it was last in line, not
    // only those of inboxes that changed just now: a change may have been learnt by another
    // request (a leaf check, a send) since the last sync. Local work, no request.
    const version = yield* identity.version
    yield* Effect.forEach(groups, (g) => checkGroup(g, version), { discard: true })
    return news
  })

  return { newsAndDevices }
}
