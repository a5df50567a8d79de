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
import { Effect, Either, Option, Schema } from "effect"
import { sha256Hex } from "../domain/Bytes.ts"
import { MembershipChangeJson } from "../domain/Content.ts"
import * as IdentityLog from "../domain/IdentityLog.ts"
import type { ConversationId, GroupId, InboxId, InstallationId } from "../domain/Ids.ts"
import { GroupMetadataJson } from "../domain/Model.ts"
import type { StoredGroup, StoredIntent, StoredMessage } from "../domain/Stored.ts"
import type { GroupMessageEnvelope } from "../domain/Wire.ts"
import { WelcomePayloadJson } from "../domain/Wire.ts"
import type { Violation } from "./Report.ts"
import type { TestClient } from "../testing.ts"
import { WELCOMES_UNDELIVERABLE } from "../services/GroupSync.ts"
import * as HistoryInvariants from "./HistoryInvariants.ts"
import { booted, clientName, type World } from "./World.ts"

const short = (hex: string) => hex.slice(0, 8)

/** One installation's view of one group. */
interface Held {
  readonly row: StoredGroup
  readonly messages: ReadonlyArray<StoredMessage>
  readonly info?: {
    readonly epoch: bigint
    readonly authenticator: string
    /** Member inboxes, sorted. */
    readonly inboxes: ReadonlyArray<string>
    /** Member installations, sorted. */
    readonly installations: ReadonlyArray<string>
    /** The group's name as this member reads it (groups only; the simulation names each by its label). */
    readonly name?: string | null
    /** All the group's governed settings (metadata, roles, policies, minimum version) as JSON. */
    readonly settings?: string
  }
}

/** An MLS group beneath a DM, as found in the clients' stores. */
export interface DmGroup {
  readonly groupId: GroupId
  readonly dmId: ConversationId
  /**
   * `dm(c0,c3)@c3`: the DM's inboxes and the installation that created the group (`@c3#2` for
   * its second one). Not a rank by creation time: both sides of a race create at once.
   */
  readonly label: string
  /** The installation that created it (the one whose row names its own inbox as adder). */
  readonly creator: number | undefined
  /** The two inboxes, by index. */
  readonly pair: readonly [number, number]
}

/** A DM in traces: `dm(c0,c3)`, its inboxes in index order (not in the order of their ids). */
export const dmName = (pair: readonly [number, number]) => `dm(c${pair[0]},c${pair[1]})`

/** A whole group topic as the server holds it. */
export const readTopic = (world: World, groupId: GroupId) => world.net.inspect.groupMessages(groupId)

/** A whole welcome topic as the server holds it. */
export const readWelcomes = (world: World, installationId: InstallationId) => world.net.inspect.welcomes(installationId)

/**
 * A client's welcomes as only it can read them: opened with its own key packages (what it
 * cannot open, it could never act on).
 */
export const openWelcomes = (world: World, client: TestClient) =>
  Effect.gen(function*() {
    const storage = yield* world.net.storage(client)
    const bundles = (yield* storage.keyPackages.list.pipe(Effect.orDie)).map((k) => ({
      ref: k.ref,
      publicPackage: k.publicPackage,
      privatePackage: k.privatePackage
    }))
    const opened = yield* Effect.forEach(yield* readWelcomes(world, client.installationId), (envelope) =>
      world.net.crypto.openSealed(envelope.payload, bundles).pipe(
        Effect.map((o) => Option.some({ envelope, plaintext: o.plaintext })),
        Effect.orElseSucceed(() => Option.none())
      ))
    return opened.flatMap((o) => Option.isSome(o) ? [o.value] : [])
  })

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

/** Epochs along the topic: the epoch each envelope claims, the one in force where it lies, the winning commits. */
const walkTopic = (world: World, groupId: GroupId, envelopes: ReadonlyArray<GroupMessageEnvelope>) =>
  Effect.gen(function*() {
    let epoch = 0n
    const claimed = new Map<bigint, { readonly kind: string; readonly epoch: bigint }>()
    const inForce = new Map<bigint, bigint>()
    /** Sequence of each winning commit -> the epoch it started. */
    const winners = new Map<bigint, bigint>()
    for (const envelope of envelopes) {
      inForce.set(envelope.sequenceId, epoch)
      const header = yield* world.net.crypto.inspect(envelope.payload).pipe(Effect.option)
      if (Option.isNone(header) || header.value.groupId !== groupId) continue
      claimed.set(envelope.sequenceId, { kind: header.value.kind, epoch: header.value.epoch })
      // The first commit for the current epoch wins; later ones for it lost the race. A forged
      // commit the policy forbids is skipped by every member, as if it were not there.
      const forged = world.forgedCommits.has(sha256Hex(envelope.payload))
      if (header.value.kind === "commit" && header.value.epoch === epoch && !forged) {
        epoch++
        winners.set(envelope.sequenceId, epoch)
      }
    }
    return { finalEpoch: epoch, claimed, inForce, winners }
  })

/** What the identity logs say: each inbox's current installations, and when devices came and went. */
const identityTruth = (world: World) =>
  Effect.gen(function*() {
    const current = new Map<string, ReadonlySet<string>>()
    const registeredAt = new Map<string, bigint>()
    const revokedAt = new Map<string, bigint>()
    const problems: Array<string> = []
    for (const inboxId of world.inboxIds) {
      const [log] = yield* world.net.delivery.getIdentityUpdates([{ inboxId, afterSequence: 0 }])
      let state: IdentityLog.InboxState | undefined
      for (const envelope of log?.updates ?? []) {
        const next = IdentityLog.applyUpdate(state, envelope.update)
        if (Either.isLeft(next)) {
          problems.push(`identity log of inbox ${short(inboxId)}: ${next.left.message}`)
          break
        }
        state = next.right
        const action = envelope.update.action
        if (action._tag === "AddInstallation") registeredAt.set(action.installationId, envelope.serverTimeNs)
        if (action._tag === "RevokeInstallation") revokedAt.set(action.installationId, envelope.serverTimeNs)
      }
      current.set(inboxId, new Set(state === undefined ? [] : IdentityLog.currentInstallations(state)))
    }
    return { current, registeredAt, revokedAt, problems }
  })

/** A welcome on an installation's topic: which group, and the commit that added it. */
interface WelcomeSeen {
  readonly c: number
  readonly commitSequenceId: bigint
  readonly serverTimeNs: bigint
  /** Put there by the simulation's hostile input, not by a member. */
  readonly forged: boolean
}

/** A point where an installation joined a group: the epoch it started at, and that commit's place. */
interface Join {
  readonly epoch: bigint
  readonly sequence: bigint
}

const decodeWelcome = Schema.decodeUnknownOption(WelcomePayloadJson)

export const check = (world: World, dms: ReadonlyArray<DmGroup>) =>
  Effect.gen(function*() {
    const violations: Array<Violation> = []
    const violate = (invariant: string, detail: string) => violations.push({ invariant, detail })
    const { net } = world
    const all = booted(world)
    const clients = new Map(all)
    const name = (c: number) => clientName(c, world)
    const byInstallation = new Map<string, number>(all.map(([c, client]) => [client.installationId, c]))
    const inboxIndex = new Map<string, number>(world.inboxIds.map((id, i) => [id, i]))
    const inboxName = (inbox: string) => {
      const i = inboxIndex.get(inbox)
      return i === undefined ? `inbox ${short(inbox)}` : name(i)
    }
    const installationName = (id: string) => {
      const c = byInstallation.get(id)
      return c === undefined ? `installation ${short(id)}` : name(c)
    }
    const inboxOf = (c: number): InboxId => world.inboxIds[world.installs[c]!.inbox]!

    const truth = yield* identityTruth(world)
    const heldBySibling = yield* HistoryInvariants.holders(world)
    for (const problem of truth.problems) violate("identity-log", problem)
    const currentOf = (inbox: string) => truth.current.get(inbox) ?? new Set<string>()
    const revokedAt = (c: number) => truth.revokedAt.get(clients.get(c)!.installationId)

    // ---- per installation: intents, message states, forks, leaving ----
    const storages = new Map<number, Effect.Effect.Success<ReturnType<typeof net.storage>>>()
    for (const [c, client] of all) storages.set(c, yield* net.storage(client))
    for (const [c, storage] of storages) {
      const stuck = yield* storage.intents.byState(["ToPublish", "Published", "Committed"])
      for (const intent of stuck) {
        violate("stuck-intent", `${name(c)}: ${intent.kind} intent ${intent.id} of group ${intent.groupId} left ${intent.state}`)
      }
      const failed = yield* storage.intents.byState(["Error"])
      for (const intent of failed) yield* checkFailedIntent(c, intent)
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

    function checkFailedIntent(c: number, intent: StoredIntent) {
      return Effect.gen(function*() {
        if (intent.kind !== "SendMessage") return
        const data = intent.data
        if (data._tag !== "SendMessage") return
        const row = yield* storages.get(c)!.messages.get(data.messageId)
        if (Option.isSome(row) && row.value.deliveryStatus !== "failed") {
          violate(
            "failed-intent-message-not-failed",
            `${name(c)}: SendMessage intent ${intent.id} is Error but its message "${data.text}" is ${row.value.deliveryStatus}`
          )
        }
      })
    }

    // ---- welcomes: where each installation was invited ----
    const welcomes = new Map<GroupId, Array<WelcomeSeen>>()
    for (const [c, client] of all) {
      const forged = world.forgedWelcomes.get(c) ?? new Set<string>()
      for (const { envelope, plaintext } of yield* openWelcomes(world, client)) {
        const payload = decodeWelcome(new TextDecoder().decode(plaintext))
        if (Option.isNone(payload)) continue
        const seen: WelcomeSeen = {
          c,
          commitSequenceId: payload.value.commitSequenceId,
          serverTimeNs: envelope.serverTimeNs,
          forged: forged.has(sha256Hex(envelope.payload))
        }
        welcomes.set(payload.value.groupId, [...(welcomes.get(payload.value.groupId) ?? []), seen])
      }
    }

    // ---- per group (DM groups included) ----
    interface Checked {
      readonly groupId: GroupId
      readonly label: string
      readonly held: ReadonlyMap<number, Held>
      /** Joins backed by a real welcome (or creation): where an installation surely was a member. */
      readonly joins: ReadonlyMap<number, ReadonlyArray<Join>>
      readonly firstServerTimeNs: bigint | undefined
    }
    const checked = new Map<GroupId, Checked>()

    const checkGroup = (groupId: GroupId, label: string, creator: number | undefined, dm: DmGroup | undefined) =>
      Effect.gen(function*() {
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

        const envelopes = yield* readTopic(world, groupId)
        const { claimed, finalEpoch, inForce, winners } = yield* walkTopic(world, groupId, envelopes)

        // Nobody is in a group unless a member asked for its inbox (a lying delivery service
        // cannot put its own device in), and every text is by the inbox that sent it.
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

        // Which inboxes were members at each epoch. A DM's never change once its peer is in;
        // a group's come from the transcript every member writes.
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
        const memberThroughout = (inbox: string, from: bigint, to: bigint) => {
          for (let e = from; e <= to; e++) if (!membersAt[Number(e)]?.has(inbox)) return false
          return true
        }
        const expectedMembers = [...(membersAt[Number(finalEpoch)] ?? [])].sort()
        const expectedInstallations = expectedMembers.flatMap((inbox) => [...currentOf(inbox)]).sort()

        // Where each installation joined: at creation, or at the commit its welcome names.
        // `joins` counts only real welcomes (who surely got in); `mayHaveJoined` also the
        // forged ones (who might conceivably have), so neither check accuses wrongly.
        const joins = new Map<number, Array<Join>>()
        const mayHaveJoined = new Map<number, Array<Join>>()
        const addJoin = (map: Map<number, Array<Join>>, c: number, join: Join) =>
          map.set(c, [...(map.get(c) ?? []), join].sort((a, b) => (a.sequence < b.sequence ? -1 : 1)))
        if (creator !== undefined) {
          addJoin(joins, creator, { epoch: 0n, sequence: 0n })
          addJoin(mayHaveJoined, creator, { epoch: 0n, sequence: 0n })
        }
        for (const w of welcomes.get(groupId) ?? []) {
          const epoch = winners.get(w.commitSequenceId)
          if (epoch === undefined) continue
          if (!w.forged) addJoin(joins, w.c, { epoch, sequence: w.commitSequenceId })
          addJoin(mayHaveJoined, w.c, { epoch, sequence: w.commitSequenceId })
        }
        /** The last join at or before `epoch`. */
        const joinedBy = (list: ReadonlyArray<Join> | undefined, epoch: bigint) =>
          (list ?? []).filter((j) => j.epoch <= epoch).at(-1)

        // ---- convergence of state ----
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
          } else if (view.info.installations.join(",") !== expectedInstallations.join(",")) {
            violate(
              "installations-not-in-sync",
              `${label}: ${name(c)} sees installations [${view.info.installations.map(installationName).join(",")}], the identity logs of its members say [${
                expectedInstallations.map(installationName).join(",")
              }]`
            )
          }
        }
        for (const [epoch, set] of authenticators) {
          if (set.size > 1) violate("divergent-authenticator", `${label}: ${set.size} different epoch authenticators at epoch ${epoch}`)
        }

        // ---- messages ----
        const idAtSequence = new Map<bigint, { readonly id: string; readonly c: number }>()
        const rowsById = new Map<number, Map<string, StoredMessage>>()
        for (const [c, view] of held) {
          const self = clients.get(c)!
          const byId = new Map<string, StoredMessage>()
          rowsById.set(c, byId)
          const texts = new Map<string, number>()
          let lastSequence = 0n
          // Where this installation recorded its own removal (commit sequences).
          const removals = view.messages.flatMap((m) => {
            if (m.kind !== "membershipChange" || m.sequenceId === null) return []
            const change = Schema.decodeUnknownOption(MembershipChangeJson)(m.content)
            return Option.isSome(change) && change.value.removedInboxes.includes(self.inboxId) ? [m.sequenceId] : []
          })
          for (const m of view.messages) {
            byId.set(m.id, m)
            if (m.kind === "text" && !m.deleted) texts.set(m.content, (texts.get(m.content) ?? 0) + 1)
            if (m.deliveryStatus === "unpublished") {
              violate("stuck-unpublished", `${name(c)}: ${label} message "${m.content}" is still unpublished`)
            }
            if (m.sequenceId === null) continue
            if (m.sequenceId <= lastSequence) {
              violate("order", `${name(c)}: ${label} lists sequence ${m.sequenceId} after ${lastSequence}`)
            }
            lastSequence = m.sequenceId > lastSequence ? m.sequenceId : lastSequence
            const first = idAtSequence.get(m.sequenceId)
            if (first === undefined) idAtSequence.set(m.sequenceId, { id: m.id, c })
            else if (first.id !== m.id) {
              violate(
                "order",
                `${label}: sequence ${m.sequenceId} is message ${short(first.id)} at ${name(first.c)} but ${short(m.id)} at ${name(c)}`
              )
            }
            // Nobody may hold a message of an epoch it was not in, or one sent after its removal.
            const own = m.senderInstallationId === self.installationId
            if (m.kind === "text" && !own) {
              const claim = claimed.get(m.sequenceId)
              const position = inForce.get(m.sequenceId)
              if (claim === undefined || position === undefined) {
                violate("phantom-message", `${name(c)}: ${label} holds "${m.content}" at sequence ${m.sequenceId}, which is not a message of this group`)
                continue
              }
              if (!memberThroughout(self.inboxId, claim.epoch, position)) {
                violate(
                  "read-after-removal",
                  `${name(c)}: ${label} holds "${m.content}" (epoch ${claim.epoch}, sequence ${m.sequenceId}, epoch in force ${position}) but its inbox was not a member throughout`
                )
                continue
              }
              const join = joinedBy(mayHaveJoined.get(c), claim.epoch)
              // Read before this device joined, by another of its inbox: it came with the history.
              if (join === undefined && heldBySibling(m.id, self.installationId)) continue
              if (join === undefined) {
                violate(
                  "read-before-join",
                  `${name(c)}: ${label} holds "${m.content}" (epoch ${claim.epoch}, sequence ${m.sequenceId}) but joined only later (${
                    (mayHaveJoined.get(c) ?? []).map((j) => `at epoch ${j.epoch} by sequence ${j.sequence}`).join(", ") || "no welcome"
                  })`
                )
                continue
              }
              const removedSince = removals.find((r) => r > join.sequence && r < m.sequenceId!)
              if (removedSince !== undefined) {
                violate(
                  "read-after-removal",
                  `${name(c)}: ${label} holds "${m.content}" (sequence ${m.sequenceId}) sent after its removal at sequence ${removedSince}`
                )
              }
            }
          }
          for (const [text, n] of texts) {
            if (n > 1) violate("stored-twice", `${name(c)}: ${label} stores "${text}" ${n} times`)
          }
        }

        // Every published message reaches every installation that was in the group from its
        // epoch to where it landed; a failed one reaches nobody.
        for (const [c, view] of held) {
          const self = clients.get(c)!
          for (const m of view.messages) {
            if (m.kind !== "text" || m.senderInstallationId !== self.installationId) continue
            if (m.deliveryStatus === "failed") {
              for (const [other, byId] of rowsById) {
                if (other !== c && byId.has(m.id)) {
                  violate("failed-but-delivered", `${label}: "${m.content}" failed at its sender ${name(c)} but ${name(other)} stores it`)
                }
              }
              continue
            }
            if (m.deliveryStatus !== "published" || m.sequenceId === null) continue
            const claim = claimed.get(m.sequenceId)
            const position = inForce.get(m.sequenceId)
            if (claim === undefined || position === undefined || claim.kind !== "application") {
              violate("phantom-message", `${name(c)}: its "${m.content}" in ${label} is marked published at sequence ${m.sequenceId}, which is not its message`)
              continue
            }
            if (claim.epoch > position) {
              violate("future-epoch-message", `${label}: "${m.content}" claims epoch ${claim.epoch} but landed where epoch ${position} is in force`)
              continue
            }
            if (position - claim.epoch > BigInt(world.maxPastEpochs)) {
              violate(
                "undecryptable-send",
                `${label}: "${m.content}" by ${name(c)} was encrypted at epoch ${claim.epoch} but landed at epoch ${position}: older than maxPastEpochs (${world.maxPastEpochs})`
              )
              continue
            }
            for (const [other, otherClient] of clients) {
              if (other === c) continue
              const join = joinedBy(joins.get(other), claim.epoch)
              if (join === undefined || !memberThroughout(otherClient.inboxId, join.epoch, position)) continue
              const revoked = revokedAt(other)
              // A revoked device is removed by some commit after its revocation: what landed
              // before the revocation was surely still for it, if it had joined by then. From
              // its revocation on, the delivery service no longer serves it its welcomes.
              // Nor does it owe what lies past the epoch it had reached when it was cut off (a
              // re-add it had not read yet when revoked).
              const reached = held.get(other)?.row.epoch
              if (
                revoked !== undefined &&
                (m.sentAtNs >= revoked || reached === undefined || claim.epoch > reached)
              ) continue
              const got = rowsById.get(other)?.get(m.id)
              if (got === undefined) {
                violate(
                  "lost-message",
                  `${label}: "${m.content}" by ${name(c)} (epoch ${claim.epoch}, sequence ${m.sequenceId}) is missing at ${name(other)}, in the group from epoch ${join.epoch} throughout`
                )
              } else if (got.sequenceId !== m.sequenceId) {
                violate("order", `${label}: "${m.content}" is at sequence ${got.sequenceId} at ${name(other)}, ${m.sequenceId} at its sender`)
              }
            }
          }
        }
        checked.set(groupId, { groupId, label, held, joins, firstServerTimeNs: envelopes[0]?.serverTimeNs })
      })

    for (const [g, groupId] of world.groups.entries()) {
      if (groupId !== undefined) yield* checkGroup(groupId, `g${g}`, world.creators[g], undefined)
    }
    for (const dm of dms) yield* checkGroup(dm.groupId, dm.label, dm.creator, dm)

    // ---- DM conversations, as the app sees them ----
    const dmIds = [...new Set(dms.map((d) => d.dmId))]
    const label = (dm: ConversationId) => dmName(dms.find((d) => d.dmId === dm)!.pair)
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

    for (const dm of dmIds) {
      const groups = dms.filter((d) => d.dmId === dm)
      const pair = groups[0]!.pair
      // Installations of both inboxes that are current and booted.
      const parties = all
        .filter(([c, client]) => pair.includes(world.installs[c]!.inbox) && currentOf(client.inboxId).has(client.installationId))
        .map(([c]) => c)
      const createdAt = (d: DmGroup) => {
        const row = d.creator === undefined ? undefined : checked.get(d.groupId)?.held.get(d.creator)?.row
        return row?.createdAtNs
      }
      const creations = groups.map(createdAt).filter((t): t is bigint => t !== undefined)
      const firstCreation = creations.reduce<bigint | undefined>((a, t) => (a === undefined || t < a ? t : a), undefined)

      // Every installation that existed before the DM began is in all its groups from their
      // start: they all hold the same messages.
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

      // Once the last message landed after everything else that touched the DM (a group
      // created, a welcome, a failed send), every installation sends on that message's group.
      const published = [...texts.values()].flatMap((m) => [...m.values()])
      const last = published.reduce<StoredMessage | undefined>((a, m) => (a === undefined || m.sentAtNs > a.sentAtNs ? m : a), undefined)
      if (last === undefined) continue
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
      if (!settled) continue
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
    }
    return violations
  })
