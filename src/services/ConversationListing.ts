/** Opening a conversation by id and listing them, as the user sees them (own-devices group hidden). */
import { Effect, Schema } from "effect"
import { DEFAULT_VISIBLE, type ConsentState } from "../domain/Consent.ts"
import { ConversationNotFound, InvalidInput } from "../domain/Errors.ts"
import { OWN_DEVICES_GROUP_NAME } from "../domain/HistoryArchive.ts"
import { ConversationId } from "../domain/Ids.ts"
import type { StoredGroup } from "../domain/Stored.ts"
import type { Conversation } from "./Conversation.ts"
import type { HandleParts } from "./ConversationScope.ts"

export const make = (
  { ctx, groups }: HandleParts,
  handleOf: (group: Pick<StoredGroup, "id" | "dmId" | "kind">) => Conversation
) => {
  const { consent } = ctx
  const { storage } = ctx.env

  const conversation = Effect.fn("Client.conversation")(function*(id: ConversationId) {
    const valid = yield* Schema.decodeUnknown(ConversationId)(id).pipe(
      Effect.mapError(() => new InvalidInput({ reason: `not a conversation id: ${String(id)}` }))
    )
    const kind = valid.startsWith("dm:") ? "dm" : "group"
    const rows = yield* groups.groupsOf(valid, kind)
    if (rows[0] === undefined || rows[0].name === OWN_DEVICES_GROUP_NAME) {
      return yield* new ConversationNotFound({ conversationId: valid })
    }
    // The id of one of a DM's groups opens the DM: its membership must not change.
    return handleOf(rows[0])
  })

  const conversations = Effect.fn("Client.conversations")(function*(
    query: {
      readonly kind?: "group" | "dm"
      readonly includeInactive?: boolean
      readonly consent?: ReadonlyArray<ConsentState>
    } = {}
  ) {
    const rows = yield* storage.groups.listing({ includeInactive: query.includeInactive ?? false })
    const recordOf = yield* consent.snapshot
    const shown = new Set(query.consent ?? DEFAULT_VISIBLE)
    const seen = new Set<string>()
    const out: Array<Conversation> = []
    for (const row of rows) {
      if (query.kind !== undefined && row.kind !== query.kind) continue
      if (row.name === OWN_DEVICES_GROUP_NAME) continue
      const key = row.dmId ?? row.id
      if (!shown.has(consent.stateIn(recordOf, { conversationId: key as ConversationId }))) continue
      if (seen.has(key)) continue
      seen.add(key)
      out.push(handleOf(row))
    }
    return out
  })

  return { conversation, conversations }
}
