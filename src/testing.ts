/**
 * The test kit (`converge/testing`): one delivery service (the store-backed service of
 * `converge serve`, over memory, SQLite or RPC) with fault controls, and any number of
 * clients, each with its own SQLite file and real ts-mls.
 *
 * ```ts
 * const net = yield* TestNetwork.make
 * const alice = yield* net.client("alice")
 * yield* net.faults.loseNextResponse(1, "sendGroupMessagesIf")
 * yield* net.restart(alice)   // drop in-memory state, reopen the same database
 * yield* net.crashAt(alice, "publish.afterWriteAheadBeforeSend")  // dies there, once
 * ```
 */
import * as SqliteConnection from "./layers/SqliteConnection.ts"
import { ed25519 } from "@noble/curves/ed25519.js"
import { Cause, Context, Data, Effect, Either, Exit, Layer, Option, type Redacted, Schedule, Scope } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import type { ConvergeError } from "./domain/Errors.ts"
import { toHex } from "./domain/Bytes.ts"
import * as IdentityLog from "./domain/IdentityLog.ts"
import type { GroupId, InstallationId } from "./domain/Ids.ts"
import { PROTOCOL_VERSION } from "./domain/Model.ts"
import { ed25519Seed } from "./domain/RequestAuth.ts"
import { GroupMessageEnvelope, KeyPackageUpload, WelcomeMessageEnvelope } from "./domain/Wire.ts"
import * as FaultyDeliveryService from "./layers/FaultyDeliveryService.ts"
import * as StoreDeliveryService from "./layers/StoreDeliveryService.ts"
import * as TsMlsCrypto from "./layers/TsMlsCrypto.ts"
import { Client, type ClientOptions } from "./services/Client.ts"
import { DeliveryService } from "./services/DeliveryService.ts"
import { authenticatedAs, installationSigner } from "./services/DeliveryAuth.ts"
import { groupTopic, welcomeTopic } from "./services/DeliveryStore.ts"
import type { CrashPoint } from "./services/EngineContext.ts"
import { MlsCrypto } from "./services/MlsCrypto.ts"
import * as SqliteStorage from "./layers/SqliteStorage.ts"
import { Storage } from "./services/Storage.ts"
import { makeDelivery, readAll, registerIntruder, type TestDelivery } from "./testingDelivery.ts"

type ClientShape = Context.Tag.Service<Client>

/** A client of the test network. Its methods always reach the client's current incarnation. */
export interface TestClient extends ClientShape {
  readonly name: string
  readonly filename: string
  /** The root key of this client's inbox, to register a second installation of it. */
  readonly rootSecretKey: Uint8Array | undefined
}

/**
 * The defect an armed crash point dies with: the client "crashed" there. Whatever ran on
 * that client is abandoned and the client is restarted (`net.restart`) from its database.
 */
export class SimulatedCrash extends Data.TaggedError("SimulatedCrash")<{
  readonly client: string
  readonly point: CrashPoint
}> {
  override get message() {
    return `simulated crash of ${this.client} at ${this.point}`
  }
}

/** The simulated crash in a cause, if it holds one. */
export const simulatedCrashOf = (cause: Cause.Cause<unknown>): SimulatedCrash | undefined => {
  for (const defect of Cause.defects(cause)) {
    if (defect instanceof SimulatedCrash) return defect
  }
  return undefined
}

export interface TestClientOptions extends ClientOptions {
  /** Make this client a further installation of another client's inbox. */
  readonly sameInboxAs?: TestClient
  /** What this client's delivery service does instead (a lying server, in tests of the threat model). */
  readonly wrapDelivery?: (honest: Context.Tag.Service<DeliveryService>) => Context.Tag.Service<DeliveryService>
  /** When this client's commits reach the disk (`SqliteStorage.SqliteStorageOptions`). Default `"publish"`. */
  readonly durability?: SqliteStorage.SqliteStorageOptions["durability"]
}

export type { TestDelivery } from "./testingDelivery.ts"

export interface TestNetworkOptions extends StoreDeliveryService.StoreDeliveryOptions {
  /** Engine options every client gets unless it overrides them. */
  readonly clientDefaults?: ClientOptions
  /** Default `"memory"`. */
  readonly delivery?: TestDelivery
  /** Seal every client's secrets at rest under this key (see `StorageKey`). Default: none. */
  readonly storageKey?: Redacted.Redacted<Uint8Array>
}

/**
 * Test clients retry without delays, so scenarios run under `TestClock` without advancing it.
 */
const testDefaults: ClientOptions = {
  conflictSchedule: Schedule.recurs(5),
  transportSchedule: Schedule.recurs(6)
}

export interface TestNetwork {
  readonly delivery: Context.Tag.Service<DeliveryService>
  readonly faults: FaultyDeliveryService.FaultControls
  readonly client: (name: string, options?: TestClientOptions) => Effect.Effect<TestClient, ConvergeError>
  /**
   * Drops the client's in-memory state and reopens the same database. Safe after a crash:
   * the old incarnation's scope is closed whatever its fibers left half-done.
   */
  readonly restart: (
    client: TestClient,
    /** What changed across the restart: an upgrade to a newer protocol version. */
    changed?: { readonly protocolVersion?: number }
  ) => Effect.Effect<void, ConvergeError>
  /**
   * What would be on the client's disk after a power loss right now: its database files as they
   * are, taken only when its storage holds no write a power loss could undo (a defect otherwise).
   */
  readonly durableImage: (client: TestClient) => Effect.Effect<DiskImage>
  /**
   * A power loss: drops the client, puts back `image` (what was on its disk at the time it was
   * taken: every later write is undone, synced or not) and boots the client from it.
   */
  readonly powerLoss: (client: TestClient, image: DiskImage) => Effect.Effect<void, ConvergeError>
  /**
   * Arms a crash: the next time this client passes `point` (see `CrashPoint`), it dies there
   * with a `SimulatedCrash` defect, once. Arming an armed point again still crashes once.
   */
  readonly crashAt: (client: TestClient, point: CrashPoint) => Effect.Effect<void>
  /** Disarms every crash point of every client; returns how many were armed and never hit. */
  readonly disarmCrashes: Effect.Effect<number>
  /** Every armed crash that fired so far, oldest first. */
  readonly crashLog: Effect.Effect<ReadonlyArray<SimulatedCrash>>
  /** The storage of the client's current incarnation, to inspect (not to write through). */
  readonly storage: (client: TestClient) => Effect.Effect<Context.Tag.Service<Storage>>
  /** The MLS crypto every client of this network shares (to inspect payloads). */
  readonly crypto: Context.Tag.Service<MlsCrypto>
  /** The delivery service as an installation of an inbox in no group (registered on first use). */
  readonly intruder: Effect.Effect<Context.Tag.Service<DeliveryService>>
  /** The delivery service as this client's installation (its signed requests). */
  readonly deliveryAs: (client: TestClient) => Effect.Effect<Context.Tag.Service<DeliveryService>>
  /** What the server stores, read past authentication: the test's omniscient view. */
  readonly inspect: {
    readonly groupMessages: (groupId: GroupId) => Effect.Effect<ReadonlyArray<GroupMessageEnvelope>>
    readonly welcomes: (installationId: InstallationId) => Effect.Effect<ReadonlyArray<WelcomeMessageEnvelope>>
  }
}

/** A client's database files (the main file and its WAL) at one moment. */
export interface DiskImage {
  readonly files: ReadonlyMap<string, Uint8Array>
}

/** The files SQLite keeps for a WAL database; the shared-memory index is rebuilt from the WAL. */
const databaseFiles = (filename: string) => [filename, `${filename}-wal`]

interface Incarnation {
  client: ClientShape
  storage: Context.Tag.Service<Storage>
  scope: Scope.CloseableScope
  rootSecretKey: Uint8Array | undefined
}

const makeNetwork = (options: TestNetworkOptions = {}) =>
  Effect.gen(function*() {
    const crypto = yield* Layer.build(TsMlsCrypto.layer()).pipe(Effect.map(Context.get(MlsCrypto)))
    /** A client reading further back than `crypto` keeps keys gets a crypto that keeps them, one per depth. */
    const keeping = new Map<number, Context.Tag.Service<MlsCrypto>>()
    const cryptoFor = (maxPastEpochs: number | undefined) => {
      if (maxPastEpochs === undefined || maxPastEpochs <= crypto.maxPastEpochs) return Effect.succeed(crypto)
      const kept = keeping.get(maxPastEpochs)
      return kept !== undefined
        ? Effect.succeed(kept)
        : Effect.tap(TsMlsCrypto.make({ maxPastEpochs }), (made) => void keeping.set(maxPastEpochs, made))
    }
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-net-"))
    yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true })))
    const { clientDefaults: _, delivery: deliveryKind = "memory", storageKey: __, ...storeOptions } = options
    const delivery = yield* makeDelivery(deliveryKind, storeOptions, crypto, dir)
    const memory = yield* FaultyDeliveryService.make(delivery.service)
    // The intruder has its own way in: the faults injected for the clients do not touch it.
    const intruder = yield* Effect.cached(registerIntruder(delivery.service))
    const incarnations = new Map<string, Incarnation>()
    /** Known once a client first booted; kept across restarts so a partition holds during them. */
    const installations = new Map<string, InstallationId>()
    /** The options each client was made with, kept while it is down between incarnations. */
    const madeWith = new Map<string, TestClientOptions>()
    /** Armed crash points per client name. */
    const armed = new Map<string, Set<CrashPoint>>()
    const crashes: Array<SimulatedCrash> = []
    const outer = yield* Effect.scope

    /** The delivery service as this client sees it: subject to its installation's partition. */
    const deliveryFor = (name: string): Context.Tag.Service<DeliveryService> =>
      new Proxy(memory.service, {
        get: (target, key) => {
          const installation = installations.get(name)
          const view = installation === undefined ? target : memory.forInstallation(installation)
          return view[key as keyof typeof view]
        }
      })

    /** The engine's crash hook for one client: the caller's own hook, then any armed crash. */
    const crashHook = (name: string, own: ClientOptions["crashPoint"]) => (point: CrashPoint) =>
      Effect.zipRight(
        own === undefined ? Effect.void : own(point),
        Effect.suspend(() => {
          const points = armed.get(name)
          if (points === undefined || !points.delete(point)) return Effect.void
          const crash = new SimulatedCrash({ client: name, point })
          crashes.push(crash)
          return Effect.die(crash)
        })
      )

    const boot = (name: string, filename: string, clientOptions: TestClientOptions) =>
      Effect.gen(function*() {
        const scope = yield* Scope.fork(outer, { _tag: "Sequential" } as never)
        const { durability, sameInboxAs: _, wrapDelivery, ...engineOwn } = clientOptions
        const engineOptions: ClientOptions = {
          ...testDefaults,
          ...options.clientDefaults,
          ...engineOwn,
          crashPoint: crashHook(name, clientOptions.crashPoint ?? options.clientDefaults?.crashPoint)
        }
        const layer = Client.layerWithStorage(engineOptions).pipe(
          Layer.provideMerge(
            SqliteStorage.layerWith({
              ...(options.storageKey === undefined ? {} : { key: options.storageKey }),
              ...(durability === undefined ? {} : { durability })
            })
          ),
          // A fresh file in the kit's own temporary folder: failing to open it is the kit's bug.
          Layer.provide(Layer.orDie(SqliteConnection.layer({ filename }))),
          Layer.provide(Layer.succeed(DeliveryService, wrapDelivery?.(deliveryFor(name)) ?? deliveryFor(name))),
          Layer.provide(Layer.succeed(MlsCrypto, yield* cryptoFor(engineOptions.maxPastEpochs)))
        )
        const context = yield* Layer.buildWithScope(layer, scope).pipe(
          Effect.onExit((exit) => (Exit.isSuccess(exit) ? Effect.void : Scope.close(scope, Exit.void)))
        )
        const storage = Context.get(context, Storage)
        const identity = yield* storage.identity.get
        const client = Context.get(context, Client)
        installations.set(name, client.installationId)
        madeWith.set(name, clientOptions)
        const incarnation: Incarnation = {
          client,
          storage,
          scope,
          rootSecretKey: identity._tag === "Some" ? identity.value.rootSecretKey ?? undefined : undefined
        }
        incarnations.set(name, incarnation)
        return incarnation
      })

    const incarnationOf = (name: string) => {
      const incarnation = incarnations.get(name)
      // A restart whose boot failed leaves the client down until the next restart.
      if (incarnation === undefined) throw new Error(`test client ${name} is down: restart it`)
      return incarnation
    }
    const current = (name: string) => incarnationOf(name).client

    const client = (name: string, clientOptions: TestClientOptions = {}) =>
      Effect.gen(function*() {
        if (incarnations.has(name)) return yield* Effect.dieMessage(`test client ${name} already exists`)
        const filename = path.join(dir, `${name}.sqlite`)
        const { sameInboxAs, ...rest } = clientOptions
        const rootSecretKey = sameInboxAs?.rootSecretKey
        const first = yield* boot(name, filename, rootSecretKey === undefined ? rest : { ...rest, rootSecretKey })
        const testClient: TestClient = {
          name,
          filename,
          rootSecretKey: first.rootSecretKey,
          get inboxId() {
            return current(name).inboxId
          },
          get installationId() {
            return current(name).installationId
          },
          createGroup: (members, groupOptions) =>
            Effect.suspend(() => current(name).createGroup(members, groupOptions)),
          findOrCreateDm: (peer) => Effect.suspend(() => current(name).findOrCreateDm(peer)),
          conversation: (id) => Effect.suspend(() => current(name).conversation(id)),
          conversations: (query) => Effect.suspend(() => current(name).conversations(query)),
          get syncAll() {
            return current(name).syncAll
          },
          get streamMessages() {
            return current(name).streamMessages
          },
          installations: Effect.suspend(() => current(name).installations),
          revokeInstallation: (id) => Effect.suspend(() => current(name).revokeInstallation(id)),
          get historySync() {
            return current(name).historySync
          },
          setConsent: (subject, state) => Effect.suspend(() => current(name).setConsent(subject, state)),
          consentOf: (subject) => Effect.suspend(() => current(name).consentOf(subject))
        }
        return testClient
      }).pipe(Effect.withSpan("TestNetwork.client", { attributes: { name } }))

    /**
     * Drops the client's incarnation, runs `offDisk` while nothing has its database open, and
     * boots it again with the options it was made with (and `changed`).
     */
    const reboot = (
      testClient: TestClient,
      changed: { readonly protocolVersion?: number },
      offDisk: () => void
    ) =>
      Effect.gen(function*() {
        const old = incarnations.get(testClient.name)
        if (old !== undefined) {
          incarnations.delete(testClient.name)
          // Runs every finalizer (the database closes) even if a crashed fiber left a step
          // half-done: the database's transactions are what make that safe.
          yield* Scope.close(old.scope, Exit.void)
        }
        offDisk()
        // The identity is in the database now; the engine options are the ones it was made with.
        const { rootSecretKey: _, ...options } = madeWith.get(testClient.name) ?? {}
        yield* boot(testClient.name, testClient.filename, { ...options, ...changed })
      }).pipe(Effect.uninterruptible)

    const restart = (testClient: TestClient, changed: { readonly protocolVersion?: number } = {}) =>
      reboot(testClient, changed, () => undefined).pipe(
        Effect.withSpan("TestNetwork.restart", { attributes: { name: testClient.name } })
      )

    const durableImage = (testClient: TestClient) =>
      Effect.gen(function*() {
        const { storage } = incarnationOf(testClient.name)
        const unflushed = Effect.orDie(storage.unflushedWrites)
        const before = yield* unflushed
        const files = new Map<string, Uint8Array>()
        for (const file of databaseFiles(testClient.filename)) {
          if (fs.existsSync(file)) files.set(file, fs.readFileSync(file))
        }
        // Checked on both sides of the copy: a write another fiber made meanwhile shows as unflushed.
        const after = yield* unflushed
        if (before > 0 || after > 0) {
          return yield* Effect.dieMessage(`${testClient.name} holds ${Math.max(before, after)} writes a power loss could undo`)
        }
        return { files }
      })

    const powerLoss = (testClient: TestClient, image: DiskImage) =>
      reboot(testClient, {}, () => {
        for (const file of [...databaseFiles(testClient.filename), `${testClient.filename}-shm`]) {
          fs.rmSync(file, { force: true })
        }
        for (const [file, bytes] of image.files) fs.writeFileSync(file, bytes)
      }).pipe(Effect.withSpan("TestNetwork.powerLoss", { attributes: { name: testClient.name } }))

    const crashAt = (testClient: TestClient, point: CrashPoint) =>
      Effect.sync(() => {
        const points = armed.get(testClient.name) ?? new Set<CrashPoint>()
        points.add(point)
        armed.set(testClient.name, points)
      })

    const disarmCrashes = Effect.sync(() => {
      let pending = 0
      for (const points of armed.values()) pending += points.size
      armed.clear()
      return pending
    })

    return {
      delivery: memory.service,
      faults: memory.faults,
      client,
      restart,
      durableImage,
      powerLoss,
      crashAt,
      disarmCrashes,
      crashLog: Effect.sync(() => [...crashes]),
      storage: (testClient) => Effect.sync(() => incarnationOf(testClient.name).storage),
      crypto,
      intruder,
      deliveryAs: (testClient) =>
        Effect.gen(function*() {
          const identity = yield* incarnationOf(testClient.name).storage.identity.get.pipe(Effect.orDie)
          if (Option.isNone(identity)) return yield* Effect.dieMessage(`${testClient.name} has no identity`)
          const signer = installationSigner(identity.value.installationId, identity.value.signaturePrivateKey)
          return authenticatedAs(memory.service, signer)
        }),
      inspect: {
        groupMessages: (groupId) =>
          Effect.map(readAll(delivery.store, groupTopic(groupId)), (entries) =>
            entries.map((e) =>
              new GroupMessageEnvelope({ groupId, sequenceId: e.sequenceId, serverTimeNs: e.serverTimeNs, payload: e.payload })
            )),
        welcomes: (installationId) =>
          Effect.map(readAll(delivery.store, welcomeTopic(installationId)), (entries) =>
            entries.map((e) =>
              new WelcomeMessageEnvelope({
                installationId,
                sequenceId: e.sequenceId,
                serverTimeNs: e.serverTimeNs,
                payload: e.payload
              })
            ))
      }
    } satisfies TestNetwork
  })

export const TestNetwork = {
  /** A fresh network in the current scope; everything is torn down when the scope closes. */
  make: makeNetwork(),
  makeWith: makeNetwork
}

/**
 * An inbox with one installation and its key package on the service, and no client behind it:
 * what a member that never syncs leaves there (a client per member would weigh in a process's
 * memory). Its key package, for adding it to a group.
 */
export const registerBareInbox = (net: TestNetwork) =>
  Effect.gen(function*() {
    const root = ed25519.utils.randomSecretKey()
    const inboxId = IdentityLog.inboxIdOf(ed25519.getPublicKey(root))
    const keys = yield* net.crypto.generateSignatureKeyPair
    const installationId = IdentityLog.installationIdOf(keys.publicKey)
    const created = IdentityLog.signUpdate(root, inboxId, undefined, {
      _tag: "CreateInbox",
      rootPublicKey: toHex(ed25519.getPublicKey(root))
    })
    yield* net.delivery.publishIdentityUpdate(created)
    yield* net.delivery.publishIdentityUpdate(IdentityLog.signUpdate(
      root,
      inboxId,
      Either.getOrThrow(IdentityLog.applyUpdate(undefined, created)),
      { _tag: "AddInstallation", installationId, signaturePublicKey: toHex(keys.publicKey) },
      ed25519Seed(keys.privateKey)
    ))
    // Advertising this library's version, as a client's key packages do.
    const bundle = yield* net.crypto.generateKeyPackage({ inboxId, installationId }, keys, { protocolVersion: PROTOCOL_VERSION })
    yield* authenticatedAs(net.delivery, installationSigner(installationId, keys.privateKey))
      .uploadKeyPackage(KeyPackageUpload.make({ installationId, keyPackage: bundle.publicPackage }))
    return { inboxId, installationId, keyPackage: bundle.publicPackage }
  })
