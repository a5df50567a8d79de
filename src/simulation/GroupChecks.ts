/**
 * The invariants of one MLS group (a DM's groups included), judged against the delivery
 * service's order of its topic: who may be a member at each epoch, where each installation
 * joined, that members converge on one state; which installations must, may and must not hold
 * each message is `GroupMessageChecks`.
 */
import { Effect, Option, Schema } from "effect"
import { MembershipChangeJson } from "../domain/Content.ts"
import type { ConversationId, GroupId, InboxId } from "../domain/Ids.ts"
import { GroupMetadataJson } from "../domain/Model.ts"
import { WELCOMES_UNDELIVERABLE } from "../services/GroupSync.ts"
import type { CheckContext, DmGroup, Held, Join } from "./CheckContext.ts"
import { type GroupFacts, listedByMembers } from "./GroupFacts.ts"
import { checkDelivery, checkHeldMessages } from "./GroupMessageChecks.ts"
import { readTopic, walkTopic } from "./ServerView.ts"

/** A group as its checks left it, for the DM checks that follow. */
export interface CheckedGroup {
  readonly groupId: GroupId
  readonly label: string
  readonly held: ReadonlyMap<number, Held>
  /** Joins backed by a real welcome (or creation): where an installation surely was a member. */
  readonly joins: ReadonlyMap<number, ReadonlyArray<Join>>
  readonly firstServerTimeNs: bigint | undefined
}

/** Each installation's row, messages and (while active) view of the group. */
const heldViews = (ctx: CheckContext, groupId: GroupId, dm: DmGroup | undefined) =>
  Effect.gen(function*() {
    const { clients, storages, world: { net } } = ctx
    const held = new Map<number, Held>()
    for (const [c, storage] of storages) {
      const row = yield* storage.groups.get(groupId)
      if (Option.isNone(row)) continue
      const messages = (yield* storage.messages.byConversation(row.value.dmId ?? (groupId as unknown as ConversationId), {
        direction: "asc"
      })).filter((m) => m.groupId === groupId)
      let info: Held["info"]
      if (row.value.membershipState !== "inactive") {
        if (dm === undefined) {
          const conversation = yield* clients.get(c)!.conversation(groupId as unknown as ConversationId)
          const debug = yield* conversation.debugInfo
          const members = yield* conversation.members
          info = {
            epoch: debug.epoch,
            authenticator: debug.epochAuthenticator,
            inboxes: members.map((m) => m.inboxId).sort(),
            installations: members.flatMap((m) => m.installationIds).sort(),
            name: (yield* conversation.metadata).name,
            settings: Schema.encodeSync(GroupMetadataJson)(yield* conversation.metadata)
          }
        } else {
          // The DM handle speaks for its primary group: read this one's state itself.
          const view = net.crypto.view(yield* net.crypto.deserialize(row.value.mlsState))
          info = {
            epoch: view.epoch,
            authenticator: view.epochAuthenticator,
            inboxes: [...new Set(view.members.map((m) => m.inboxId))].sort(),
            installations: view.members.map((m) => m.installationId).sort()
          }
        }
      }
      held.set(c, info === undefined ? { row: row.value, messages } : { row: row.value, messages, info })
    }
    return held
  })

/**
 * Nobody is in a group unless a member asked for its inbox (a lying delivery service cannot put
 * its own device in), and every text is by the inbox that sent it.
 */
const checkAuthorship = (ctx: CheckContext, facts: Pick<GroupFacts, "groupId" | "label" | "dm" | "held">) => {
  const { inboxName, name, violate, world } = ctx
  const { dm, groupId, held, label } = facts
  const invited = dm === undefined ? world.invited.get(world.groups.indexOf(groupId)) : undefined
  for (const [c, view] of held) {
    for (const inbox of view.info?.inboxes ?? []) {
      if (invited !== undefined && !invited.has(inbox as InboxId)) {
        violate("uninvited-member", `${label}: ${name(c)} sees ${inboxName(inbox)} as a member, whom nobody added`)
      }
    }
    for (const m of view.messages) {
      // (A deleted message's text is erased: MessagingInvariants checks those.)
      if (m.kind !== "text" || m.deleted) continue
      // Every text the run sends names its sending installation: "m<op>-<installation>".
      const sender = /^m\d+-(\S+)$/.exec(m.content)?.[1]
      const install = world.installs.find((i) => i.name === sender)
      if (install === undefined || world.inboxIds[install.inbox] !== m.senderInboxId) {
        violate(
          "misattributed",
          `${label}: ${name(c)} holds "${m.content}" as sent by ${inboxName(m.senderInboxId)}, who did not send it`
        )
      }
    }
  }
}

/**
 * Which inboxes were members at each epoch. A DM's never change once its peer is in; a group's
 * come from the transcript every member writes.
 */
const membersByEpoch = (
  ctx: CheckContext,
  facts: Pick<GroupFacts, "label" | "creator" | "dm" | "held" | "finalEpoch">
): ReadonlyArray<ReadonlySet<string>> => {
  const { clients, inboxOf, name, violate, world } = ctx
  const { creator, dm, finalEpoch, held, label } = facts
  const membersAt: Array<Set<string>> = []
  const creatorInbox = creator === undefined ? undefined : inboxOf(creator)
  if (dm !== undefined) {
    const pair = new Set(dm.pair.map((i) => world.inboxIds[i]!))
    for (let e = 0n; e <= finalEpoch; e++) {
      membersAt.push(e === 0n ? new Set(creatorInbox === undefined ? pair : [creatorInbox]) : pair)
    }
  } else {
    const changes = new Map<bigint, { added: Set<string>; removed: Set<string> }>()
    for (const [c, view] of held) {
      const self = clients.get(c)!
      for (const m of view.messages) {
        if (m.kind !== "membershipChange") continue
        const change = Schema.decodeUnknownOption(MembershipChangeJson)(m.content)
        if (Option.isNone(change)) {
          violate("transcript", `${name(c)}: ${label} has an undecodable membership change`)
          continue
        }
        // An installation's record of its own removal names its inbox even when only the
        // installation went (a revoked device); the committer records what really changed.
        if (change.value.removedInboxes.includes(self.inboxId)) continue
        const entry = changes.get(change.value.epoch) ?? { added: new Set(), removed: new Set() }
        for (const i of change.value.addedInboxes) entry.added.add(i)
        for (const i of change.value.removedInboxes) entry.removed.add(i)
        changes.set(change.value.epoch, entry)
      }
    }
    let members = new Set<string>(creatorInbox === undefined ? [] : [creatorInbox])
    for (let e = 0n; e <= finalEpoch; e++) {
      const change = changes.get(e)
      if (change !== undefined) {
        members = new Set([...members, ...change.added].filter((i) => !change.removed.has(i)))
      }
      membersAt.push(members)
    }
  }
  return membersAt
}

/**
 * Where each installation joined: at creation, or at the commit its welcome names. `joins` counts
 * only real welcomes (who surely got in); `mayHaveJoined` also the forged ones (who might
 * conceivably have), so neither check accuses wrongly.
 */
const joinsOf = (ctx: CheckContext, groupId: GroupId, creator: number | undefined, winners: ReadonlyMap<bigint, bigint>) => {
  const joins = new Map<number, Array<Join>>()
  const mayHaveJoined = new Map<number, Array<Join>>()
  const addJoin = (map: Map<number, Array<Join>>, c: number, join: Join) =>
    map.set(c, [...(map.get(c) ?? []), join].sort((a, b) => (a.sequence < b.sequence ? -1 : 1)))
  if (creator !== undefined) {
    addJoin(joins, creator, { epoch: 0n, sequence: 0n })
    addJoin(mayHaveJoined, creator, { epoch: 0n, sequence: 0n })
  }
  for (const w of ctx.welcomes.get(groupId) ?? []) {
    const epoch = winners.get(w.commitSequenceId)
    if (epoch === undefined) continue
    if (!w.forged) addJoin(joins, w.c, { epoch, sequence: w.commitSequenceId })
    addJoin(mayHaveJoined, w.c, { epoch, sequence: w.commitSequenceId })
  }
  return { joins, mayHaveJoined }
}

/** Every current installation of every member got in, and a DM's group got its peer. */
const checkMembersJoined = (ctx: CheckContext, facts: GroupFacts) =>
  Effect.gen(function*() {
    const { byInstallation, clients, currentOf, inboxName, installationName, storages, violate, world } = ctx
    const { dm, expectedMembers, finalEpoch, groupId, held, label, optionalInstallations } = facts
    // A deserted group (its last members asked to leave and nobody remained to commit the
    // removal, so they went inactive themselves) takes in no new devices: nobody is there.
    const deserted = held.size > 0 && [...held.values()].every((v) => v.row.membershipState === "inactive")
    // An installation revoked right after its commit added devices could not send their
    // welcomes (the service takes nothing more from it): those devices never join.
    const orphaning = (yield* Effect.forEach(storages.values(), (s) => s.intents.byState(["Error"])))
      .flat()
      .some((i) => i.groupId === groupId && (i.error ?? "").startsWith(WELCOMES_UNDELIVERABLE))
    for (const inbox of deserted || orphaning ? [] : expectedMembers) {
      for (const installation of currentOf(inbox)) {
        // Below the minimum it may be left out; but once in the members' tree it must hold the group.
        if (optionalInstallations.includes(installation) && !listedByMembers(held, installation)) continue
        const c = byInstallation.get(installation)
        const view = c === undefined ? undefined : held.get(c)
        if (view?.info === undefined) {
          violate(
            "member-not-joined",
            `${label}: ${installationName(installation)} is a current installation of ${inboxName(inbox)}, a member at epoch ${finalEpoch}, but ${
              view === undefined ? "never joined" : `is ${view.row.membershipState}`
            }`
          )
        }
      }
    }
    // A DM only revoked devices hold never went out (the device crashed before its commit
    // and was revoked before it could retry): the service takes nothing more from them.
    const heldOnlyByRevoked = [...held.keys()].every((c) => {
      const client = clients.get(c)!
      return !currentOf(client.inboxId).has(client.installationId)
    })
    const peerMissing = finalEpoch === 0n || dm?.pair.some((i) => !expectedMembers.includes(world.inboxIds[i]!))
    if (dm !== undefined && peerMissing && !heldOnlyByRevoked) {
      violate("dm-group-without-peer", `${label}: the DM group never got both inboxes (topic at epoch ${finalEpoch})`)
    }
  })

/**
 * Members converge: one epoch (the topic's), one authenticator and one settings per epoch, the
 * transcript's members and the identity logs' installations, the name the run gave, no super
 * admin nobody made one, and nobody active who is no longer a member.
 */
const checkViews = (ctx: CheckContext, facts: GroupFacts) => {
  const { clients, inboxName, installationName, name, violate, world } = ctx
  const { creator, dm, expectedInstallations, expectedMembers, finalEpoch, held, label, optionalInstallations } = facts
  const requiredInstallations = expectedInstallations.filter((i) => !optionalInstallations.includes(i))
  const authenticators = new Map<bigint, Set<string>>()
  /** One settings per epoch: every member at an epoch reads the same metadata, roles, policies and minimum. */
  const settingsAt = new Map<bigint, string>()
  const g = Number(label.slice(1))
  for (const [c, view] of held) {
    if (view.info === undefined) continue
    const self = clients.get(c)!
    if (view.info.settings !== undefined) {
      // A super admin nobody made one through the API got there by a commit the policy forbade.
      const { superAdmins } = JSON.parse(view.info.settings) as { readonly superAdmins: ReadonlyArray<InboxId> }
      const allowed = new Set([
        ...(creator === undefined ? [] : [world.inboxIds[world.installs[creator]!.inbox]]),
        ...(world.promoted.get(g) ?? [])
      ])
      for (const inbox of superAdmins.filter((i) => !allowed.has(i))) {
        violate("forbidden-commit-applied", `${label}: ${name(c)} holds ${inbox} as super admin; nobody made it one`)
      }
      const seen = settingsAt.get(view.info.epoch)
      if (seen === undefined) settingsAt.set(view.info.epoch, view.info.settings)
      else if (seen !== view.info.settings) {
        violate("divergent-settings", `${label}: ${name(c)} reads ${view.info.settings} at epoch ${view.info.epoch}; another member reads ${seen}`)
      }
    }
    if (!expectedMembers.includes(self.inboxId)) {
      violate("non-member-active", `${label}: ${name(c)} is active at epoch ${view.info.epoch} but its inbox is not a member at epoch ${finalEpoch}`)
      continue
    }
    if (!expectedInstallations.includes(self.installationId)) {
      violate(
        "non-member-active",
        `${label}: ${name(c)} is active at epoch ${view.info.epoch} but is no current installation of its inbox (revoked)`
      )
      continue
    }
    if (view.info.epoch !== finalEpoch) {
      violate("divergent-epoch", `${label}: ${name(c)} is at epoch ${view.info.epoch}; the topic's order says ${finalEpoch}`)
    }
    if (dm === undefined && !world.renamed.has(g) && view.info.name !== label) {
      violate("divergent-metadata", `${label}: ${name(c)} reads the group's name as ${JSON.stringify(view.info.name)}`)
    }
    const at = authenticators.get(view.info.epoch) ?? new Set()
    at.add(view.info.authenticator)
    authenticators.set(view.info.epoch, at)
    if (view.info.inboxes.join(",") !== expectedMembers.join(",")) {
      violate(
        "divergent-members",
        `${label}: ${name(c)} sees members [${view.info.inboxes.map(inboxName).join(",")}], the transcript says [${
          expectedMembers.map(inboxName).join(",")
        }]`
      )
    } else if (
      requiredInstallations.some((i) => !view.info!.installations.includes(i)) ||
      view.info.installations.some((i) => !expectedInstallations.includes(i))
    ) {
      violate(
        "installations-not-in-sync",
        `${label}: ${name(c)} sees installations [${view.info.installations.map(installationName).join(",")}], the identity logs of its members say [${
          expectedInstallations.map(installationName).join(",")
        }]${optionalInstallations.length === 0 ? "" : ` (below the minimum, either way: ${optionalInstallations.map(installationName).join(",")})`}`
      )
    }
  }
  for (const [epoch, set] of authenticators) {
    if (set.size > 1) violate("divergent-authenticator", `${label}: ${set.size} different epoch authenticators at epoch ${epoch}`)
  }
}

/** The group's minimum version at its final epoch, as its members read it (they agree: `checkViews`). */
const finalMinimum = (held: ReadonlyMap<number, Held>, finalEpoch: bigint): number => {
  for (const view of held.values()) {
    if (view.info?.settings === undefined || view.info.epoch !== finalEpoch) continue
    return (JSON.parse(view.info.settings) as { readonly minProtocolVersion?: number }).minProtocolVersion ?? 1
  }
  return 1
}

/** The version an installation of the run advertises: its device's earlier build, or the run's own. */
const versionOf = (ctx: CheckContext, installation: string): number => {
  const c = ctx.byInstallation.get(installation)
  return (c === undefined ? undefined : ctx.world.installs[c]?.protocolVersion) ?? Number.POSITIVE_INFINITY
}

/** Checks one group; `creator` made it (if booted), `dm` is set for a DM's group. */
export const checkGroup = (
  ctx: CheckContext,
  groupId: GroupId,
  label: string,
  creator: number | undefined,
  dm: DmGroup | undefined
) =>
  Effect.gen(function*() {
    const held = yield* heldViews(ctx, groupId, dm)
    checkAuthorship(ctx, { groupId, label, dm, held })
    const envelopes = yield* readTopic(ctx.world, groupId)
    const { claimed, finalEpoch, inForce, winners } = yield* walkTopic(ctx.world, groupId, envelopes)
    const membersAt = membersByEpoch(ctx, { label, creator, dm, held, finalEpoch })
    const expectedMembers = [...(membersAt[Number(finalEpoch)] ?? [])].sort()
    const expectedInstallations = expectedMembers.flatMap((inbox) => [...ctx.currentOf(inbox)]).sort()
    const floor = finalMinimum(held, finalEpoch)
    const facts: GroupFacts = {
      groupId,
      label,
      creator,
      dm,
      held,
      claimed,
      inForce,
      finalEpoch,
      memberThroughout: (inbox, from, to) => {
        for (let e = from; e <= to; e++) if (!membersAt[Number(e)]?.has(inbox)) return false
        return true
      },
      expectedMembers,
      expectedInstallations,
      optionalInstallations: expectedInstallations.filter((i) => versionOf(ctx, i) < floor),
      ...joinsOf(ctx, groupId, creator, winners)
    }
    for (const installation of facts.optionalInstallations) {
      if (!listedByMembers(held, installation)) ctx.world.leftOutBelowMinimum.push(`${label}: ${ctx.installationName(installation)}`)
    }
    yield* checkMembersJoined(ctx, facts)
    checkViews(ctx, facts)
    checkDelivery(ctx, facts, checkHeldMessages(ctx, facts))
    const checked: CheckedGroup = { groupId, label, held, joins: facts.joins, firstServerTimeNs: envelopes[0]?.serverTimeNs }
    return checked
  })
