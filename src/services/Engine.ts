/**
 * What every engine program shares: the ports, one lock per group, the client's options and
 * the local feed of newly stored messages (which `streamMessages` reads).
 */
import { type Duration, Effect, Option, type PubSub, Schedule, Schema } from "effect"
import { ConversationNotFound, GroupInactive } from "../domain/Errors.ts"
import { type IntentData, IntentDataJson, LeaveData } from "../domain/Intent.ts"
import type { GroupId } from "../domain/Ids.ts"
import { randomBytes } from "node:crypto"
import { bytesEqual, toHex } from "../domain/Bytes.ts"
import type { CryptoError } from "../domain/Errors.ts"
import type { GroupRow, IntentRow, MessageRow } from "../domain/Rows.ts"
import type { DeliveryService } from "./DeliveryService.ts"
import type { Identity } from "./Identity.ts"
import type { MlsCrypto, MlsGroupState } from "./MlsCrypto.ts"
import type { Storage } from "./Storage.ts"

export interface EngineOptions {
  /** Past epochs whose application messages still decrypt (default 3). */
  readonly maxPastEpochs: number
  /** Retries of a commit that lost its epoch; after it the intent fails (default: 5, spaced 10 ms). */
  readonly conflictSchedule: Schedule.Schedule<unknown, unknown>
  /** Retries of retryable transport failures; never consumes the conflict budget. */
  readonly transportSchedule: Schedule.Schedule<unknown, unknown>
  /** Envelopes per page when reading a topic (default 100). */
  readonly pageSize: number
  /**
   * How often a sync compares each member inbox's installations with its identity log, to
   * add new devices and remove revoked ones (default 5 seconds).
   */
  readonly installationCheckInterval: Duration.DurationInput
  /**
   * Called at each named point inside publish and sync. The default does nothing; the
   * simulation makes it die there to crash the client mid-step.
   */
  readonly crashPoint: (point: CrashPoint) => Effect.Effect<void>
}

/** The places where a crash leaves the most interesting half-done state. */
export type CrashPoint =
  | "publish.beforeWriteAhead"
  | "publish.afterWriteAheadBeforeSend"
  | "publish.afterSendBeforeSync"
  | "sync.midPage"
  | "postCommit.beforeWelcomes"


export const defaultEngineOptions: EngineOptions = {
  maxPastEpochs: 3,
  conflictSchedule: Schedule.recurs(5).pipe(Schedule.intersect(Schedule.spaced("10 millis"))),
  transportSchedule: Schedule.exponential("50 millis", 2).pipe(
    Schedule.jittered,
    Schedule.intersect(Schedule.recurs(6))
  ),
  pageSize: 100,
  installationCheckInterval: "5 seconds",
  crashPoint: () => Effect.void
}

export interface EngineEnv {
  readonly storage: Storage["Type"]
  readonly crypto: MlsCrypto["Type"]
  readonly ds: DeliveryService["Type"]
  readonly identity: Identity["Type"]
  readonly options: EngineOptions
  /** Serialises publish and sync per group within this process. */
  readonly withGroupLock: (groupId: GroupId) => <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  /** Every message row stored for the first time, after its transaction commits. */
  readonly stored: PubSub.PubSub<MessageRow>
  /**
   * The group's MLS state from its stored bytes, decoded once: states are immutable values,
   * so the last decode is reused while the stored bytes are the same.
   */
  readonly loadState: (group: GroupRow) => Effect.Effect<MlsGroupState, CryptoError>
  /** Serializes and remembers a state about to be stored, so the next load needs no decode. */
  readonly encodeState: (groupId: GroupId, state: MlsGroupState) => Uint8Array
}

/** A one-entry-per-group cache of decoded states, keyed by the exact stored bytes. */
export const makeStateCache = (crypto: MlsCrypto["Type"]) => {
  const cache = new Map<GroupId, { readonly bytes: Uint8Array; readonly state: MlsGroupState }>()
  const loadState = (group: GroupRow) => {
    const hit = cache.get(group.id)
    if (hit !== undefined && (hit.bytes === group.mls_state || bytesEqual(hit.bytes, group.mls_state))) {
      return Effect.succeed(hit.state)
    }
    return crypto.deserialize(group.mls_state).pipe(
      Effect.tap((state) => Effect.sync(() => cache.set(group.id, { bytes: group.mls_state, state })))
    )
  }
  const encodeState = (groupId: GroupId, state: MlsGroupState) => {
    const hit = cache.get(groupId)
    if (hit !== undefined && hit.state === state) return hit.bytes
    const bytes = crypto.serialize(state)
    cache.set(groupId, { bytes, state })
    return bytes
  }
  return { loadState, encodeState }
}

export const groupTopic = (groupId: GroupId) => `g/${groupId}`
export const welcomeTopic = (installationId: string) => `w/${installationId}`

/**
 * Out of the group: nothing still pending can land any more, and an unsent intent kept would be
 * re-derived (a removal or leave request replayed) if the group ever took this installation back.
 * Runs in the caller's transaction.
 */
export const failPendingIntents = (env: EngineEnv, groupId: GroupId) =>
  Effect.gen(function*() {
    const cause = new GroupInactive({ groupId }).message
    for (const intent of yield* env.storage.intents.byGroup(groupId, ["ToPublish", "Published"])) {
      yield* failIntent(env, intent, cause)
    }
  })

/** An intent ends in `Error`; a message it was sending is `failed`. Runs in the caller's transaction. */
export const failIntent = (env: EngineEnv, intent: IntentRow, cause: string) =>
  Effect.gen(function*() {
    yield* env.storage.intents.markError(intent.id, cause)
    const data = Schema.decodeUnknownOption(IntentDataJson)(intent.data)
    if (Option.isSome(data) && data.value._tag === "SendMessage") yield* env.storage.messages.markFailed(data.value.messageId)
  })

/** A new request to leave (each one its own message, so a repeat is not taken for a replay). */
export const newLeaveRequest = () => LeaveData.make({ nonce: toHex(randomBytes(16)) })

/** Queues an intent (`ToPublish`); returns its id. */
export const queueIntent = (env: EngineEnv, groupId: GroupId, data: IntentData, createdAtNs: bigint) =>
  env.storage.intents.insert({ groupId, kind: data._tag, data: Schema.encodeSync(IntentDataJson)(data), createdAtNs })

export const loadGroupRow = (env: EngineEnv, groupId: GroupId) =>
  env.storage.groups.get(groupId).pipe(
    Effect.flatMap((row) =>
      row._tag === "Some" ? Effect.succeed(row.value) : Effect.fail(new ConversationNotFound({ conversationId: groupId }))
    )
  )
