/**
 * `npm run simulate -- --seeds N --first-seed S --clients K --ops M [--delivery memory|sqlite|rpc] [--governance] [--no-version-bumps] [--no-messaging] [--classic] [--check-interval-ms MS] [--trace] [--debug] [--plan] [--quiet]`
 *
 * Runs seeds S, S+1, ..., S+N-1: each plans a random history of K inboxes (some with a second
 * installation, from the start or registered mid-run, some revoked later) and M operations
 * (group and DM actions, leaving, faults, crashes, hostile input), runs it, heals, syncs to
 * quiescence and checks the invariants. Prints one line per seed; a failing seed also prints
 * its violations and a readable trace (re-running that seed replays the same operations and
 * faults). The totals count violations per invariant.
 *
 *   --delivery the delivery service under test, always the store-backed service `converge serve`
 *             runs: over an in-memory store (default), a SQLite file, or behind a real server on
 *             a loopback port, reached over RPC
 *   --governance also plan renames, role and policy changes, and forged role grabs
 *   --check-interval-ms the clients' periodic installation check (default: every sync); a long one
 *             leaves new and revoked devices to immediate join
 *   --no-version-bumps with --governance, leave out minimum-version bumps (planned by default)
 *   --no-messaging leave out direct messages, typed content and deletions (planned by default)
 *   --classic the generator the first regression seeds were found with (one installation per
 *             inbox, groups only; see `Plan.Profile`)
 *   --trace   print the trace of every seed, not only failing ones
 *   --debug   put the engine's debug logs (every skipped envelope and why) into the trace
 *   --plan    print each seed's planned operations before running it
 *   --quiet   print only failing seeds and the totals
 *
 * Exit code: 0 when no seed found a violation, 1 otherwise (2 on bad arguments).
 */
import { Duration, Effect, LogLevel } from "effect"
import * as Simulation from "../src/simulation/Simulation.ts"
import type { TestDelivery } from "../src/testing.ts"

const usage =
  "usage: npm run simulate -- [--seeds N] [--first-seed S] [--clients K] [--ops M] [--delivery memory|sqlite|rpc] [--governance] [--no-version-bumps] [--no-messaging] [--classic] [--check-interval-ms MS] [--trace] [--debug] [--plan] [--quiet]"

const parse = (argv: ReadonlyArray<string>) => {
  const values = new Map<string, string>()
  const flags = new Set<string>()
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (!arg.startsWith("--")) throw new Error(`unexpected argument ${arg}`)
    const [key, inline] = arg.slice(2).split("=", 2) as [string, string | undefined]
    if (["trace", "plan", "quiet", "help", "classic", "debug", "governance", "no-messaging", "no-version-bumps"].includes(key)) {
      flags.add(key)
      continue
    }
    const value = inline ?? argv[++i]
    if (value === undefined) throw new Error(`--${key} needs a value`)
    values.set(key, value)
  }
  const int = (key: string, fallback: number, min: number) => {
    const raw = values.get(key)
    values.delete(key)
    if (raw === undefined) return fallback
    const n = Number(raw)
    if (!Number.isInteger(n) || n < min) throw new Error(`--${key} must be an integer >= ${min}, got ${raw}`)
    return n
  }
  const delivery = values.get("delivery") ?? "memory"
  values.delete("delivery")
  if (delivery !== "memory" && delivery !== "sqlite" && delivery !== "rpc") {
    throw new Error(`--delivery must be memory, sqlite or rpc, got ${delivery}`)
  }
  const checkIntervalMs = values.has("check-interval-ms") ? int("check-interval-ms", 0, 0) : undefined
  const options = {
    checkIntervalMs,
    delivery: delivery as TestDelivery,
    seeds: int("seeds", 10, 1),
    firstSeed: int("first-seed", 1, 0),
    clients: int("clients", 5, 2),
    ops: int("ops", 60, 1),
    classic: flags.has("classic"),
    governance: flags.has("governance"),
    messaging: !flags.has("no-messaging"),
    versionBumps: !flags.has("no-version-bumps"),
    trace: flags.has("trace"),
    debug: flags.has("debug"),
    plan: flags.has("plan"),
    quiet: flags.has("quiet"),
    help: flags.has("help")
  }
  for (const key of values.keys()) throw new Error(`unknown option --${key}`)
  return options
}

const main = async () => {
  let options: ReturnType<typeof parse>
  try {
    options = parse(process.argv.slice(2))
  } catch (e) {
    console.error(`${(e as Error).message}\n${usage}`)
    process.exit(2)
  }
  if (options.help) {
    console.log(usage)
    return
  }
  const started = Date.now()
  const totals = {
    operations: 0,
    actions: 0,
    faults: 0,
    hostile: 0,
    crashes: 0,
    armed: 0,
    sent: 0,
    expected: 0,
    installations: 0,
    revocations: 0,
    leftOutBelowMinimum: 0,
    leaves: 0,
    dms: 0,
    violations: 0
  }
  const failing: Array<number> = []
  const byInvariant = new Map<string, number>()
  console.log(
    `simulating seeds ${options.firstSeed}..${options.firstSeed + options.seeds - 1}: ${options.clients} inboxes, ${options.ops} operations each, ${options.delivery} delivery${
      options.classic ? " (classic generator)" : ""
    }`
  )
  for (let seed = options.firstSeed; seed < options.firstSeed + options.seeds; seed++) {
    const params: Simulation.Options = {
      seed,
      clients: options.clients,
      ops: options.ops,
      delivery: options.delivery,
      ...(options.governance ? { governance: true } : {}),
      ...(options.versionBumps ? {} : { versionBumps: false }),
      ...(options.messaging ? {} : { messaging: false }),
      ...(options.classic ? { profile: "classic" as const } : {}),
      ...(options.checkIntervalMs === undefined ? {} : { installationCheckInterval: Duration.millis(options.checkIntervalMs) })
    }
    if (options.plan) {
      const ops = Simulation.Plan.plan(params)
      console.log(`plan of seed ${seed}:\n${Simulation.Report.formatPlan(ops, Simulation.Plan.namesOf(params, ops))}`)
    }
    const report = await Effect.runPromise(
      Simulation.run(options.debug ? { ...params, logLevel: LogLevel.Debug } : params)
    )
    const f = report.figures
    totals.operations += f.operations
    totals.actions += f.actions
    totals.faults += f.faults
    totals.hostile += f.hostile
    totals.crashes += f.crashes
    totals.armed += f.crashesArmed
    totals.sent += f.sent
    totals.expected += f.expectedErrors
    totals.installations += f.installations
    totals.revocations += f.revocations
    totals.leftOutBelowMinimum += f.leftOutBelowMinimum
    totals.leaves += f.leaves
    totals.dms += f.dms
    totals.violations += report.violations.length
    if (report.violations.length > 0) failing.push(seed)
    for (const v of report.violations) byInvariant.set(v.invariant, (byInvariant.get(v.invariant) ?? 0) + 1)
    if (!options.quiet || report.violations.length > 0) {
      console.log(Simulation.Report.format(report, { trace: options.trace }))
    }
  }
  const seconds = ((Date.now() - started) / 1000).toFixed(1)
  console.log(
    [
      `\n${options.seeds} seed(s) in ${seconds} s`,
      `operations ${totals.operations} (${totals.actions} client actions)`,
      `faults ${totals.faults} (hostile inputs ${totals.hostile}, crash points armed ${totals.armed})`,
      `crashes ${totals.crashes}`,
      `sends confirmed ${totals.sent}`,
      `installations ${totals.installations} (devices revoked ${totals.revocations}; left out of a group below its minimum version ${totals.leftOutBelowMinimum}), leaves ${totals.leaves}, DM conversations ${totals.dms}`,
      `expected errors ${totals.expected}`,
      `violations ${totals.violations}${failing.length > 0 ? ` in seed(s) ${failing.join(", ")}` : ""}`,
      ...(byInvariant.size === 0
        ? []
        : [`by invariant: ${[...byInvariant].sort(([, a], [, b]) => b - a).map(([k, n]) => `${k} ${n}`).join(", ")}`])
    ].join("\n")
  )
  process.exitCode = totals.violations > 0 ? 1 : 0
}

void main()
