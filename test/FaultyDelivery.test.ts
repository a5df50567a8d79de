import { describe, expect, it } from "@effect/vitest"
import { ed25519 } from "@noble/curves/ed25519.js"
import { Chunk, Context, Effect, Fiber, Layer, Stream } from "effect"
import { toHex, utf8 } from "../src/domain/Bytes.ts"
import { hashOfUpdate, inboxIdOf, installationIdOf, signUpdate } from "../src/domain/IdentityLog.ts"
import type { GroupId, InboxId, InstallationId } from "../src/domain/Ids.ts"
import {
  type GroupMessageEnvelope,
  GroupMessageInput,
  type IdentityAction,
  type IdentityUpdate,
  KeyPackageUpload,
  WelcomeMessageInput
} from "../src/domain/Wire.ts"
import { SqliteClient } from "@effect/sql-sqlite-node"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as FaultyDeliveryService from "../src/layers/FaultyDeliveryService.ts"
import * as SqlDeliveryStore from "../src/layers/SqlDeliveryStore.ts"
import { DeliveryService, MlsCrypto } from "../src/index.ts"

// ---- fixtures ----

const randomBytes = (n: number) => crypto.getRandomValues(new Uint8Array(n))
const newGroupId = () => toHex(randomBytes(16)) as GroupId
const message = (groupId: GroupId, text: string) => GroupMessageInput.make({ groupId, payload: utf8(text) })
const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes)

/** An inbox whose log the test signs entry by entry, tracking the head as the server would. */
const newInbox = () => {
  const rootSecretKey = ed25519.utils.randomSecretKey()
  const rootPublicKey = ed25519.getPublicKey(rootSecretKey)
  const inboxId: InboxId = inboxIdOf(rootPublicKey)
  let head: { sequence: number; headHash: string } | undefined
  const next = (action: IdentityAction, signingKey: Uint8Array = rootSecretKey): IdentityUpdate => {
    const update = signUpdate(signingKey, inboxId, head, action)
    head = { sequence: update.sequence, headHash: hashOfUpdate(update) }
    return update
  }
  return {
    inboxId,
    create: () => next({ _tag: "CreateInbox", rootPublicKey: toHex(rootPublicKey) }),
    add: (installation: Installation) =>
      next({
        _tag: "AddInstallation",
        installationId: installation.id,
        signaturePublicKey: installation.signaturePublicKey
      }),
    revoke: (installation: Installation) => next({ _tag: "RevokeInstallation", installationId: installation.id }),
    /** Signs the next entry with some other key: a forgery. */
    forge: (action: IdentityAction) => next(action, ed25519.utils.randomSecretKey())
  }
}

interface Installation {
  readonly id: InstallationId
  readonly signaturePublicKey: string
}

const newInstallation = (): Installation => {
  const key = randomBytes(32)
  return { id: installationIdOf(key), signaturePublicKey: toHex(key) }
}

/** Reads a whole topic by paging through it. */
const readAll = (ds: DeliveryService["Type"], groupId: GroupId) =>
  Effect.gen(function*() {
    const all: Array<GroupMessageEnvelope> = []
    let cursor = 0n
    for (;;) {
      const page = yield* ds.queryGroupMessages({ groupId, afterSequenceId: cursor })
      all.push(...page.items)
      if (page.next === undefined) return all
      cursor = page.next
    }
  })

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => BigInt(from + i))

// ---- ordering ----

// ---- faults ----

/**
 * Fault injection wraps any delivery service: these run it around the in-memory service and
 * around the store-backed service on a SQLite file.
 */
const inners: ReadonlyArray<readonly [string, Layer.Layer<DeliveryService>]> = [
  ["memory", DeliveryService.layerMemory],
  [
    "sqlite",
    Layer.unwrapScoped(Effect.gen(function*() {
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "converge-faults-"))),
        (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
      )
      return DeliveryService.layerStore().pipe(
        Layer.provide(SqlDeliveryStore.layerSqlite),
        Layer.provide(SqliteClient.layer({ filename: path.join(dir, "ds.sqlite") })),
        Layer.provide(MlsCrypto.layer()),
        Layer.orDie
      )
    }))
  ]
]

describe.each(inners)("faults around the %s delivery service", (_, inner) => {
  const make = (_options: object) =>
    Effect.flatMap(Layer.build(inner), (context) => FaultyDeliveryService.make(Context.get(context, DeliveryService)))

  it.scoped("dropNext fails a send without storing it", () =>
    Effect.gen(function*() {
      const net = yield* make({})
      const ds = net.service
      const groupId = newGroupId()
      yield* net.faults.dropNext(1, "sendGroupMessages")
      // Other operations are not affected by a fault aimed at sends.
      yield* ds.queryGroupMessages({ groupId, afterSequenceId: 0n })
      const dropped = yield* Effect.flip(ds.sendGroupMessages([message(groupId, "hello")]))
      expect(dropped).toMatchObject({ _tag: "DeliveryError", reason: "Unavailable", retryable: true })
      expect(yield* readAll(ds, groupId)).toEqual([])
      const [retried] = yield* ds.sendGroupMessages([message(groupId, "hello")])
      expect(retried!.sequenceId).toBe(1n)
      expect((yield* net.faults.stats).dropped).toBe(1)
    }))

  it.scoped("loseNextResponse stores the message but the caller sees a timeout", () =>
    Effect.gen(function*() {
      const net = yield* make({})
      const ds = net.service
      const groupId = newGroupId()
      yield* net.faults.loseNextResponse(1)
      const lost = yield* Effect.flip(ds.sendGroupMessages([message(groupId, "hello")]))
      expect(lost).toMatchObject({ _tag: "DeliveryError", reason: "Timeout", retryable: true })
      const stored = yield* readAll(ds, groupId)
      expect(stored.map((e) => text(e.payload))).toEqual(["hello"])
      // Resending after a lost response is idempotent.
      const [resent] = yield* ds.sendGroupMessages([message(groupId, "hello")])
      expect(resent!.sequenceId).toBe(1n)
      expect(yield* readAll(ds, groupId)).toHaveLength(1)
      expect((yield* net.faults.stats).lostResponses).toBe(1)
    }))

  it.scoped("a partition affects only the partitioned installation's view, until healed", () =>
    Effect.gen(function*() {
      const net = yield* make({})
      const [alice, bob] = [newInstallation(), newInstallation()]
      const aliceView = net.forInstallation(alice.id)
      const bobView = net.forInstallation(bob.id)
      const groupId = newGroupId()

      yield* net.faults.partition(alice.id)
      const refused = yield* Effect.flip(aliceView.sendGroupMessages([message(groupId, "from alice")]))
      expect(refused).toMatchObject({ reason: "Unavailable", retryable: true })
      const refusedQuery = yield* Effect.flip(aliceView.queryGroupMessages({ groupId, afterSequenceId: 0n }))
      expect(refusedQuery).toMatchObject({ reason: "Unavailable" })
      const refusedStream = yield* Effect.flip(
        Stream.runCollect(aliceView.subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]))
      )
      expect(refusedStream).toMatchObject({ reason: "Unavailable" })

      yield* bobView.sendGroupMessages([message(groupId, "from bob")])
      yield* net.service.sendGroupMessages([message(groupId, "from nobody")])
      expect(yield* readAll(net.service, groupId)).toHaveLength(2)

      yield* net.faults.heal(alice.id)
      yield* aliceView.sendGroupMessages([message(groupId, "from alice")])
      const stored = yield* readAll(aliceView, groupId)
      expect(stored.map((e) => text(e.payload))).toEqual(["from bob", "from nobody", "from alice"])
      expect((yield* net.faults.stats).partitionRejections).toBe(3)
    }))

  it.live("a partition cuts the installation's live subscription", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* make({})
      const alice = newInstallation()
      const groupId = newGroupId()
      yield* net.service.sendGroupMessages([message(groupId, "before")])
      const received: Array<string> = []
      const subscription = yield* Effect.fork(
        Stream.runForEach(
          net.forInstallation(alice.id).subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]),
          (e) => Effect.sync(() => received.push(text(e.payload)))
        ).pipe(Effect.flip)
      )
      // Wait until the backlog arrived, then cut the installation off.
      while (received.length === 0) yield* Effect.sleep("5 millis")
      yield* net.faults.partition(alice.id)
      const cut = yield* Fiber.join(subscription).pipe(Effect.timeout("5 seconds"))
      expect(cut).toMatchObject({ _tag: "DeliveryError", reason: "Unavailable", retryable: true })
      expect(received).toEqual(["before"])
      expect((yield* net.faults.stats).streamsCut).toBe(1)
    })))

  it.scoped("healAll clears pending faults and partitions", () =>
    Effect.gen(function*() {
      const net = yield* make({})
      const alice = newInstallation()
      const groupId = newGroupId()
      yield* net.faults.dropNext(3)
      yield* net.faults.loseNextResponse(2, "queryGroupMessages")
      yield* net.faults.partition(alice.id)
      yield* net.faults.healAll
      yield* net.forInstallation(alice.id).sendGroupMessages([message(groupId, "ok")])
      const page = yield* net.service.queryGroupMessages({ groupId, afterSequenceId: 0n })
      expect(page.items).toHaveLength(1)
      expect(yield* net.faults.stats).toEqual({
        dropped: 0,
        lostResponses: 0,
        partitionRejections: 0,
        streamsCut: 0,
        duplicated: 0,
        delayed: 0
      })
    }))

  it.live("duplicateNextDelivery delivers a publish twice but stores it once, in order", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* make({})
      const ds = net.service
      const groupId = newGroupId()
      yield* ds.sendGroupMessages([message(groupId, "m1")])
      const collected = yield* Effect.fork(
        Stream.runCollect(Stream.take(ds.subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]), 4))
      )
      yield* net.faults.duplicateNextDelivery(1)
      // An idempotent resend of m1 stores nothing new, so it does not use up the fault.
      yield* ds.sendGroupMessages([message(groupId, "m1")])
      yield* ds.sendGroupMessages([message(groupId, "m2")])
      yield* ds.sendGroupMessages([message(groupId, "m3")])
      const seen = Chunk.toReadonlyArray(yield* Fiber.join(collected).pipe(Effect.timeout("5 seconds")))
      expect(seen.map((e) => [e.sequenceId, text(e.payload)])).toEqual([[1n, "m1"], [2n, "m2"], [2n, "m2"], [3n, "m3"]])
      const stored = yield* readAll(ds, groupId)
      expect(stored.map((e) => [e.sequenceId, text(e.payload)])).toEqual([[1n, "m1"], [2n, "m2"], [3n, "m3"]])
      expect((yield* net.faults.stats).duplicated).toBe(1)
    })))

  it.live("a paused subscriber gets nothing until resumed, then everything in order; others are not affected", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* make({})
      const [alice, bob] = [newInstallation(), newInstallation()]
      const groupId = newGroupId()
      const follow = (installation: Installation, into: Array<string>) =>
        Effect.fork(
          Stream.runForEach(
            net.forInstallation(installation.id).subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]),
            (e) => Effect.sync(() => into.push(text(e.payload)))
          )
        )
      const [atAlice, atBob]: [Array<string>, Array<string>] = [[], []]
      yield* net.faults.pauseSubscriber(alice.id)
      yield* follow(alice, atAlice)
      yield* follow(bob, atBob)
      for (const m of ["m1", "m2", "m3"]) yield* net.service.sendGroupMessages([message(groupId, m)])
      while (atBob.length < 3) yield* Effect.sleep("2 millis")
      yield* Effect.sleep("20 millis")
      expect(atAlice).toEqual([])
      // Requests of a paused subscriber still work: only its subscriptions wait.
      expect(yield* readAll(net.forInstallation(alice.id), groupId)).toHaveLength(3)
      yield* net.faults.resumeSubscriber(alice.id)
      while (atAlice.length < 3) yield* Effect.sleep("2 millis")
      expect(atAlice).toEqual(["m1", "m2", "m3"])
      expect(atBob).toEqual(["m1", "m2", "m3"])
      expect((yield* net.faults.stats).delayed).toBeGreaterThanOrEqual(1)
    })))

  it.live("a held topic is reordered across topics in a subscription, never within itself", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* make({})
      const ds = net.service
      const [a, b] = [newGroupId(), newGroupId()]
      const seen: Array<string> = []
      yield* net.faults.holdTopic(a)
      yield* Effect.fork(
        Stream.runForEach(
          ds.subscribeGroupMessages([{ groupId: a, afterSequenceId: 0n }, { groupId: b, afterSequenceId: 0n }]),
          (e) => Effect.sync(() => seen.push(text(e.payload)))
        )
      )
      yield* ds.sendGroupMessages([message(a, "a1"), message(b, "b1"), message(a, "a2"), message(b, "b2")])
      while (seen.length < 2) yield* Effect.sleep("2 millis")
      yield* Effect.sleep("20 millis")
      expect(seen).toEqual(["b1", "b2"])
      // The held topic is still served in full to queries.
      expect((yield* readAll(ds, a)).map((e) => text(e.payload))).toEqual(["a1", "a2"])
      yield* ds.sendGroupMessages([message(a, "a3")])
      yield* net.faults.releaseTopic(a)
      while (seen.length < 5) yield* Effect.sleep("2 millis")
      expect(seen.slice(2)).toEqual(["a1", "a2", "a3"])
    })))

  it.live("healAll releases paused subscribers and held topics", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* make({})
      const alice = newInstallation()
      const groupId = newGroupId()
      yield* net.faults.pauseSubscriber(alice.id)
      yield* net.faults.holdTopic(groupId)
      yield* net.faults.duplicateNextDelivery(5)
      yield* net.faults.healAll
      const seen = yield* Effect.fork(
        Stream.runCollect(
          Stream.take(net.forInstallation(alice.id).subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]), 2)
        )
      )
      yield* net.service.sendGroupMessages([message(groupId, "m1"), message(groupId, "m2")])
      const got = Chunk.toReadonlyArray(yield* Fiber.join(seen).pipe(Effect.timeout("5 seconds")))
      expect(got.map((e) => text(e.payload))).toEqual(["m1", "m2"])
      expect((yield* net.faults.stats).duplicated).toBe(0)
    })))
})
