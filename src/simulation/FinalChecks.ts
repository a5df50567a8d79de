/**
 * The last step of a run: the invariants are checked on the quiescent world, random ids in the
 * trace and the violations are replaced by names, and the report's figures are counted.
 */
import { Cause, Effect } from "effect"
import { dmId, type GroupId } from "../domain/Ids.ts"
import * as HistoryInvariants from "./HistoryInvariants.ts"
import * as Invariants from "./Invariants.ts"
import * as MessagingInvariants from "./MessagingInvariants.ts"
import type * as MessagingOps from "./MessagingOps.ts"
import * as Plan from "./Plan.ts"
import type { Figures, TraceEntry, Violation } from "./Report.ts"
import type { RunState } from "./RunState.ts"
import { booted } from "./World.ts"

/**
 * Names instead of random ids (`c3`, `c3b`, `g1`, `dm(c0,c3)`, `dm(c0,c3)@c3`), so that a trace reads well
 * and two runs of one seed print the same trace. Applied once the run is over, when every
 * installation and DM group is known.
 */
const namer = (s: RunState, dmLabels: ReadonlyMap<GroupId, string>) => {
  const { clientName, world } = s
  const pairs: Array<readonly [string, string]> = []
  // DM ids first, so that they read the same whichever inbox id sorts first.
  world.inboxIds.forEach((a, i) =>
    world.inboxIds.forEach((b, j) => {
      if (i < j) pairs.push([dmId(a, b), Invariants.dmName([i, j])])
    })
  )
  for (const [c, client] of booted(world)) pairs.push([client.installationId, clientName(c)])
  world.inboxIds.forEach((id, i) => pairs.push([id, clientName(i)]))
  world.groups.forEach((id, g) => {
    if (id !== undefined) pairs.push([id, `g${g}`])
  })
  for (const [id, label] of dmLabels) pairs.push([id, label])
  return (text: string) => pairs.reduce((out, [id, name]) => out.replaceAll(id, name), text)
}

/** Every invariant check; a check that itself fails is a violation too. */
const checkInvariants = (s: RunState, messagingLog: MessagingOps.MessagingLog, rounds: number) =>
  Effect.gen(function*() {
    const { ops, world } = s
    if (s.options.beforeChecks !== undefined) yield* s.options.beforeChecks(world)
    const checks = s.newEntry(ops.length + rounds + 1, "check invariants")
    const dms = yield* Invariants.dmGroups(world).pipe(Effect.orElseSucceed(() => []))
    const found = yield* Invariants.check(world, dms).pipe(
      Effect.catchAllCause((cause) =>
        Effect.succeed<ReadonlyArray<Violation>>([{ invariant: "check-failed", detail: Cause.pretty(cause) }])
      )
    )
    world.violations.push(...found)
    world.violations.push(...yield* MessagingInvariants.check(world, messagingLog).pipe(
      Effect.catchAllCause((cause) => Effect.succeed([{ invariant: "check-failed", detail: Cause.pretty(cause) }]))
    ))
    world.violations.push(...yield* HistoryInvariants.check(world).pipe(
      Effect.catchAllCause((cause) => Effect.succeed([{ invariant: "check-failed", detail: Cause.pretty(cause) }]))
    ))
    checks.outcomes.push(`${world.violations.length} violation(s)`)
    return dms
  })

const figuresOf = (s: RunState, rounds: number, dms: ReadonlyArray<{ readonly dmId: string }>) =>
  Effect.gen(function*() {
    const { counters, net, ops, world } = s
    const stats = yield* net.faults.stats
    const crashLog = yield* net.crashLog
    const figures: Figures = {
      operations: ops.length,
      actions: counters.actions,
      faults: ops.filter(Plan.isFault).length,
      hostile: ops.filter(Plan.isHostile).length,
      crashesArmed: ops.filter((op) => op._tag === "Crash").length,
      crashes: crashLog.length,
      restarts: counters.restarts,
      expectedErrors: counters.expected,
      sent: world.sent.filter((s) => s.confirmed).length,
      installations: booted(world).length,
      revocations: counters.revocations,
      leftOutBelowMinimum: world.leftOutBelowMinimum.length,
      leaves: counters.leaves,
      dms: new Set(dms.map((d) => d.dmId)).size,
      quiescenceRounds: rounds,
      ds: stats
    }
    return figures
  })

/** Checks the invariants, names the trace and the violations, counts the figures. */
export const run = (
  s: RunState,
  trace: ReadonlyArray<TraceEntry>,
  messagingLog: MessagingOps.MessagingLog,
  rounds: number
) =>
  Effect.gen(function*() {
    const dms = yield* checkInvariants(s, messagingLog, rounds)
    const named = namer(s, new Map(dms.map((d) => [d.groupId, d.label])))
    for (const entry of trace) {
      entry.outcomes.splice(0, entry.outcomes.length, ...entry.outcomes.map(named))
      entry.logs.splice(0, entry.logs.length, ...entry.logs.map(named))
    }
    const violations = s.world.violations.map((v) => ({ ...v, detail: named(v.detail) }))
    const figures = yield* figuresOf(s, rounds, dms)
    return { figures, violations }
  })
