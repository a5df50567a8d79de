/**
 * Progress tracing and a stall watchdog for the bench, both off by default.
 *
 * - `BENCH_TRACE=1`: every step (`Watchdog.step`, `progress`) prints to stderr with a timestamp.
 * - `BENCH_WATCHDOG=<minutes>`: if no step starts or ends for that long, print every live fiber (id,
 *   span stack, log annotations, what it is blocked on) and Node's active handles to stderr, then exit
 *   with code 3, so a stalled run fails loudly instead of hanging. `kill -USR2 <pid>` prints the same.
 *   If the main thread itself stops (blocked in native code: no timer of its own can fire then), a
 *   worker thread notices, prints the process's native stacks (`gdb`, when it can attach) and kills
 *   the process (exit by SIGKILL, after the message).
 *
 * Why: full runs stopped in section 7 for over ten minutes without an error. One such stall was the
 * main thread deadlocked inside node:crypto during a GC (see `NodeCiphersuite.generateX25519`).
 */
import { Effect, Fiber, FiberId, FiberRef, HashMap, Option, Supervisor, type Tracer } from "effect"
import { Worker } from "node:worker_threads"

const TRACE = process.env["BENCH_TRACE"] === "1"
const WATCHDOG_MINUTES = Number(process.env["BENCH_WATCHDOG"] ?? "") || 0
const enabled = TRACE || WATCHDOG_MINUTES > 0

let lastProgress = Date.now()
let lastStep = "(none yet)"
const open: Array<string> = []

const note = (line: string) => {
  lastProgress = Date.now()
  if (TRACE) process.stderr.write(`[trace ${new Date().toISOString()}] ${line}\n`)
}

/** Marks progress inside a long step (only counted and printed when tracing or the watchdog is on). */
export const progress = (label: string) => Effect.sync(() => enabled && note(`  ${label}`))

/** Runs `effect` as a named step: traced, and progress for the watchdog at its start and end. */
export const step = <A, E, R>(name: string, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  !enabled ? effect : Effect.suspend(() => {
    const start = performance.now()
    open.push(name)
    lastStep = name
    note(`start ${name}`)
    return effect.pipe(Effect.onExit((exit) =>
      Effect.sync(() => {
        open.splice(open.lastIndexOf(name), 1)
        note(`${exit._tag === "Success" ? "end" : "FAILED"} ${name} (${((performance.now() - start) / 1000).toFixed(1)} s)`)
      })
    ))
  })

const spanStack = (span: Tracer.AnySpan | undefined) => {
  const names: Array<string> = []
  let current: Tracer.AnySpan | undefined = span
  while (current !== undefined && names.length < 30) {
    if (current._tag === "ExternalSpan") {
      names.push(`external ${current.spanId}`)
      break
    }
    names.push(current.name)
    current = Option.getOrUndefined(current.parent)
  }
  return names.join(" < ")
}

const handleInfo = (handle: unknown): string => {
  const h = handle as Record<string, unknown> & { constructor?: { name?: string } }
  const kind = h.constructor?.name ?? typeof handle
  if (kind === "Socket") {
    const s = handle as { localPort?: number; remotePort?: number; pending?: boolean; destroyed?: boolean }
    return `Socket local ${s.localPort} remote ${s.remotePort}${s.destroyed ? " destroyed" : ""}`
  }
  if (kind === "Server") return `Server ${JSON.stringify((handle as { address: () => unknown }).address())}`
  if (kind === "ChildProcess") return `ChildProcess pid ${(h as { pid?: number }).pid} ${(h as { spawnargs?: Array<string> }).spawnargs?.join(" ").slice(0, 200)}`
  if (kind === "Timeout") {
    const fn = h["_onTimeout"] as { name?: string; toString: () => string } | undefined
    return `Timeout ${String(h["_idleTimeout"])} ms repeat ${String(h["_repeat"])} ${fn?.name || fn?.toString().slice(0, 120)}`
  }
  return kind
}

/** Prints every tracked fiber and Node's active handles to stderr. */
const dump = (fibers: ReadonlyArray<Fiber.RuntimeFiber<unknown, unknown>>, why: string) => {
  const out: Array<string> = [`===== bench watchdog: ${why} =====`]
  out.push(`last step started: ${lastStep}; open steps: ${open.join(" > ") || "(none)"}`)
  out.push(`last progress ${((Date.now() - lastProgress) / 1000).toFixed(0)} s ago; rss ${(process.memoryUsage().rss / 2 ** 20).toFixed(0)} MiB`)
  out.push(`active resources: ${process.getActiveResourcesInfo().join(", ")}`)
  const handles = (process as unknown as { _getActiveHandles?: () => Array<unknown> })._getActiveHandles?.() ?? []
  for (const h of handles) out.push(`  handle: ${handleInfo(h)}`)
  const live = fibers.filter((f) => f.unsafePoll() === null)
  out.push(`live fibers: ${live.length} (of ${fibers.length} tracked)`)
  for (const fiber of live) {
    const annotations = HashMap.toEntries(fiber.getFiberRef(FiberRef.currentLogAnnotations))
      .map(([k, v]) => `${k}=${String(v)}`).join(" ")
    const internal = fiber as unknown as { _asyncBlockingOn: FiberId.FiberId | null; _children: Set<unknown> | null }
    const on = internal._asyncBlockingOn === null ? "" : FiberId.threadName(internal._asyncBlockingOn)
    const blocking = on === "" ? "" : ` blocked on ${on}`
    out.push(`  fiber ${FiberId.threadName(fiber.id())}${blocking} children ${internal._children?.size ?? 0}` +
      ` span: ${spanStack(fiber.currentSpan) || "-"}${annotations === "" ? "" : ` annotations: ${annotations}`}`)
  }
  process.stderr.write(out.join("\n") + "\n")
}

/**
 * Runs the bench's main effect under a fiber tracker; with the watchdog on, a check every 10 s
 * (unref'd, so it never keeps the process alive by itself).
 */
export const supervise = <A, E, R>(main: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  !enabled ? main : Effect.gen(function*() {
    const tracker = yield* Supervisor.track
    const self = yield* Effect.withFiberRuntime<Fiber.RuntimeFiber<unknown, unknown>>((fiber) => Effect.succeed(fiber))
    const fibers = () => [self, ...Effect.runSync(tracker.value)]
    process.on("SIGUSR2", () => dump(fibers(), "SIGUSR2"))
    // A pending bench whose event loop empties would exit 0 silently: say so instead.
    process.on("beforeExit", () => {
      if (open.length > 0) {
        dump(fibers(), "the event loop is empty while steps are open")
        process.exitCode = 4
      }
    })
    if (WATCHDOG_MINUTES > 0) {
      const heartbeat = watchBlockedThread(WATCHDOG_MINUTES)
      const timer = setInterval(() => {
        heartbeat()
        if (Date.now() - lastProgress < WATCHDOG_MINUTES * 60_000) return
        dump(fibers(), `no progress for ${WATCHDOG_MINUTES} min`)
        process.exit(3)
      }, 10_000)
      timer.unref()
    }
    return yield* main.pipe(Effect.supervised(tracker))
  })

/**
 * A worker thread that kills the process when the main thread's heartbeat (the returned function,
 * called every 10 s) stops for `minutes`: a main thread blocked in native code runs no timer, so
 * only another thread can tell. Plain JavaScript, so the worker needs no loader.
 */
const watchBlockedThread = (minutes: number) => {
  const beat = new Int32Array(new SharedArrayBuffer(4))
  const started = Date.now()
  const heartbeat = () => Atomics.store(beat, 0, Math.floor((Date.now() - started) / 1000))
  const worker = new Worker(
    `
    const { workerData } = require("node:worker_threads")
    const { execFileSync } = require("node:child_process")
    const fs = require("node:fs")
    const { beat, started, pid, minutes } = workerData
    setInterval(() => {
      const silent = (Date.now() - started) / 1000 - Atomics.load(beat, 0)
      if (silent < minutes * 60) return
      fs.writeSync(2, "===== bench watchdog: the main thread has been blocked for " + Math.round(silent) + " s (native code or a synchronous loop); native stacks follow if gdb can attach =====\\n")
      try {
        fs.writeSync(2, execFileSync("gdb", ["-p", String(pid), "-batch", "-ex", "thread apply all bt 25"], { timeout: 60000, stdio: ["ignore", "pipe", "ignore"] }))
      } catch (e) {
        fs.writeSync(2, "(no native stacks: " + e.message + ")\\n")
      }
      process.kill(pid, "SIGKILL")
    }, 10000)
    `,
    { eval: true, workerData: { beat, started, pid: process.pid, minutes } }
  )
  worker.unref()
  heartbeat()
  return heartbeat
}
