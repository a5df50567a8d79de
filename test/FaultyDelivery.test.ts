import { describe, expect, it } from "@effect/vitest"
import { Chunk, Context, Effect, Fiber, Layer, Stream } from "effect"
import { SqliteClient } from "@effect/sql-sqlite-node"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import * as FaultyDeliveryService from "../src/layers/FaultyDeliveryService.ts"
import * as SqlDeliveryStore from "../src/layers/SqlDeliveryStore.ts"
import { authenticatedAs } from "../src/services/DeliveryAuth.ts"
import type { InstallationId } from "../src/domain/Ids.ts"
import { QueryPage } from "../src/domain/Wire.ts"
import { DeliveryService, MlsCrypto } from "../src/index.ts"
import { mlsMessage, newGroupId, newInstallationKeys, readAll, registerInstallation, textOf } from "./support/DeliveryFixtures.ts"
import { TestNetwork } from "../src/testing.ts"

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
  /**
   * The faulty service with a registered publisher (`ds`, signed, unaffected by partitions),
   * and `join()`: a new registered installation's view through its own fault gate.
   */
  const make = Effect.gen(function*() {
    const net = yield* Effect.flatMap(
      Layer.build(inner),
      (context) => FaultyDeliveryService.make(Context.get(context, DeliveryService))
    )
    const publisher = yield* registerInstallation(net.service)
    const join = Effect.map(registerInstallation(net.service), ({ installation }) => ({
      id: installation.id,
      view: authenticatedAs(net.forInstallation(installation.id), installation.signer)
    }))
    return { ...net, ds: publisher.ds, join }
  })

  it.scoped("dropNext fails a send without storing it", () =>
    Effect.gen(function*() {
      const net = yield* make
      const ds = net.ds
      const groupId = newGroupId()
      yield* net.faults.dropNext(1, "sendGroupMessages")
      // Other operations are not affected by a fault aimed at sends.
      yield* ds.queryGroupMessages({ groupId, afterSequenceId: 0n })
      const dropped = yield* Effect.flip(ds.sendGroupMessages([mlsMessage(groupId, "hello")]))
      expect(dropped).toMatchObject({ _tag: "DeliveryError", reason: "Unavailable", retryable: true })
      expect(yield* readAll(ds, groupId)).toEqual([])
      const [retried] = yield* ds.sendGroupMessages([mlsMessage(groupId, "hello")])
      expect(retried!.sequenceId).toBe(1n)
      expect((yield* net.faults.stats).dropped).toBe(1)
    }))

  it.scoped("loseNextResponse stores the message but the caller sees a timeout", () =>
    Effect.gen(function*() {
      const net = yield* make
      const ds = net.ds
      const groupId = newGroupId()
      yield* net.faults.loseNextResponse(1)
      const lost = yield* Effect.flip(ds.sendGroupMessages([mlsMessage(groupId, "hello")]))
      expect(lost).toMatchObject({ _tag: "DeliveryError", reason: "Timeout", retryable: true })
      const stored = yield* readAll(ds, groupId)
      expect(stored.map((e) => textOf(e.payload))).toEqual(["hello"])
      // Resending after a lost response is idempotent.
      const [resent] = yield* ds.sendGroupMessages([mlsMessage(groupId, "hello")])
      expect(resent!.sequenceId).toBe(1n)
      expect(yield* readAll(ds, groupId)).toHaveLength(1)
      expect((yield* net.faults.stats).lostResponses).toBe(1)
    }))

  it.scoped("a partition affects only the partitioned installation's view, until healed", () =>
    Effect.gen(function*() {
      const net = yield* make
      const [alice, bob] = [yield* net.join, yield* net.join]
      const [aliceView, bobView] = [alice.view, bob.view]
      const groupId = newGroupId()

      yield* net.faults.partition(alice.id)
      const refused = yield* Effect.flip(aliceView.sendGroupMessages([mlsMessage(groupId, "from alice")]))
      expect(refused).toMatchObject({ reason: "Unavailable", retryable: true })
      const refusedQuery = yield* Effect.flip(aliceView.queryGroupMessages({ groupId, afterSequenceId: 0n }))
      expect(refusedQuery).toMatchObject({ reason: "Unavailable" })
      const refusedStream = yield* Effect.flip(
        Stream.runCollect(aliceView.subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]))
      )
      expect(refusedStream).toMatchObject({ reason: "Unavailable" })

      yield* bobView.sendGroupMessages([mlsMessage(groupId, "from bob")])
      yield* net.ds.sendGroupMessages([mlsMessage(groupId, "from the publisher")])
      expect(yield* readAll(net.service, groupId)).toHaveLength(2)

      yield* net.faults.heal(alice.id)
      yield* aliceView.sendGroupMessages([mlsMessage(groupId, "from alice")])
      const stored = yield* readAll(aliceView, groupId)
      expect(stored.map((e) => textOf(e.payload))).toEqual(["from bob", "from the publisher", "from alice"])
      expect((yield* net.faults.stats).partitionRejections).toBe(3)
    }))

  it.live("a partition cuts the installation's live subscription", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* make
      // Reading needs no registration: any installation id will do.
      const alice = newInstallationKeys()
      const groupId = newGroupId()
      yield* net.ds.sendGroupMessages([mlsMessage(groupId, "before")])
      const received: Array<string> = []
      const subscription = yield* Effect.fork(
        Stream.runForEach(
          net.forInstallation(alice.id).subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]),
          (e) => Effect.sync(() => received.push(textOf(e.payload)))
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
      const net = yield* make
      const alice = yield* net.join
      const groupId = newGroupId()
      yield* net.faults.dropNext(3)
      yield* net.faults.loseNextResponse(2, "queryGroupMessages")
      yield* net.faults.partition(alice.id)
      yield* net.faults.healAll
      yield* alice.view.sendGroupMessages([mlsMessage(groupId, "ok")])
      const page = yield* net.service.queryGroupMessages({ groupId, afterSequenceId: 0n })
      expect(page.items).toHaveLength(1)
      expect(yield* net.faults.stats).toEqual({
        dropped: 0,
        lostResponses: 0,
        partitionRejections: 0,
        streamsCut: 0,
        duplicated: 0,
        delayed: 0,
        substituted: 0
      })
    }))

  it.live("duplicateNextDelivery delivers a publish twice but stores it once, in order", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* make
      const ds = net.ds
      const groupId = newGroupId()
      yield* ds.sendGroupMessages([mlsMessage(groupId, "m1")])
      const collected = yield* Effect.fork(
        Stream.runCollect(Stream.take(ds.subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]), 4))
      )
      yield* net.faults.duplicateNextDelivery(1)
      // An idempotent resend of m1 stores nothing new, so it does not use up the fault.
      yield* ds.sendGroupMessages([mlsMessage(groupId, "m1")])
      yield* ds.sendGroupMessages([mlsMessage(groupId, "m2")])
      yield* ds.sendGroupMessages([mlsMessage(groupId, "m3")])
      const seen = Chunk.toReadonlyArray(yield* Fiber.join(collected).pipe(Effect.timeout("5 seconds")))
      expect(seen.map((e) => [e.sequenceId, textOf(e.payload)])).toEqual([[1n, "m1"], [2n, "m2"], [2n, "m2"], [3n, "m3"]])
      const stored = yield* readAll(ds, groupId)
      expect(stored.map((e) => [e.sequenceId, textOf(e.payload)])).toEqual([[1n, "m1"], [2n, "m2"], [3n, "m3"]])
      expect((yield* net.faults.stats).duplicated).toBe(1)
    })))

  it.live("a paused subscriber gets nothing until resumed, then everything in order; others are not affected", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* make
      const [alice, bob] = [newInstallationKeys(), newInstallationKeys()]
      const groupId = newGroupId()
      const follow = (installation: { readonly id: InstallationId }, into: Array<string>) =>
        Effect.fork(
          Stream.runForEach(
            net.forInstallation(installation.id).subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]),
            (e) => Effect.sync(() => into.push(textOf(e.payload)))
          )
        )
      const [atAlice, atBob]: [Array<string>, Array<string>] = [[], []]
      yield* net.faults.pauseSubscriber(alice.id)
      yield* follow(alice, atAlice)
      yield* follow(bob, atBob)
      for (const m of ["m1", "m2", "m3"]) yield* net.ds.sendGroupMessages([mlsMessage(groupId, m)])
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
      const net = yield* make
      const ds = net.ds
      const [a, b] = [newGroupId(), newGroupId()]
      const seen: Array<string> = []
      yield* net.faults.holdTopic(a)
      yield* Effect.fork(
        Stream.runForEach(
          ds.subscribeGroupMessages([{ groupId: a, afterSequenceId: 0n }, { groupId: b, afterSequenceId: 0n }]),
          (e) => Effect.sync(() => seen.push(textOf(e.payload)))
        )
      )
      yield* ds.sendGroupMessages([mlsMessage(a, "a1"), mlsMessage(b, "b1"), mlsMessage(a, "a2"), mlsMessage(b, "b2")])
      while (seen.length < 2) yield* Effect.sleep("2 millis")
      yield* Effect.sleep("20 millis")
      expect(seen).toEqual(["b1", "b2"])
      // The held topic is still served in full to queries.
      expect((yield* readAll(ds, a)).map((e) => textOf(e.payload))).toEqual(["a1", "a2"])
      yield* ds.sendGroupMessages([mlsMessage(a, "a3")])
      yield* net.faults.releaseTopic(a)
      while (seen.length < 5) yield* Effect.sleep("2 millis")
      expect(seen.slice(2)).toEqual(["a1", "a2", "a3"])
    })))

  it.live("healAll releases paused subscribers and held topics", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* make
      const alice = newInstallationKeys()
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
      yield* net.ds.sendGroupMessages([mlsMessage(groupId, "m1"), mlsMessage(groupId, "m2")])
      const got = Chunk.toReadonlyArray(yield* Fiber.join(seen).pipe(Effect.timeout("5 seconds")))
      expect(got.map((e) => textOf(e.payload))).toEqual(["m1", "m2"])
      expect((yield* net.faults.stats).duplicated).toBe(0)
    })))
})

describe("a lying delivery service", () => {
  it.scoped("answering every welcome query with an empty page that points on does not hold a sync forever", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const bob = yield* net.client("bob")
      let asked = 0
      const alice = yield* net.client("alice", {
        wrapDelivery: (honest) => ({
          ...honest,
          // Past 50 questions the loop would go on forever (without yielding): end it as a failure.
          queryWelcomeMessages: (query) =>
            ++asked > 50 ? Effect.dieMessage("asked for the same page 50 times") : Effect.succeed(new QueryPage([], query.afterSequenceId))
        })
      })
      yield* bob.createGroup([alice.inboxId])
      // The sync ends (asking again next time) instead of asking the same page forever.
      asked = 0
      yield* alice.syncAll
      expect(asked).toBe(1)
      expect(yield* alice.conversations()).toEqual([])
    }))

  it.scoped("substituteKeyPackages answers with another installation's key package, then tells the truth again", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, mallory] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("mallory")])
      const lying = yield* FaultyDeliveryService.make(net.delivery)
      const truth = yield* lying.service.fetchKeyPackages([bob.installationId, mallory.installationId])
      yield* lying.faults.substituteKeyPackages(1)
      const [lie] = yield* lying.service.fetchKeyPackages([bob.installationId])
      expect(lie!.installationId).toBe(bob.installationId)
      expect(lie!.keyPackage).toEqual(truth[1]!.keyPackage)
      expect((yield* lying.faults.stats).substituted).toBe(1)
      const [again] = yield* lying.service.fetchKeyPackages([bob.installationId])
      expect(again!.keyPackage).toEqual(truth[0]!.keyPackage)
      expect(alice.inboxId).not.toBe(bob.inboxId)
    }))
})
