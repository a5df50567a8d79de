/**
 * DM conversations as the app sees them (`dm:<a>:<b>`, merged across the DM's groups): listed
 * once by every installation that holds one of its groups, the same messages at every
 * installation that predates it, and one group to send on once it has settled.
 */
import { Effect } from "effect"
import type { ConversationId } from "../domain/Ids.ts"
import type { StoredMessage } from "../domain/Stored.ts"
import type { CheckContext, DmGroup } from "./CheckContext.ts"
import type { CheckedGroup } from "./GroupChecks.ts"

/** A DM in traces: `dm(c0,c3)`, its inboxes in index order (not in the order of their ids). */
export const dmName = (pair: readonly [number, number]) => `dm(c${pair[0]},c${pair[1]})`

interface DmFacts {
  readonly dm: ConversationId
  readonly label: (dm: ConversationId) => string
  /** The MLS groups beneath it. */
  readonly groups: ReadonlyArray<DmGroup>
  readonly pair: readonly [number, number]
  /** Current, booted installations of both inboxes. */
  readonly parties: ReadonlyArray<number>
  /** When its groups were created, as their creators stored them. */
  readonly creations: ReadonlyArray<bigint>
  readonly checked: ReadonlyMap<string, CheckedGroup>
}

/** Each installation lists each DM once, and every DM it holds a group of. */
const checkDmListing = (
  ctx: CheckContext,
  dms: ReadonlyArray<DmGroup>,
  checked: ReadonlyMap<string, CheckedGroup>,
  label: (dm: ConversationId) => string
) =>
  Effect.gen(function*() {
    const { all, name, violate } = ctx
    const dmIds = [...new Set(dms.map((d) => d.dmId))]
        for (const [c, client] of all) {
          const listed = (yield* client.conversations({ kind: "dm", includeInactive: true, consent: ["allowed", "denied", "unknown"] }))
            .map((cv) => cv.id)
          for (const dm of new Set(listed)) {
            const n = listed.filter((id) => id === dm).length
            if (n > 1) violate("dm-listed-twice", `${name(c)}: conversations lists ${dm} ${n} times`)
          }
          for (const dm of dmIds) {
            const holds = dms.some((d) => d.dmId === dm && checked.get(d.groupId)?.held.has(c))
            if (holds && !listed.includes(dm)) violate("dm-not-listed", `${name(c)}: holds a group of ${label(dm)} but conversations does not list it`)
          }
        }
  })

/**
 * Every installation that existed before the DM began is in all its groups from their start: they
 * all hold the same messages. Returns each party's published texts by id.
 */
const checkDmMessages = (ctx: CheckContext, facts: DmFacts) =>
  Effect.gen(function*() {
    const { clients, name, storages, truth, violate } = ctx
    const { creations, dm, groups, label, parties } = facts
    const firstCreation = creations.reduce<bigint | undefined>((a, t) => (a === undefined || t < a ? t : a), undefined)
    const texts = new Map<number, Map<string, StoredMessage>>()
    for (const c of parties) {
      const rows = yield* storages.get(c)!.messages.byConversation(dm, { direction: "asc" })
      texts.set(c, new Map(rows.filter((m) => m.kind === "text" && m.deliveryStatus === "published").map((m) => [m.id, m])))
      for (const m of rows) {
        if (!groups.some((d) => d.groupId === m.groupId)) {
          violate("dm-phantom", `${name(c)}: ${label(dm)} lists "${m.content}" of group ${m.groupId}, which is not one of its groups`)
        }
      }
    }
    const registered = (c: number) => truth.registeredAt.get(clients.get(c)!.installationId)
    const fromStart = parties.filter((c) => {
      const at = registered(c)
      return at !== undefined && firstCreation !== undefined && at < firstCreation
    })
    const union = new Map<string, StoredMessage>()
    for (const c of fromStart) for (const [id, m] of texts.get(c)!) union.set(id, m)
    for (const c of fromStart) {
      const mine = texts.get(c)!
      const missing = [...union.values()].filter((m) => !mine.has(m.id))
      if (missing.length > 0) {
        violate(
          "dm-divergent-messages",
          `${label(dm)}: ${name(c)} lacks ${missing.map((m) => `"${m.content}"`).join(", ")} that other installations of the DM hold`
        )
      }
    }
    return texts
  })

/**
 * Once the last message landed after everything else that touched the DM (a group created, a
 * welcome, a failed send), every installation sends on that message's group.
 */
const checkDmPrimary = (ctx: CheckContext, facts: DmFacts, texts: ReadonlyMap<number, ReadonlyMap<string, StoredMessage>>) =>
  Effect.gen(function*() {
    const { clients, name, storages, violate, welcomes, world } = ctx
    const { checked, creations, dm, groups, label, pair, parties } = facts
    const published = [...texts.values()].flatMap((m) => [...m.values()])
    const last = published.reduce<StoredMessage | undefined>((a, m) => (a === undefined || m.sentAtNs > a.sentAtNs ? m : a), undefined)
    if (last === undefined) return
    const events: Array<bigint> = [...creations]
    for (const d of groups) {
      const first = checked.get(d.groupId)?.firstServerTimeNs
      if (first !== undefined) events.push(first)
      for (const w of welcomes.get(d.groupId) ?? []) events.push(w.serverTimeNs)
    }
    for (const [c, storage] of storages) {
      if (!pair.includes(world.installs[c]!.inbox)) continue
      for (const m of yield* storage.messages.byConversation(dm, {})) {
        if (m.deliveryStatus !== "published") events.push(m.sentAtNs)
      }
    }
    const settled = events.every((t) => t < last.sentAtNs) &&
      published.filter((m) => m.sentAtNs === last.sentAtNs && m.id !== last.id).length === 0
    if (!settled) return
    for (const c of parties) {
      const view = checked.get(last.groupId)?.held.get(c)
      if (view === undefined || view.row.membershipState === "inactive") continue
      const info = yield* (yield* clients.get(c)!.conversation(dm)).debugInfo
      if (info.groupIds[0] !== last.groupId) {
        violate(
          "dm-primary-divergent",
          `${label(dm)}: ${name(c)} sends on ${info.groupIds[0]}, but the last message ("${last.content}") went to ${last.groupId} after every other change`
        )
      }
    }
  })

export const checkDmConversations = (
  ctx: CheckContext,
  dms: ReadonlyArray<DmGroup>,
  checked: ReadonlyMap<string, CheckedGroup>
) =>
  Effect.gen(function*() {
    const { all, currentOf, world } = ctx
    const label = (dm: ConversationId) => dmName(dms.find((d) => d.dmId === dm)!.pair)
    yield* checkDmListing(ctx, dms, checked, label)
    for (const dm of new Set(dms.map((d) => d.dmId))) {
      const groups = dms.filter((d) => d.dmId === dm)
      const pair = groups[0]!.pair
      const parties = all
        .filter(([c, client]) => pair.includes(world.installs[c]!.inbox) && currentOf(client.inboxId).has(client.installationId))
        .map(([c]) => c)
      const createdAt = (d: DmGroup) =>
        d.creator === undefined ? undefined : checked.get(d.groupId)?.held.get(d.creator)?.row.createdAtNs
      const creations = groups.map(createdAt).filter((t): t is bigint => t !== undefined)
      const facts: DmFacts = { dm, label, groups, pair, parties, creations, checked }
      yield* checkDmPrimary(ctx, facts, yield* checkDmMessages(ctx, facts))
    }
  })
