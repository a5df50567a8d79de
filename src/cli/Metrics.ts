/**
 * Metrics of `converge serve`: every delivery-service call the server answers is counted and
 * timed by method (and failures by error tag), and every Effect `Metric` of the process is
 * exposed as Prometheus text on `GET /metrics` of a port of its own (`--metrics-port`).
 */
import { Cause, Duration, Effect, Exit, FiberRef, Metric, MetricLabel, MetricState, Option, Stream } from "effect"
import type { MetricPair } from "effect"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import type { DeliveryService } from "../services/DeliveryService.ts"

const requests = Metric.counter("converge_ds_requests_total", { description: "delivery-service calls answered" })
const failures = Metric.counter("converge_ds_failures_total", { description: "delivery-service calls that failed, by error tag" })
const latency = Metric.timerWithBoundaries("converge_ds_request_duration_milliseconds", [1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000])
const stored = Metric.counter("converge_ds_group_messages_stored_total", { description: "group messages (commits and application messages) accepted by sendGroupMessages and sendGroupMessagesIf" })
const subscriptions = Metric.counter("converge_ds_subscriptions_total", { description: "subscriptions opened, by kind" })

const tagOf = (error: unknown) =>
  typeof error === "object" && error !== null && "_tag" in error ? String(error._tag) : "unknown"

/**
 * Wraps one call: counted, timed and, on failure, counted by its error tag; `stored` adds the
 * messages a successful call stored. The method's tagged metrics are made once: tagging anew
 * on every call hashed the keys each time. Updated in one step when the call ends (with the
 * fiber's metric labels, as `Metric.update` would), not as four effects around it.
 */
const measuredAs = (method: string) => {
  const timed = Metric.tagged(latency, "method", method)
  const counted = Metric.tagged(requests, "method", method)
  const failed = Metric.tagged(failures, "method", method)
  return <A, E, R>(call: Effect.Effect<A, E, R>, storedCount: number | ((value: A) => number) = 0) =>
    Effect.flatMap(FiberRef.get(FiberRef.currentMetricLabels), (labels) =>
      Effect.clockWith((clock) => {
        const start = clock.unsafeCurrentTimeNanos()
        return Effect.onExit(call, (exit) =>
          Effect.sync(() => {
            if (Exit.isSuccess(exit)) {
              timed.unsafeUpdate(Duration.nanos(clock.unsafeCurrentTimeNanos() - start), labels)
              const count = typeof storedCount === "number" ? storedCount : storedCount(exit.value)
              if (count > 0) stored.unsafeUpdate(count, labels)
            } else {
              const error = Cause.failureOption(exit.cause)
              if (Option.isSome(error)) failed.unsafeUpdate(1, [...labels, MetricLabel.make("error", tagOf(error.value))])
            }
            counted.unsafeUpdate(1, labels)
          }))
      }))
}

/** The delivery service a server runs, with every method measured. */
export const instrument = (service: DeliveryService["Type"]): DeliveryService["Type"] => {
  const wrapped: Record<string, unknown> = {}
  for (const [method, value] of Object.entries(service)) {
    const measured = measuredAs(method)
    wrapped[method] = typeof value !== "function" ? value : (...args: Array<unknown>) => {
      const result: unknown = (value as (...a: Array<unknown>) => unknown).apply(service, args)
      if (Effect.isEffect(result)) {
        // A conditional send stores its messages only when the topic had not moved.
        const count = method === "sendGroupMessages" && Array.isArray(args[0])
          ? args[0].length
          : method === "sendGroupMessagesIf"
          ? (answer: unknown) => {
            const outcome = answer as { readonly _tag?: string; readonly envelopes?: ReadonlyArray<unknown> }
            return outcome._tag === "Stored" ? outcome.envelopes?.length ?? 0 : 0
          }
          : 0
        return measured(result as Effect.Effect<unknown, unknown, unknown>, count)
      }
      if (Stream.StreamTypeId in (result as object)) {
        return Stream.onStart(result as Stream.Stream<unknown, unknown>, Metric.increment(Metric.tagged(subscriptions, "method", method)))
      }
      return result
    }
  }
  return wrapped as DeliveryService["Type"]
}

const metricName = (name: string) => name.replace(/[^a-zA-Z0-9_:]/g, "_")
const labelValue = (value: string) => value.replace(/\\/g, "\\\\").replace(/"/g, "\\\"").replace(/\n/g, "\\n")
const labels = (pairs: ReadonlyArray<readonly [string, string]>) =>
  pairs.length === 0 ? "" : `{${pairs.map(([k, v]) => `${metricName(k)}="${labelValue(v)}"`).join(",")}}`

/** One metric's sample lines and its Prometheus type. */
const samples = (pair: MetricPair.MetricPair.Untyped): { type: string; lines: Array<string> } | undefined => {
  const name = metricName(pair.metricKey.name)
  const tags = pair.metricKey.tags.map((t) => [t.key, t.value] as const)
  const state: unknown = pair.metricState
  if (MetricState.isCounterState(state)) return { type: "counter", lines: [`${name}${labels(tags)} ${state.count}`] }
  if (MetricState.isGaugeState(state)) return { type: "gauge", lines: [`${name}${labels(tags)} ${state.value}`] }
  if (MetricState.isFrequencyState(state)) {
    return { type: "counter", lines: [...state.occurrences].map(([k, n]) => `${name}${labels([...tags, ["key", k]])} ${n}`) }
  }
  if (MetricState.isHistogramState(state)) {
    return {
      type: "histogram",
      lines: [
        // Effect's boundaries end with Infinity: that bucket is the `+Inf` one below.
        ...state.buckets.filter(([le]) => Number.isFinite(le))
          .map(([le, n]) => `${name}_bucket${labels([...tags, ["le", String(le)]])} ${n}`),
        `${name}_bucket${labels([...tags, ["le", "+Inf"]])} ${state.count}`,
        `${name}_sum${labels(tags)} ${state.sum}`,
        `${name}_count${labels(tags)} ${state.count}`
      ]
    }
  }
  return undefined
}

/** Every metric of the process in the Prometheus text format (0.0.4). */
export const prometheusText = Effect.map(Metric.snapshot, (pairs) => {
  const byName = new Map<string, { type: string; lines: Array<string> }>()
  for (const pair of pairs) {
    const rendered = samples(pair)
    if (rendered === undefined) continue
    const name = metricName(pair.metricKey.name)
    const entry = byName.get(name) ?? { type: rendered.type, lines: [] }
    entry.lines.push(...rendered.lines)
    byName.set(name, entry)
  }
  return [...byName].sort(([a], [b]) => a.localeCompare(b))
    .map(([name, { lines, type }]) => `# TYPE ${name} ${type}\n${lines.join("\n")}\n`).join("")
})

/** Serves `GET /metrics` on its own port in the current scope; returns the bound URL. */
export const serveMetrics = (host: string, port: number) =>
  Effect.acquireRelease(
    Effect.async<http.Server, Error>((resume) => {
      const server = http.createServer((req, res) => {
        if (req.method !== "GET" || req.url !== "/metrics") return void res.writeHead(404).end()
        Effect.runPromise(prometheusText).then(
          (text) => res.writeHead(200, { "content-type": "text/plain; version=0.0.4" }).end(text),
          () => res.writeHead(500).end()
        )
      })
      server.once("error", (e) => resume(Effect.fail(e)))
      server.listen(port, host, () => resume(Effect.succeed(server)))
    }),
    (server) => Effect.async<void>((resume) => {
      server.close(() => resume(Effect.void))
    })
  ).pipe(Effect.map((server) => `http://${host}:${(server.address() as AddressInfo).port}/metrics`))
