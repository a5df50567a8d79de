/**
 * Carries out the simulation's messaging operations (`MessagingPlan`) through the public API,
 * and logs what succeeded for `MessagingInvariants`: direct messages sent, deletions done.
 */
import { Effect } from "effect"
import { dmId, type GroupId, type InboxId, type MessageId } from "../domain/Ids.ts"
import { Reaction } from "../domain/codecs/Reaction.ts"
import { Reply } from "../domain/codecs/Reply.ts"
import type { Message } from "../domain/Model.ts"
import type { Conversation } from "../services/Client.ts"
import type { TestClient } from "../testing.ts"
import { type MessagingOp, textOf } from "./MessagingPlan.ts"
import { clientName, type World } from "./World.ts"

/** What the messaging operations did, for the checks. */
export interface MessagingLog {
  readonly directs: Array<{ readonly op: number; readonly c: number; readonly groupId: GroupId; readonly to: InboxId; readonly id: MessageId }>
  /** Deletions whose `deleteMessage` succeeded. */
  readonly deletions: Array<{ readonly op: number; readonly c: number; readonly id: MessageId }>
}

export const makeLog = (): MessagingLog => ({ directs: [], deletions: [] })

/** The simulation's own lookups (they skip, typed, what cannot run yet). */
export interface Lookups<E> {
  readonly clientOf: (c: number) => Effect.Effect<TestClient, E>
  readonly conversationOf: (c: number, g: number) => Effect.Effect<Conversation, unknown>
}

const texts = (messages: ReadonlyArray<Message>) => messages.filter((m) => m.kind === "text" && !m.deleted)

/**
 * The first inbox from `c` on (first installations, wrapping) that holds the group active: the
 * plan cannot know who is in a group by then, so the operation goes to a member if there is one.
 */
const actorFor = <E>(world: World, lookups: Lookups<E>, c: number, g: number) =>
  Effect.gen(function*() {
    const inboxes = world.inboxIds.length
    for (let i = 0; i < inboxes; i++) {
      const candidate = (c + i) % inboxes
      const found = yield* Effect.either(Effect.gen(function*() {
        const cv = yield* lookups.conversationOf(candidate, g)
        if ((yield* cv.state) !== "active") return yield* Effect.fail("inactive")
        return { c: candidate, client: yield* lookups.clientOf(candidate), cv }
      }))
      if (found._tag === "Right") return found.right
    }
    return undefined
  })

export const run = <E>(world: World, log: MessagingLog, lookups: Lookups<E>, index: number, planned: MessagingOp) =>
  Effect.gen(function*() {
    const actor = yield* actorFor(world, lookups, planned.c, planned.g)
    if (actor === undefined) return `skipped: nobody is in g${planned.g}`
    const result = yield* perform(world, log, actor, index, { ...planned, c: actor.c })
    return actor.c === planned.c ? result : `by ${clientName(actor.c, world)}: ${result}`
  })

const perform = (
  world: World,
  log: MessagingLog,
  actor: { readonly client: TestClient; readonly cv: Conversation },
  index: number,
  op: MessagingOp
) =>
  Effect.gen(function*() {
    const { client, cv } = actor
    const text = "k" in op ? textOf(op.k, clientName(op.c, world)) : ""
    switch (op._tag) {
      case "SendDirect": {
        const to = world.inboxIds[op.to]!
        const id = yield* cv.sendDirect(to, text)
        log.directs.push({ op: index, c: op.c, groupId: cv.id as unknown as GroupId, to, id })
        world.sent.push({ op: index, c: op.c, g: undefined, dm: dmId(client.inboxId, to), text, id, confirmed: true })
        return "ok"
      }
      case "SendContent": {
        const held = texts(yield* cv.messages())
        const reference = held[op.pick % Math.max(1, held.length)]?.id
        if (reference === undefined && op.codec !== "unknown") return "skipped: nothing to refer to"
        // The fallback is the run's text, so every check that reads texts reads this one too.
        const content = op.codec === "reply"
          ? { ...Reply.encode(new Reply({ reference: reference!, text })), fallback: text }
          : op.codec === "reaction"
          ? { ...Reaction.encode(new Reaction({ reference: reference!, emoji: "👍", action: "added" })), fallback: text }
          : { type: "sim.converge/unknown:1", bytes: new TextEncoder().encode(text), fallback: text }
        const id = yield* cv.sendContent(content)
        world.sent.push({ op: index, c: op.c, g: op.g, dm: undefined, text, id, confirmed: true })
        return "ok"
      }
      case "DeleteMessage": {
        // Every third own deletion takes a direct message sent in the group's context.
        const direct = op.own && op.pick % 3 === 0
        const pool = texts(direct ? yield* cv.directMessages() : yield* cv.messages())
          .filter((m) => !op.own || m.senderInboxId === client.inboxId)
        const target = pool[op.pick % Math.max(1, pool.length)]
        if (target === undefined) return "skipped: nothing to delete"
        yield* cv.deleteMessage(target.id)
        log.deletions.push({ op: index, c: op.c, id: target.id })
        return `deleted "${target.text}"`
      }
    }
  })
