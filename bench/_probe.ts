import { Effect, Logger, LogLevel, Tracer } from "effect"
import { TestNetwork } from "../src/testing.ts"

const withProfile = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const native = yield* Effect.tracer
    const totals = new Map<string, { count: number; ms: number }>()
    const tracer = Tracer.make({
      span: (name, parent, context, links, startTime, kind, options) => {
        const span = native.span(name, parent, context, links, startTime, kind, options)
        const end = span.end.bind(span)
        span.end = (endTime, exit) => {
          const t = totals.get(name) ?? { count: 0, ms: 0 }
          t.count++
          t.ms += Number(endTime - startTime) / 1e6
          totals.set(name, t)
          end(endTime, exit)
        }
        return span
      },
      context: (f, fiber) => native.context(f, fiber)
    })
    const value = yield* Effect.withTracer(effect, tracer)
    return { value, totals }
  })
const show = (label: string, totals: Map<string, { count: number; ms: number }>) => {
  console.log(label)
  for (const [k, t] of [...totals.entries()].sort((a, b) => b[1].ms - a[1].ms).slice(0, 25)) console.log(`  ${k.padEnd(45)} ${String(t.count).padStart(6)} ${t.ms.toFixed(1).padStart(9)}`)
}
const main = Effect.scoped(Effect.gen(function*() {
  const mode = process.argv[2]
  const net = yield* TestNetwork.make
  const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
  if (mode === "join") {
    const joiners = yield* Effect.forEach(Array.from({ length: 10 }), (_, i) => net.client(`j${i}`))
    const c = yield* alice.createGroup([bob.inboxId])
    const add = yield* withProfile(c.addMembers(joiners.map((j) => j.inboxId)))
    show("add10", add.totals)
    const j = yield* withProfile(joiners[0]!.syncAll)
    show("join12", j.totals)
  }
  if (mode === "publish") {
    const c = yield* alice.createGroup([bob.inboxId])
    for (const size of [50, 200, 500, 1000]) {
      for (let i = 0; i < size; i++) yield* c.sendOptimistic("x".repeat(100))
      const t0 = performance.now()
      const p = yield* withProfile(c.publishPending)
      const t = performance.now() - t0
      console.log(`batch ${size}: ${(t / size).toFixed(3)} ms/msg`)
      if (size === 1000 || size === 50) show(`publish ${size}`, p.totals)
    }
  }
  if (mode === "send") {
    const c = yield* alice.createGroup([bob.inboxId])
    for (let i = 0; i < 200; i++) yield* c.send("x".repeat(100))
    const t0 = performance.now()
    for (let i = 0; i < 500; i++) yield* c.send("x".repeat(100))
    console.log(`send: ${((performance.now() - t0) / 500).toFixed(3)} ms`)
  }
}))
Effect.runPromise(main.pipe(Logger.withMinimumLogLevel(LogLevel.Error)))
