/**
 * The invariants of history sync and consent, checked at quiescence: every current installation
 * of an inbox ends with the same conversations, the same published messages in each (those from
 * before it joined included), the same consent, and a finished history import. Also the rule the
 * group checks use: a message an installation could not read itself is fine when another
 * installation of its inbox holds it (it came with the history).
 */
import { Effect, Either } from "effect"
import type { ConsentState } from "../domain/Consent.ts"
import * as IdentityLog from "../domain/IdentityLog.ts"
import type { ConversationId } from "../domain/Ids.ts"
import type { Violation } from "./Report.ts"
import { booted, clientName, type World } from "./World.ts"

const ALL: ReadonlyArray<ConsentState> = ["allowed", "denied", "unknown"]

/** Which installations hold each message id: for "it came with the history from a sibling". */
export const holders = (world: World) =>
  Effect.gen(function*() {
    const byMessage = new Map<string, Set<string>>()
    const inboxOf = new Map<string, string>()
    for (const [, client] of booted(world)) {
      inboxOf.set(client.installationId, client.inboxId)
      const storage = yield* world.net.storage(client)
      for (const group of yield* storage.groups.list({ includeInactive: true })) {
        const id = (group.dmId ?? group.id) as ConversationId
        for (const m of yield* storage.messages.byConversation(id, {})) {
          if (m.groupId !== group.id) continue
          byMessage.set(m.id, (byMessage.get(m.id) ?? new Set()).add(client.installationId))
        }
      }
    }
    /** Whether another installation of the holder's inbox holds the message. */
    return (messageId: string, installationId: string) =>
      [...(byMessage.get(messageId) ?? [])].some((other) =>
        other !== installationId && inboxOf.get(other) === inboxOf.get(installationId)
      )
  })

/** What one installation ends with, as comparable strings. */
const viewOf = (world: World, c: number) =>
  Effect.gen(function*() {
    const client = world.clients[c]!
    const storage = yield* world.net.storage(client)
    const conversations = yield* client.conversations({ includeInactive: true, consent: ALL })
    const messages = new Map<string, string>()
    const consent = new Map<string, string>()
    for (const conversation of conversations) {
      const published = (yield* storage.messages.byConversation(conversation.id, { direction: "asc" }))
        .filter((m) => m.deliveryStatus === "published")
      messages.set(conversation.id, published.map((m) => `${m.id.slice(0, 8)}@${m.sequenceId}`).join(","))
      consent.set(`conversation ${conversation.id}`, yield* client.consentOf({ conversationId: conversation.id }))
    }
    for (const inboxId of world.inboxIds) consent.set(`inbox ${inboxId.slice(0, 8)}`, yield* client.consentOf({ inboxId }))
    return { ids: [...messages.keys()].sort(), messages, consent, history: yield* client.historySync }
  })

export const check = (world: World) =>
  Effect.gen(function*() {
    const violations: Array<Violation> = []
    const violate = (invariant: string, detail: string) => violations.push({ invariant, detail })
    for (const inboxId of world.inboxIds) {
      const [log] = yield* world.net.delivery.getIdentityUpdates([{ inboxId, afterSequence: 0 }])
      const state = IdentityLog.replay((log?.updates ?? []).map((u) => u.update))
      if (Either.isLeft(state) || state.right._tag === "None") continue
      const current = new Set(IdentityLog.currentInstallations(state.right.value))
      const devices = booted(world).filter(([, client]) => client.inboxId === inboxId && current.has(client.installationId))
      if (devices.length < 2) continue
      const views = yield* Effect.forEach(devices, ([c]) => viewOf(world, c).pipe(Effect.map((view) => ({ c, view }))))
      const [first, ...others] = views
      for (const { c, view } of views) {
        if (view.history.state !== "done") {
          violate("history-not-done", `${clientName(c, world)}: history sync ended ${view.history.state}`)
        }
      }
      for (const { c, view } of others) {
        const name = `${clientName(c, world)} vs ${clientName(first!.c, world)}`
        if (view.ids.join(",") !== first!.view.ids.join(",")) {
          violate("history-conversations", `${name}: [${view.ids.join(", ")}] vs [${first!.view.ids.join(", ")}]`)
          continue
        }
        for (const id of view.ids) {
          if (view.messages.get(id) !== first!.view.messages.get(id)) {
            violate("history-messages", `${name}: ${id} holds [${view.messages.get(id)}] vs [${first!.view.messages.get(id)}]`)
          }
        }
        for (const [subject, consent] of first!.view.consent) {
          if (view.consent.get(subject) !== consent) {
            violate("history-consent", `${name}: ${subject} is ${view.consent.get(subject)} vs ${consent}`)
          }
        }
      }
    }
    return violations
  })
