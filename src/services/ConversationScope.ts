/**
 * What the parts of a conversation handle share: its id and kind with the span and log
 * annotations every operation carries, and the client helpers the operations are built from.
 */
import { Effect } from "effect"
import type { ConversationId } from "../domain/Ids.ts"
import type { ClientContext } from "./ClientContext.ts"
import type * as ConversationGroups from "./ConversationGroups.ts"
import type * as GroupIntents from "./GroupIntents.ts"
import type * as MemberChecks from "./MemberChecks.ts"

export interface HandleScope {
  readonly id: ConversationId
  readonly kind: "group" | "dm"
  /** The span options of every traced operation of the handle. */
  readonly traced: { readonly attributes: { readonly conversationId: ConversationId } }
  /** For the operations that are effects rather than functions (`Effect.fn` needs a function). */
  readonly span: (name: string) => <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  readonly annotated: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
}

/** The client's helpers a handle's operations use. */
export interface HandleParts {
  readonly ctx: ClientContext
  readonly checks: ReturnType<typeof MemberChecks.make>
  readonly intents: ReturnType<typeof GroupIntents.make>
  readonly groups: ReturnType<typeof ConversationGroups.make>
}

export const scopeOf = (id: ConversationId, kind: "group" | "dm"): HandleScope => {
  const traced = { attributes: { conversationId: id } }
  const span = (name: string) => <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    effect.pipe(Effect.annotateLogs({ conversationId: id }), Effect.withSpan(`Conversation.${name}`, traced))
  const annotated = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.annotateLogs(effect, { conversationId: id })
  return { id, kind, traced, span, annotated }
}
