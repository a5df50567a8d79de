/**
 * Deterministic simulation of Converge under faults (FoundationDB style): a seed plans a
 * history of client actions (groups, DMs, leaving), installations registered and revoked,
 * faults, crashes and hostile input (`Plan`); the runner carries it out, one operation at a
 * time, against a `TestNetwork` (real SQLite, real ts-mls, the in-memory delivery service);
 * then every fault is healed, every installation syncs until nothing changes, and the
 * invariants are checked (`Invariants`).
 *
 * Operations run in plan order, so the history of operations and faults is the same on every
 * run of a seed. Inside a race or a watch, actions run concurrently, and how they interleave
 * may differ between runs; everything around them does not.
 *
 * Typed errors that an operation may meet under faults (a delivery error, a failed intent, a
 * group one was removed from, ...) are recorded in the trace, not counted as violations. A
 * defect that is not a `SimulatedCrash`, an unexpected error type, or an operation that hangs
 * is a violation.
 */
import { Cause, Effect, Logger, LogLevel } from "effect"
import * as ClientActions from "./ClientActions.ts"
import * as FaultOps from "./FaultOps.ts"
import * as FinalChecks from "./FinalChecks.ts"
import * as PlanRunner from "./PlanRunner.ts"
import * as Installations from "./Installations.ts"
import * as MessagingOps from "./MessagingOps.ts"
import * as Quiescence from "./Quiescence.ts"
import * as Recovery from "./Recovery.ts"
import { emptyFigures, type Report } from "./Report.ts"
import * as RunState from "./RunState.ts"
import type { Options } from "./SimulationOptions.ts"
import * as Trace from "./Trace.ts"

export * as Plan from "./Plan.ts"
export * as Prng from "./Prng.ts"
export * as Report from "./Report.ts"
export type { Options } from "./SimulationOptions.ts"

/** The history, quiescence and checks of one seed, on a network set up for it. */
const program = (options: Options, recorder: Trace.TraceRecorder) =>
  Effect.gen(function*() {
    const s = yield* RunState.setUp(options, recorder.newEntry)
    const messagingLog = MessagingOps.makeLog()
    const actions = ClientActions.make(s)
    const installations = Installations.make(s, actions)
    const recovery = Recovery.make(s)
    const { clientOf, conversationOf, groupOrSkip } = actions
    const faults = FaultOps.make({ world: s.world, full: s.full, clientName: s.clientName, clientOf, groupOrSkip, conversationOf })
    const steps: PlanRunner.Steps = { actions, installations, recovery, faults, messagingLog }
    yield* PlanRunner.run(s, steps)
    const rounds = yield* Quiescence.run(s, steps)
    return yield* FinalChecks.run(s, recorder.trace, messagingLog, rounds)
  })

/** Runs one seed and checks it. Never fails: whatever goes wrong is a violation in the report. */
export const run = (options: Options): Effect.Effect<Report> => {
  const started = Date.now()
  const recorder = Trace.make()
  const trace = recorder.trace
  return Effect.scoped(program(options, recorder)).pipe(
    Effect.provide(Logger.replace(Logger.defaultLogger, recorder.logger)),
    Logger.withMinimumLogLevel(options.logLevel ?? LogLevel.Warning),
    Effect.catchAllCause((cause) =>
      Effect.succeed({
        figures: emptyFigures,
        violations: [{ invariant: "harness", detail: `the run itself failed: ${Cause.pretty(cause)}` }]
      })
    ),
    Effect.map(({ figures, violations }): Report => ({
      params: {
        seed: options.seed,
        clients: options.clients,
        ops: options.ops,
        ...(options.profile === undefined ? {} : { profile: options.profile }),
        ...(options.governance === undefined ? {} : { governance: options.governance }),
        ...(options.messaging === undefined ? {} : { messaging: options.messaging })
      },
      figures,
      violations,
      trace,
      elapsedMs: Date.now() - started
    }))
  )
}
