/**
 * The conformance suite of the `DeliveryService` port: what every delivery service (memory,
 * SQLite or Postgres store, over the network) must do alike. Register it from a test file:
 *
 * ```ts
 * deliveryConformance("memory", DeliveryService.layerMemory)
 * deliveryConformance("sqlite", storeOnSqlite, { verifiesKeyPackages: true, maxIdentityUpdates: 8 })
 * ```
 *
 * The layer is built once for the suite and shared by its tests; every test works on fresh
 * random groups, installations and inboxes, so a store shared with other suites is fine. The
 * tests run on the real clock (subscriptions wait for real publishers).
 */
import { expect, layer as layerSuite } from "@effect/vitest"
import { ed25519 } from "@noble/curves/ed25519.js"
import { Chunk, Duration, Effect, Fiber, Layer, Stream } from "effect"
import { toHex, utf8 } from "../../src/domain/Bytes.ts"
import { hashOfUpdate, inboxIdOf, installationIdOf, signUpdate } from "../../src/domain/IdentityLog.ts"
import type { GroupId, InboxId, InstallationId } from "../../src/domain/Ids.ts"
import {
  type GroupMessageEnvelope,
  GroupMessageInput,
  type IdentityAction,
  type IdentityUpdate,
  KeyPackageUpload,
  WelcomeMessageInput
} from "../../src/domain/Wire.ts"
import { DeliveryService } from "../../src/index.ts"
import { MlsCrypto } from "../../src/index.ts"

export interface ConformanceOptions {
  /** The layer's payload limit in bytes (default 1 MiB, the memory layer's default). */
  readonly maxPayloadBytes?: number
  /** The layer's page size (default 100). */
  readonly pageSize?: number
  /** The layer's batch limit (default 50). */
  readonly maxBatch?: number
  /**
   * Whether the layer verifies key packages (decodes them, checks signatures and that they
   * name the uploading installation). The memory layer does not; a server must.
   */
  readonly verifiesKeyPackages?: boolean
  /** The layer's cap on an inbox's identity log, if it has one: then it is tested. */
  readonly maxIdentityUpdates?: number
  /** How long building the layer may take. Default 60 seconds. */
  readonly buildTimeout?: Duration.DurationInput
}

// ---- fixtures ----

const randomBytes = (n: number) => crypto.getRandomValues(new Uint8Array(n))
const newGroupId = () => toHex(randomBytes(16)) as GroupId
const message = (groupId: GroupId, text: string) => GroupMessageInput.make({ groupId, payload: utf8(text) })
const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes)
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => BigInt(from + i))

interface Installation {
  readonly id: InstallationId
  readonly signaturePublicKey: string
  /** A genuine, signed MLS key package of this installation (for its inbox). */
  readonly keyPackage: Uint8Array
  /** Another genuine key package of the same installation. */
  readonly freshKeyPackage: Effect.Effect<Uint8Array, unknown, MlsCrypto>
  /** A genuine key package of this installation's keys whose credential names `inboxId`. */
  readonly keyPackageClaiming: (inboxId: InboxId) => Effect.Effect<Uint8Array, unknown, MlsCrypto>
}

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
    add: (installation: Pick<Installation, "id" | "signaturePublicKey">) =>
      next({
        _tag: "AddInstallation",
        installationId: installation.id,
        signaturePublicKey: installation.signaturePublicKey
      }),
    revoke: (installation: Pick<Installation, "id">) =>
      next({ _tag: "RevokeInstallation", installationId: installation.id }),
    /** Signs the next entry with some other key: a forgery. */
    forge: (action: IdentityAction) => next(action, ed25519.utils.randomSecretKey())
  }
}
type Inbox = ReturnType<typeof newInbox>

/** An installation of `inbox` with real MLS keys and a key package naming it. */
const newInstallation = (inbox: Pick<Inbox, "inboxId">) =>
  Effect.gen(function*() {
    const crypto = yield* MlsCrypto
    const keys = yield* crypto.generateSignatureKeyPair
    const id = installationIdOf(keys.publicKey)
    const keyPackageClaiming = (inboxId: InboxId) =>
      Effect.map(crypto.generateKeyPackage({ inboxId, installationId: id }, keys), (bundle) => bundle.publicPackage)
    const freshKeyPackage = keyPackageClaiming(inbox.inboxId)
    const keyPackage = yield* freshKeyPackage
    return {
      id,
      signaturePublicKey: toHex(keys.publicKey),
      keyPackage,
      freshKeyPackage,
      keyPackageClaiming
    } satisfies Installation
  })

/** An installation key without MLS material: enough for identity logs and welcomes. */
const bareInstallation = () => {
  const key = randomBytes(32)
  return { id: installationIdOf(key), signaturePublicKey: toHex(key) }
}

/** An installation id nobody registered (welcomes need no registration). */
const strangerId = () => bareInstallation().id

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

/** Sends many messages to one topic in batches the layer accepts. */
const sendMany = (ds: DeliveryService["Type"], groupId: GroupId, texts: ReadonlyArray<string>, maxBatch: number) =>
  Effect.forEach(
    Array.from({ length: Math.ceil(texts.length / maxBatch) }, (_, i) => texts.slice(i * maxBatch, (i + 1) * maxBatch)),
    (chunk) => ds.sendGroupMessages(chunk.map((t) => message(groupId, t))),
    { discard: true }
  )

const collect = <A, E>(stream: Stream.Stream<A, E>, n: number) =>
  Effect.fork(Effect.map(Stream.runCollect(Stream.take(stream, n)), Chunk.toReadonlyArray))

const joinWithin = <A, E>(fiber: Fiber.Fiber<A, E>, within: Duration.DurationInput = "20 seconds") =>
  Fiber.join(fiber).pipe(
    Effect.timeoutFail({ duration: within, onTimeout: () => new Error(`subscriber did not finish within ${Duration.format(within)}`) })
  )

// ---- the suite ----

export const deliveryConformance = (
  label: string,
  layer: Layer.Layer<DeliveryService, unknown, never>,
  options: ConformanceOptions = {}
): void => {
  const maxPayloadBytes = options.maxPayloadBytes ?? 1024 * 1024
  const pageSize = options.pageSize ?? 100
  const maxBatch = options.maxBatch ?? 50
  const verifiesKeyPackages = options.verifiesKeyPackages ?? false

  layerSuite(Layer.merge(layer, MlsCrypto.layer()), {
    excludeTestServices: true,
    timeout: options.buildTimeout ?? Duration.seconds(60)
  })(`DeliveryService conformance: ${label}`, (it) => {
    // ---- ordering ----

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
          const at = stored[Number(envelope.sequenceId) - 1]!
          expect(text(at.payload)).toBe(text(envelope.payload))
          expect(at.serverTimeNs).toBe(envelope.serverTimeNs)
        }
        // Each publisher's own messages landed in the order it sent them.
        for (let p = 0; p < 20; p++) {
          const mine = stored.filter((e) => text(e.payload).startsWith(`p${p}-`)).map((e) => text(e.payload))
          expect(mine).toEqual(Array.from({ length: 5 }, (_, i) => `p${p}-m${i}`))
        }
        // Server timestamps never go backwards along the topic.
        for (let i = 1; i < stored.length; i++) {
          expect(stored[i]!.serverTimeNs >= stored[i - 1]!.serverTimeNs).toBe(true)
        }
      }))

    it.effect("a subscriber started mid-stream sees every later message exactly once, in order", () =>
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
                    Effect.zipLeft(Effect.sleep("1 millis"))
                  )
              )),
            { concurrency: "unbounded" }
          )
        )
        // Let the live publishing get going before subscribing.
        while ((yield* readAll(ds, groupId)).length < 30) yield* Effect.sleep("1 millis")
        const total = 10 + 5 * 20
        const k = 7n
        const fromStart = yield* collect(ds.subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]), total)
        const fromK = yield* collect(ds.subscribeGroupMessages([{ groupId, afterSequenceId: k }]), total - Number(k))
        // The subscribers really did start while the topic was still growing.
        const atSubscription = (yield* readAll(ds, groupId)).length
        expect(atSubscription).toBeLessThan(total)
        yield* Fiber.join(publishers)

        const stored = yield* readAll(ds, groupId)
        expect(stored.map((e) => e.sequenceId)).toEqual(range(1, total))
        const seenFromStart = yield* joinWithin(fromStart)
        const seenFromK = yield* joinWithin(fromK)
        expect(seenFromStart.map((e) => e.sequenceId)).toEqual(range(1, total))
        expect(seenFromStart.map((e) => text(e.payload))).toEqual(stored.map((e) => text(e.payload)))
        expect(seenFromK.map((e) => e.sequenceId)).toEqual(range(Number(k) + 1, total))
        // Only the subscribed topic comes through.
        expect(seenFromStart.every((e) => e.groupId === groupId)).toBe(true)
      }))

    it.effect("a subscription over several topics keeps each topic in order", () =>
      Effect.gen(function*() {
        const ds = yield* DeliveryService
        const [a, b] = [newGroupId(), newGroupId()]
        yield* ds.sendGroupMessages([message(a, "a1"), message(b, "b1"), message(a, "a2")])
        const collected = yield* collect(
          ds.subscribeGroupMessages([
            { groupId: a, afterSequenceId: 1n },
            { groupId: b, afterSequenceId: 0n },
            // A second filter on a topic follows it from the lower cursor, once.
            { groupId: a, afterSequenceId: 2n }
          ]),
          4
        )
        yield* ds.sendGroupMessages([message(b, "b2"), message(a, "a3")])
        const seen = yield* joinWithin(collected)
        expect(seen.filter((e) => e.groupId === a).map((e) => text(e.payload))).toEqual(["a2", "a3"])
        expect(seen.filter((e) => e.groupId === b).map((e) => text(e.payload))).toEqual(["b1", "b2"])
      }))

    it.effect("a subscription with no filters ends at once", () =>
      Effect.gen(function*() {
        const ds = yield* DeliveryService
        const seen = yield* Stream.runCollect(ds.subscribeGroupMessages([])).pipe(Effect.timeout("5 seconds"))
        expect(Chunk.size(seen)).toBe(0)
      }))

    // ---- welcomes ----

    it.effect("welcomes are ordered per installation, replay from a cursor and go live", () =>
      Effect.gen(function*() {
        const ds = yield* DeliveryService
        const [alice, bob] = [strangerId(), strangerId()]
        const sent = yield* ds.sendWelcomeMessages([
          WelcomeMessageInput.make({ installationId: alice, payload: utf8("w-a1") }),
          WelcomeMessageInput.make({ installationId: bob, payload: utf8("w-b1") }),
          WelcomeMessageInput.make({ installationId: alice, payload: utf8("w-a2") })
        ])
        expect(sent.map((e) => e.sequenceId)).toEqual([1n, 1n, 2n])
        expect(sent.map((e) => e.installationId)).toEqual([alice, bob, alice])
        const page = yield* ds.queryWelcomeMessages({ installationId: alice, afterSequenceId: 1n })
        expect(page.items.map((e) => text(e.payload))).toEqual(["w-a2"])
        expect(page.next).toBeUndefined()
        const limited = yield* ds.queryWelcomeMessages({ installationId: alice, afterSequenceId: 0n, limit: 1 })
        expect(limited.items.map((e) => text(e.payload))).toEqual(["w-a1"])
        expect(limited.next).toBe(1n)

        const replayed = yield* collect(ds.subscribeWelcomeMessages({ installationId: alice, afterSequenceId: 0n }), 3)
        yield* ds.sendWelcomeMessages([WelcomeMessageInput.make({ installationId: alice, payload: utf8("w-a3") })])
        const seen = yield* joinWithin(replayed)
        expect(seen.map((e) => [e.sequenceId, text(e.payload)])).toEqual([[1n, "w-a1"], [2n, "w-a2"], [3n, "w-a3"]])
        expect(seen.every((e) => e.installationId === alice)).toBe(true)
        // Identical welcomes are stored once, like group messages.
        const [again] = yield* ds.sendWelcomeMessages([
          WelcomeMessageInput.make({ installationId: alice, payload: utf8("w-a2") })
        ])
        expect(again!.sequenceId).toBe(2n)
      }))

    // ---- queries ----

    it.effect("paging returns everything in order; limit is honoured and capped by the page size", () =>
      Effect.gen(function*() {
        const ds = yield* DeliveryService
        const groupId = newGroupId()
        const count = 2 * pageSize + 1
        yield* sendMany(ds, groupId, Array.from({ length: count }, (_, i) => `m${i}`), maxBatch)

        const first = yield* ds.queryGroupMessages({ groupId, afterSequenceId: 0n })
        expect(first.items.map((e) => e.sequenceId)).toEqual(range(1, pageSize))
        expect(first.next).toBe(BigInt(pageSize))
        const capped = yield* ds.queryGroupMessages({ groupId, afterSequenceId: 0n, limit: pageSize * 10 })
        expect(capped.items).toHaveLength(pageSize)
        const small = yield* ds.queryGroupMessages({ groupId, afterSequenceId: 8n, limit: 1 })
        expect(small.items.map((e) => e.sequenceId)).toEqual([9n])
        expect(small.next).toBe(9n)
        const last = yield* ds.queryGroupMessages({ groupId, afterSequenceId: BigInt(count - 1) })
        expect(last.items.map((e) => e.sequenceId)).toEqual([BigInt(count)])
        expect(last.next).toBeUndefined()
        const beyond = yield* ds.queryGroupMessages({ groupId, afterSequenceId: BigInt(count) + 1000n })
        expect(beyond.items).toEqual([])
        expect(beyond.next).toBeUndefined()
        const huge = yield* ds.queryGroupMessages({ groupId, afterSequenceId: 2n ** 70n })
        expect(huge.items).toEqual([])

        const all = yield* readAll(ds, groupId)
        expect(all.map((e) => text(e.payload))).toEqual(Array.from({ length: count }, (_, i) => `m${i}`))
        expect(all.map((e) => e.sequenceId)).toEqual(range(1, count))
      }))

    it.effect("a full last page points on; the next page is empty and ends", () =>
      Effect.gen(function*() {
        const ds = yield* DeliveryService
        const groupId = newGroupId()
        yield* sendMany(ds, groupId, Array.from({ length: 6 }, (_, i) => `m${i}`), maxBatch)
        const second = yield* ds.queryGroupMessages({ groupId, afterSequenceId: 3n, limit: 3 })
        expect(second.next).toBe(6n)
        const third = yield* ds.queryGroupMessages({ groupId, afterSequenceId: 6n, limit: 3 })
        expect(third.items).toEqual([])
        expect(third.next).toBeUndefined()
        const unknown = yield* ds.queryGroupMessages({ groupId: newGroupId(), afterSequenceId: 0n })
        expect(unknown.items).toEqual([])
        expect(unknown.next).toBeUndefined()
      }))

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
        expect(pages[2]!.items.every((e) => e.groupId === a)).toBe(true)
      }))

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
        // Twice in one batch: stored once, both answered with the same envelope.
        const twice = yield* ds.sendGroupMessages([message(groupId, "twin"), message(groupId, "twin")])
        expect(twice.map((e) => e.sequenceId)).toEqual([3n, 3n])
        expect((yield* readAll(ds, groupId)).map((e) => text(e.payload))).toEqual(["same", "different", "twin"])
      }))

    it.effect("a stored payload does not change when the sender reuses its buffer", () =>
      Effect.gen(function*() {
        const ds = yield* DeliveryService
        const groupId = newGroupId()
        const buffer = utf8("original")
        const [returned] = yield* ds.sendGroupMessages([GroupMessageInput.make({ groupId, payload: buffer })])
        buffer.fill(0)
        const [stored] = yield* readAll(ds, groupId)
        expect(text(stored!.payload)).toBe("original")
        expect(text(returned!.payload)).toBe("original")
      }))

    // ---- garbage in ----

    it.effect("payloads, batches, cursors and ids are checked, and a send is all or nothing", () =>
      Effect.gen(function*() {
        const ds = yield* DeliveryService
        const groupId = newGroupId()
        const oversizeText = "x".repeat(maxPayloadBytes + 1)

        const oversize = yield* Effect.flip(ds.sendGroupMessages([message(groupId, oversizeText)]))
        expect(oversize).toMatchObject({ _tag: "DeliveryError", reason: "PayloadTooLarge", retryable: false })

        const empty = yield* Effect.flip(
          ds.sendGroupMessages([GroupMessageInput.make({ groupId, payload: new Uint8Array(0) })])
        )
        expect(empty).toMatchObject({ _tag: "DeliveryError", reason: "InvalidRequest", retryable: false })

        const noMessages = yield* Effect.flip(ds.sendGroupMessages([]))
        expect(noMessages).toMatchObject({ _tag: "DeliveryError", reason: "InvalidRequest" })

        const tooMany = yield* Effect.flip(
          ds.sendGroupMessages(Array.from({ length: maxBatch + 1 }, (_, i) => message(groupId, `m${i}`)))
        )
        expect(tooMany).toMatchObject({ _tag: "DeliveryError", reason: "BatchTooLarge", retryable: false })
        const tooManyQueries = yield* Effect.flip(
          ds.batchQueryGroupMessages(Array.from({ length: maxBatch + 1 }, () => ({ groupId, afterSequenceId: 0n })))
        )
        expect(tooManyQueries).toMatchObject({ _tag: "DeliveryError", reason: "BatchTooLarge" })

        // A good message next to a bad one: neither is stored.
        const mixed = yield* Effect.flip(
          ds.sendGroupMessages([message(groupId, "fine"), message(groupId, oversizeText)])
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
          ds.queryWelcomeMessages({ installationId: strangerId(), afterSequenceId: -1n })
        )
        expect(negativeWelcome).toMatchObject({ reason: "InvalidRequest" })
        const badStream = yield* Effect.flip(
          Stream.runCollect(ds.subscribeGroupMessages([{ groupId, afterSequenceId: -1n }]))
        )
        expect(badStream).toMatchObject({ _tag: "DeliveryError", reason: "InvalidRequest" })
        const badWelcomeStream = yield* Effect.flip(
          Stream.runCollect(ds.subscribeWelcomeMessages({ installationId: strangerId(), afterSequenceId: -1n }))
        )
        expect(badWelcomeStream).toMatchObject({ reason: "InvalidRequest" })
        const oversizeWelcome = yield* Effect.flip(
          ds.sendWelcomeMessages([WelcomeMessageInput.make({ installationId: strangerId(), payload: utf8(oversizeText) })])
        )
        expect(oversizeWelcome).toMatchObject({ reason: "PayloadTooLarge" })
        const badAfter = yield* Effect.flip(ds.getIdentityUpdates([{ inboxId: newInbox().inboxId, afterSequence: -1 }]))
        expect(badAfter).toMatchObject({ _tag: "DeliveryError", reason: "InvalidRequest" })

        // As if decoded off a wire without validation: the constructor check is skipped.
        const malformed = new GroupMessageInput({ groupId: "not-hex" as GroupId, payload: utf8("m") }, true)
        const badGroup = yield* Effect.flip(ds.sendGroupMessages([malformed]))
        expect(badGroup).toMatchObject({ reason: "InvalidRequest" })
        const badInstallation = yield* Effect.flip(ds.fetchKeyPackages(["nope" as InstallationId]))
        expect(badInstallation).toMatchObject({ reason: "InvalidRequest" })
      }))

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
        const installation = yield* newInstallation(inbox)
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

        // An entry that skips one: signed correctly, but it does not follow the head.
        const skipper = newInbox()
        yield* ds.publishIdentityUpdate(skipper.create())
        skipper.add(yield* newInstallation(skipper)) // never published
        const gap = yield* Effect.flip(ds.publishIdentityUpdate(skipper.add(yield* newInstallation(skipper))))
        expect(gap._tag).toBe("InvalidIdentityUpdate")

        // Nothing forged made it into the log.
        const [updates] = yield* ds.getIdentityUpdates([{ inboxId: inbox.inboxId, afterSequence: 0 }])
        expect(updates!.updates.map((e) => e.update)).toEqual([create])
        const [none] = yield* ds.getIdentityUpdates([{ inboxId: forgedInbox.inboxId, afterSequence: 0 }])
        expect(none!.updates).toEqual([])
      }))

    it.effect("the same update published concurrently is stored once", () =>
      Effect.gen(function*() {
        const ds = yield* DeliveryService
        const inbox = newInbox()
        const create = inbox.create()
        const outcomes = yield* Effect.all(
          Array.from({ length: 5 }, () => Effect.either(ds.publishIdentityUpdate(create))),
          { concurrency: "unbounded" }
        )
        expect(outcomes.filter((o) => o._tag === "Right")).toHaveLength(1)
        for (const o of outcomes) if (o._tag === "Left") expect(o.left._tag).toBe("InvalidIdentityUpdate")
        const add = inbox.add(yield* newInstallation(inbox))
        const adds = yield* Effect.all(
          Array.from({ length: 5 }, () => Effect.either(ds.publishIdentityUpdate(add))),
          { concurrency: "unbounded" }
        )
        expect(adds.filter((o) => o._tag === "Right")).toHaveLength(1)
        const [log] = yield* ds.getIdentityUpdates([{ inboxId: inbox.inboxId, afterSequence: 0 }])
        expect(log!.updates.map((e) => e.update.sequence)).toEqual([1, 2])
      }))

    it.effect("key packages are accepted only from registered installations", () =>
      Effect.gen(function*() {
        const ds = yield* DeliveryService
        const inbox = newInbox()
        const stranger = yield* newInstallation(inbox)
        // Not registered at all (the inbox does not even exist).
        const refused = yield* Effect.flip(
          ds.uploadKeyPackage(KeyPackageUpload.make({ installationId: stranger.id, keyPackage: stranger.keyPackage }))
        )
        expect(refused).toMatchObject({ _tag: "DeliveryError", reason: "InvalidKeyPackage", retryable: false })
        // The inbox exists, the installation is not one of its installations.
        yield* ds.publishIdentityUpdate(inbox.create())
        const stillRefused = yield* Effect.flip(
          ds.uploadKeyPackage(KeyPackageUpload.make({ installationId: stranger.id, keyPackage: stranger.keyPackage }))
        )
        expect(stillRefused).toMatchObject({ reason: "InvalidKeyPackage" })
        const [fetched] = yield* ds.fetchKeyPackages([stranger.id])
        expect(fetched).toEqual({ installationId: stranger.id, keyPackage: undefined })
        const oversize = yield* Effect.flip(
          ds.uploadKeyPackage(
            KeyPackageUpload.make({ installationId: stranger.id, keyPackage: new Uint8Array(maxPayloadBytes + 1) })
          )
        )
        expect(oversize).toMatchObject({ reason: "PayloadTooLarge" })
        expect(yield* ds.fetchKeyPackages([])).toEqual([])
      }))

    if (verifiesKeyPackages) {
      it.effect("a key package that does not verify, or names another installation, is refused", () =>
        Effect.gen(function*() {
          const ds = yield* DeliveryService
          const inbox = newInbox()
          const [mine, other] = [yield* newInstallation(inbox), yield* newInstallation(inbox)]
          yield* ds.publishIdentityUpdate(inbox.create())
          yield* ds.publishIdentityUpdate(inbox.add(mine))
          yield* ds.publishIdentityUpdate(inbox.add(other))

          // One flipped bit in the signature at the end of the package.
          const tampered = mine.keyPackage.slice()
          tampered[tampered.length - 1]! ^= 1
          const badSignature = yield* Effect.flip(
            ds.uploadKeyPackage(KeyPackageUpload.make({ installationId: mine.id, keyPackage: tampered }))
          )
          expect(badSignature).toMatchObject({ _tag: "DeliveryError", reason: "InvalidKeyPackage", retryable: false })

          const garbage = yield* Effect.flip(
            ds.uploadKeyPackage(KeyPackageUpload.make({ installationId: mine.id, keyPackage: utf8("not a key package") }))
          )
          expect(garbage).toMatchObject({ reason: "InvalidKeyPackage" })

          // A genuine package of another installation, uploaded as this one's.
          const misfiled = yield* Effect.flip(
            ds.uploadKeyPackage(KeyPackageUpload.make({ installationId: mine.id, keyPackage: other.keyPackage }))
          )
          expect(misfiled).toMatchObject({ reason: "InvalidKeyPackage" })

          // A genuine package of this installation whose credential claims another inbox.
          const claimingOther = yield* mine.keyPackageClaiming(newInbox().inboxId)
          const crossed = yield* Effect.flip(
            ds.uploadKeyPackage(KeyPackageUpload.make({ installationId: mine.id, keyPackage: claimingOther }))
          )
          expect(crossed).toMatchObject({ reason: "InvalidKeyPackage" })

          expect((yield* ds.fetchKeyPackages([mine.id]))[0]!.keyPackage).toBeUndefined()
          yield* ds.uploadKeyPackage(KeyPackageUpload.make({ installationId: mine.id, keyPackage: mine.keyPackage }))
          expect((yield* ds.fetchKeyPackages([mine.id]))[0]!.keyPackage).toEqual(mine.keyPackage)
        }))
    }

    it.effect("an installation cannot be claimed by a second inbox", () =>
      Effect.gen(function*() {
        const ds = yield* DeliveryService
        const [owner, squatter] = [newInbox(), newInbox()]
        const installation = yield* newInstallation(owner)
        yield* ds.publishIdentityUpdate(owner.create())
        yield* ds.publishIdentityUpdate(owner.add(installation))
        yield* ds.publishIdentityUpdate(squatter.create())
        const claimed = yield* Effect.flip(ds.publishIdentityUpdate(squatter.add(installation)))
        expect(claimed._tag).toBe("InvalidIdentityUpdate")
        const [log] = yield* ds.getIdentityUpdates([{ inboxId: squatter.inboxId, afterSequence: 0 }])
        expect(log!.updates).toHaveLength(1)
      }))

    // ---- identity ----

    it.effect("create, add and revoke: the log is served and the revoked key package is gone", () =>
      Effect.gen(function*() {
        const ds = yield* DeliveryService
        const inbox = newInbox()
        const laptop = yield* newInstallation(inbox)
        const phone = yield* newInstallation(inbox)
        const published = [
          yield* ds.publishIdentityUpdate(inbox.create()),
          yield* ds.publishIdentityUpdate(inbox.add(laptop)),
          yield* ds.publishIdentityUpdate(inbox.add(phone))
        ]
        yield* ds.uploadKeyPackage(KeyPackageUpload.make({ installationId: laptop.id, keyPackage: laptop.keyPackage }))
        // A new upload replaces the previous one: one key package per installation is kept.
        const laptopNext = yield* laptop.freshKeyPackage
        yield* ds.uploadKeyPackage(KeyPackageUpload.make({ installationId: laptop.id, keyPackage: laptopNext }))
        yield* ds.uploadKeyPackage(KeyPackageUpload.make({ installationId: phone.id, keyPackage: phone.keyPackage }))
        const before = yield* ds.fetchKeyPackages([laptop.id, phone.id, laptop.id])
        expect(before.map((k) => k.installationId)).toEqual([laptop.id, phone.id, laptop.id])
        expect(before.map((k) => k.keyPackage)).toEqual([laptopNext, phone.keyPackage, laptopNext])

        published.push(yield* ds.publishIdentityUpdate(inbox.revoke(laptop)))
        // Server sequence ids increase along the log.
        for (let i = 1; i < published.length; i++) {
          expect(published[i]!.sequenceId > published[i - 1]!.sequenceId).toBe(true)
        }

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
        expect(after.map((k) => k.keyPackage)).toEqual([undefined, phone.keyPackage])
        const refused = yield* Effect.flip(
          ds.uploadKeyPackage(KeyPackageUpload.make({ installationId: laptop.id, keyPackage: laptop.keyPackage }))
        )
        expect(refused).toMatchObject({ reason: "InvalidKeyPackage" })
        // A revoked installation never comes back.
        const back = yield* Effect.flip(ds.publishIdentityUpdate(inbox.add(laptop)))
        expect(back._tag).toBe("InvalidIdentityUpdate")
      }))

    const maxIdentityUpdates = options.maxIdentityUpdates
    if (maxIdentityUpdates !== undefined) {
      it.effect(`an identity log holds at most ${maxIdentityUpdates} entries`, () =>
        Effect.gen(function*() {
          const ds = yield* DeliveryService
          const inbox = newInbox()
          yield* ds.publishIdentityUpdate(inbox.create())
          for (let i = 1; i < maxIdentityUpdates; i++) yield* ds.publishIdentityUpdate(inbox.add(bareInstallation()))
          const full = yield* Effect.flip(ds.publishIdentityUpdate(inbox.add(bareInstallation())))
          expect(full).toMatchObject({ _tag: "DeliveryError", reason: "LimitExceeded", retryable: false })
          const [log] = yield* ds.getIdentityUpdates([{ inboxId: inbox.inboxId, afterSequence: 0 }])
          expect(log!.updates).toHaveLength(maxIdentityUpdates)
        }))
    }
  })
}
