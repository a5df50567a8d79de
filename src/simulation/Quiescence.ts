/**
 * The end of a run's history: every fault is healed and every crash point disarmed, devices cut
 * short boot at last, then every installation syncs and publishes, round after round, until the
 * stored state stops changing (or the rounds run out: a violation).
 */
import { Effect, Exit } from "effect"
import type { ConversationId } from "../domain/Ids.ts"
import { describeSummary } from "./ClientActions.ts"
import * as Invariants from "./Invariants.ts"
import type { Steps } from "./PlanRunner.ts"
import type { TraceEntry } from "./Report.ts"
import type { RunState } from "./RunState.ts"
import { Hung, judge } from "./Verdict.ts"
import { booted } from "./World.ts"

/** Heals every fault, disarms crash points, and boots the devices a fault kept from registering. */
const heal = (s: RunState, steps: Steps) =>
  Effect.gen(function*() {
    const { clientName, clients, installs, net, options } = s
    const entry = s.newEntry(s.ops.length, "quiescence: heal every fault, disarm crash points")
    yield* net.faults.healAll
    const unfired = yield* net.disarmCrashes
    entry.outcomes.push(`${unfired} armed crash point(s) never reached`)
    yield* steps.recovery.settle(entry)
    // A device whose registration was cut short by a fault finishes it now (it is idempotent).
    for (const [d, install] of installs.entries()) {
      if (d < options.clients || clients[d] !== undefined) continue
      const verdict = judge(yield* Effect.exit(steps.installations.bootDevice(d, install.inbox)))
      if (verdict.kind === "ok") entry.outcomes.push(`${clientName(d)} booted at last`)
      else {
        s.record(entry, `${clientName(d)} boot: `, verdict)
        if (verdict.kind !== "violation") s.violate("device-boot", `${clientName(d)} could not boot once healed: ${verdict.text}`)
      }
    }
  })

/** What a sync round may change, per installation and per group topic; equal twice in a row means quiescent. */
const fingerprint = (s: RunState, steps: Steps) =>
  Effect.gen(function*() {
    const { net, world } = s
    const parts: Array<string> = []
    for (const [c, client] of booted(world)) {
      const storage = yield* net.storage(client)
      const groups = yield* storage.groups.list({ includeInactive: true })
      for (const g of groups) {
        const messages = yield* storage.messages.byConversation(g.id as unknown as ConversationId, {})
        parts.push(`${client.name}:${g.id}:${g.epoch}:${g.membershipState}:${messages.length}:${messages.map((m) => m.deliveryStatus[0]).join("")}`)
      }
      const intents = yield* storage.intents.byState(["ToPublish", "Published", "Committed", "Processed", "Error"])
      parts.push(`${client.name}:intents:${intents.map((i) => `${i.id}${i.state}`).join(",")}`)
      parts.push(`${client.name}:welcomes:${(yield* steps.faults.welcomesOf(c)).length}`)
    }
    for (const id of world.groups) {
      if (id !== undefined) parts.push(`${id}:${(yield* Invariants.readTopic(world, id)).length}`)
    }
    return parts.join("\n")
  })

/** One round: every booted client syncs everything, then publishes what is pending in each conversation. */
const syncRound = (s: RunState, entry: TraceEntry) =>
  Effect.gen(function*() {
    const { clientName, opTimeout } = s
    for (const [c, client] of booted(s.world)) {
      const synced = judge(yield* Effect.exit(
        Effect.suspend(() => client.syncAll).pipe(
          Effect.map((summary) => `ok: ${describeSummary(summary)}`),
          Effect.timeoutFail({ duration: opTimeout, onTimeout: () => new Hung({ after: String(opTimeout) }) })
        )
      ))
      if (synced.kind !== "ok") s.record(entry, `${clientName(c)} syncAll: `, synced)
      const conversations = yield* Effect.exit(client.conversations({ includeInactive: true }))
      if (Exit.isFailure(conversations)) {
        s.record(entry, `${clientName(c)} conversations: `, judge(conversations.pipe(Exit.as(""))))
        continue
      }
      for (const conversation of conversations.value) {
        const published = judge(yield* Effect.exit(
          conversation.publishPending.pipe(
            Effect.as("ok"),
            Effect.timeoutFail({ duration: opTimeout, onTimeout: () => new Hung({ after: String(opTimeout) }) })
          )
        ))
        if (published.kind !== "ok") s.record(entry, `${clientName(c)} publishPending ${conversation.id}: `, published)
      }
    }
  })

/** Heals, then syncs until nothing changes; returns the number of rounds it took. */
export const run = (s: RunState, steps: Steps) =>
  Effect.gen(function*() {
    yield* heal(s, steps)
    const maxRounds = s.options.maxQuiescenceRounds ?? 8
    let rounds = 0
    let previous = ""
    let stable = false
    while (rounds < maxRounds && !stable) {
      rounds++
      const entry = s.newEntry(s.ops.length + rounds, `quiescence round ${rounds}: every client syncAll, then publishPending everywhere`)
      yield* syncRound(s, entry)
      yield* steps.recovery.settle(entry)
      const now = yield* fingerprint(s, steps)
      stable = now === previous
      previous = now
    }
    if (!stable) s.violate("no-quiescence", `state still changing after ${maxRounds} rounds of sync and publish`)
    return rounds
  })
