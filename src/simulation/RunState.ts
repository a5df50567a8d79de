/**
 * The state of one simulated run while it runs: the plan, the network and its clients, the
 * `World` the checks read, the counters the report's figures come from, and the recording of
 * verdicts into the trace. Every step of the run (`ClientActions`, `Installations`, `Recovery`,
 * `PlanRunner`, `Quiescence`, `FinalChecks`) works on it.
 */
import { type Duration, Effect } from "effect"
import { defaultEngineOptions } from "../services/EngineContext.ts"
import { type TestClient, type TestClientOptions, TestNetwork } from "../testing.ts"
import * as Plan from "./Plan.ts"
import type { TraceEntry } from "./Report.ts"
import type { Options } from "./SimulationOptions.ts"
import type { Verdict } from "./Verdict.ts"
import type { World } from "./World.ts"

/** What the run counts for the report's figures. */
export interface Counters {
  actions: number
  leaves: number
  revocations: number
  expected: number
  restarts: number
  /** Entries of the network's crash log already handled. */
  crashesSeen: number
}

export interface RunState {
  readonly options: Options
  readonly ops: ReadonlyArray<Plan.Op>
  /** The `full` profile (anything but `classic`). */
  readonly full: boolean
  readonly installs: World["installs"]
  /** Installations by name: `c3`, `c3b` (inbox c3's second device), ... */
  readonly clientName: Plan.Names
  readonly clientOptions: TestClientOptions
  readonly opTimeout: Duration.DurationInput
  readonly net: World["net"]
  readonly clients: Array<TestClient | undefined>
  readonly world: World
  readonly counters: Counters
  /** Clients to restart once the current operation is over (a crash or a defect hit them). */
  readonly broken: Set<number>
  readonly newEntry: (index: number, label: string) => TraceEntry
  readonly violate: (invariant: string, detail: string) => void
  /** Records a verdict in the trace; a violation also goes to the report. */
  readonly record: (entry: TraceEntry, prefix: string, verdict: Verdict) => void
}

/**
 * Engine options of the simulated clients. The `full` profile checks installations on every
 * sync, so that a new or revoked device is handled by the next sync rather than after 5 s of
 * wall-clock time, and keeps no settled intent (pruned every 100 ms and at each restart, so
 * intents go while their callers resolve them); `classic` keeps the defaults its seeds were
 * found with.
 */
const clientOptionsFor = (profile: Plan.Profile | undefined) =>
  profile === "classic"
    ? {}
    : { installationCheckInterval: "0 millis" as const, settledIntentRetention: "0 millis" as const }

/** Plans the seed, starts the network and boots each inbox's first installation. */
export const setUp = (options: Options, newEntry: RunState["newEntry"]) =>
  Effect.gen(function*() {
    const ops = Plan.plan(options)
    const full = options.profile !== "classic"
    const installs = Plan.installations(options, ops)
    const clientName = Plan.namesOf(options, ops)
    const clientOptions = {
      ...clientOptionsFor(options.profile),
      ...(options.installationCheckInterval === undefined
        ? {}
        : { installationCheckInterval: options.installationCheckInterval }),
      ...(options.governance === true && options.versionBumps !== false
        ? { protocolVersion: Plan.SIMULATION_PROTOCOL_VERSION }
        : {})
    }
    const opTimeout = options.opTimeout ?? "30 seconds"
    const net = yield* TestNetwork.makeWith({ delivery: options.delivery ?? "memory" })
    const clients: Array<TestClient | undefined> = installs.map(() => undefined)
    for (let c = 0; c < options.clients; c++) clients[c] = yield* net.client(clientName(c), clientOptions)
    const world: World = {
      net,
      installs,
      clients,
      inboxIds: clients.slice(0, options.clients).map((client) => client!.inboxId),
      groups: [],
      creators: [],
      sent: [],
      forgedWelcomes: new Map(),
      invited: new Map(),
      removed: new Map(),
      promoted: new Map(),
      renamed: new Set(),
      forgedCommits: new Set(),
      leftOutBelowMinimum: [],
      violations: [],
      maxPastEpochs: defaultEngineOptions.maxPastEpochs
    }
    const counters: Counters = { actions: 0, leaves: 0, revocations: 0, expected: 0, restarts: 0, crashesSeen: 0 }
    const violate = (invariant: string, detail: string) => world.violations.push({ invariant, detail })
    const record = (entry: TraceEntry, prefix: string, verdict: Verdict) => {
      entry.outcomes.push(`${prefix}${verdict.kind === "violation" ? `VIOLATION ${verdict.text}` : verdict.text}`)
      if (verdict.kind === "expected") counters.expected++
      if (verdict.kind === "violation") violate(verdict.invariant, `op ${entry.index} (${entry.label}): ${verdict.text}`)
    }
    const state: RunState = {
      options,
      ops,
      full,
      installs,
      clientName,
      clientOptions,
      opTimeout,
      net,
      clients,
      world,
      counters,
      broken: new Set<number>(),
      newEntry,
      violate,
      record
    }
    return state
  })
