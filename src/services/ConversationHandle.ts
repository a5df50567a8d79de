/**
 * Builds `Conversation` handles: a handle holds nothing but its id and kind; every operation
 * reads the store or queues an intent when it runs. Sending and reading are here; membership,
 * settings and messaging operations come from their own modules and are spread in.
 */
import { Effect } from "effect"
import { InvalidInput } from "../domain/Errors.ts"
import type { ConversationId, InboxId, InstallationId } from "../domain/Ids.ts"
import { makeMember, SyncSummary } from "../domain/Model.ts"
import type { StoredGroup } from "../domain/Stored.ts"
import type * as ClientMessages from "./ClientMessages.ts"
import { toMessage } from "./ClientMessages.ts"
import { syncGroupWith } from "./ClientSync.ts"
import type { ActionError, Conversation } from "./Conversation.ts"
import * as ConversationMembership from "./ConversationMembership.ts"
import * as ConversationMessaging from "./ConversationMessaging.ts"
import { type HandleParts, type HandleScope, scopeOf } from "./ConversationScope.ts"
import * as ConversationSettings from "./ConversationSettings.ts"
import type { MessageQuery } from "./Storage.ts"
import { isUnreadableIntent } from "./IntentResolution.ts"

type SendingOperations = Pick<Conversation, "send" | "sendOptimistic" | "publishPending" | "sync">
type ReadingOperations = Pick<Conversation, "messages" | "members" | "state" | "debugInfo">

const sending = (
  { ctx, groups }: HandleParts,
  { queueMessage, sendMessage }: ReturnType<typeof ClientMessages.make>,
  { annotated, id, kind, span, traced }: HandleScope
): SendingOperations => {
  const { publisher } = ctx
  const { storage } = ctx.env
  const syncGroup = syncGroupWith(ctx)
  const forEachGroup = <A, E>(f: (group: StoredGroup) => Effect.Effect<A, E>) =>
    groups.groupsOf(id, kind).pipe(Effect.flatMap((all) => Effect.forEach(all, f)))
  return {
    send: Effect.fn("Conversation.send", traced)(function*(text: string) {
      const group = yield* groups.activePrimarySummary(id, kind)
      const { intentId, known, messageId } = yield* sendMessage(group, text)
      yield* publisher.resolve(group.id, intentId, known)
      return messageId
    }, annotated),
    sendOptimistic: Effect.fn("Conversation.sendOptimistic", traced)(function*(text: string) {
      const queued = yield* queueMessage(yield* groups.activePrimarySummary(id, kind), text)
      return queued.messageId
    }, annotated),
    publishPending: forEachGroup((group) =>
      Effect.gen(function*() {
        let ids = yield* storage.intents.idsByGroup(group.id, ["ToPublish", "Published", "Committed"])
        while (ids.length > 0) {
          // A row that does not decode was quarantined by that read (failed, its group flagged):
          // the messages queued behind it still go out, as when listing the queue skipped it.
          const settled = yield* publisher.resolveSettling(group.id, ids[0]!).pipe(
            Effect.catchIf(isUnreadableIntent, () => Effect.succeed(new Set<number>()))
          )
          // One round usually settles every queued message: its read-back says which; the others'
          // states are read back in one go, going on from the first one still open.
          const rest = ids.slice(1)
          if (rest.every((id) => settled.has(id))) break
          const now = yield* storage.intents.statesOf(rest)
          // An id without a row settled long ago (SettledIntents deleted it).
          const open = rest.findIndex((id) => {
            const state = now.get(id)
            return state !== undefined && state !== "Processed"
          })
          ids = open < 0 ? [] : rest.slice(open)
        }
      })
    ).pipe(Effect.asVoid, span("publishPending")),
    sync: forEachGroup((group) =>
      group.membershipState === "inactive" ? Effect.succeed(SyncSummary.empty) : syncGroup(group.id)
    ).pipe(Effect.map((all) => all.reduce(SyncSummary.combine, SyncSummary.empty)), span("sync"))
  }
}

const reading = ({ ctx, groups }: HandleParts, { annotated, id, kind, span, traced }: HandleScope): ReadingOperations => {
  const { crypto, storage } = ctx.env
  const { env } = ctx
  const { groupsOf, primaryOf } = groups
  return {
    messages: Effect.fn("Conversation.messages", traced)(function*(query: MessageQuery = {}) {
      if (query.limit !== undefined && (!Number.isInteger(query.limit) || query.limit < 1)) {
        return yield* new InvalidInput({ reason: "limit must be a positive integer" })
      }
      const rows = yield* storage.messages.byConversation(id, query)
      return rows.map(toMessage)
    }, annotated),
    members: Effect.gen(function*() {
      // The roster kept for the stored state: listing members decodes no state.
      const roster = yield* env.loadRoster(yield* primaryOf(id, kind))
      const byInbox = new Map<InboxId, Array<InstallationId>>()
      for (const leaf of roster.members) byInbox.set(leaf.inboxId, [...(byInbox.get(leaf.inboxId) ?? []), leaf.installationId])
      return [...byInbox.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([inboxId, installationIds]) =>
        makeMember({ inboxId, installationIds: installationIds.sort() })
      )
    }).pipe(span("members")),
    state: primaryOf(id, kind).pipe(Effect.map((g) => g.membershipState), span("state")),
    debugInfo: Effect.gen(function*() {
      const all = yield* groupsOf(id, kind)
      const primary = yield* primaryOf(id, kind)
      const view = crypto.view(yield* env.loadState(primary))
      return {
        groupIds: [primary.id, ...all.filter((g) => g.id !== primary.id).map((g) => g.id)],
        epoch: view.epoch,
        epochAuthenticator: view.epochAuthenticator,
        maybeForked: all.some((g) => g.maybeForked)
      }
    }).pipe(span("debugInfo"))
  }
}

/**
 * The handle of each conversation, built once. `findOrCreateDm` is the client's (a direct
 * message inside a group travels in the DM of the two inboxes).
 */
export const make = (
  parts: HandleParts,
  messages: ReturnType<typeof ClientMessages.make>,
  findOrCreateDm: ConversationMessaging.Helpers<ActionError>["findOrCreateDm"]
) => {
  const { ctx, groups, intents } = parts
  const messagingOf = ConversationMessaging.make<ActionError>({
    ctx: ctx.env,
    primaryOf: groups.primaryOf,
    groupMembers: intents.groupMembers,
    settingsOf: intents.settingsOf,
    checkNotPaused: intents.checkNotPaused,
    queueMessage: messages.queueMessage,
    queueIntent: intents.queueIntent,
    resolve: (groupId, intentId) => ctx.publisher.resolve(groupId, intentId),
    // A deletion ends refused only with PermissionDenied or ProtocolVersionTooOld, never a metadata conflict.
    resolveTyped: (groupId, intentId) =>
      intents.resolveTyped(groupId, intentId).pipe(Effect.catchTag("MetadataConflict", Effect.die)),
    findOrCreateDm: (peer) => findOrCreateDm(peer),
    toMessage
  })

  const handle = (id: ConversationId, kind: "group" | "dm"): Conversation => {
    const scope = scopeOf(id, kind)
    return {
      id,
      kind,
      ...messagingOf(id, kind),
      ...sending(parts, messages, scope),
      ...reading(parts, scope),
      ...ConversationMembership.make(parts, scope),
      ...ConversationSettings.make(parts, scope)
    }
  }

  /** A handle holds nothing but its id and kind, and costs spans and traced functions to build: one each. */
  const handles = new Map<string, Conversation>()
  const handleOf = (group: Pick<StoredGroup, "id" | "dmId" | "kind">) => {
    const id = group.dmId ?? (group.id as unknown as ConversationId)
    const key = `${group.kind} ${id}`
    const known = handles.get(key)
    if (known !== undefined) return known
    const made = handle(id, group.kind)
    handles.set(key, made)
    return made
  }

  return { handle, handleOf }
}
