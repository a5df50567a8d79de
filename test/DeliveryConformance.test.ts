/**
 * The delivery service conformance suite on every store: in memory, SQLite (a temp file) and
 * Postgres (a fresh schema), plus the multi-server ordering test on Postgres. The Postgres
 * suites are skipped locally when no database answers, and fail in CI (see .ci/postgres.sh).
 */
import { PgClient } from "@effect/sql-pg"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Context, Effect, Fiber, Layer, Stream } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { toHex } from "../src/domain/Bytes.ts"
import type { DeliveryError } from "../src/domain/Errors.ts"
import type { GroupMessageEnvelope } from "../src/domain/Wire.ts"
import type { StoreDeliveryOptions } from "../src/layers/StoreDeliveryService.ts"
import { authenticatedAs } from "../src/services/DeliveryAuth.ts"
import { DeliveryService } from "../src/index.ts"
import { DeliveryStore } from "../src/index.ts"
import { MlsCrypto } from "../src/index.ts"
import { type ConformanceOptions, deliveryConformance } from "./support/DeliveryConformance.ts"
import { mlsMessage, newGroupId, range, registerInstallation, textOf } from "./support/DeliveryFixtures.ts"
import * as PgDeliveryStore from "../src/postgres.ts"
import * as Postgres from "./support/Postgres.ts"

/** What the store-backed layers are configured with, and so what the suite expects of them. */
const storeOptions = { maxIdentityUpdates: 8 } satisfies StoreDeliveryOptions

/** A SQLite database in a temp directory, removed when the layer is released. */
const tempSqlite = Layer.unwrapScoped(
  Effect.gen(function*() {
    const dir = yield* Effect.acquireRelease(
      Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "converge-ds-"))),
      (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
    )
    return SqliteClient.layer({ filename: path.join(dir, "ds.sqlite") })
  })
)

const onSqlite = (options: StoreDeliveryOptions) =>
  DeliveryService.layerStore(options).pipe(
    Layer.provide(DeliveryStore.layerSqlite),
    Layer.provide(tempSqlite),
    Layer.provide(MlsCrypto.layer())
  )

const onPostgres = (options: StoreDeliveryOptions) =>
  DeliveryService.layerStore(options).pipe(
    Layer.provide(PgDeliveryStore.layerPg()),
    Layer.provide(Postgres.layer("conformance")),
    Layer.provide(MlsCrypto.layer())
  )

/** The suite's options for a store: its limits, and a fresh service of that store with a given rate limit. */
const conformanceOf = (build: (options: StoreDeliveryOptions) => Layer.Layer<DeliveryService, unknown>): ConformanceOptions => ({
  maxIdentityUpdates: storeOptions.maxIdentityUpdates,
  rateLimited: (rateLimit) => build({ ...storeOptions, authentication: { rateLimit } })
})

deliveryConformance("memory store", DeliveryService.layerMemoryWith(storeOptions), conformanceOf(DeliveryService.layerMemoryWith))
deliveryConformance("sqlite store", onSqlite(storeOptions), conformanceOf(onSqlite))

const pgUp = await Postgres.reachable()
if (!pgUp && Postgres.required) {
  describe("postgres", () => {
    it("answers at CONVERGE_TEST_PG_URL", () => {
      throw new Error(
        `CI requires Postgres, but nothing answers at ${Postgres.url.replace(/\/\/[^@]*@/, "//***@")} ` +
          "(run .ci/postgres.sh, or set CONVERGE_TEST_PG_URL)"
      )
    })
  })
}

if (pgUp) {
  deliveryConformance("postgres store", onPostgres(storeOptions), conformanceOf(onPostgres))
} else {
  describe.skip("DeliveryService conformance: postgres store (no database at CONVERGE_TEST_PG_URL)", () => {
    it("skipped", () => {})
  })
}

// ---- several servers on one Postgres ----

/** One server: its own pool, its own LISTEN connection, its own delivery service. */
const serverInstance = (options: {
  readonly pollMillis: number
  readonly heartbeatMillis?: number
  readonly applicationName?: string
}) =>
  DeliveryService.layerStore({ ...storeOptions, pollMillis: options.pollMillis }).pipe(
    Layer.provide(
      PgDeliveryStore.layerPg(options.heartbeatMillis === undefined ? {} : { heartbeatMillis: options.heartbeatMillis })
    ),
    Layer.provide(
      Postgres.layerClientWith(options.applicationName === undefined ? {} : { applicationName: options.applicationName })
    ),
    Layer.provide(MlsCrypto.layer())
  )

describe.runIf(pgUp)("several servers on one Postgres", () => {
  it.live(
    "20 publishers through two servers, a subscriber tailing through a third: every message once, in order, gap-free",
    () =>
      Effect.scoped(Effect.gen(function*() {
        const schema = yield* Layer.build(Postgres.layerSchema("multi"))
        const build = (pollMillis: number) =>
          Layer.build(serverInstance({ pollMillis }).pipe(Layer.provide(Layer.succeedContext(schema)))).pipe(
            Effect.map(Context.get(DeliveryService))
          )
        // The subscriber's server never polls within the test: it must be woken by NOTIFY
        // from the other servers' commits.
        const [a, b, c] = [yield* build(5000), yield* build(5000), yield* build(600_000)]
        // One installation publishes through both servers; each checks its signatures on its own.
        const { installation } = yield* registerInstallation(a)
        const servers = [authenticatedAs(a, installation.signer), authenticatedAs(b, installation.signer)]
        const groupId = newGroupId()
        const publishers = 20
        const perPublisher = 10
        const total = publishers * perPublisher

        const tail = yield* Effect.fork(
          Stream.runCollect(Stream.take(c.subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]), total))
        )
        // A reader polling through the third server: whatever it has seen up to id N, no later
        // read may reveal a new id below N.
        const polled: Array<bigint> = []
        const poller = yield* Effect.fork(Effect.gen(function*() {
          let cursor = 0n
          while (cursor < BigInt(total)) {
            const page = yield* c.queryGroupMessages({ groupId, afterSequenceId: cursor })
            for (const e of page.items) polled.push(e.sequenceId)
            const last = page.items[page.items.length - 1]
            if (last !== undefined) cursor = last.sequenceId
            else yield* Effect.sleep("2 millis")
          }
        }))
        let midway: Fiber.RuntimeFiber<Chunk.Chunk<GroupMessageEnvelope>, DeliveryError> | undefined

        const started = Date.now()
        yield* Effect.all(
          Array.from({ length: publishers }, (_, p) =>
            Effect.forEach(
              Array.from({ length: perPublisher }, (_, i) => i),
              (i) =>
                Effect.gen(function*() {
                  // Spread across both servers, also within one publisher.
                  const server = servers[(p + i) % 2]!
                  yield* server.sendGroupMessages([mlsMessage(groupId, `p${p}-m${i}`)])
                  if (p === 0 && i === perPublisher / 2) {
                    // A second subscriber joins mid-stream, from the start.
                    midway = yield* Effect.fork(
                      Stream.runCollect(Stream.take(c.subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]), total))
                    )
                  }
                }),
              { discard: true }
            )),
          { concurrency: "unbounded", discard: true }
        )
        const publishedIn = Date.now() - started

        // The poller ends once its cursor reaches the end: had an id become visible after a
        // higher one, it would have skipped it.
        yield* Fiber.join(poller).pipe(Effect.timeout("20 seconds"))
        expect(polled).toEqual(range(1, total))
        const seen = Chunk.toReadonlyArray(yield* Fiber.join(tail).pipe(Effect.timeout("20 seconds")))
        const seenMidway = Chunk.toReadonlyArray(yield* Fiber.join(midway!).pipe(Effect.timeout("20 seconds")))
        const tailedIn = Date.now() - started

        expect(seen.map((e) => e.sequenceId)).toEqual(range(1, total))
        expect(new Set(seen.map((e) => textOf(e.payload))).size).toBe(total)
        expect(seenMidway.map((e) => e.sequenceId)).toEqual(range(1, total))
        // Every server serves the same topic.
        const fromA = yield* a.queryGroupMessages({ groupId, afterSequenceId: 0n, limit: 100 })
        const fromB = yield* b.queryGroupMessages({ groupId, afterSequenceId: 0n, limit: 100 })
        expect(fromA.items.map((e) => textOf(e.payload))).toEqual(fromB.items.map((e) => textOf(e.payload)))
        expect(fromA.items.map((e) => textOf(e.payload))).toEqual(seen.slice(0, 100).map((e) => textOf(e.payload)))
        // Each publisher's messages in its own order.
        for (let p = 0; p < publishers; p++) {
          const mine = seen.map((e) => textOf(e.payload)).filter((t) => t.startsWith(`p${p}-`))
          expect(mine).toEqual(Array.from({ length: perPublisher }, (_, i) => `p${p}-m${i}`))
        }
        yield* Effect.logInfo(`multi-server: published ${total} in ${publishedIn} ms, tailed in ${tailedIn} ms`)
      })),
    60_000
  )

  it.live("a server whose LISTEN connection is killed listens again, and its subscriber misses nothing", () =>
    Effect.scoped(Effect.gen(function*() {
      const schema = yield* Layer.build(Postgres.layerSchema("relisten"))
      const provideSchema = Layer.provide(Layer.succeedContext(schema))
      const { ds: publisher } = yield* registerInstallation(Context.get(
        yield* Layer.build(serverInstance({ pollMillis: 5000 }).pipe(provideSchema)),
        DeliveryService
      ))
      const appName = `converge-relisten-${toHex(crypto.getRandomValues(new Uint8Array(4)))}`
      // Polling is off for the test's length: only NOTIFY (and the re-listen) can wake it.
      const subscriber = Context.get(
        yield* Layer.build(
          serverInstance({ pollMillis: 600_000, heartbeatMillis: 200, applicationName: appName }).pipe(provideSchema)
        ),
        DeliveryService
      )
      const admin = Context.get(yield* Layer.build(Postgres.layerClient.pipe(provideSchema)), PgClient.PgClient)
      const groupId = newGroupId()
      const received: Array<bigint> = []
      yield* Effect.fork(
        Stream.runForEach(
          subscriber.subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]),
          (e) => Effect.sync(() => received.push(e.sequenceId))
        )
      )
      const send = (i: number) => publisher.sendGroupMessages([mlsMessage(groupId, `m${i}`)])
      const waitFor = (n: number) =>
        Effect.gen(function*() {
          while (received.length < n) yield* Effect.sleep("5 millis")
        }).pipe(Effect.timeout("15 seconds"))

      for (let i = 1; i <= 3; i++) yield* send(i)
      yield* waitFor(3)
      const killed = yield* admin<{ pid: number }>`
        SELECT pid FROM pg_stat_activity
        WHERE application_name = ${appName} AND query LIKE 'LISTEN%' AND pg_terminate_backend(pid)`
      expect(killed.length).toBe(1)
      // Published while the subscriber's server is deaf: its NOTIFYs are lost.
      for (let i = 4; i <= 6; i++) yield* send(i)
      yield* waitFor(6)
      // And live again afterwards.
      for (let i = 7; i <= 8; i++) yield* send(i)
      yield* waitFor(8)
      expect(received).toEqual(range(1, 8))
    })), 60_000)
})
