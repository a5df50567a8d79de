import { describe, expect, it } from "@effect/vitest"
import { ed25519 } from "@noble/curves/ed25519.js"
import { Chunk, Effect, Fiber, Stream } from "effect"
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
import { make } from "../src/layers/MemoryDeliveryService.ts"
import { DeliveryService } from "../src/services/DeliveryService.ts"

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

describe("ordering", () => {
  it.effect("20 concurrent publishers get gap-free increasing ids, each payload once", () =>
    Effect.gen(function*() {
      const ds = yield* DeliveryService
      const groupId = newGroupId()
      const publishers = Array.from({ length: 20 }, (_, p) =>
        Effect.forEach(
          Array.from({ length: 5 }, (_, i) => `p${p}-m${i}`),
          (body) => ds.sendGroupMessages([message(groupId, body)]).pipe(Effect.zipLeft(Effect.yieldNow()))
        ))
      const returned = (yield* Effect.all(publishers, { concurrency: "unbounded" })).flat(2)

      const stored = yield* readAll(ds, groupId)
      expect(stored.map((e) => e.sequenceId)).toEqual(range(1, 100))
      expect(new Set(stored.map((e) => text(e.payload))).size).toBe(100)
      // What each publisher was told matches what the topic holds.
      for (const envelope of returned) {
        expect(text(stored[Number(envelope.sequenceId) - 1]!.payload)).toBe(text(envelope.payload))
      }
      // Each publisher's own messages landed in the order it sent them.
      for (let p = 0; p < 20; p++) {
        const mine = stored.filter((e) => text(e.payload).startsWith(`p${p}-`)).map((e) => text(e.payload))
        expect(mine).toEqual(Array.from({ length: 5 }, (_, i) => `p${p}-m${i}`))
      }
    }).pipe(Effect.provide(DeliveryService.layerMemory)))

  it.live("a subscriber started mid-stream sees every later message exactly once, in order", () =>
    Effect.gen(function*() {
      const ds = yield* DeliveryService
      const groupId = newGroupId()
      const other = newGroupId()
      for (let i = 0; i < 10; i++) yield* ds.sendGroupMessages([message(groupId, `early-${i}`)])

      // Publishers keep going while the subscribers start.
      const publishers = yield* Effect.fork(
        Effect.all(
          Array.from({ length: 5 }, (_, p) =>
            Effect.forEach(
              Array.from({ length: 20 }, (_, i) => i),
              (i) =>
                ds.sendGroupMessages([message(groupId, `live-${p}-${i}`), message(other, `other-${p}-${i}`)]).pipe(
                  Effect.zipLeft(Effect.yieldNow())
                )
            )),
          { concurrency: "unbounded" }
        )
      )
      // Let the live publishing get going before subscribing.
      while ((yield* readAll(ds, groupId)).length < 30) yield* Effect.yieldNow()
      const total = 10 + 5 * 20
      const k = 7n
      const fromStart = yield* Effect.fork(
        Stream.runCollect(Stream.take(ds.subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]), total))
      )
      yield* Effect.yieldNow()
      const fromK = yield* Effect.fork(
        Stream.runCollect(
          Stream.take(ds.subscribeGroupMessages([{ groupId, afterSequenceId: k }]), total - Number(k))
        )
      )
      // The subscribers really did start while the topic was still growing.
      const atSubscription = (yield* readAll(ds, groupId)).length
      expect(atSubscription).toBeLessThan(total)
      yield* Fiber.join(publishers)

      const stored = yield* readAll(ds, groupId)
      expect(stored.map((e) => e.sequenceId)).toEqual(range(1, total))
      const seenFromStart = Chunk.toReadonlyArray(yield* Fiber.join(fromStart).pipe(Effect.timeout("5 seconds")))
      const seenFromK = Chunk.toReadonlyArray(yield* Fiber.join(fromK).pipe(Effect.timeout("5 seconds")))
      expect(seenFromStart.map((e) => e.sequenceId)).toEqual(range(1, total))
      expect(seenFromStart.map((e) => text(e.payload))).toEqual(stored.map((e) => text(e.payload)))
      expect(seenFromK.map((e) => e.sequenceId)).toEqual(range(Number(k) + 1, total))
      // Only the subscribed topic comes through.
      expect(seenFromStart.every((e) => e.groupId === groupId)).toBe(true)
    }).pipe(Effect.provide(DeliveryService.layerMemory)))

  it.live("a subscription over several topics keeps each topic in order", () =>
    Effect.gen(function*() {
      const ds = yield* DeliveryService
      const [a, b] = [newGroupId(), newGroupId()]
      yield* ds.sendGroupMessages([message(a, "a1"), message(b, "b1"), message(a, "a2")])
      const collected = yield* Effect.fork(
        Stream.runCollect(
          Stream.take(
            ds.subscribeGroupMessages([{ groupId: a, afterSequenceId: 1n }, { groupId: b, afterSequenceId: 0n }]),
            4
          )
        )
      )
      yield* ds.sendGroupMessages([message(b, "b2"), message(a, "a3")])
      const seen = Chunk.toReadonlyArray(yield* Fiber.join(collected).pipe(Effect.timeout("5 seconds")))
      expect(seen.filter((e) => e.groupId === a).map((e) => text(e.payload))).toEqual(["a2", "a3"])
      expect(seen.filter((e) => e.groupId === b).map((e) => text(e.payload))).toEqual(["b1", "b2"])
    }).pipe(Effect.provide(DeliveryService.layerMemory)))

  it.effect("welcomes are ordered per installation and replay from a cursor", () =>
    Effect.gen(function*() {
      const ds = yield* DeliveryService
      const [alice, bob] = [newInstallation(), newInstallation()]
      const sent = yield* ds.sendWelcomeMessages([
        WelcomeMessageInput.make({ installationId: alice.id, payload: utf8("w-a1") }),
        WelcomeMessageInput.make({ installationId: bob.id, payload: utf8("w-b1") }),
        WelcomeMessageInput.make({ installationId: alice.id, payload: utf8("w-a2") })
      ])
      expect(sent.map((e) => e.sequenceId)).toEqual([1n, 1n, 2n])
      const page = yield* ds.queryWelcomeMessages({ installationId: alice.id, afterSequenceId: 1n })
      expect(page.items.map((e) => text(e.payload))).toEqual(["w-a2"])
      expect(page.next).toBeUndefined()
      const replayed = yield* Stream.runCollect(
        Stream.take(ds.subscribeWelcomeMessages({ installationId: alice.id, afterSequenceId: 0n }), 2)
      )
      expect(Chunk.toReadonlyArray(replayed).map((e) => text(e.payload))).toEqual(["w-a1", "w-a2"])
    }).pipe(Effect.provide(DeliveryService.layerMemory)))
})

// ---- queries ----

describe("queries", () => {
  it.effect("paging with a small page size returns everything in order", () =>
    Effect.gen(function*() {
      const ds = yield* DeliveryService
      const groupId = newGroupId()
      yield* ds.sendGroupMessages(Array.from({ length: 10 }, (_, i) => message(groupId, `m${i}`)))

      const first = yield* ds.queryGroupMessages({ groupId, afterSequenceId: 0n })
      expect(first.items.map((e) => e.sequenceId)).toEqual([1n, 2n, 3n])
      expect(first.next).toBe(3n)
      // `limit` is capped by the page size, and honoured below it.
      const capped = yield* ds.queryGroupMessages({ groupId, afterSequenceId: 0n, limit: 50 })
      expect(capped.items).toHaveLength(3)
      const small = yield* ds.queryGroupMessages({ groupId, afterSequenceId: 8n, limit: 1 })
      expect(small.items.map((e) => e.sequenceId)).toEqual([9n])
      expect(small.next).toBe(9n)
      const last = yield* ds.queryGroupMessages({ groupId, afterSequenceId: 9n })
      expect(last.items.map((e) => e.sequenceId)).toEqual([10n])
      expect(last.next).toBeUndefined()
      const beyond = yield* ds.queryGroupMessages({ groupId, afterSequenceId: 1000n })
      expect(beyond.items).toEqual([])

      const all = yield* readAll(ds, groupId)
      expect(all.map((e) => text(e.payload))).toEqual(Array.from({ length: 10 }, (_, i) => `m${i}`))
      expect(all.map((e) => e.sequenceId)).toEqual(range(1, 10))
    }).pipe(Effect.provide(DeliveryService.layerMemoryWith({ pageSize: 3 }))))

  it.effect("a full last page points on; the next page is empty and ends", () =>
    Effect.gen(function*() {
      const ds = yield* DeliveryService
      const groupId = newGroupId()
      yield* ds.sendGroupMessages(Array.from({ length: 6 }, (_, i) => message(groupId, `m${i}`)))
      const second = yield* ds.queryGroupMessages({ groupId, afterSequenceId: 3n })
      expect(second.next).toBe(6n)
      const third = yield* ds.queryGroupMessages({ groupId, afterSequenceId: 6n })
      expect(third.items).toEqual([])
      expect(third.next).toBeUndefined()
      expect(yield* readAll(ds, groupId)).toHaveLength(6)
    }).pipe(Effect.provide(DeliveryService.layerMemoryWith({ pageSize: 3 }))))

  it.effect("batch query returns one page per topic in request order", () =>
    Effect.gen(function*() {
      const ds = yield* DeliveryService
      const [a, b, c] = [newGroupId(), newGroupId(), newGroupId()]
      yield* ds.sendGroupMessages([
        ...Array.from({ length: 5 }, (_, i) => message(a, `a${i}`)),
        ...Array.from({ length: 2 }, (_, i) => message(b, `b${i}`))
      ])
      const pages = yield* ds.batchQueryGroupMessages([
        { groupId: b, afterSequenceId: 0n },
        { groupId: c, afterSequenceId: 0n },
        { groupId: a, afterSequenceId: 1n, limit: 2 }
      ])
      expect(pages.map((p) => p.items.map((e) => text(e.payload)))).toEqual([["b0", "b1"], [], ["a1", "a2"]])
      expect(pages.map((p) => p.next)).toEqual([undefined, undefined, 3n])
    }).pipe(Effect.provide(DeliveryService.layerMemory)))

  it.effect("an identical payload published twice is stored once", () =>
    Effect.gen(function*() {
      const ds = yield* DeliveryService
      const [groupId, other] = [newGroupId(), newGroupId()]
      const [first] = yield* ds.sendGroupMessages([message(groupId, "same")])
      const [again] = yield* ds.sendGroupMessages([message(groupId, "same")])
      expect(again!.sequenceId).toBe(first!.sequenceId)
      expect(again!.serverTimeNs).toBe(first!.serverTimeNs)
      const [next] = yield* ds.sendGroupMessages([message(groupId, "different")])
      expect(next!.sequenceId).toBe(2n)
      // Another topic is another topic.
      const [elsewhere] = yield* ds.sendGroupMessages([message(other, "same")])
      expect(elsewhere!.sequenceId).toBe(1n)
      expect(yield* readAll(ds, groupId)).toHaveLength(2)
    }).pipe(Effect.provide(DeliveryService.layerMemory)))

  it.effect("a stored payload does not change when the sender reuses its buffer", () =>
    Effect.gen(function*() {
      const ds = yield* DeliveryService
      const groupId = newGroupId()
      const buffer = utf8("original")
      yield* ds.sendGroupMessages([GroupMessageInput.make({ groupId, payload: buffer })])
      buffer.fill(0)
      const [stored] = yield* readAll(ds, groupId)
      expect(text(stored!.payload)).toBe("original")
    }).pipe(Effect.provide(DeliveryService.layerMemory)))
})

// ---- garbage in ----

describe("invalid requests", () => {
  it.effect("payloads, batches and cursors are checked, and a send is all or nothing", () =>
    Effect.gen(function*() {
      const ds = yield* DeliveryService
      const groupId = newGroupId()

      const oversize = yield* Effect.flip(ds.sendGroupMessages([message(groupId, "x".repeat(17))]))
      expect(oversize).toMatchObject({ _tag: "DeliveryError", reason: "PayloadTooLarge", retryable: false })

      const empty = yield* Effect.flip(
        ds.sendGroupMessages([GroupMessageInput.make({ groupId, payload: new Uint8Array(0) })])
      )
      expect(empty).toMatchObject({ _tag: "DeliveryError", reason: "InvalidRequest", retryable: false })

      const noMessages = yield* Effect.flip(ds.sendGroupMessages([]))
      expect(noMessages).toMatchObject({ reason: "InvalidRequest" })

      const tooMany = yield* Effect.flip(
        ds.sendGroupMessages(Array.from({ length: 5 }, (_, i) => message(groupId, `m${i}`)))
      )
      expect(tooMany).toMatchObject({ _tag: "DeliveryError", reason: "BatchTooLarge", retryable: false })

      // A good message next to a bad one: neither is stored.
      const mixed = yield* Effect.flip(
        ds.sendGroupMessages([message(groupId, "fine"), message(groupId, "y".repeat(17))])
      )
      expect(mixed).toMatchObject({ reason: "PayloadTooLarge" })
      expect(yield* readAll(ds, groupId)).toEqual([])

      const negative = yield* Effect.flip(ds.queryGroupMessages({ groupId, afterSequenceId: -1n }))
      expect(negative).toMatchObject({ _tag: "DeliveryError", reason: "InvalidRequest" })
      const zeroLimit = yield* Effect.flip(ds.queryGroupMessages({ groupId, afterSequenceId: 0n, limit: 0 }))
      expect(zeroLimit).toMatchObject({ reason: "InvalidRequest" })
      const badBatch = yield* Effect.flip(
        ds.batchQueryGroupMessages([{ groupId, afterSequenceId: 0n }, { groupId, afterSequenceId: -5n }])
      )
      expect(badBatch).toMatchObject({ reason: "InvalidRequest" })
      const negativeWelcome = yield* Effect.flip(
        ds.queryWelcomeMessages({ installationId: newInstallation().id, afterSequenceId: -1n })
      )
      expect(negativeWelcome).toMatchObject({ reason: "InvalidRequest" })
      const badStream = yield* Effect.flip(
        Stream.runCollect(ds.subscribeGroupMessages([{ groupId, afterSequenceId: -1n }]))
      )
      expect(badStream).toMatchObject({ reason: "InvalidRequest" })
      // As if decoded off a wire without validation: the constructor check is skipped.
      const malformed = new GroupMessageInput({ groupId: "not-hex" as GroupId, payload: utf8("m") }, true)
      const badGroup = yield* Effect.flip(ds.sendGroupMessages([malformed]))
      expect(badGroup).toMatchObject({ reason: "InvalidRequest" })
    }).pipe(Effect.provide(DeliveryService.layerMemoryWith({ maxPayloadBytes: 16, maxBatch: 4 }))))

  it.effect("the default batch limit is 50", () =>
    Effect.gen(function*() {
      const ds = yield* DeliveryService
      const groupId = newGroupId()
      const sent = yield* ds.sendGroupMessages(Array.from({ length: 50 }, (_, i) => message(groupId, `m${i}`)))
      expect(sent).toHaveLength(50)
      const tooMany = yield* Effect.flip(
        ds.sendGroupMessages(Array.from({ length: 51 }, (_, i) => message(groupId, `n${i}`)))
      )
      expect(tooMany).toMatchObject({ reason: "BatchTooLarge" })
    }).pipe(Effect.provide(DeliveryService.layerMemory)))

  it.effect("forged, replayed and out-of-order identity updates are rejected", () =>
    Effect.gen(function*() {
      const ds = yield* DeliveryService

      // A CreateInbox signed by someone other than the root key.
      const forgedInbox = newInbox()
      const forgedCreate = yield* Effect.flip(
        ds.publishIdentityUpdate(forgedInbox.forge({ _tag: "CreateInbox", rootPublicKey: "00".repeat(32) }))
      )
      expect(forgedCreate._tag).toBe("InvalidIdentityUpdate")

      const inbox = newInbox()
      const create = inbox.create()
      yield* ds.publishIdentityUpdate(create)
      // An AddInstallation signed with another key.
      const installation = newInstallation()
      const forged = yield* Effect.flip(
        ds.publishIdentityUpdate(
          inbox.forge({
            _tag: "AddInstallation",
            installationId: installation.id,
            signaturePublicKey: installation.signaturePublicKey
          })
        )
      )
      expect(forged).toMatchObject({ _tag: "InvalidIdentityUpdate", inboxId: inbox.inboxId })

      // The same genuine entry twice.
      const replayed = yield* Effect.flip(ds.publishIdentityUpdate(create))
      expect(replayed._tag).toBe("InvalidIdentityUpdate")

      // Nothing forged made it into the log.
      const [updates] = yield* ds.getIdentityUpdates([{ inboxId: inbox.inboxId, afterSequence: 0 }])
      expect(updates!.updates.map((e) => e.update)).toEqual([create])
    }).pipe(Effect.provide(DeliveryService.layerMemory)))

  it.effect("key packages are accepted only from registered installations", () =>
    Effect.gen(function*() {
      const ds = yield* DeliveryService
      const stranger = newInstallation()
      const refused = yield* Effect.flip(
        ds.uploadKeyPackage(KeyPackageUpload.make({ installationId: stranger.id, keyPackage: utf8("kp") }))
      )
      expect(refused).toMatchObject({ _tag: "DeliveryError", reason: "InvalidKeyPackage", retryable: false })
      const [fetched] = yield* ds.fetchKeyPackages([stranger.id])
      expect(fetched).toEqual({ installationId: stranger.id, keyPackage: undefined })
    }).pipe(Effect.provide(DeliveryService.layerMemory)))

  it.effect("an installation cannot be claimed by a second inbox", () =>
    Effect.gen(function*() {
      const ds = yield* DeliveryService
      const [owner, squatter] = [newInbox(), newInbox()]
      const installation = newInstallation()
      yield* ds.publishIdentityUpdate(owner.create())
      yield* ds.publishIdentityUpdate(owner.add(installation))
      yield* ds.publishIdentityUpdate(squatter.create())
      const claimed = yield* Effect.flip(ds.publishIdentityUpdate(squatter.add(installation)))
      expect(claimed._tag).toBe("InvalidIdentityUpdate")
    }).pipe(Effect.provide(DeliveryService.layerMemory)))
})

// ---- identity ----

describe("identity", () => {
  it.effect("create, add and revoke: the log is served and the revoked key package is gone", () =>
    Effect.gen(function*() {
      const ds = yield* DeliveryService
      const inbox = newInbox()
      const [laptop, phone] = [newInstallation(), newInstallation()]
      const published = [
        yield* ds.publishIdentityUpdate(inbox.create()),
        yield* ds.publishIdentityUpdate(inbox.add(laptop)),
        yield* ds.publishIdentityUpdate(inbox.add(phone))
      ]
      yield* ds.uploadKeyPackage(KeyPackageUpload.make({ installationId: laptop.id, keyPackage: utf8("laptop-1") }))
      // A new upload replaces the previous one.
      yield* ds.uploadKeyPackage(KeyPackageUpload.make({ installationId: laptop.id, keyPackage: utf8("laptop-2") }))
      yield* ds.uploadKeyPackage(KeyPackageUpload.make({ installationId: phone.id, keyPackage: utf8("phone-1") }))
      const before = yield* ds.fetchKeyPackages([laptop.id, phone.id])
      expect(before.map((k) => k.keyPackage && text(k.keyPackage))).toEqual(["laptop-2", "phone-1"])

      published.push(yield* ds.publishIdentityUpdate(inbox.revoke(laptop)))
      // Server sequence ids are global and increasing.
      expect(published.map((e) => e.sequenceId)).toEqual([1n, 2n, 3n, 4n])

      const unknown = newInbox()
      const [all, tail, none] = yield* ds.getIdentityUpdates([
        { inboxId: inbox.inboxId, afterSequence: 0 },
        { inboxId: inbox.inboxId, afterSequence: 2 },
        { inboxId: unknown.inboxId, afterSequence: 0 }
      ])
      expect(all!.updates).toEqual(published)
      expect(all!.updates.map((e) => e.update.action._tag)).toEqual([
        "CreateInbox",
        "AddInstallation",
        "AddInstallation",
        "RevokeInstallation"
      ])
      expect(tail!.updates.map((e) => e.update.sequence)).toEqual([3, 4])
      expect(none).toEqual({ inboxId: unknown.inboxId, updates: [] })

      const after = yield* ds.fetchKeyPackages([laptop.id, phone.id])
      expect(after.map((k) => k.installationId)).toEqual([laptop.id, phone.id])
      expect(after.map((k) => k.keyPackage && text(k.keyPackage))).toEqual([undefined, "phone-1"])
      const refused = yield* Effect.flip(
        ds.uploadKeyPackage(KeyPackageUpload.make({ installationId: laptop.id, keyPackage: utf8("laptop-3") }))
      )
      expect(refused).toMatchObject({ reason: "InvalidKeyPackage" })
    }).pipe(Effect.provide(DeliveryService.layerMemory)))
})

// ---- faults ----

describe("faults", () => {
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
