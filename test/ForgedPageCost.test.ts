/**
 * A catch-up page whose provisional reading is rolled back (a forged signature among its runs)
 * must cost the receiver little and show nothing false. The provisional commit's serialization
 * evicts the decoded state the page started from: the strict re-read starts from the row and
 * state the first read used, so a member who slips one forgery into each page cannot make every
 * receiver decode its state again per page (tens of ms at 100 members).
 */
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Fiber, Metric, Stream } from "effect"
import * as EngineMetrics from "../src/services/EngineMetrics.ts"
import { groupWithMallory, postForgedPage } from "./support/Forgery.ts"

const countingDecodes = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const before = (yield* Metric.value(EngineMetrics.stateDecodes)).count
    const value = yield* effect
    return { decodes: (yield* Metric.value(EngineMetrics.stateDecodes)).count - before, value }
  })

describe("A forged message in a catch-up page", () => {
  it.scoped("costs the receiver no state decode: the rolled-back page leaves the decoded state cached", () =>
    Effect.gen(function*() {
      const setup = yield* groupWithMallory
      const { bob, group } = setup

      // An honest page first: Bob's decoded state is cached, the catch-up decodes nothing.
      for (const text of ["one", "two", "three"]) yield* group.sendOptimistic(text)
      yield* group.publishPending
      yield* bob.syncAll
      for (const text of ["four", "five", "six"]) yield* group.sendOptimistic(text)
      yield* group.publishPending
      const honest = yield* countingDecodes(bob.syncAll)
      expect(honest.value.messages).toBe(3)
      expect(honest.decodes).toBe(0)

      // Now a page with Mallory's forgery in Alice's name amid Alice's texts.
      yield* postForgedPage(setup)
      const withForgery = yield* countingDecodes(bob.syncAll)
      expect(withForgery.value.skippedBy).toEqual({ unprocessable: 1 })
      // Fails on 870ff2a: 1 (the strict re-read decodes the stored state the provisional commit evicted).
      expect(withForgery.decodes).toBe(0)
    }))

  it.scoped("announces each honest text once on the stream and never the forgery", () =>
    Effect.gen(function*() {
      const setup = yield* groupWithMallory
      const { bob, group } = setup

      yield* postForgedPage(setup)

      const streaming = yield* Effect.fork(bob.streamMessages.pipe(
        Stream.filter((m) => m.kind === "text"),
        Stream.take(4),
        Stream.runCollect,
        Effect.map(Chunk.toReadonlyArray)
      ))
      yield* bob.syncAll
      yield* group.send("the end")
      yield* bob.syncAll
      const seen = yield* Fiber.join(streaming)
      expect(seen.map((m) => m.text)).toEqual(["lunch at noon?", "I booked a table", "see you there", "the end"])
    }))
})
