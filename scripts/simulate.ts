/**
 * `npm run simulate -- --seeds N --first-seed S --clients K --ops M [--trace] [--plan] [--quiet]`
 *
 * Runs seeds S, S+1, ..., S+N-1: each plans a random history of K clients and M operations
 * (actions, faults, crashes, hostile input), runs it, heals, syncs to quiescence and checks
 * the invariants. Prints one line per seed; a failing seed also prints its violations and a
 * readable trace (re-running that seed replays the same operations and faults).
 *
 *   --trace   print the trace of every seed, not only failing ones
 *   --plan    print each seed's planned operations before running it
 *   --quiet   print only failing seeds and the totals
 *
 * Exit code: 0 when no seed found a violation, 1 otherwise (2 on bad arguments).
 */
import { Effect } from "effect"
import * as Simulation from "../src/simulation/Simulation.ts"

const usage = "usage: npm run simulate -- [--seeds N] [--first-seed S] [--clients K] [--ops M] [--trace] [--plan] [--quiet]"

const parse = (argv: ReadonlyArray<string>) => {
  const values = new Map<string, string>()
  const flags = new Set<string>()
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (!arg.startsWith("--")) throw new Error(`unexpected argument ${arg}`)
    const [key, inline] = arg.slice(2).split("=", 2) as [string, string | undefined]
    if (["trace", "plan", "quiet", "help"].includes(key)) {
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
  const options = {
    seeds: int("seeds", 10, 1),
    firstSeed: int("first-seed", 1, 0),
    clients: int("clients", 5, 2),
    ops: int("ops", 60, 1),
    trace: flags.has("trace"),
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
  const totals = { operations: 0, actions: 0, faults: 0, hostile: 0, crashes: 0, armed: 0, sent: 0, expected: 0, violations: 0 }
  const failing: Array<number> = []
  console.log(
    `simulating seeds ${options.firstSeed}..${options.firstSeed + options.seeds - 1}: ${options.clients} clients, ${options.ops} operations each`
  )
  for (let seed = options.firstSeed; seed < options.firstSeed + options.seeds; seed++) {
    const params = { seed, clients: options.clients, ops: options.ops }
    if (options.plan) console.log(`plan of seed ${seed}:\n${Simulation.Report.formatPlan(Simulation.Plan.plan(params))}`)
    const report = await Effect.runPromise(Simulation.run(params))
    const f = report.figures
    totals.operations += f.operations
    totals.actions += f.actions
    totals.faults += f.faults
    totals.hostile += f.hostile
    totals.crashes += f.crashes
    totals.armed += f.crashesArmed
    totals.sent += f.sent
    totals.expected += f.expectedErrors
    totals.violations += report.violations.length
    if (report.violations.length > 0) failing.push(seed)
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
      `expected errors ${totals.expected}`,
      `violations ${totals.violations}${failing.length > 0 ? ` in seed(s) ${failing.join(", ")}` : ""}`
    ].join("\n")
  )
  process.exitCode = totals.violations > 0 ? 1 : 0
}

void main()
