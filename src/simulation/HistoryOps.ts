/**
 * Consent operations in the seeded simulation, planned from their own stream of the seed so the
 * main plan (and every regression seed) stays what it was: after some operations, an installation
 * sets the consent of one of its conversations or of an inbox. Devices joining and being revoked
 * mid-run are the main plan's (`AddDevice`, `RevokeDevice`); history sync runs inside `syncAll`.
 */
import { Effect } from "effect"
import type { ConsentState } from "../domain/Consent.ts"
import * as Prng from "./Prng.ts"
import { booted, clientName, type World } from "./World.ts"

export interface ConsentOp {
  /** Picks among the booted installations, their conversations and the inboxes, at run time. */
  readonly who: number
  readonly what: number
  readonly onInbox: boolean
  readonly state: ConsentState
}

const STATES: ReadonlyArray<ConsentState> = ["allowed", "denied", "unknown"]

/** The consent operations to run after each planned operation (about one in eight), by operation index. */
export const plan = (seed: number, operations: number): ReadonlyMap<number, ConsentOp> => {
  const rng = Prng.make((seed ^ 0x5eed_c0de) >>> 0)
  const out = new Map<number, ConsentOp>()
  for (let i = 0; i < operations; i++) {
    if (!rng.chance(1 / 8)) {
      rng.next()
      continue
    }
    out.set(i, { who: rng.int(1 << 16), what: rng.int(1 << 16), onInbox: rng.chance(0.3), state: rng.pick(STATES) })
  }
  return out
}

/** Runs one consent operation; says what it did. */
export const run = (world: World, op: ConsentOp) =>
  Effect.gen(function*() {
    const clients = booted(world)
    if (clients.length === 0) return "skipped: nobody booted"
    const [c, client] = clients[op.who % clients.length]!
    if (op.onInbox) {
      const inboxId = world.inboxIds[op.what % world.inboxIds.length]!
      yield* client.setConsent({ inboxId }, op.state)
      return `${clientName(c, world)} sets inbox ${inboxId.slice(0, 8)} ${op.state}`
    }
    const conversations = yield* client.conversations({ includeInactive: true, consent: STATES })
    if (conversations.length === 0) return `skipped: ${clientName(c, world)} has no conversation`
    const conversation = conversations[op.what % conversations.length]!
    yield* client.setConsent({ conversationId: conversation.id }, op.state)
    return `${clientName(c, world)} sets ${conversation.id} ${op.state}`
  })
