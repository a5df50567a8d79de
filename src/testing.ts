/**
 * The test kit (`converge/testing`): one in-memory delivery service with fault controls,
 * and any number of clients, each with its own SQLite file and real ts-mls.
 *
 * ```ts
 * const net = yield* TestNetwork.make
 * const alice = yield* net.client("alice")
 * yield* net.faults.loseNextResponse(1, "sendGroupMessages")
 * yield* net.restart(alice)   // drop in-memory state, reopen the same database
 * ```
 */
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Context, Effect, Exit, Layer, Schedule, Scope } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import type { ConvergeError } from "./domain/Errors.ts"
import type { InstallationId } from "./domain/Ids.ts"
import * as MemoryDelivery from "./layers/MemoryDeliveryService.ts"
import { Client, type ClientOptions } from "./services/Client.ts"
import { DeliveryService } from "./services/DeliveryService.ts"
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

export interface TestClientOptions extends ClientOptions {
  /** Make this client a further installation of another client's inbox. */
  readonly sameInboxAs?: TestClient
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
  /** Drops the client's in-memory state and reopens the same database. */
  readonly restart: (client: TestClient) => Effect.Effect<void, ConvergeError>
}

interface Incarnation {
  client: ClientShape
  options: ClientOptions
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
    const outer = yield* Effect.scope

    /** The delivery service as this client sees it: subject to its installation's partition. */
    const deliveryFor = (name: string): Context.Tag.Service<DeliveryService> =>
      new Proxy(memory.service, {
        get: (target, key) => {
          const incarnation = incarnations.get(name)
          const view = incarnation === undefined
            ? target
            : memory.forInstallation(incarnation.client.installationId as InstallationId)
          return view[key as keyof typeof view]
        }
      })

    const boot = (name: string, filename: string, clientOptions: ClientOptions) =>
      Effect.gen(function*() {
        const scope = yield* Scope.fork(outer, { _tag: "Sequential" } as never)
        const layer = Layer.merge(Client.layer({ ...testDefaults, ...options.clientDefaults, ...clientOptions }), Storage.layer).pipe(
          // A literal config cannot fail to load.
          Layer.provide(Layer.orDie(SqliteClient.layer({ filename }))),
          Layer.provide(Layer.succeed(DeliveryService, deliveryFor(name))),
          Layer.provide(Layer.succeed(MlsCrypto, crypto))
        )
        const context = yield* Layer.buildWithScope(layer, scope).pipe(
          Effect.tapError(() => Scope.close(scope, Exit.void))
        )
        const storage = Context.get(context, Storage)
        const identity = yield* storage.identity.get
        const incarnation: Incarnation = {
          client: Context.get(context, Client),
          options: clientOptions,
          scope,
          rootSecretKey: identity._tag === "Some" ? identity.value.root_secret_key ?? undefined : undefined
        }
        incarnations.set(name, incarnation)
        return incarnation
      })

    const current = (name: string) => incarnations.get(name)!.client

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
        const old = incarnations.get(testClient.name)!
        yield* Scope.close(old.scope, Exit.void)
        incarnations.delete(testClient.name)
        // The identity is in the database now; the engine options are the ones it was made with.
        const { rootSecretKey: _, ...options } = old.options
        yield* boot(testClient.name, testClient.filename, options)
      }).pipe(Effect.withSpan("TestNetwork.restart", { attributes: { name: testClient.name } }))

    return { delivery: memory.service, faults: memory.faults, client, restart } satisfies TestNetwork
  })

export const TestNetwork = {
  /** A fresh network in the current scope; everything is torn down when the scope closes. */
  make: makeNetwork(),
  makeWith: makeNetwork
}
