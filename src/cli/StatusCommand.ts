/**
 * `converge status`: per conversation its state, epoch, pending intents, how far it is behind the
 * server (when the server answers) and whether it may be forked.
 */
import { Command } from "@effect/cli"
import { Console, Effect } from "effect"
import type { GroupId } from "../domain/Ids.ts"
import { groupTopic } from "../domain/Topics.ts"
import type { Conversation } from "../services/Client.ts"
import * as Output from "./Output.ts"
import { reach } from "./Profile.ts"
import { labelOf, type Session, withClient } from "./Session.ts"
import { json, profile } from "./SharedOptions.ts"

/** Envelopes on the server after each group's stored cursor, counted up to `STATUS_PAGE` ("100+" beyond). */
const STATUS_PAGE = 100
const behindOf = (session: Session, groupIds: ReadonlyArray<GroupId>) =>
  Effect.gen(function*() {
    const queries = yield* Effect.forEach(groupIds, (groupId) =>
      Effect.map(session.storage.cursors.get(groupTopic(groupId)), (afterSequenceId) => ({ groupId, afterSequenceId, limit: STATUS_PAGE })))
    const pages = yield* reach(session.server)(session.delivery.batchQueryGroupMessages(queries))
    const count = pages.reduce((n, page) => n + page.items.length, 0)
    return pages.some((page) => page.next !== undefined) ? `${count}+` : String(count)
  })

const statusRow = (session: Session, online: { value: boolean }) => (c: Conversation) =>
  Effect.gen(function*() {
    const info = yield* c.debugInfo
    const pending = yield* Effect.forEach(info.groupIds, (g) => session.storage.intents.byGroup(g, ["ToPublish", "Published", "Committed"]))
    const behind = online.value
      ? yield* behindOf(session, info.groupIds).pipe(Effect.catchTag("Unreachable", (e) => {
        online.value = false
        return Effect.as(Output.note(`warning: ${e.message}; lag unknown`), null)
      }))
      : null
    return {
      id: c.id,
      kind: c.kind,
      state: yield* c.state,
      label: yield* labelOf(c, session.client.inboxId),
      epoch: info.epoch,
      pendingIntents: pending.flat().length,
      behind,
      maybeForked: info.maybeForked
    }
  })

export const status = Command.make("status", { profile, json }, ({ json, profile }) =>
  withClient(profile, (session) =>
    Effect.gen(function*() {
      const online = { value: true }
      const rows = yield* Effect.forEach(yield* session.client.conversations({ includeInactive: true }), statusRow(session, online))
      const header = { profile, server: session.server, inboxId: session.client.inboxId, installationId: session.client.installationId }
      if (json) return yield* Output.json({ ...header, conversations: rows })
      yield* Console.log(`profile ${profile}  server ${session.server}\ninbox   ${session.client.inboxId}\n`)
      yield* Console.log(Output.table(
        ["ID", "KIND", "STATE", "EPOCH", "PENDING", "BEHIND", "FORKED", "NAME"],
        rows.map((r) => [r.id, r.kind, r.state, String(r.epoch), String(r.pendingIntents), r.behind ?? "?", r.maybeForked ? "maybe" : "no", r.label])
      ))
    }))).pipe(Command.withDescription(
    "per conversation: state, epoch, pending intents, envelopes not yet synced (BEHIND) and fork suspicion"
  ))
