/**
 * The messaging invariants, checked after quiescence: a direct message is stored by its two
 * inboxes' installations only (and shown with no group but its own, or none); a deletion that
 * succeeded reached every member holding the message; no installation keeps the content of a
 * message it holds as deleted, nor the text in the intent that sent it.
 */
import { Effect, Option, Schema } from "effect"
import { MembershipChangeJson } from "../domain/Content.ts"
import { type ConversationId, dmId, type InboxId } from "../domain/Ids.ts"
import type { StoredMessage } from "../domain/Stored.ts"
import type { MessagingLog } from "./MessagingOps.ts"
import type { Violation } from "./Report.ts"
import { booted, clientName, type World } from "./World.ts"

export const check = (world: World, log: MessagingLog) =>
  Effect.gen(function*() {
    const violations: Array<Violation> = []
    const violate = (invariant: string, detail: string) => violations.push({ invariant, detail })
    const all = booted(world)
    const name = (c: number) => clientName(c, world)
    const inboxOf = (c: number): InboxId => world.inboxIds[world.installs[c]!.inbox]!
    const storages = new Map<number, Effect.Effect.Success<ReturnType<typeof world.net.storage>>>()
    for (const [c, client] of all) storages.set(c, yield* world.net.storage(client))
    const rowAt = (c: number, id: StoredMessage["id"]) => storages.get(c)!.messages.get(id)

    // ---- direct messages: exactly the two inboxes ----
    for (const d of log.directs) {
      const sender = inboxOf(d.c)
      const parties = new Set<InboxId>([sender, d.to])
      let recipientHolds = false
      let recipientActive = false
      for (const [c] of all) {
        const row = yield* rowAt(c, d.id)
        const inbox = inboxOf(c)
        if (!parties.has(inbox)) {
          if (Option.isSome(row)) violate("direct-message-leaked", `op ${d.op}: ${name(c)} stores a direct message between two other inboxes`)
          continue
        }
        if (Option.isNone(row)) {
          if (inbox === d.to) {
            const dm = yield* storages.get(c)!.groups.byDmId(dmId(sender, d.to))
            recipientActive ||= dm.some((g) => g.membershipState === "active")
          }
          continue
        }
        if (inbox === d.to && c !== d.c) recipientHolds = true
        if (!row.value.conversationId.startsWith("dm:")) {
          violate("direct-message-on-group", `op ${d.op}: ${name(c)} holds a direct message in group ${row.value.conversationId}`)
        }
        if (row.value.groupContext !== null && row.value.groupContext !== d.groupId) {
          violate("direct-message-wrong-group", `op ${d.op}: ${name(c)} shows a direct message of ${d.groupId} in ${row.value.groupContext}`)
        }
      }
      if (!recipientHolds && recipientActive) {
        violate("direct-message-lost", `op ${d.op}: no installation of its recipient holds the direct message ${d.id.slice(0, 8)}`)
      }
    }

    // ---- deletions reach every member that holds the message ----
    for (const e of log.deletions) {
      for (const [c] of all) {
        const row = yield* rowAt(c, e.id)
        if (Option.isNone(row) || row.value.deleted) continue
        const group = yield* storages.get(c)!.groups.get(row.value.groupId)
        if (Option.isNone(group) || group.value.membershipState !== "active") continue
        // Out of the group for a while since the message (removed, then added again): it may have missed the deletion.
        if (yield* wasOutSince(storages.get(c)!, row.value, inboxOf(c))) continue
        // Also when it never read its removal: a welcome took it back past the removal and the deletion.
        if (world.removed.get(world.groups.indexOf(row.value.groupId))?.has(inboxOf(c)) === true) continue
        violate("deletion-not-applied", `op ${e.op}: ${name(c)} still shows "${row.value.content}" that ${name(e.c)} deleted`)
      }
    }

    // ---- a deleted message's content is gone, from the message and from the intent that sent it ----
    for (const [c, storage] of storages) {
      const conversations = new Set((yield* storage.groups.list({ includeInactive: true })).map((g) => g.dmId ?? g.id))
      const deleted = new Set<string>()
      for (const conversation of conversations) {
        for (const m of yield* storage.messages.byConversation(conversation as ConversationId, {})) {
          if (!m.deleted) continue
          deleted.add(m.id)
          if (m.content !== "" || m.contentBytes !== null || m.contentType !== null) {
            violate("deleted-content-kept", `${name(c)} keeps the content of deleted message ${m.id.slice(0, 8)}`)
          }
        }
      }
      for (const intent of yield* storage.intents.byState(["Processed", "Error"])) {
        const data = intent.data
        if (data._tag === "SendMessage" && deleted.has(data.messageId) && (data.text !== "" || data.content !== undefined)) {
          violate("deleted-content-kept", `${name(c)} keeps the text of deleted message ${data.messageId.slice(0, 8)} in intent ${intent.id}`)
        }
      }
    }
    return violations
  })

/** Whether a membership change removed this inbox after the message landed (it may have missed what followed). */
const wasOutSince = (
  storage: Effect.Effect.Success<ReturnType<World["net"]["storage"]>>,
  row: StoredMessage,
  inbox: InboxId
) =>
  storage.messages.membershipChanges(row.conversationId).pipe(
    Effect.map((changes) =>
      changes.some((m) => {
        const change = Schema.decodeUnknownOption(MembershipChangeJson)(m.content)
        return (m.sequenceId ?? 0n) > (row.sequenceId ?? 0n) && Option.isSome(change) &&
          change.value.removedInboxes.includes(inbox)
      })
    )
  )
