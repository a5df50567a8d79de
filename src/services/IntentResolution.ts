/**
 * `resolve`, the typed program behind every user action: rounds (sync, publish, sync,
 * post-commit) until the intent is Processed. A lost epoch race is an `EpochConflict`, retried
 * under the conflict schedule; transport failures and an intent still waiting retry under their
 * own schedule.
 */
import { Clock, Data, Duration, Effect, Exit, Metric, Option } from "effect"
import { DeliveryError, EpochConflict, IntentFailed, type StorageError } from "../domain/Errors.ts"
import type { GroupId } from "../domain/Ids.ts"
import type { StoredIntent } from "../domain/Stored.ts"
import { type EngineContext, loadGroupRow } from "./EngineContext.ts"
import * as EngineMetrics from "./EngineMetrics.ts"
import type * as PublishRound from "./PublishRound.ts"

/** Internal: the intent is neither done nor failed yet (waiting behind a commit, or not yet seen). */
class IntentPending extends Data.TaggedError("IntentPending")<{ readonly intentId: number; readonly state: string }> {}

/**
 * An intent as its writer just stored it: the first round of `resolve` takes it as read instead
 * of reading it back (later rounds read it).
 */
export interface KnownIntent {
  readonly conflicts: number
  readonly publishedEpoch: bigint | null
  /** Its first round, already run by the writer under the lock it wrote the intent under. */
  readonly first?: Exit.Exit<Round, Effect.Effect.Error<ReturnType<Rounds["round"]>>>
  /** When that first round started: the publish's duration counts from there. */
  readonly firstStartedNs?: bigint
}

type Round = Effect.Effect.Success<ReturnType<ReturnType<typeof PublishRound.make>["round"]>>

/** What `resolve` runs: the engine, a publish round, and failing an intent for good. */
interface Rounds {
  readonly ctx: EngineContext
  readonly round: ReturnType<typeof PublishRound.make>["round"]
  readonly failIntent: (intent: StoredIntent, cause: string) => Effect.Effect<void, StorageError>
}

/** The kind an intent failed as when its row could not be read back: what it was is unknown. */
const UNREADABLE = "unknown"

/** Whether resolving failed because the intent's row does not decode (the read quarantined it). */
export const isUnreadableIntent = (error: unknown): error is IntentFailed =>
  error instanceof IntentFailed && error.kind === UNREADABLE

/**
 * The intent's row, or none when it is gone: only a settled intent's row is deleted
 * (`SettledIntents`), so a caller that reads long after another fiber settled it is done. An
 * intent whose row is there but does not decode (quarantined as failed) has failed.
 */
const getIntent = ({ storage }: EngineContext, intentId: number) =>
  storage.intents.get(intentId).pipe(
    Effect.flatMap(Option.match({
      onSome: (intent) => Effect.succeed(Option.some(intent)),
      onNone: () =>
        storage.intents.statesOf([intentId]).pipe(Effect.flatMap((states) =>
          states.has(intentId)
            ? Effect.fail(new IntentFailed({ intentId, kind: UNREADABLE, attempts: 0, cause: "its stored row is unreadable" }))
            : Effect.succeed(Option.none<StoredIntent>())
        ))
    }))
  )

/** The intent after a round: done, failed, overtaken by another epoch (its conflicts grew), or still pending. */
const judge = (ctx: EngineContext, groupId: GroupId, intentId: number, before: KnownIntent, intent: StoredIntent) =>
  Effect.gen(function*() {
    switch (intent.state) {
      case "Processed":
        return
      case "Error":
        return yield* new IntentFailed({
          intentId,
          kind: intent.kind,
          attempts: intent.attempts,
          cause: intent.error ?? "unknown"
        })
      default: {
        if (intent.conflicts > before.conflicts) {
          yield* Metric.increment(EngineMetrics.epochConflicts)
          const group = yield* loadGroupRow(ctx, groupId)
          return yield* new EpochConflict({
            groupId,
            intentId,
            publishedEpoch: before.publishedEpoch ?? group.epoch,
            currentEpoch: group.epoch
          })
        }
        return yield* new IntentPending({ intentId, state: intent.state })
      }
    }
  })

const retryable = (e: { readonly _tag: string; readonly retryable?: boolean }) =>
  e._tag === "IntentPending" || (e._tag === "DeliveryError" && e.retryable === true)

const resolveRounds = ({ ctx, failIntent, round }: Rounds, groupId: GroupId, intentId: number, known: KnownIntent | undefined) => {
  let first = known
  const attempt = Effect.gen(function*() {
    const before = first ?? Option.getOrUndefined(yield* getIntent(ctx, intentId))
    if (before === undefined) return new Set([intentId])
    const ran = first?.first
    first = undefined
    const { confirmed } = yield* (ran ?? round(groupId))
    // Read back as landed, Processed in a committed page: done, and a Processed intent stays so.
    if (confirmed.has(intentId)) return confirmed
    const intent = yield* getIntent(ctx, intentId)
    if (Option.isSome(intent)) yield* judge(ctx, groupId, intentId, before, intent.value)
    return confirmed
  })
  return attempt.pipe(
    Effect.tapError((e) => (retryable(e) ? Metric.increment(EngineMetrics.transportRetries) : Effect.void)),
    Effect.retry({ schedule: ctx.options.transportSchedule, while: retryable }),
    Effect.retry({ schedule: ctx.options.conflictSchedule, while: (e) => e._tag === "EpochConflict" }),
    Effect.catchTags({
      EpochConflict: (conflict) =>
        Effect.gen(function*() {
          const stored = yield* getIntent(ctx, intentId)
          // Settled meanwhile by another fiber (and its row since deleted): nothing failed.
          if (Option.isNone(stored)) return new Set([intentId])
          const intent = stored.value
          yield* failIntent(intent, conflict.message)
          return yield* new IntentFailed({
            intentId,
            kind: intent.kind,
            attempts: intent.attempts,
            cause: `epoch conflicts exhausted: ${conflict.message}`
          })
        }),
      IntentPending: (pending) =>
        Effect.fail(
          new DeliveryError({
            reason: "Timeout",
            retryable: true,
            detail: `intent ${pending.intentId} still ${pending.state}; it will be published on a later sync`
          })
        )
    })
  )
}

export const make = (
  ctx: EngineContext,
  { round }: ReturnType<typeof PublishRound.make>,
  failIntent: (intent: StoredIntent, cause: string) => Effect.Effect<void, StorageError>
) => {
  const rounds: Rounds = { ctx, round, failIntent }

  /**
   * Runs rounds until the intent is Processed; typed failures say why it is not. Returns the own
   * intents its last round's read-back settled as Processed (it among them, unless read again).
   */
  const resolveSettling = Effect.fn("Publisher.resolve")(
    function*(groupId: GroupId, intentId: number, known?: KnownIntent) {
      const started = known?.firstStartedNs ?? (yield* Clock.currentTimeNanos)
      const record = Effect.flatMap(Clock.currentTimeNanos, (end) =>
        Metric.update(EngineMetrics.publishDuration, Duration.nanos(end - started)))
      // `send`'s usual case: its first round read the intent back as Processed. Nothing to retry.
      const first = known?.first
      if (first !== undefined && Exit.isSuccess(first) && first.value.confirmed.has(intentId)) {
        yield* record
        return first.value.confirmed
      }
      return yield* resolveRounds(rounds, groupId, intentId, known).pipe(Effect.onExit(() => record))
    },
    (effect, groupId, intentId) => Effect.annotateLogs(effect, { groupId, intentId })
  )

  /** Runs rounds until the intent is Processed; typed failures say why it is not. */
  const resolve = (groupId: GroupId, intentId: number, known?: KnownIntent) =>
    Effect.asVoid(resolveSettling(groupId, intentId, known))

  return { resolve, resolveSettling }
}
