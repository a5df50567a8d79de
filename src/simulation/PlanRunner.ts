/**
 * The planned history of a run, carried out in plan order: each operation (an action, a race, a
 * device booting or revoked, a restart, governance, messaging, a watched stream, a fault or
 * hostile input), then the consent change planned after it, then recovery (`Recovery.settle`).
 */
import { Effect, Exit, Fiber, Stream } from "effect"
import type { ClientActions } from "./ClientActions.ts"
import type * as FaultOps from "./FaultOps.ts"
import * as HistoryOps from "./HistoryOps.ts"
import type * as Installations from "./Installations.ts"
import * as MessagingOps from "./MessagingOps.ts"
import * as Plan from "./Plan.ts"
import type * as Recovery from "./Recovery.ts"
import type { TraceEntry } from "./Report.ts"
import type { RunState } from "./RunState.ts"
import { judge } from "./Verdict.ts"

export interface Steps {
  readonly actions: ClientActions
  readonly installations: ReturnType<typeof Installations.make>
  readonly recovery: ReturnType<typeof Recovery.make>
  readonly faults: ReturnType<typeof FaultOps.make>
  readonly messagingLog: MessagingOps.MessagingLog
}

type WatchOp = Extract<Plan.Op, { readonly _tag: "Watch" }>

/** Runs the watch's actions one by one while the watcher streams; records what the stream delivered. */
const watch = (s: RunState, steps: Steps, index: number, entry: TraceEntry, op: WatchOp) =>
  Effect.gen(function*() {
    let received = 0
    const watcher = s.clients[op.c]
    const stream = yield* Effect.fork(
      Stream.runForEach(watcher === undefined ? Stream.empty : Stream.suspend(() => watcher.streamMessages), () =>
        Effect.sync(() => {
          received++
        }))
    )
    for (const a of op.actions) {
      yield* steps.actions.runActions(index, entry, [a], true)
      yield* steps.recovery.settle(entry, new Set([op.c]))
    }
    const exit = yield* Fiber.interrupt(stream)
    const verdict = judge(exit.pipe(Exit.as("")))
    if (verdict.kind === "abandoned" || verdict.kind === "ok") {
      entry.outcomes.push(`${s.clientName(op.c)}'s stream delivered ${received} message(s)`)
    } else s.record(entry, `${s.clientName(op.c)}'s stream: `, verdict)
  })

/** Carries out one planned operation and records its verdict(s) in its trace entry. */
const runOp = (s: RunState, steps: Steps, index: number, entry: TraceEntry, op: Plan.Op) =>
  Effect.gen(function*() {
    const { actions, installations, recovery } = steps
    const { clientOf, conversationOf } = actions
    if (Plan.isAction(op)) {
      yield* actions.runActions(index, entry, [op], false)
      return
    }
    switch (op._tag) {
      case "AddDevice":
        s.record(entry, "", judge(yield* Effect.exit(installations.bootDevice(op.d, op.inbox))))
        break
      case "RevokeDevice":
        s.record(entry, "", judge(yield* Effect.exit(installations.revokeDevice(op.d))))
        break
      case "Race":
        yield* actions.runActions(index, entry, op.actions, true)
        break
      case "Restart":
        yield* recovery.restart(entry, op.c, "planned")
        break
      case "Rename":
      case "SetRole":
      case "SetPolicy":
      case "ForgeRoleGrab":
      case "SetMinVersion":
        s.record(entry, "", judge(yield* Effect.exit(steps.faults.governance(op))))
        break
      case "Messaging":
        s.record(entry, "", judge(yield* Effect.exit(MessagingOps.run(s.world, steps.messagingLog, { clientOf, conversationOf }, index, op.op))))
        break
      case "Watch":
        yield* watch(s, steps, index, entry, op)
        break
      default: {
        const exit = yield* Effect.exit(steps.faults.fault(op))
        s.record(entry, "", judge(exit))
      }
    }
  })

export const run = (s: RunState, steps: Steps) =>
  Effect.gen(function*() {
    const consentOps = s.full ? HistoryOps.plan(s.options.seed, s.ops.length) : new Map<number, HistoryOps.ConsentOp>()
    for (const [index, op] of s.ops.entries()) {
      const entry = s.newEntry(index, Plan.describe(op, s.clientName))
      yield* runOp(s, steps, index, entry, op)
      const consent = consentOps.get(index)
      if (consent !== undefined) s.record(entry, "consent: ", judge(yield* Effect.exit(HistoryOps.run(s.world, consent))))
      yield* steps.recovery.settle(entry)
    }
  })
