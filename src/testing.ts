/**
 * The test kit (`converge/testing`): one in-memory delivery service with fault controls,
 * and any number of clients, each with its own SQLite file and real ts-mls.
 *
 * ```ts
 * const net = yield* TestNetwork.make
 * const alice = yield* net.client("alice")
 * yield* net.faults.loseNextResponse(1, "sendGroupMessages")
 * yield* net.restart(alice)   // drop in-memory state, reopen the same database
 * yield* net.crashAt(alice, "publish.afterWriteAheadBeforeSend")  // dies there, once
 * ```
 */
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Cause, Context, Data, Effect, Exit, Layer, Schedule, Scope } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import type { ConvergeError } from "./domain/Errors.ts"
import type { InstallationId } from "./domain/Ids.ts"
import * as MemoryDelivery from "./layers/MemoryDeliveryService.ts"
import { Client, type ClientOptions } from "./services/Client.ts"
import { DeliveryService } from "./services/DeliveryService.ts"
import type { CrashPoint } from "./services/Engine.ts"
import { MlsCrypto } from "./services/MlsCrypto.ts"
import { Storage } from "./services/Storage.ts"

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
}

export interface TestNetworkOptions extends MemoryDelivery.MemoryOptions {
  /** Engine options every client gets unless it overrides them. */
  readonly clientDefaults?: ClientOptions
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
  readonly faults: MemoryDelivery.FaultControls
  readonly client: (name: string, options?: TestClientOptions) => Effect.Effect<TestClient, ConvergeError>
  /**
   * Drops the client's in-memory state and reopens the same database. Safe after a crash:
   * the old incarnation's scope is closed whatever its fibers left half-done.
   */
  readonly restart: (client: TestClient) => Effect.Effect<void, ConvergeError>
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
}

interface Incarnation {
  client: ClientShape
  storage: Context.Tag.Service<Storage>
  scope: Scope.CloseableScope
  rootSecretKey: Uint8Array | undefined
}

const makeNetwork = (options: TestNetworkOptions = {}) =>
  Effect.gen(function*() {
    const memory = yield* MemoryDelivery.make(options)
    const crypto = yield* Layer.build(MlsCrypto.layer()).pipe(Effect.map(Context.get(MlsCrypto)))
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-net-"))
    yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true })))
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
        const { wrapDelivery, sameInboxAs: _, ...engineOwn } = clientOptions
        const engineOptions: ClientOptions = {
          ...testDefaults,
          ...options.clientDefaults,
          ...engineOwn,
          crashPoint: crashHook(name, clientOptions.crashPoint ?? options.clientDefaults?.crashPoint)
        }
        const layer = Layer.merge(Client.layer(engineOptions), Storage.layer).pipe(
          // A literal config cannot fail to load.
          Layer.provide(Layer.orDie(SqliteClient.layer({ filename }))),
          Layer.provide(Layer.succeed(DeliveryService, wrapDelivery?.(deliveryFor(name)) ?? deliveryFor(name))),
          Layer.provide(Layer.succeed(MlsCrypto, crypto))
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
          rootSecretKey: identity._tag === "Some" ? identity.value.root_secret_key ?? undefined : undefined
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
          }
        }
        return testClient
      }).pipe(Effect.withSpan("TestNetwork.client", { attributes: { name } }))

    const restart = (testClient: TestClient) =>
      Effect.gen(function*() {
        const old = incarnations.get(testClient.name)
        if (old !== undefined) {
          incarnations.delete(testClient.name)
          // Runs every finalizer (the database closes) even if a crashed fiber left a step
          // half-done: the database's transactions are what make that safe.
          yield* Scope.close(old.scope, Exit.void)
        }
        // The identity is in the database now; the engine options are the ones it was made with.
        const { rootSecretKey: _, ...options } = madeWith.get(testClient.name) ?? {}
        yield* boot(testClient.name, testClient.filename, options)
      }).pipe(Effect.uninterruptible, Effect.withSpan("TestNetwork.restart", { attributes: { name: testClient.name } }))

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
      crashAt,
      disarmCrashes,
      crashLog: Effect.sync(() => [...crashes]),
      storage: (testClient) => Effect.sync(() => incarnationOf(testClient.name).storage),
      crypto
    } satisfies TestNetwork
  })

export const TestNetwork = {
  /** A fresh network in the current scope; everything is torn down when the scope closes. */
  make: makeNetwork(),
  makeWith: makeNetwork
}
