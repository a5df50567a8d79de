/**
 * `converge serve` under load: a real server process (SQLite in a temp folder, or Postgres at
 * `BENCH_POSTGRES_URL`) on loopback, and `publishers` registered installations, each with its
 * own RPC connection, sending signed `sendGroupMessages` requests of `perRequest` messages, all at
 * once, to `groups` groups (publishers share groups, so topics are contended). One subscriber
 * per group follows its topic over RPC. Afterwards: every topic's ids are 1..n with no gap, and
 * every subscriber saw each message once.
 */
import { Effect, Fiber, Ref, Stream } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import type { GroupId } from "../src/domain/Ids.ts"
import * as RpcDeliveryService from "../src/layers/RpcDeliveryService.ts"
import { authenticatedAs } from "../src/services/DeliveryAuth.ts"
import { mlsPayload, newGroupId, newInbox, newInstallationKeys } from "../test/support/DeliveryFixtures.ts"

export interface ServerRun {
  readonly store: "sqlite" | "postgres"
  readonly publishers: number
  /** Messages per `sendGroupMessages` request (the engine's publish sends up to 50 of a group's at once). */
  readonly perRequest: number
  readonly groups: number
  readonly messages: number
  readonly seconds: number
  readonly perSecond: number
  readonly p50: number
  readonly p99: number
  readonly rssMiB: number
  /** The server's CPU time per message (robust to a busy machine, unlike the rate). */
  readonly serverCpuMsPerMessage: number
  /** The harness's own CPU time per message (publishers and subscribers, this process): what the server competes with. */
  readonly harnessCpuMsPerMessage: number
  /** Postgres runs: the CPU time of every `postgres` process of this machine per message (NaN for SQLite). */
  readonly databaseCpuMsPerMessage: number
  /** Topics whose ids were not exactly 1..n, and subscriber deliveries missing or repeated. */
  readonly gaps: number
  readonly subscriberErrors: number
}

const repo = path.resolve(import.meta.dirname, "..")

const startServer = (args: ReadonlyArray<string>) =>
  new Promise<{ child: ChildProcess; url: string }>((resolve, reject) => {
    const child = spawn(process.execPath, [...(process.env["BENCH_SERVER_NODE_ARGS"]?.split(" ").filter((a) => a !== "") ?? []), "--import", "tsx", path.join(repo, "src/bin.ts"), "serve", "--port", "0", ...args], {
      cwd: repo,
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, CONVERGE_LOG_LEVEL: "Error" }
    })
    let output = ""
    const timer = setTimeout(() => reject(new Error(`no URL from converge serve: ${output}`)), 60_000)
    const onData = (chunk: Buffer) => {
      output += chunk.toString()
      const match = /on (http:\/\/\S+)/.exec(output)
      if (match !== null) {
        clearTimeout(timer)
        child.stdout!.off("data", onData)
        child.stderr!.off("data", onData)
        child.stdout!.resume()
        child.stderr!.resume()
        resolve({ child, url: match[1]! })
      }
    }
    child.stdout!.on("data", onData)
    child.stderr!.on("data", onData)
    child.on("exit", (code) => reject(new Error(`converge serve exited with ${code}: ${output}`)))
  })

const rssMiB = (pid: number) =>
  Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"))![1]) / 1024

/** The process's CPU time (user + system) in ms, from /proc. */
const cpuMs = (pid: number) => {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, "utf8").replace(/^.*\) /, "").split(" ")
  return (Number(fields[11]) + Number(fields[12])) * (1000 / 100)
}

/** The CPU time (ms) of every process named `postgres` on this machine: the database's share. */
const postgresCpuMs = () =>
  fs.readdirSync("/proc").filter((d) => /^[0-9]+$/.test(d)).reduce((sum, pid) => {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8")
      return /^\d+ \(postgres\)/.test(stat) ? sum + cpuMs(Number(pid)) : sum
    } catch {
      return sum // gone meanwhile
    }
  }, 0)

const quantile = (sorted: ReadonlyArray<number>, q: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))] ?? NaN

export const runServerThroughput = (options: {
  readonly publishers: number
  readonly groups: number
  readonly perPublisher: number
  readonly perRequest: number
  readonly postgresUrl?: string
}) =>
  Effect.scoped(Effect.gen(function*() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-bench-serve-"))
    const args = options.postgresUrl === undefined
      ? ["--db", path.join(dir, "ds.sqlite")]
      : ["--postgres", options.postgresUrl]
    const server = yield* Effect.acquireRelease(
      Effect.promise(() => startServer([...args, "--max-connections", "1000"])),
      ({ child }) =>
        Effect.promise(() =>
          new Promise<void>((resolve) => {
            child.on("exit", () => resolve())
            child.kill("SIGTERM")
          })
        ).pipe(Effect.ensuring(Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))))
    )
    const url = server.url.endsWith("/rpc") ? server.url : `${server.url.replace(/\/$/, "")}/rpc`
    const connect = RpcDeliveryService.make({ url })
    const anonymous = yield* connect
    const groups: Array<GroupId> = Array.from({ length: options.groups }, () => newGroupId())

    // Registration (untimed): an inbox and one installation per publisher, as any client registers.
    const publishers = yield* Effect.forEach(Array.from({ length: options.publishers }), () =>
      Effect.gen(function*() {
        const keys = newInstallationKeys()
        const inbox = newInbox()
        yield* anonymous.publishIdentityUpdate(inbox.create())
        yield* anonymous.publishIdentityUpdate(inbox.add(keys))
        return authenticatedAs(yield* connect, keys.signer)
      }), { concurrency: 10 })

    // One subscriber per group, counting what it sees per sequence id.
    const seen = groups.map(() => new Map<bigint, number>())
    const subscriberErrors = yield* Ref.make(0)
    const total = options.publishers * options.perPublisher
    const expectedPerGroup = groups.map((_, g) =>
      Array.from({ length: options.publishers }, (_, p) => p).filter((p) => p % groups.length === g).length *
      options.perPublisher
    )
    const subscribers = yield* Effect.forEach(groups, (groupId, g) =>
      Effect.gen(function*() {
        const reader = yield* connect
        return yield* reader.subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]).pipe(
          Stream.tap((envelope) =>
            Effect.sync(() => seen[g]!.set(envelope.sequenceId, (seen[g]!.get(envelope.sequenceId) ?? 0) + 1))
          ),
          Stream.take(expectedPerGroup[g]!),
          Stream.runDrain,
          Effect.catchAll(() => Ref.update(subscriberErrors, (n) => n + 1)),
          Effect.fork
        )
      }))
    yield* Effect.sleep("300 millis")

    const latencies: Array<number> = []
    const started = performance.now()
    const cpuBefore = cpuMs(server.child.pid!)
    const harnessBefore = process.cpuUsage()
    const databaseBefore = options.postgresUrl === undefined ? NaN : postgresCpuMs()
    let peakRss = rssMiB(server.child.pid!)
    const sampler = yield* Effect.fork(Effect.forever(
      Effect.sleep("100 millis").pipe(Effect.tap(() => Effect.sync(() => {
        peakRss = Math.max(peakRss, rssMiB(server.child.pid!))
      })))
    ))
    yield* Effect.forEach(publishers, (ds, p) =>
      Effect.gen(function*() {
        const groupId = groups[p % groups.length]!
        for (let i = 0; i < options.perPublisher; i += options.perRequest) {
          const count = Math.min(options.perRequest, options.perPublisher - i)
          const messages = Array.from({ length: count }, (_, k) => ({
            groupId,
            payload: mlsPayload(groupId, `publisher ${p} message ${i + k} ${"x".repeat(60)}`)
          }))
          const t = performance.now()
          yield* ds.sendGroupMessages(messages)
          latencies.push(performance.now() - t)
        }
      }), { concurrency: "unbounded", discard: true })
    const seconds = (performance.now() - started) / 1000
    const serverCpu = cpuMs(server.child.pid!) - cpuBefore
    const harnessUsage = process.cpuUsage(harnessBefore)
    const harnessCpu = (harnessUsage.user + harnessUsage.system) / 1000
    const databaseCpu = options.postgresUrl === undefined ? NaN : postgresCpuMs() - databaseBefore
    yield* Fiber.interrupt(sampler)
    yield* Effect.forEach(subscribers, Fiber.join).pipe(Effect.timeout("20 seconds"), Effect.ignore)

    // Every topic: ids 1..n, once each; every subscriber: each id once.
    let gaps = 0
    for (const [g, groupId] of groups.entries()) {
      const ids: Array<bigint> = []
      let cursor = 0n
      for (;;) {
        const page = yield* anonymous.queryGroupMessages({ groupId, afterSequenceId: cursor })
        ids.push(...page.items.map((e) => e.sequenceId))
        if (page.next === undefined) break
        cursor = page.next
      }
      if (ids.length !== expectedPerGroup[g] || ids.some((id, i) => id !== BigInt(i + 1))) gaps++
      for (let id = 1n; id <= BigInt(expectedPerGroup[g]!); id++) if (seen[g]!.get(id) !== 1) gaps++
    }
    const sorted = latencies.sort((a, b) => a - b)
    return {
      store: options.postgresUrl === undefined ? "sqlite" : "postgres",
      publishers: options.publishers,
      perRequest: options.perRequest,
      groups: options.groups,
      messages: total,
      seconds,
      perSecond: total / seconds,
      p50: quantile(sorted, 0.5),
      p99: quantile(sorted, 0.99),
      rssMiB: peakRss,
      serverCpuMsPerMessage: serverCpu / total,
      harnessCpuMsPerMessage: harnessCpu / total,
      databaseCpuMsPerMessage: databaseCpu / total,
      gaps,
      subscriberErrors: yield* Ref.get(subscriberErrors)
    } satisfies ServerRun
  }))
