/**
 * The trace of a run: one entry per operation, holding its outcomes and the engine logs written
 * while it ran (the logger writes into the entry started last).
 */
import { Logger } from "effect"
import type { TraceEntry } from "./Report.ts"
import { firstLine } from "./Verdict.ts"

const formatLogMessage = (message: unknown) =>
  Array.isArray(message) ? message.map((m) => String(m)).join(" ") : String(message)

export interface TraceRecorder {
  readonly trace: Array<TraceEntry>
  /** Replaces the default logger for the run. */
  readonly logger: Logger.Logger<unknown, void>
  /** Starts the entry of an operation; engine logs go to it until the next one starts. */
  readonly newEntry: (index: number, label: string) => TraceEntry
}

export const make = (): TraceRecorder => {
  const trace: Array<TraceEntry> = []
  let logs: Array<string> = []
  const logger = Logger.make(({ annotations, logLevel, message }) => {
    // Ids travel as log annotations (groupId, intentId, sequenceId), not inside the message.
    const ids = [...annotations].map(([key, value]) => `${key}=${String(value)}`).join(" ")
    logs.push(`${logLevel.label}: ${firstLine(formatLogMessage(message))}${ids === "" ? "" : ` (${ids})`}`)
  })
  const newEntry = (index: number, label: string): TraceEntry => {
    const entry: TraceEntry = { index, label, outcomes: [], logs: [] }
    trace.push(entry)
    logs = entry.logs
    return entry
  }
  return { trace, logger, newEntry }
}
