/**
 * A server request whose fiber is interrupted (its client went away, its call timed out) at any
 * point of a store append or a batched lookup must not leave the shared writer or batch behind:
 * every later request still gets its answer. The fiber is made to yield at its n-th operation,
 * for every n, and is interrupted while it waits to run again, as a busy server's scheduler can.
 */
import { SqliteClient } from "@effect/sql-sqlite-node"
import { expect, it } from "@effect/vitest"
import { Effect, type Fiber, FiberId, Layer, ManagedRuntime, Option, type Scheduler } from "effect"
import { groupTopic } from "../src/domain/Topics.ts"
import * as SqlDeliveryStore from "../src/layers/SqlDeliveryStore.ts"
import { makeTurnBatcher } from "../src/layers/TurnBatcher.ts"
import { DeliveryStore } from "../src/services/DeliveryStore.ts"

/** Yields once, at the `at`-th operation of the fibers it runs; runs tasks only when pumped. */
class YieldAt implements Scheduler.Scheduler {
  private ops = 0
  yielded = false
  readonly tasks: Array<Scheduler.Task> = []
  constructor(readonly at: number) {}
  shouldYield() {
    if (this.yielded || ++this.ops < this.at) return false
    this.yielded = true
    return 0
  }
  scheduleTask(task: Scheduler.Task) {
    this.tasks.push(task)
  }
}

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve))

/** Runs the scheduler's queued tasks and lets the event loop turn, a few times over, or until it has yielded. */
const pump = async (scheduler: YieldAt, untilYielded: boolean) => {
  for (let i = 0; i < 20 && !(untilYielded && scheduler.yielded); i++) {
    while (scheduler.tasks.length > 0 && !(untilYielded && scheduler.yielded)) scheduler.tasks.shift()!()
    await nextTurn()
  }
}

/**
 * For each operation count up to `maxOps`: start `first` on a scheduler that yields there,
 * interrupt it during that yield, then check that `later` still answers within a second.
 * Returns the operation counts after which `later` did not answer.
 */
const wedgedAt = async <A, E>(
  maxOps: number,
  first: () => Effect.Effect<unknown, unknown>,
  later: () => Effect.Effect<A, E>
): Promise<Array<number>> => {
  const wedged: Array<number> = []
  for (let at = 1; at <= maxOps; at++) {
    const scheduler = new YieldAt(at)
    const fiber: Fiber.RuntimeFiber<unknown, unknown> = Effect.runFork(Effect.withScheduler(first(), scheduler))
    // The fiber runs until it yields; it is interrupted while its resumption waits in the queue.
    await pump(scheduler, true)
    if (scheduler.yielded) fiber.unsafeInterruptAsFork(FiberId.none)
    await pump(scheduler, false)
    const answered = await Effect.runPromise(Effect.timeoutOption(later(), "1 second"))
    if (Option.isNone(answered)) wedged.push(at)
  }
  return wedged
}

const topic = groupTopic("0123456789abcdef0123456789abcdef" as never)

it("a store append interrupted at any point leaves no append after it waiting forever", async () => {
  const runtime = ManagedRuntime.make(SqlDeliveryStore.layerSqlite.pipe(Layer.provide(SqliteClient.layer({ filename: ":memory:" }))))
  const store = await runtime.runPromise(DeliveryStore)
  let n = 0
  const append = () => store.append([{ topic, payload: new Uint8Array([n++ % 256, 1]) }])
  const wedged = await wedgedAt(60, append, append)
  await runtime.dispose()
  expect(wedged).toEqual([])
}, 120_000)

it("a batched lookup interrupted at any point leaves no lookup after it waiting forever", async () => {
  const lookup = makeTurnBatcher((keys: ReadonlyArray<string>) => Effect.succeed(new Map(keys.map((k) => [k, k.length]))))
  const wedged = await wedgedAt(40, () => lookup("first"), () => lookup("later"))
  expect(wedged).toEqual([])
}, 120_000)
