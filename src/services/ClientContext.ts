/**
 * What every part of a client shares: the engine context (signed delivery, authenticated
 * crypto, the group locks and state cache, the stored-message feed) and the engine's services
 * built over it, once per client. The client's modules take this record where they used to
 * close over `Client.make`'s locals.
 */
import { Duration, Effect, Option, PubSub } from "effect"
import { InvalidInput } from "../domain/Errors.ts"
import type { GroupId, InboxId } from "../domain/Ids.ts"
import type { StoredMessage } from "../domain/Stored.ts"
import { authenticatedAs, installationSigner } from "./DeliveryAuth.ts"
import { DeliveryService } from "./DeliveryService.ts"
import { defaultEngineOptions, type EngineContext, type EngineOptions } from "./EngineContext.ts"
import * as ConsentBook from "./ConsentBook.ts"
import * as DeviceSync from "./DeviceSync.ts"
import * as DisappearingMessages from "./DisappearingMessages.ts"
import * as SettledIntents from "./SettledIntents.ts"
import * as SkippedInstallations from "./SkippedInstallations.ts"
import * as GroupStateCache from "./GroupStateCache.ts"
import * as GroupSync from "./GroupSync.ts"
import type * as HistorySync from "./HistorySync.ts"
import type { IdentityOptions } from "./Identity.ts"
import * as IdentityService from "./Identity.ts"
import * as LeafAuthentication from "./LeafAuthentication.ts"
import { MlsCrypto } from "./MlsCrypto.ts"
import * as Publisher from "./Publisher.ts"
import { Storage } from "./Storage.ts"
import * as Welcomes from "./Welcomes.ts"

export interface ClientOptions extends Partial<EngineOptions>, IdentityOptions, HistorySync.HistoryOptions {}

export interface ClientContext {
  readonly env: EngineContext
  /** This installation's inbox. */
  readonly self: InboxId
  readonly sync: ReturnType<typeof GroupSync.make>
  readonly publisher: ReturnType<typeof Publisher.make>
  readonly welcomes: ReturnType<typeof Welcomes.make>
  readonly deviceSync: ReturnType<typeof DeviceSync.make>
  readonly consent: ReturnType<typeof ConsentBook.make>
  /** Wakes the disappearing-message sweeper (the engine does, whenever it stores a deadline). */
  readonly wakeSweeper: Effect.Effect.Success<ReturnType<typeof DisappearingMessages.start>>
}

/**
 * How far back the engine reads application messages: as asked (by default, as far as the crypto
 * keeps keys), never further than the crypto keeps them.
 */
const pastEpochsReadable = (asked: number | undefined, kept: number) =>
  asked === undefined || (Number.isSafeInteger(asked) && asked >= 0 && asked <= kept)
    ? Effect.succeed(asked ?? kept)
    : Effect.fail(
      new InvalidInput({
        reason: `maxPastEpochs ${asked} is not an integer from 0 to ${kept}, the past epochs whose keys the MlsCrypto layer keeps (MlsCrypto.layer({ maxPastEpochs }) keeps more)`
      })
    )

export const make = (options: ClientOptions) =>
  Effect.gen(function*() {
    const storage = yield* Storage
    const unauthenticated = yield* MlsCrypto
    const network = yield* DeliveryService
    const identity = yield* IdentityService.make(options).pipe(
      Effect.provideService(Storage, storage),
      Effect.provideService(MlsCrypto, unauthenticated),
      Effect.provideService(DeliveryService, network)
    )
    // Every request of this installation is signed by it (DeliveryAuth).
    const ds = authenticatedAs(network, installationSigner(identity.installationId, identity.signatureKeys.privateKey))
    // Every leaf ts-mls validates is checked against the identity log (RFC 9420 §5.3.1).
    const runtime = yield* Effect.runtime<never>()
    const crypto = unauthenticated.authenticatedBy(
      LeafAuthentication.authenticateWith(identity, runtime),
      LeafAuthentication.prepareWith(identity, runtime)
    )
    const engineOptions: EngineOptions = {
      maxPastEpochs: yield* pastEpochsReadable(options.maxPastEpochs, unauthenticated.maxPastEpochs),
      conflictSchedule: options.conflictSchedule ?? defaultEngineOptions.conflictSchedule,
      transportSchedule: options.transportSchedule ?? defaultEngineOptions.transportSchedule,
      pageSize: options.pageSize ?? defaultEngineOptions.pageSize,
      installationCheckInterval: options.installationCheckInterval ?? defaultEngineOptions.installationCheckInterval,
      settledIntentRetention: options.settledIntentRetention ?? defaultEngineOptions.settledIntentRetention,
      crashPoint: options.crashPoint ?? defaultEngineOptions.crashPoint,
      protocolVersion: options.protocolVersion ?? defaultEngineOptions.protocolVersion
    }
    const locks = new Map<GroupId, Effect.Semaphore>()
    const lockOf = (groupId: GroupId) => {
      let lock = locks.get(groupId)
      if (lock === undefined) {
        lock = Effect.unsafeMakeSemaphore(1)
        locks.set(groupId, lock)
      }
      return lock
    }
    const stored = yield* Effect.acquireRelease(PubSub.unbounded<StoredMessage>(), PubSub.shutdown)
    // Disappearing messages go when the clock passes their deadline, whatever else runs.
    const wakeSweeper = yield* DisappearingMessages.start(storage)
    yield* SettledIntents.start(storage, engineOptions.settledIntentRetention)
    const env: EngineContext = {
      storage,
      crypto,
      ds,
      identity,
      options: engineOptions,
      withGroupLock: (groupId) => lockOf(groupId).withPermits(1),
      wakeSweeper,
      ...GroupStateCache.make(crypto, GroupStateCache.DEFAULT_MAX_BYTES, { stored: storage.rosters }),
      stored,
      skippedInstallations: SkippedInstallations.make(
        Duration.toNanos(engineOptions.installationCheckInterval).pipe(Option.getOrElse(() => 0n))
      )
    }
    const sync = GroupSync.make(env)
    const publisher = Publisher.make(env, sync)
    const welcomes = Welcomes.make(env, sync)
    const deviceSync = DeviceSync.make(env, publisher)
    const consent = ConsentBook.make(env)
    const context: ClientContext = { env, self: identity.inboxId, sync, publisher, welcomes, deviceSync, consent, wakeSweeper }
    return context
  })
