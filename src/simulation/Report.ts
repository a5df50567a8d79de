/**
 * What one simulated history produced, and how it is printed: one summary line per seed, and
 * for a failing seed the violations and a readable trace of the whole history.
 */
import type { FaultStats } from "../layers/FaultyDeliveryService.ts"
import * as Plan from "./Plan.ts"

export interface Violation {
  /** Which invariant, e.g. `lost-message`, `divergent-epoch`, `defect`. */
  readonly invariant: string
  readonly detail: string
}

export interface TraceEntry {
  /** Position in the plan; the quiescence phase is numbered after the last operation. */
  readonly index: number
  readonly label: string
  readonly outcomes: Array<string>
  /** Warnings and errors the engine logged while the entry ran. */
  readonly logs: Array<string>
}

export interface Figures {
  /** Planned operations run (a race or a watch counts once). */
  readonly operations: number
  /** Client actions run (a race counts two). */
  readonly actions: number
  /** Faults injected: request faults, partitions, subscription faults, armed crashes, hostile inputs. */
  readonly faults: number
  readonly hostile: number
  readonly crashesArmed: number
  /** Armed crashes that fired (the client died there and was restarted). */
  readonly crashes: number
  readonly restarts: number
  /** Typed errors that operations met and that are allowed (recorded, not violations). */
  readonly expectedErrors: number
  /** Messages whose `send` succeeded. */
  readonly sent: number
  /** Installations at the end (inboxes' first ones and further devices). */
  readonly installations: number
  /** Devices revoked (identity updates published). */
  readonly revocations: number
  /** Installations of member inboxes left out of a group for being below its minimum version. */
  readonly leftOutBelowMinimum: number
  /** `leave` calls that succeeded. */
  readonly leaves: number
  /** DM conversations at the end (each may have several MLS groups beneath). */
  readonly dms: number
  /** Rounds the quiescence phase needed. */
  readonly quiescenceRounds: number
  readonly ds: FaultStats
}

export interface Report {
  readonly params: Plan.Params
  readonly figures: Figures
  readonly violations: ReadonlyArray<Violation>
  readonly trace: ReadonlyArray<TraceEntry>
  readonly elapsedMs: number
}

export const summaryLine = (report: Report): string => {
  const f = report.figures
  const p = report.params
  return [
    `seed ${p.seed}`,
    `clients ${p.clients}${p.profile === "classic" ? " (classic)" : ""}`,
    `installations ${f.installations} (revoked ${f.revocations}${
      f.leftOutBelowMinimum === 0 ? "" : `, left out below a minimum ${f.leftOutBelowMinimum}`
    })`,
    `ops ${f.operations} (${f.actions} actions)`,
    `faults ${f.faults} (hostile ${f.hostile})`,
    `crashes ${f.crashes}/${f.crashesArmed} armed`,
    `restarts ${f.restarts}`,
    `expected errors ${f.expectedErrors}`,
    `sent ${f.sent}`,
    `leaves ${f.leaves}`,
    `dms ${f.dms}`,
    `violations ${report.violations.length}`,
    `${report.elapsedMs} ms`
  ].join(" | ")
}

export const formatTrace = (report: Report): string => {
  const lines: Array<string> = []
  const width = String(report.trace.length).length
  for (const entry of report.trace) {
    lines.push(`${String(entry.index).padStart(width)}  ${entry.label}`)
    for (const outcome of entry.outcomes) lines.push(`${" ".repeat(width)}    -> ${outcome}`)
    for (const log of entry.logs) lines.push(`${" ".repeat(width)}    .. ${log}`)
  }
  return lines.join("\n")
}

export const formatViolations = (report: Report): string =>
  report.violations.map((v) => `  ✗ [${v.invariant}] ${v.detail}`).join("\n")

/** The full printout of one run: summary, then (if it failed, or if asked) violations and trace. */
export const format = (report: Report, options: { readonly trace?: boolean } = {}): string => {
  const parts = [summaryLine(report)]
  if (report.violations.length > 0) parts.push("violations:", formatViolations(report))
  if (options.trace === true || report.violations.length > 0) {
    const p = report.params
    parts.push(
      `trace (reproduce with: npm run simulate -- --first-seed ${p.seed} --seeds 1 --clients ${p.clients} --ops ${p.ops}${p.profile === "classic" ? " --classic" : ""} --trace):`,
      formatTrace(report)
    )
  }
  return parts.join("\n")
}

/** The plan alone, as it will run: what a seed means before anything happens. */
export const formatPlan = (ops: ReadonlyArray<Plan.Op>, names?: Plan.Names): string =>
  ops.map((op, i) => `${String(i).padStart(String(ops.length).length)}  ${Plan.describe(op, names)}`).join("\n")

export const emptyFigures: Figures = {
  operations: 0,
  actions: 0,
  faults: 0,
  hostile: 0,
  crashesArmed: 0,
  crashes: 0,
  restarts: 0,
  expectedErrors: 0,
  sent: 0,
  installations: 0,
  revocations: 0,
  leftOutBelowMinimum: 0,
  leaves: 0,
  dms: 0,
  quiescenceRounds: 0,
  ds: { dropped: 0, lostResponses: 0, partitionRejections: 0, streamsCut: 0, duplicated: 0, delayed: 0, substituted: 0 }
}
