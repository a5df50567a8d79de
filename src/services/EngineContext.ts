/**
 * What every engine program (intent queue, publisher, group sync, welcomes) shares: the ports,
 * one lock per group, the client's options, the decoded-state cache and the local feed of
 * newly stored messages (which `streamMessages` reads).
 */
import { type Duration, Effect, type Option, type PubSub, Schedule } from "effect"
import { ConversationNotFound } from "../domain/Errors.ts"
import type { GroupId } from "../domain/Ids.ts"
import type { CryptoError } from "../domain/Errors.ts"
import type { StoredGroup, StoredMessage } from "../domain/Stored.ts"
import type { DeliveryService } from "./DeliveryService.ts"
import type { Roster } from "./GroupStateCache.ts"
import type { Identity } from "./Identity.ts"
import type { MlsCrypto, MlsGroupState } from "./MlsCrypto.ts"
import type { SkippedInstallations } from "./SkippedInstallations.ts"
import type { Storage } from "./Storage.ts"
import { PROTOCOL_VERSION } from "../domain/Model.ts"

export interface EngineOptions {
  /**
   * Past epochs whose application messages still decrypt (default: as many as the `MlsCrypto`
   * layer keeps keys for, 3 unless told; a client asking for more is refused at start).
   */
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
   * How long a settled intent's row is kept before it is deleted (default 10 minutes; see
   * `SettledIntents`). The simulation keeps none, so intents go while their callers resolve them.
   */
  readonly settledIntentRetention: Duration.DurationInput
  /**
   * Called at each named point inside publish and sync. The default does nothing; the
   * simulation makes it die there to crash the client mid-step.
   */
  readonly crashPoint: (point: CrashPoint) => Effect.Effect<void>
  /**
   * The protocol version this installation speaks (a positive integer, default the library's
   * own). Below a group's minimum it is paused there: it reads, but does not write.
   */
  readonly protocolVersion: number
}

/** The places where a crash leaves the most interesting half-done state. */
export type CrashPoint =
  | "publish.beforeWriteAhead"
  | "publish.afterWriteAheadBeforeSend"
  | "publish.afterSendBeforeSync"
  | "sync.midPage"
  | "postCommit.beforeWelcomes"
  | "history.afterPage"


export const defaultEngineOptions: EngineOptions = {
  maxPastEpochs: 3,
  conflictSchedule: Schedule.recurs(5).pipe(Schedule.intersect(Schedule.spaced("10 millis"))),
  transportSchedule: Schedule.exponential("50 millis", 2).pipe(
    Schedule.jittered,
    Schedule.intersect(Schedule.recurs(6))
  ),
  pageSize: 100,
  installationCheckInterval: "5 seconds",
  settledIntentRetention: "10 minutes",
  crashPoint: () => Effect.void,
  protocolVersion: PROTOCOL_VERSION
}

export interface EngineContext {
  readonly storage: Storage["Type"]
  readonly crypto: MlsCrypto["Type"]
  readonly ds: DeliveryService["Type"]
  readonly identity: Identity["Type"]
  readonly options: EngineOptions
  /** Serialises publish and sync per group within this process. */
  readonly withGroupLock: (groupId: GroupId) => <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  /**
   * Wakes the disappearing-message sweeper: called once a transaction has stored a message
   * with a deadline (only then can its next deadline be earlier than the one it sleeps until).
   */
  readonly wakeSweeper: Effect.Effect<void>
  /** Every message row stored for the first time, after its transaction commits. */
  readonly stored: PubSub.PubSub<StoredMessage>
  /** Installations an add left out for their version, which the installation checks wait to try again. */
  readonly skippedInstallations: SkippedInstallations
  /**
   * The group's MLS state from its stored bytes, decoded once: states are immutable values,
   * so the last decode is reused while the stored bytes are the same.
   */
  readonly loadState: (group: StoredGroup) => Effect.Effect<MlsGroupState, CryptoError>
  /**
   * Who holds which leaf at the group's stored state, without decoding it again when its roster
   * or its decoded state is kept: what the installation checks read.
   */
  readonly loadRoster: (group: StoredGroup) => Effect.Effect<Roster, CryptoError>
  /** The group's roster last kept, whatever state it was read from: a hint of who is in it, no row read. */
  readonly rosterHint: (groupId: GroupId) => Effect.Effect<Option.Option<Roster>>
  /** The group context's settings bytes at the group's stored state, decoding it only when neither it nor its roster is kept. */
  readonly loadMetadata: (group: StoredGroup) => Effect.Effect<Uint8Array | undefined, CryptoError>
  /**
   * The settings bytes of the kept decoded state when it is at `epoch` (the context changes only
   * with the epoch), or none: what a summary row, without its state, can be judged against.
   */
  readonly keptMetadataAt: (groupId: GroupId, epoch: bigint) => Option.Option<Uint8Array | undefined>
  /** Serializes and remembers a state about to be stored, so the next load needs no decode. */
  readonly encodeState: (groupId: GroupId, state: MlsGroupState) => Uint8Array
  /**
   * Serializes an own commit's staged state for the write-ahead (what it changed from `base`, the
   * state the commit was created from), keeping it decoded until it is adopted.
   */
  readonly encodeStaged: (groupId: GroupId, state: MlsGroupState, base: MlsGroupState) => Uint8Array
  /**
   * The staged state written ahead as these bytes: the kept one if the bytes match, else decoded
   * against `base`, the group's state at the commit's epoch.
   */
  readonly loadStaged: (groupId: GroupId, bytes: Uint8Array, base: MlsGroupState) => Effect.Effect<MlsGroupState, CryptoError>
}

/** The group's stored row, or `ConversationNotFound`. */
export const loadGroupRow = (ctx: EngineContext, groupId: GroupId) =>
  ctx.storage.groups.get(groupId).pipe(
    Effect.flatMap((row) =>
      row._tag === "Some" ? Effect.succeed(row.value) : Effect.fail(new ConversationNotFound({ conversationId: groupId }))
    )
  )
