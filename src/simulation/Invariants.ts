/**
 * The invariants checked at quiescence. The delivery service's order of each group topic is
 * the truth: walking it gives the epoch in force at every position; the membership-change
 * transcript entries that the clients stored give which inboxes were members at every epoch;
 * the welcomes on each installation's topic give the epoch each installation joined at; the
 * identity logs give each inbox's current installations and when a device was revoked. From
 * those, each published message has a set of installations that must hold it, and a set that
 * may; nobody else may hold it.
 *
 * DMs are checked twice: each MLS group beneath a DM like any group, and each DM conversation
 * (`dm:<a>:<b>`, merged across its groups) as the app sees it: the same messages on every
 * installation of both inboxes, listed once, and one group to send on once the DM has settled.
 */
import { Effect, Option } from "effect"
import type { ConversationId, GroupId } from "../domain/Ids.ts"
import type { StoredIntent } from "../domain/Stored.ts"
import { type CheckContext, type DmGroup, makeCheckContext } from "./CheckContext.ts"
import { checkDmConversations, dmName } from "./DmChecks.ts"
import { type CheckedGroup, checkGroup } from "./GroupChecks.ts"
import { booted, clientName, type World } from "./World.ts"

export type { DmGroup } from "./CheckContext.ts"
export { dmName } from "./DmChecks.ts"
export { openWelcomes, readTopic, readWelcomes } from "./ServerView.ts"

/** Every MLS group beneath a DM that any installation holds, labelled in creation order. */
export const dmGroups = (world: World) =>
  Effect.gen(function*() {
    const found = new Map<GroupId, { dmId: ConversationId; creator: number | undefined; createdAt: bigint }>()
    for (const [c, client] of booted(world)) {
      const storage = yield* world.net.storage(client)
      for (const row of yield* storage.groups.list({ includeInactive: true })) {
        if (row.kind !== "dm" || row.dmId === null) continue
        const known = found.get(row.id) ?? { dmId: row.dmId, creator: undefined, createdAt: row.createdAtNs }
        if (row.addedByInboxId !== null) {
          known.creator = c
          known.createdAt = row.createdAtNs
        }
        found.set(row.id, known)
      }
    }
    const inboxIndex = new Map<string, number>(world.inboxIds.map((id, i) => [id, i]))
    const out: Array<DmGroup> = []
    const byDm = new Map<ConversationId, Array<[GroupId, { creator: number | undefined; createdAt: bigint }]>>()
    for (const [groupId, g] of found) byDm.set(g.dmId, [...(byDm.get(g.dmId) ?? []), [groupId, g]])
    for (const [dm, groups] of byDm) {
      const [, a, b] = dm.split(":") as [string, string, string]
      const pair = [inboxIndex.get(a) ?? -1, inboxIndex.get(b) ?? -1].sort((x, y) => x - y) as [number, number]
      groups.sort(([ga, a], [gb, b]) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : ga.localeCompare(gb)))
      const byCreator = new Map<string, number>()
      for (const [groupId, g] of groups) {
        const creator = g.creator === undefined ? "?" : clientName(g.creator, world)
        const n = (byCreator.get(creator) ?? 0) + 1
        byCreator.set(creator, n)
        out.push({
          groupId,
          dmId: dm,
          label: `${dmName(pair)}@${creator}${n > 1 ? `#${n}` : ""}`,
          creator: g.creator,
          pair
        })
      }
    }
    return out.sort((x, y) => x.label.localeCompare(y.label))
  })

/** A send whose intent failed is marked failed. */
const checkFailedIntent = (ctx: CheckContext, c: number, intent: StoredIntent) =>
  Effect.gen(function*() {
    if (intent.kind !== "SendMessage") return
    const data = intent.data
    if (data._tag !== "SendMessage") return
    const row = yield* ctx.storages.get(c)!.messages.get(data.messageId)
    if (Option.isSome(row) && row.value.deliveryStatus !== "failed") {
      ctx.violate(
        "failed-intent-message-not-failed",
        `${ctx.name(c)}: SendMessage intent ${intent.id} is Error but its message "${data.text}" is ${row.value.deliveryStatus}`
      )
    }
  })

/** Per installation: no intent left mid-way, no fork, no leave left half done, every confirmed send published. */
const checkInstallations = (ctx: CheckContext) =>
  Effect.gen(function*() {
    const { name, storages, violate, world } = ctx
    for (const [c, storage] of storages) {
      const stuck = yield* storage.intents.byState(["ToPublish", "Published", "Committed"])
      for (const intent of stuck) {
        violate("stuck-intent", `${name(c)}: ${intent.kind} intent ${intent.id} of group ${intent.groupId} left ${intent.state}`)
      }
      const failed = yield* storage.intents.byState(["Error"])
      for (const intent of failed) yield* checkFailedIntent(ctx, c, intent)
      const groups = yield* storage.groups.list({ includeInactive: true })
      for (const group of groups) {
        if (group.maybeForked) {
          violate("forked", `${name(c)}: group ${group.id} marked maybeForked (${group.forkDetails ?? "?"})`)
        }
        if (group.membershipState === "pendingRemove") {
          violate("leave-incomplete", `${name(c)}: group ${group.id} is still pendingRemove: its inbox asked to leave and was never removed`)
        }
      }
      for (const sent of world.sent.filter((s) => s.c === c && s.confirmed)) {
        const row = yield* storage.messages.get(sent.id)
        if (Option.isNone(row) || row.value.deliveryStatus !== "published") {
          violate(
            "confirmed-send-not-published",
            `${name(c)}: send "${sent.text}" (op ${sent.op}) succeeded but the message is ${Option.isNone(row) ? "missing" : row.value.deliveryStatus}`
          )
        }
      }
    }
  })

export const check = (world: World, dms: ReadonlyArray<DmGroup>) =>
  Effect.gen(function*() {
    const ctx = yield* makeCheckContext(world)
    yield* checkInstallations(ctx)
    const checked = new Map<GroupId, CheckedGroup>()
    for (const [g, groupId] of world.groups.entries()) {
      if (groupId !== undefined) checked.set(groupId, yield* checkGroup(ctx, groupId, `g${g}`, world.creators[g], undefined))
    }
    for (const dm of dms) checked.set(dm.groupId, yield* checkGroup(ctx, dm.groupId, dm.label, dm.creator, dm))
    yield* checkDmConversations(ctx, dms, checked)
    return ctx.violations
  })
