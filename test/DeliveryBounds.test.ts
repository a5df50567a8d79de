/**
 * The store-backed delivery service (SQLite) and its RPC server bound what one request may
 * cost: pages and stream chunks by bytes as well as count, subscriptions by topics, lookups by
 * ids, identity-log answers by entries; and the RPC client hides the bounds from its callers.
 *
 * The large topics are written the only way the service takes them: by a registered
 * installation (signed requests), as MLS messages of the topic's group.
 */
import { SqliteClient } from "@effect/sql-sqlite-node"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Context, Effect, Layer, Stream } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { toHex } from "../src/domain/Bytes.ts"
import type { GroupId, InstallationId } from "../src/domain/Ids.ts"
import { type GroupMessageEnvelope, GroupMessageInput, type IdentityUpdate, type QueryPage } from "../src/domain/Wire.ts"
import { MAX_PAGE_BYTES } from "../src/layers/DeliveryRequests.ts"
import { serve } from "../src/layers/DeliveryServer.ts"
import { DeliveryService } from "../src/index.ts"
import { DeliveryStore } from "../src/index.ts"
import { MlsCrypto } from "../src/index.ts"
import { mlsPayloadOfSize, newInbox, newInstallationKeys, registerInstallation } from "./support/DeliveryFixtures.ts"
import { clientLayer } from "./support/RpcHarness.ts"

const MiB = 1024 * 1024

const tempSqlite = Layer.unwrapScoped(
  Effect.gen(function*() {
    const dir = yield* Effect.acquireRelease(
      Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "converge-bounds-"))),
      (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
    )
    return SqliteClient.layer({ filename: path.join(dir, "ds.sqlite") })
  })
)

const onSqlite = DeliveryService.layerStore().pipe(
  Layer.provide(DeliveryStore.layerSqlite),
  Layer.provide(tempSqlite),
  Layer.provide(MlsCrypto.layer())
)

/** The service of `layer`, built in the test's scope. */
const built = <E>(layer: Layer.Layer<DeliveryService, E>) => Effect.map(Layer.build(layer), Context.get(DeliveryService))

const randomHex = (bytes: number) => toHex(crypto.getRandomValues(new Uint8Array(bytes)))
const groupId = () => randomHex(16) as GroupId

/** An MLS message of `group` of exactly `size` bytes, distinct per `tag` (identical payloads are stored once). */
const message = (group: GroupId, size: number, tag: number) =>
  new GroupMessageInput({ groupId: group, payload: mlsPayloadOfSize(group, size, tag) })

/** The service as a newly registered installation: every write signed by it. */
const writer = (ds: DeliveryService["Type"]) => Effect.map(registerInstallation(ds), (registered) => registered.ds)

/** An identity log of `length` entries: the inbox, then installations proving their keys. */
const identityLog = (length: number) => {
  const inbox = newInbox()
  const updates: Array<IdentityUpdate> = [inbox.create()]
  while (updates.length < length) updates.push(inbox.add(newInstallationKeys()))
  return { inboxId: inbox.inboxId, updates }
}

describe("pages bounded by bytes", () => {
  it.scopedLive("ten 1 MiB payloads come back in pages of at most 4 MiB, each pointing on, all in order", () =>
    Effect.gen(function*() {
      const ds = yield* built(onSqlite)
      const sender = yield* writer(ds)
      const group = groupId()
      for (let i = 0; i < 10; i++) yield* sender.sendGroupMessages([message(group, MiB, i)])
      const sizes: Array<number> = []
      const seen: Array<bigint> = []
      let cursor: bigint | undefined = 0n
      while (cursor !== undefined) {
        const page: QueryPage<GroupMessageEnvelope> = yield* ds.queryGroupMessages({ groupId: group, afterSequenceId: cursor })
        sizes.push(page.items.reduce((n, e) => n + e.payload.length, 0))
        seen.push(...page.items.map((e) => e.sequenceId))
        cursor = page.next
      }
      expect(seen).toEqual(Array.from({ length: 10 }, (_, i) => BigInt(i + 1)))
      expect(Math.max(...sizes)).toBeLessThanOrEqual(MAX_PAGE_BYTES)
      expect(sizes.slice(0, 2)).toEqual([4 * MiB, 4 * MiB])
    }))

  it.scopedLive("one payload larger than a page still comes back, alone", () =>
    Effect.gen(function*() {
      // A store limit above the page cap (payloads stored before a limit was lowered).
      const ds = yield* built(
        DeliveryService.layerStore({ maxPayloadBytes: 5 * MiB }).pipe(
          Layer.provide(DeliveryStore.layerSqlite),
          Layer.provide(tempSqlite),
          Layer.provide(MlsCrypto.layer())
        )
      )
      const sender = yield* writer(ds)
      const group = groupId()
      yield* sender.sendGroupMessages([message(group, 5 * MiB, 1)])
      yield* sender.sendGroupMessages([message(group, 100, 2)])
      const first = yield* ds.queryGroupMessages({ groupId: group, afterSequenceId: 0n })
      expect(first.items.map((e) => e.payload.length)).toEqual([5 * MiB])
      expect(first.next).toBe(1n)
      const second = yield* ds.queryGroupMessages({ groupId: group, afterSequenceId: 1n })
      expect(second.items.map((e) => e.sequenceId)).toEqual([2n])
      // With payloads allowed past the page cap, any page may have stopped on bytes: it points
      // on, and the read after it ends.
      expect(second.next).toBe(2n)
      const end = yield* ds.queryGroupMessages({ groupId: group, afterSequenceId: 2n })
      expect(end.items).toEqual([])
      expect(end.next).toBeUndefined()
    }))

  it.scopedLive("a subscription replays a backlog of large payloads at once, in chunks of at most 4 MiB", () =>
    Effect.gen(function*() {
      const ds = yield* built(onSqlite)
      const sender = yield* writer(ds)
      const group = groupId()
      for (let i = 0; i < 9; i++) yield* sender.sendGroupMessages([message(group, MiB, i)])
      const started = Date.now()
      const chunks = yield* ds.subscribeGroupMessages([{ groupId: group, afterSequenceId: 0n }]).pipe(
        Stream.chunks,
        Stream.scan([] as ReadonlyArray<number>, (sizes, chunk) => [...sizes, Chunk.size(chunk)]),
        Stream.takeUntil((sizes) => sizes.reduce((a, b) => a + b, 0) >= 9),
        Stream.runLast
      )
      const sizes = chunks._tag === "Some" ? chunks.value : []
      expect(sizes.reduce((a, b) => a + b, 0)).toBe(9)
      expect(Math.max(...sizes)).toBeLessThanOrEqual(4)
      // Not one chunk per poll interval (5 s): a short chunk by bytes is not "caught up".
      expect(Date.now() - started).toBeLessThan(3000)
    }))
})

describe("request caps", () => {
  it.scopedLive("too many filters, key-package ids or identity queries are typed refusals", () =>
    Effect.gen(function*() {
      const ds = yield* built(onSqlite)
      const filters = Array.from({ length: 1001 }, () => ({ groupId: groupId(), afterSequenceId: 0n }))
      const subscribe = yield* Effect.flip(Stream.runDrain(ds.subscribeGroupMessages(filters)))
      expect(subscribe).toMatchObject({ _tag: "DeliveryError", reason: "LimitExceeded", retryable: false })
      const ids = Array.from({ length: 101 }, () => randomHex(32) as InstallationId)
      expect(yield* Effect.flip(ds.fetchKeyPackages(ids))).toMatchObject({ reason: "BatchTooLarge" })
      const queries = ids.map((id) => ({ inboxId: id as unknown as IdentityUpdate["inboxId"], afterSequence: 0 }))
      expect(yield* Effect.flip(ds.getIdentityUpdates(queries))).toMatchObject({ reason: "BatchTooLarge" })
      expect(yield* ds.fetchKeyPackages(ids.slice(0, 100))).toHaveLength(100)
    }))

  it.scopedLive("a send of 60,000 small messages is refused as too large (typed), not crashed by hashing it first", () =>
    Effect.gen(function*() {
      const ds = yield* built(onSqlite)
      const group = groupId()
      const tiny = mlsPayloadOfSize(group, 100, 0)
      const groupMessages = Array.from({ length: 60_000 }, () => new GroupMessageInput({ groupId: group, payload: tiny }))
      expect(yield* Effect.flip(ds.sendGroupMessages(groupMessages))).toMatchObject({ reason: "BatchTooLarge" })
      const welcomes = Array.from({ length: 60_000 }, () => ({ installationId: randomHex(32) as InstallationId, payload: tiny }))
      expect(yield* Effect.flip(ds.sendWelcomeMessages(welcomes))).toMatchObject({ reason: "BatchTooLarge" })
    }))
})

describe("identity logs over RPC", () => {
  it.scopedLive("answers are bounded in entries; the RPC client reads whole logs, also past the id limit", () =>
    Effect.gen(function*() {
      const service = yield* Layer.build(onSqlite)
      const ds = Context.get(service, DeliveryService)
      const log = identityLog(12)
      for (const update of log.updates) yield* ds.publishIdentityUpdate(update)
      const address = yield* serve({ port: 0, host: "127.0.0.1", maxIdentityEntries: 5 }).pipe(Effect.provide(service))

      // The raw answer: five entries in all, the rest flagged to be asked for again.
      const raw = yield* Effect.promise(() =>
        fetch(address.url, {
          method: "POST",
          headers: { "content-type": "application/ndjson" },
          body: JSON.stringify({
            _tag: "Request",
            id: "1",
            tag: "getIdentityUpdates",
            payload: { queries: Array.from({ length: 100 }, () => ({ inboxId: log.inboxId, afterSequence: 0 })) },
            headers: []
          }) + "\n"
        }).then((r) => r.text())
      )
      const exit = JSON.parse(raw.trim().split("\n").at(-1)!)
      const answers = exit.exit.value as ReadonlyArray<{ updates: ReadonlyArray<unknown>; truncated?: boolean }>
      expect(answers).toHaveLength(100)
      expect(answers.reduce((n, a) => n + a.updates.length, 0)).toBe(5)
      expect(answers.every((a) => a.truncated === true)).toBe(true)
      expect(raw.length).toBeLessThan(20_000)

      // Through the client: every query gets the whole log, 150 queries in two calls.
      const client = yield* built(clientLayer(address.url))
      const queries = Array.from({ length: 150 }, (_, i) => ({ inboxId: log.inboxId, afterSequence: i % 3 }))
      const logs = yield* client.getIdentityUpdates(queries)
      expect(logs).toHaveLength(150)
      logs.forEach((l, i) => {
        expect(l.updates.map((e) => e.update.sequence)).toEqual(
          Array.from({ length: 12 - (i % 3) }, (_, j) => j + 1 + (i % 3))
        )
      })
      const ids = Array.from({ length: 250 }, () => randomHex(32) as InstallationId)
      const fetched = yield* client.fetchKeyPackages(ids)
      expect(fetched.map((f) => f.installationId)).toEqual(ids)
    }))
})
