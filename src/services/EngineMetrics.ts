/**
 * The engine's Effect `Metric`s: what a client sent and received, the commits it applied, the
 * races it lost, its retries, what it skipped and why, how far behind a sync found it, and how
 * long publishing took. Exported wherever the application exports Effect metrics
 * (`converge serve --metrics-port`, the OpenTelemetry exporter of the CLI).
 */
import { Effect, Metric, MetricBoundaries } from "effect"

export const messagesReceived = Metric.counter("converge_messages_received_total", {
  description: "application messages stored from others, and own messages confirmed on their topic"
})
export const commitsApplied = Metric.counter("converge_commits_total", { description: "commits applied (own and others')" })
export const epochConflicts = Metric.counter("converge_epoch_conflicts_total", {
  description: "own commits that lost their epoch and were derived again"
})
export const publishRefusals = Metric.counter("converge_publish_refusals_total", {
  description: "publishes the service refused because the group's topic had moved since it was read (someone else's message or commit came first)"
})
export const transportRetries = Metric.counter("converge_publish_retries_total", {
  description: "publish rounds retried after a retryable delivery error or a pending intent"
})
export const skipped = Metric.counter("converge_skipped_envelopes_total", { description: "envelopes skipped, by reason" })
/** Envelopes a sync of one group read: how far behind the group was. */
export const syncLag = Metric.histogram(
  "converge_sync_lag_envelopes",
  MetricBoundaries.fromIterable([0, 1, 2, 5, 10, 25, 50, 100, 250, 1000]),
  "envelopes a group sync read"
)
/** Group states decoded from their stored bytes (each costs milliseconds in a large group). */
export const stateDecodes = Metric.counter("converge_state_decodes_total", {
  description: "MLS group states decoded from storage (a cache miss)"
})
export const publishDuration = Metric.timerWithBoundaries(
  "converge_publish_duration_milliseconds",
  [1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000]
)

/** The client's WAL syncs before delivery writes, by where they ran: many on the pool mean slow storage. */
export const walSyncs = Metric.counter("converge_wal_syncs_total", {
  description: "WAL syncs of the client's storage, by where they ran (thread: the disk is quick; pool: it was found slow)"
})
export const walSyncsOnThread = Metric.tagged(walSyncs, "placement", "thread")
export const walSyncsOnPool = Metric.tagged(walSyncs, "placement", "pool")

/**
 * Every untagged counter, and both placements of the WAL syncs, at 0, so an export lists each
 * from the start: a counter appears in Effect's registry only once updated, and a client that
 * only sends never received anything (a scraper then sees no series, not a zero, and a rate over
 * it is undefined).
 */
export const registerCounters = Effect.all(
  [
    messagesReceived,
    commitsApplied,
    epochConflicts,
    publishRefusals,
    transportRetries,
    stateDecodes,
    walSyncsOnThread,
    walSyncsOnPool
  ]
    .map((counter) => Metric.incrementBy(counter, 0)),
  { discard: true }
)

/** Records one group sync's outcome. */
export const recordSync = (outcome: {
  readonly received: number
  readonly messages: number
  readonly commits: number
  readonly skippedBy: Readonly<Record<string, number>>
}) =>
  Effect.suspend(() => {
    // Every sync is one observation of its lag; a counter's zero adds nothing (two syncs per `send`).
    let record: Effect.Effect<void> = Metric.update(syncLag, outcome.received)
    if (outcome.messages > 0) record = Effect.zipRight(record, Metric.incrementBy(messagesReceived, outcome.messages))
    if (outcome.commits > 0) record = Effect.zipRight(record, Metric.incrementBy(commitsApplied, outcome.commits))
    for (const [reason, n] of Object.entries(outcome.skippedBy)) {
      record = Effect.zipRight(record, Metric.incrementBy(Metric.tagged(skipped, "reason", reason), n))
    }
    return record
  })
