/**
 * The invariants checked at quiescence. The delivery service's order of each group topic is
 * the truth: walking it gives the epoch in force at every position; the membership-change
 * transcript entries that the clients stored give who was a member at every epoch. From those,
 * each published message has a set of installations that must hold it, and nobody else may.
 */
import { Effect, Option, Schema } from "effect"
import { MembershipChangeJson } from "../domain/Content.ts"
import type { ConversationId, GroupId } from "../domain/Ids.ts"
import { IntentDataJson } from "../domain/Intent.ts"
import type { GroupRow, IntentRow, MessageRow } from "../domain/Rows.ts"
import type { GroupMessageEnvelope } from "../domain/Wire.ts"
import type { Violation } from "./Report.ts"
import { clientName, type World } from "./World.ts"

const short = (hex: string) => hex.slice(0, 8)

/** One client's view of one group. */
interface Held {
  readonly row: GroupRow
  readonly messages: ReadonlyArray<MessageRow>
  readonly info?: { readonly epoch: bigint; readonly authenticator: string; readonly members: ReadonlyArray<string> }
}

/** Reads a whole group topic, page by page. */
export const readTopic = (world: World, groupId: GroupId) =>
  Effect.gen(function*() {
    const all: Array<GroupMessageEnvelope> = []
    let cursor = 0n
    for (;;) {
      const page = yield* world.net.delivery.queryGroupMessages({ groupId, afterSequenceId: cursor })
      all.push(...page.items)
      if (page.next === undefined) return all
      cursor = page.next
    }
  })

/** Epochs along the topic: the epoch each envelope claims, and the one in force where it lies. */
const walkTopic = (world: World, groupId: GroupId, envelopes: ReadonlyArray<GroupMessageEnvelope>) =>
  Effect.gen(function*() {
    let epoch = 0n
    const claimed = new Map<bigint, { readonly kind: string; readonly epoch: bigint }>()
    const inForce = new Map<bigint, bigint>()
    for (const envelope of envelopes) {
      inForce.set(envelope.sequenceId, epoch)
      const header = yield* world.net.crypto.inspect(envelope.payload).pipe(Effect.option)
      if (Option.isNone(header) || header.value.groupId !== groupId) continue
      claimed.set(envelope.sequenceId, { kind: header.value.kind, epoch: header.value.epoch })
      // The first commit for the current epoch wins; later ones for it lost the race.
      if (header.value.kind === "commit" && header.value.epoch === epoch) epoch++
    }
    return { finalEpoch: epoch, claimed, inForce }
  })

export const check = (world: World) =>
  Effect.gen(function*() {
    const violations: Array<Violation> = []
    const violate = (invariant: string, detail: string) => violations.push({ invariant, detail })
    const { clients, net } = world
    const inboxToClient = new Map<string, number>(clients.map((client, c) => [client.inboxId, c]))
    const name = (inbox: string) => {
      const c = inboxToClient.get(inbox)
      return c === undefined ? `inbox ${short(inbox)}` : clientName(c)
    }

    // ---- per client: intents, message states, forks ----
    const storages = yield* Effect.forEach(clients, (client) => net.storage(client))
    for (const [c, storage] of storages.entries()) {
      const stuck = yield* storage.intents.byState(["ToPublish", "Published", "Committed"])
      for (const intent of stuck) {
        violate("stuck-intent", `${clientName(c)}: ${intent.kind} intent ${intent.id} of group ${short(intent.group_id)} left ${intent.state}`)
      }
      const failed = yield* storage.intents.byState(["Error"])
      for (const intent of failed) yield* checkFailedIntent(c, intent)
      const groups = yield* storage.groups.list({ includeInactive: true })
      for (const group of groups) {
        if (group.maybe_forked) {
          violate("forked", `${clientName(c)}: group ${short(group.id)} marked maybeForked (${group.fork_details ?? "?"})`)
        }
      }
      for (const sent of world.sent.filter((s) => s.c === c && s.confirmed)) {
        const row = yield* storage.messages.get(sent.id)
        if (Option.isNone(row) || row.value.delivery_status !== "published") {
          violate(
            "confirmed-send-not-published",
            `${clientName(c)}: send "${sent.text}" (op ${sent.op}) succeeded but the message is ${Option.isNone(row) ? "missing" : row.value.delivery_status}`
          )
        }
      }
    }

    function checkFailedIntent(c: number, intent: IntentRow) {
      return Effect.gen(function*() {
        if (intent.kind !== "SendMessage") return
        const data = Schema.decodeSync(IntentDataJson)(intent.data)
        if (data._tag !== "SendMessage") return
        const row = yield* storages[c]!.messages.get(data.messageId)
        if (Option.isSome(row) && row.value.delivery_status !== "failed") {
          violate(
            "failed-intent-message-not-failed",
            `${clientName(c)}: SendMessage intent ${intent.id} is Error but its message "${data.text}" is ${row.value.delivery_status}`
          )
        }
      })
    }

    // ---- per group ----
    for (const [g, groupId] of world.groups.entries()) {
      if (groupId === undefined) continue
      const creator = world.creators[g]
      const label = `g${g}`
      const conversationId = groupId as unknown as ConversationId

      const held = new Map<number, Held>()
      for (const [c, storage] of storages.entries()) {
        const row = yield* storage.groups.get(groupId)
        if (Option.isNone(row)) continue
        const messages = yield* storage.messages.byConversation(conversationId, { direction: "asc" })
        let info: Held["info"]
        if (row.value.membership_state !== "inactive") {
          const conversation = yield* clients[c]!.conversation(conversationId)
          const debug = yield* conversation.debugInfo
          const members = yield* conversation.members
          info = {
            epoch: debug.epoch,
            authenticator: debug.epochAuthenticator,
            members: members.map((m) => m.inboxId).sort()
          }
        }
        held.set(c, info === undefined ? { row: row.value, messages } : { row: row.value, messages, info })
      }

      const envelopes = yield* readTopic(world, groupId)
      const { claimed, finalEpoch, inForce } = yield* walkTopic(world, groupId, envelopes)

      // Who was a member at each epoch: the creator alone at 0, then the transcript's changes.
      const changes = new Map<bigint, { added: Set<string>; removed: Set<string> }>()
      for (const [c, view] of held) {
        for (const m of view.messages) {
          if (m.kind !== "membershipChange") continue
          const change = Schema.decodeUnknownOption(MembershipChangeJson)(m.content)
          if (Option.isNone(change)) {
            violate("transcript", `${clientName(c)}: ${label} has an undecodable membership change`)
            continue
          }
          const entry = changes.get(change.value.epoch) ?? { added: new Set(), removed: new Set() }
          for (const i of change.value.addedInboxes) entry.added.add(i)
          for (const i of change.value.removedInboxes) entry.removed.add(i)
          changes.set(change.value.epoch, entry)
        }
      }
      const membersAt: Array<Set<string>> = []
      let members = new Set<string>(creator === undefined ? [] : [clients[creator]!.inboxId])
      for (let e = 0n; e <= finalEpoch; e++) {
        const change = changes.get(e)
        if (change !== undefined) {
          members = new Set([...members, ...change.added].filter((i) => !change.removed.has(i)))
        }
        membersAt.push(members)
      }
      const memberThroughout = (inbox: string, from: bigint, to: bigint) => {
        for (let e = from; e <= to; e++) if (!membersAt[Number(e)]?.has(inbox)) return false
        return true
      }
      const expectedMembers = [...(membersAt[Number(finalEpoch)] ?? [])].sort()

      // ---- convergence of state ----
      for (const inbox of expectedMembers) {
        const c = inboxToClient.get(inbox)
        const view = c === undefined ? undefined : held.get(c)
        if (view?.info === undefined) {
          violate(
            "member-not-joined",
            `${label}: ${name(inbox)} is a member at epoch ${finalEpoch} but ${view === undefined ? "never joined" : `is ${view.row.membership_state}`}`
          )
        }
      }
      const authenticators = new Map<bigint, Set<string>>()
      for (const [c, view] of held) {
        if (view.info === undefined) continue
        const inbox = clients[c]!.inboxId
        if (!expectedMembers.includes(inbox)) {
          violate("non-member-active", `${label}: ${clientName(c)} is active at epoch ${view.info.epoch} but is not a member at epoch ${finalEpoch}`)
          continue
        }
        if (view.info.epoch !== finalEpoch) {
          violate("divergent-epoch", `${label}: ${clientName(c)} is at epoch ${view.info.epoch}; the topic's order says ${finalEpoch}`)
        }
        const at = authenticators.get(view.info.epoch) ?? new Set()
        at.add(view.info.authenticator)
        authenticators.set(view.info.epoch, at)
        if (view.info.members.join(",") !== expectedMembers.join(",")) {
          violate(
            "divergent-members",
            `${label}: ${clientName(c)} sees members [${view.info.members.map(name).join(",")}], the transcript says [${expectedMembers.map(name).join(",")}]`
          )
        }
      }
      for (const [epoch, set] of authenticators) {
        if (set.size > 1) violate("divergent-authenticator", `${label}: ${set.size} different epoch authenticators at epoch ${epoch}`)
      }

      // ---- messages ----
      const idAtSequence = new Map<bigint, { readonly id: string; readonly c: number }>()
      const rowsById = new Map<number, Map<string, MessageRow>>()
      for (const [c, view] of held) {
        const self = clients[c]!
        const byId = new Map<string, MessageRow>()
        rowsById.set(c, byId)
        const texts = new Map<string, number>()
        let lastSequence = 0n
        for (const m of view.messages) {
          byId.set(m.id, m)
          if (m.kind === "text") texts.set(m.content, (texts.get(m.content) ?? 0) + 1)
          if (m.delivery_status === "unpublished") {
            violate("stuck-unpublished", `${clientName(c)}: ${label} message "${m.content}" is still unpublished`)
          }
          if (m.sequence_id === null) continue
          if (m.sequence_id <= lastSequence) {
            violate("order", `${clientName(c)}: ${label} lists sequence ${m.sequence_id} after ${lastSequence}`)
          }
          lastSequence = m.sequence_id > lastSequence ? m.sequence_id : lastSequence
          const first = idAtSequence.get(m.sequence_id)
          if (first === undefined) idAtSequence.set(m.sequence_id, { id: m.id, c })
          else if (first.id !== m.id) {
            violate(
              "order",
              `${label}: sequence ${m.sequence_id} is message ${short(first.id)} at ${clientName(first.c)} but ${short(m.id)} at ${clientName(c)}`
            )
          }
          // Nobody may hold a message of an epoch it was not in, or one sent after its removal.
          const own = m.sender_installation_id === self.installationId
          if (m.kind === "text" && !own) {
            const claim = claimed.get(m.sequence_id)
            const position = inForce.get(m.sequence_id)
            if (claim === undefined || position === undefined) {
              violate("phantom-message", `${clientName(c)}: ${label} holds "${m.content}" at sequence ${m.sequence_id}, which is not a message of this group`)
            } else if (!memberThroughout(self.inboxId, claim.epoch, position)) {
              violate(
                "read-after-removal",
                `${clientName(c)}: ${label} holds "${m.content}" (epoch ${claim.epoch}, sequence ${m.sequence_id}, epoch in force ${position}) but was not a member throughout`
              )
            }
          }
        }
        for (const [text, n] of texts) {
          if (n > 1) violate("stored-twice", `${clientName(c)}: ${label} stores "${text}" ${n} times`)
        }
      }

      // Every published message reaches every installation that was a member from its epoch to
      // where it landed; a failed one reaches nobody.
      for (const [c, view] of held) {
        const self = clients[c]!
        for (const m of view.messages) {
          if (m.kind !== "text" || m.sender_installation_id !== self.installationId) continue
          if (m.delivery_status === "failed") {
            for (const [other, byId] of rowsById) {
              if (other !== c && byId.has(m.id)) {
                violate("failed-but-delivered", `${label}: "${m.content}" failed at its sender ${clientName(c)} but ${clientName(other)} stores it`)
              }
            }
            continue
          }
          if (m.delivery_status !== "published" || m.sequence_id === null) continue
          const claim = claimed.get(m.sequence_id)
          const position = inForce.get(m.sequence_id)
          if (claim === undefined || position === undefined || claim.kind !== "application") {
            violate("phantom-message", `${clientName(c)}: its "${m.content}" in ${label} is marked published at sequence ${m.sequence_id}, which is not its message`)
            continue
          }
          if (claim.epoch > position) {
            violate("future-epoch-message", `${label}: "${m.content}" claims epoch ${claim.epoch} but landed where epoch ${position} is in force`)
            continue
          }
          if (position - claim.epoch > BigInt(world.maxPastEpochs)) {
            violate(
              "undecryptable-send",
              `${label}: "${m.content}" by ${clientName(c)} was encrypted at epoch ${claim.epoch} but landed at epoch ${position}: older than maxPastEpochs (${world.maxPastEpochs})`
            )
            continue
          }
          for (const [other, otherClient] of clients.entries()) {
            if (other === c || !memberThroughout(otherClient.inboxId, claim.epoch, position)) continue
            const got = rowsById.get(other)?.get(m.id)
            if (got === undefined) {
              violate(
                "lost-message",
                `${label}: "${m.content}" by ${clientName(c)} (epoch ${claim.epoch}, sequence ${m.sequence_id}) is missing at ${clientName(other)}, a member throughout`
              )
            } else if (got.sequence_id !== m.sequence_id) {
              violate("order", `${label}: "${m.content}" is at sequence ${got.sequence_id} at ${clientName(other)}, ${m.sequence_id} at its sender`)
            }
          }
        }
      }
    }
    return violations
  })
