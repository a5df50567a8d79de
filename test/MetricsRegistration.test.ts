/**
 * A scraper sees every engine counter from the moment a client starts, at 0: a series that
 * appears only at its first increment has no value to compute a rate from before it.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Metric, MetricState } from "effect"
import { TestNetwork } from "../src/testing.ts"

const COUNTERS = [
  "converge_messages_received_total",
  "converge_commits_total",
  "converge_epoch_conflicts_total",
  "converge_publish_refusals_total",
  "converge_publish_retries_total",
  "converge_state_decodes_total"
]

/** The untagged counters in the process's registry, by name. */
const exportedCounters = Effect.map(Metric.snapshot, (pairs) =>
  new Map(pairs.flatMap((pair) =>
    pair.metricKey.tags.length === 0 && MetricState.isCounterState(pair.metricState)
      ? [[pair.metricKey.name, Number(pair.metricState.count)] as const]
      : []
  )))

describe("engine metrics", () => {
  it.scoped("a client that has only started exports each engine counter at 0", () =>
    Effect.gen(function*() {
      const before = yield* exportedCounters
      // This file runs in a fresh module graph: nothing has touched these counters yet.
      for (const name of COUNTERS) expect(before.has(name)).toBe(false)

      const net = yield* TestNetwork.make
      yield* net.client("alice")

      const after = yield* exportedCounters
      for (const name of COUNTERS) expect([name, after.get(name)]).toEqual([name, 0])
    }))
})
