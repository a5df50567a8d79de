/**
 * The conformance suite of the `DeliveryService` port: what every delivery service (memory,
 * SQLite or Postgres store, over the network) must do alike. Register it from a test file:
 *
 * ```ts
 * deliveryConformance("memory", DeliveryService.layerMemory, {
 *   rateLimited: (rateLimit) => DeliveryService.layerMemoryWith({ authentication: { rateLimit } })
 * })
 * deliveryConformance("sqlite", storeOnSqlite, { maxIdentityUpdates: 8 })
 * ```
 *
 * The layer is built once for the suite and shared by its tests; every test works on fresh
 * random groups, installations and inboxes, so a store shared with other suites is fine. The
 * tests run on the real clock (subscriptions wait for real publishers, signed requests carry
 * the real time).
 *
 * The service authenticates writes and welcome reads, so the suite registers one publisher
 * installation when the layer is built and writes through its signed view (`asPublisher`);
 * group payloads are MLS messages of their topic's group (`mlsMessage`, see DeliveryFixtures).
 */
import { expect, layer as layerSuite } from "@effect/vitest"
import { Chunk, Context, Duration, Effect, Fiber, Layer, Stream } from "effect"
import { fromUtf8, utf8 } from "../../src/domain/Bytes.ts"
import type { GroupId, InboxId, InstallationId } from "../../src/domain/Ids.ts"
import { type RequestAuth, requestDigests, signRequest } from "../../src/domain/RequestAuth.ts"
import {
  GroupMessageInput,
  type IdentityAction,
  IdentityUpdate,
  KeyPackageUpload,
  WelcomeMessageInput
} from "../../src/domain/Wire.ts"
import { MAX_PAGE_BYTES } from "../../src/layers/DeliveryRequests.ts"
import type { RateLimit } from "../../src/layers/RequestAuthenticator.ts"
import { authenticatedAs } from "../../src/services/DeliveryAuth.ts"
import { DeliveryService } from "../../src/index.ts"
import { MlsCrypto } from "../../src/index.ts"
import {
  type Inbox,
  type InstallationKeys,
  mlsGroupInfo,
  mlsMessage,
  mlsPayload,
  mlsPayloadOfSize,
  newGroupId,
  newInbox,
  newInstallationKeys,
  range,
  readAll,
  type Registered,
  registerInstallation,
  textOf,
  textsOf
} from "./DeliveryFixtures.ts"

export interface ConformanceOptions {
  /** The layer's payload limit in bytes (default 1 MiB, the memory layer's default). */
  readonly maxPayloadBytes?: number
  /** The layer's page size (default 100). */
  readonly pageSize?: number
  /** The layer's batch limit (default 50). */
  readonly maxBatch?: number
  /** The layer's cap on an inbox's identity log, if it has one: then it is tested. */
  readonly maxIdentityUpdates?: number
  /**
   * The same kind of service as `layer`, built afresh with this per-installation rate limit:
   * then the limit is tested (on a service of its own, so the suite's publisher is not slowed).
   */
  readonly rateLimited?: (rateLimit: Partial<RateLimit>) => Layer.Layer<DeliveryService, unknown>
  /** How long building the layer may take. Default 60 seconds. */
  readonly buildTimeout?: Duration.DurationInput
}

// ---- fixtures ----

/** The installation the suite writes as, registered once when the suite's layer is built. */
class Publisher extends Context.Tag("test/DeliveryConformance/Publisher")<Publisher, Registered>() {}

const publisherLayer = Layer.effect(Publisher, Effect.flatMap(DeliveryService, (ds) => registerInstallation(ds)))

/** The delivery service as the suite's publisher: every call signed. */
const asPublisher = Effect.map(Publisher, (publisher) => publisher.ds)

/** The delivery service as `installation`: every call signed by it. */
const signedBy = (installation: InstallationKeys) =>
  Effect.map(DeliveryService, (ds) => authenticatedAs(ds, installation.signer))

/** An installation with real MLS keys and a key package naming it (for its inbox). */
interface Installation extends InstallationKeys {
  /** A genuine, signed MLS key package of this installation (for its inbox). */
  readonly keyPackage: Uint8Array
  /** Another genuine key package of the same installation. */
  readonly freshKeyPackage: Effect.Effect<Uint8Array, unknown, MlsCrypto>
  /** A genuine key package of this installation's keys whose credential names `inboxId`. */
  readonly keyPackageClaiming: (inboxId: InboxId) => Effect.Effect<Uint8Array, unknown, MlsCrypto>
}

const newInstallation = (inbox: Pick<Inbox, "inboxId">) =>
  Effect.gen(function*() {
    const crypto = yield* MlsCrypto
    const keys = yield* crypto.generateSignatureKeyPair
    const installation = newInstallationKeys(keys.privateKey)
    const keyPackageClaiming = (inboxId: InboxId) =>
      Effect.map(
        crypto.generateKeyPackage({ inboxId, installationId: installation.id }, keys),
        (bundle) => bundle.publicPackage
      )
    const freshKeyPackage = keyPackageClaiming(inbox.inboxId)
    const keyPackage = yield* freshKeyPackage
    return { ...installation, keyPackage, freshKeyPackage, keyPackageClaiming } satisfies Installation
  })

/** An installation id nobody registered (welcomes need no registration of their recipient). */
const strangerId = () => newInstallationKeys().id

/** Sends many messages to one topic in batches the layer accepts. */
const sendMany = (ds: DeliveryService["Type"], groupId: GroupId, texts: ReadonlyArray<string>, maxBatch: number) =>
  Effect.forEach(
    Array.from({ length: Math.ceil(texts.length / maxBatch) }, (_, i) => texts.slice(i * maxBatch, (i + 1) * maxBatch)),
    (chunk) => ds.sendGroupMessages(chunk.map((t) => mlsMessage(groupId, t))),
    { discard: true }
  )

const collect = <A, E>(stream: Stream.Stream<A, E>, n: number) =>
  Effect.fork(Effect.map(Stream.runCollect(Stream.take(stream, n)), Chunk.toReadonlyArray))

const joinWithin = <A, E>(fiber: Fiber.Fiber<A, E>, within: Duration.DurationInput = "20 seconds") =>
  Fiber.join(fiber).pipe(
    Effect.timeoutFail({ duration: within, onTimeout: () => new Error(`subscriber did not finish within ${Duration.format(within)}`) })
  )

/** Signs one request as `installation` at a chosen time (the service allows a few minutes of skew). */
const signedAt = (installation: InstallationKeys, timeNs: bigint) => (op: Parameters<typeof signRequest>[2], digest: string) =>
  Effect.succeed(signRequest(installation.id, installation.secretKey, op, digest, timeNs))

const unauthenticated = { _tag: "DeliveryError", reason: "Unauthenticated", retryable: false }
const forbidden = { _tag: "DeliveryError", reason: "Forbidden", retryable: false }

// ---- the suite ----

export const deliveryConformance = (
  label: string,
  layer: Layer.Layer<DeliveryService, unknown, never>,
  options: ConformanceOptions = {}
): void => {
  const maxPayloadBytes = options.maxPayloadBytes ?? 1024 * 1024
  const pageSize = options.pageSize ?? 100
  const maxBatch = options.maxBatch ?? 50

  layerSuite(Layer.provideMerge(publisherLayer, Layer.merge(layer, MlsCrypto.layer())), {
    excludeTestServices: true,
    timeout: options.buildTimeout ?? Duration.seconds(60)
  })(`DeliveryService conformance: ${label}`, (it) => {
    // ---- ordering ----

    it.effect("20 concurrent publishers get gap-free increasing ids, each payload once", () =>
      Effect.gen(function*() {
        const ds = yield* asPublisher
        const groupId = newGroupId()
        const publishers = Array.from({ length: 20 }, (_, p) =>
          Effect.forEach(
            Array.from({ length: 5 }, (_, i) => `p${p}-m${i}`),
            (body) => ds.sendGroupMessages([mlsMessage(groupId, body)]).pipe(Effect.zipLeft(Effect.yieldNow()))
          ))
        const returned = (yield* Effect.all(publishers, { concurrency: "unbounded" })).flat(2)

        const stored = yield* readAll(ds, groupId)
        expect(stored.map((e) => e.sequenceId)).toEqual(range(1, 100))
        expect(new Set(stored.map((e) => textOf(e.payload))).size).toBe(100)
        // What each publisher was told matches what the topic holds.
        for (const envelope of returned) {
          const at = stored[Number(envelope.sequenceId) - 1]!
          expect(textOf(at.payload)).toBe(textOf(envelope.payload))
          expect(at.serverTimeNs).toBe(envelope.serverTimeNs)
        }
        // Each publisher's own messages landed in the order it sent them.
        for (let p = 0; p < 20; p++) {
          const mine = stored.filter((e) => textOf(e.payload).startsWith(`p${p}-`)).map((e) => textOf(e.payload))
          expect(mine).toEqual(Array.from({ length: 5 }, (_, i) => `p${p}-m${i}`))
        }
        // Server timestamps never go backwards along the topic.
        for (let i = 1; i < stored.length; i++) {
          expect(stored[i]!.serverTimeNs >= stored[i - 1]!.serverTimeNs).toBe(true)
        }
      }))

    it.effect("a subscriber started mid-stream sees every later message exactly once, in order", () =>
      Effect.gen(function*() {
        const ds = yield* asPublisher
        const groupId = newGroupId()
        const other = newGroupId()
        for (let i = 0; i < 10; i++) yield* ds.sendGroupMessages([mlsMessage(groupId, `early-${i}`)])

        // Publishers keep going while the subscribers start.
        const publishers = yield* Effect.fork(
          Effect.all(
            Array.from({ length: 5 }, (_, p) =>
              Effect.forEach(
                Array.from({ length: 20 }, (_, i) => i),
                (i) =>
                  ds.sendGroupMessages([mlsMessage(groupId, `live-${p}-${i}`), mlsMessage(other, `other-${p}-${i}`)]).pipe(
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
        expect(seenFromStart.map((e) => textOf(e.payload))).toEqual(stored.map((e) => textOf(e.payload)))
        expect(seenFromK.map((e) => e.sequenceId)).toEqual(range(Number(k) + 1, total))
        // Only the subscribed topic comes through.
        expect(seenFromStart.every((e) => e.groupId === groupId)).toBe(true)
      }))

    it.effect("a subscription over several topics keeps each topic in order", () =>
      Effect.gen(function*() {
        const ds = yield* asPublisher
        const [a, b] = [newGroupId(), newGroupId()]
        yield* ds.sendGroupMessages([mlsMessage(a, "a1"), mlsMessage(b, "b1"), mlsMessage(a, "a2")])
        const collected = yield* collect(
          ds.subscribeGroupMessages([
            { groupId: a, afterSequenceId: 1n },
            { groupId: b, afterSequenceId: 0n },
            // A second filter on a topic follows it from the lower cursor, once.
            { groupId: a, afterSequenceId: 2n }
          ]),
          4
        )
        yield* ds.sendGroupMessages([mlsMessage(b, "b2"), mlsMessage(a, "a3")])
        const seen = yield* joinWithin(collected)
        expect(seen.filter((e) => e.groupId === a).map((e) => textOf(e.payload))).toEqual(["a2", "a3"])
        expect(seen.filter((e) => e.groupId === b).map((e) => textOf(e.payload))).toEqual(["b1", "b2"])
      }))

    it.effect("a subscription with no filters ends at once", () =>
      Effect.gen(function*() {
        const ds = yield* asPublisher
        const seen = yield* Stream.runCollect(ds.subscribeGroupMessages([])).pipe(Effect.timeout("5 seconds"))
        expect(Chunk.size(seen)).toBe(0)
      }))

    // ---- welcomes ----

    it.effect("welcomes are ordered per installation, replay from a cursor and go live", () =>
      Effect.gen(function*() {
        const ds = yield* asPublisher
        // The publisher welcomes two installations; each reads its own welcomes.
        const alice = yield* registerInstallation(yield* DeliveryService)
        const bob = strangerId()
        const aliceId = alice.installation.id
        // The send answers nothing: a position on someone else's topic would say how many
        // welcomes they got. Each recipient reads its own, numbered on its own topic.
        const sent = yield* ds.sendWelcomeMessages([
          WelcomeMessageInput.make({ installationId: aliceId, payload: utf8("w-a1") }),
          WelcomeMessageInput.make({ installationId: bob, payload: utf8("w-b1") }),
          WelcomeMessageInput.make({ installationId: aliceId, payload: utf8("w-a2") })
        ])
        expect(sent).toBeUndefined()
        const all = yield* alice.ds.queryWelcomeMessages({ installationId: aliceId, afterSequenceId: 0n })
        expect(all.items.map((e) => [e.sequenceId, e.installationId, fromUtf8(e.payload)])).toEqual([
          [1n, aliceId, "w-a1"],
          [2n, aliceId, "w-a2"]
        ])
        const page = yield* alice.ds.queryWelcomeMessages({ installationId: aliceId, afterSequenceId: 1n })
        expect(page.items.map((e) => fromUtf8(e.payload))).toEqual(["w-a2"])
        expect(page.next).toBeUndefined()
        const limited = yield* alice.ds.queryWelcomeMessages({ installationId: aliceId, afterSequenceId: 0n, limit: 1 })
        expect(limited.items.map((e) => fromUtf8(e.payload))).toEqual(["w-a1"])
        expect(limited.next).toBe(1n)

        const replayed = yield* collect(alice.ds.subscribeWelcomeMessages({ installationId: aliceId, afterSequenceId: 0n }), 3)
        yield* ds.sendWelcomeMessages([WelcomeMessageInput.make({ installationId: aliceId, payload: utf8("w-a3") })])
        const seen = yield* joinWithin(replayed)
        expect(seen.map((e) => [e.sequenceId, fromUtf8(e.payload)])).toEqual([[1n, "w-a1"], [2n, "w-a2"], [3n, "w-a3"]])
        expect(seen.every((e) => e.installationId === aliceId)).toBe(true)
        // Identical welcomes are stored once, like group messages.
        yield* ds.sendWelcomeMessages([WelcomeMessageInput.make({ installationId: aliceId, payload: utf8("w-a2") })])
        const afterResend = yield* alice.ds.queryWelcomeMessages({ installationId: aliceId, afterSequenceId: 0n })
        expect(afterResend.items.map((e) => [e.sequenceId, fromUtf8(e.payload)])).toEqual([[1n, "w-a1"], [2n, "w-a2"], [3n, "w-a3"]])
      }))

    it.effect("an installation reads only its own welcomes", () =>
      Effect.gen(function*() {
        const publisher = yield* Publisher
        const alice = yield* registerInstallation(yield* DeliveryService)
        const own = { installationId: publisher.installation.id, afterSequenceId: 0n }
        yield* alice.ds.sendWelcomeMessages([WelcomeMessageInput.make({ installationId: own.installationId, payload: utf8("w") })])

        const query = yield* Effect.flip(alice.ds.queryWelcomeMessages(own))
        expect(query).toMatchObject(forbidden)
        const subscription = yield* Effect.flip(Stream.runCollect(alice.ds.subscribeWelcomeMessages(own)))
        expect(subscription).toMatchObject(forbidden)
        // Unsigned, nobody learns anything either.
        const anonymous = yield* Effect.flip((yield* DeliveryService).queryWelcomeMessages(own))
        expect(anonymous).toMatchObject(unauthenticated)
        const anonymousStream = yield* Effect.flip(Stream.runCollect((yield* DeliveryService).subscribeWelcomeMessages(own)))
        expect(anonymousStream).toMatchObject(unauthenticated)
        // The owner reads it.
        const mine = yield* publisher.ds.queryWelcomeMessages(own)
        expect(mine.items.map((e) => fromUtf8(e.payload))).toContain("w")
      }))

    // ---- authentication ----

    it.effect("writes need the signature of a current installation; group reads need none", () =>
      Effect.gen(function*() {
        const anonymous = yield* DeliveryService
        const publisher = yield* Publisher
        const groupId = newGroupId()
        const welcome = WelcomeMessageInput.make({ installationId: strangerId(), payload: utf8("w") })

        expect(yield* Effect.flip(anonymous.sendGroupMessages([mlsMessage(groupId, "unsigned")])))
          .toMatchObject(unauthenticated)
        expect(yield* Effect.flip(anonymous.sendWelcomeMessages([welcome]))).toMatchObject(unauthenticated)
        // A key pair nobody registered.
        const unregistered = authenticatedAs(anonymous, newInstallationKeys().signer)
        expect(yield* Effect.flip(unregistered.sendGroupMessages([mlsMessage(groupId, "unregistered")])))
          .toMatchObject(unauthenticated)
        // The publisher's id, signed with another key.
        const impostor: InstallationKeys = { ...newInstallationKeys(), id: publisher.installation.id }
        const asImpostor = authenticatedAs(anonymous, signedAt(impostor, BigInt(Date.now()) * 1_000_000n))
        expect(yield* Effect.flip(asImpostor.sendGroupMessages([mlsMessage(groupId, "impostor")])))
          .toMatchObject(unauthenticated)
        expect(yield* readAll(anonymous, groupId)).toEqual([])

        // Signed by the publisher, the same write goes through, and anyone may read it.
        yield* publisher.ds.sendGroupMessages([mlsMessage(groupId, "signed")])
        expect(textsOf(yield* readAll(anonymous, groupId))).toEqual(["signed"])
      }))

    it.effect("a signed request is good once, for that request only", () =>
      Effect.gen(function*() {
        const anonymous = yield* DeliveryService
        const { installation } = yield* Publisher
        const groupId = newGroupId()
        const messages = [mlsMessage(groupId, "once")]
        const auth = yield* installation.signer("sendGroupMessages", requestDigests.sendGroupMessages(messages))
        /** A captured statement, presented again and again. */
        const replaying = authenticatedAs(anonymous, (): Effect.Effect<RequestAuth> => Effect.succeed(auth))

        // It signs that request, not another one.
        expect(yield* Effect.flip(replaying.sendGroupMessages([mlsMessage(groupId, "something else")])))
          .toMatchObject(unauthenticated)
        yield* replaying.sendGroupMessages(messages)
        expect(yield* Effect.flip(replaying.sendGroupMessages(messages))).toMatchObject(unauthenticated)
        expect(textsOf(yield* readAll(anonymous, groupId))).toEqual(["once"])
      }))

    it.effect("a signed request from outside the time window is refused", () =>
      Effect.gen(function*() {
        const anonymous = yield* DeliveryService
        const { installation } = yield* Publisher
        const groupId = newGroupId()
        const nowNs = BigInt(Date.now()) * 1_000_000n
        const tenMinutesNs = 10n * 60n * 1_000_000_000n
        for (const timeNs of [nowNs - tenMinutesNs, nowNs + tenMinutesNs]) {
          const skewed = authenticatedAs(anonymous, signedAt(installation, timeNs))
          expect(yield* Effect.flip(skewed.sendGroupMessages([mlsMessage(groupId, `at ${timeNs}`)])))
            .toMatchObject(unauthenticated)
        }
        expect(yield* readAll(anonymous, groupId)).toEqual([])
        // A few seconds of skew are fine.
        yield* authenticatedAs(anonymous, signedAt(installation, nowNs - 5_000_000_000n))
          .sendGroupMessages([mlsMessage(groupId, "a little late")])
        expect(textsOf(yield* readAll(anonymous, groupId))).toEqual(["a little late"])
      }))

    it.effect("a group topic takes only MLS group messages of its own group", () =>
      Effect.gen(function*() {
        const ds = yield* asPublisher
        const [groupId, other] = [newGroupId(), newGroupId()]
        const invalid = { _tag: "DeliveryError", reason: "InvalidRequest", retryable: false }
        const send = (payload: Uint8Array) => Effect.flip(ds.sendGroupMessages([GroupMessageInput.make({ groupId, payload })]))

        expect(yield* send(utf8("plain text, not MLS"))).toMatchObject(invalid)
        expect(yield* send(mlsPayload(other, "for another group"))).toMatchObject(invalid)
        // MLS messages that are no group messages: a key package, and a GroupInfo naming this very group.
        const keyPackage = (yield* newInstallation(newInbox())).keyPackage
        expect(yield* send(keyPackage)).toMatchObject(invalid)
        const groupInfo = mlsGroupInfo(groupId)
        expect(yield* (yield* MlsCrypto).inspect(groupInfo)).toMatchObject({ kind: "other", groupId })
        expect(yield* send(groupInfo)).toMatchObject(invalid)
        // Truncated MLS.
        expect(yield* send(mlsPayload(groupId, "cut short").subarray(0, 20))).toMatchObject(invalid)
        // One bad message spoils the batch: nothing is stored, no topic comes into existence.
        const mixed = yield* Effect.flip(ds.sendGroupMessages([
          mlsMessage(groupId, "fine"),
          GroupMessageInput.make({ groupId, payload: mlsPayload(other, "misfiled") })
        ]))
        expect(mixed).toMatchObject(invalid)
        expect(yield* readAll(ds, groupId)).toEqual([])
        expect(yield* readAll(ds, other)).toEqual([])

        // Application messages, commits and proposals of the group are taken.
        yield* ds.sendGroupMessages([
          mlsMessage(groupId, "app"),
          mlsMessage(groupId, "commit", { contentType: "commit", epoch: 1n }),
          mlsMessage(groupId, "proposal", { contentType: "proposal", epoch: 2n })
        ])
        expect(textsOf(yield* readAll(ds, groupId))).toEqual(["app", "commit", "proposal"])
      }))

    it.effect("an installation is added only with its own proof of possession", () =>
      Effect.gen(function*() {
        const ds = yield* DeliveryService
        const inbox = newInbox()
        yield* ds.publishIdentityUpdate(inbox.create())
        const device = newInstallationKeys()

        // Someone else's key (a device the root does not control): the proof is made with another key.
        const unproven = yield* Effect.flip(ds.publishIdentityUpdate(inbox.add(device, newInstallationKeys().secretKey)))
        expect(unproven).toMatchObject({ _tag: "InvalidIdentityUpdate", inboxId: inbox.inboxId })
        inbox.rewind()
        // No proof at all (the root signature does not cover it, so only the proof check can refuse it).
        const genuine = inbox.add(device)
        inbox.rewind()
        const stripped = yield* Effect.flip(ds.publishIdentityUpdate(
          IdentityUpdate.make({ ...genuine, action: { ...genuine.action, installationSignature: "" } as IdentityAction })
        ))
        expect(stripped._tag).toBe("InvalidIdentityUpdate")
        // A genuine proof of the same device for another inbox's entry does not transfer.
        const elsewhere = newInbox()
        elsewhere.create()
        const borrowedProof = (elsewhere.add(device).action as { readonly installationSignature: string }).installationSignature
        const borrowed = yield* Effect.flip(ds.publishIdentityUpdate(
          IdentityUpdate.make({ ...genuine, action: { ...genuine.action, installationSignature: borrowedProof } as IdentityAction })
        ))
        expect(borrowed._tag).toBe("InvalidIdentityUpdate")
        const [log] = yield* ds.getIdentityUpdates([{ inboxId: inbox.inboxId, afterSequence: 0 }])
        expect(log!.updates.map((e) => e.update.action._tag)).toEqual(["CreateInbox"])
        // The device cannot act yet; once added with its own proof, it can.
        const asDevice = authenticatedAs(ds, device.signer)
        const groupId = newGroupId()
        expect(yield* Effect.flip(asDevice.sendGroupMessages([mlsMessage(groupId, "hello")]))).toMatchObject(unauthenticated)
        yield* ds.publishIdentityUpdate(genuine)
        yield* asDevice.sendGroupMessages([mlsMessage(groupId, "hello")])
        expect(textsOf(yield* readAll(ds, groupId))).toEqual(["hello"])
      }))

    const rateLimited = options.rateLimited
    if (rateLimited !== undefined) {
      it.effect("each installation is held to its rate limit, retryably; others are not affected", () =>
        Effect.scoped(Effect.gen(function*() {
          const burst = 3
          // Next to no refill within the test: the burst is all there is.
          const limited = Context.get(
            yield* Layer.build(rateLimited({ requestBurst: burst, requestsPerSecond: 0.001, byteBurst: 4096, bytesPerSecond: 1 })),
            DeliveryService
          )
          const [alice, bob, carol] = [
            yield* registerInstallation(limited),
            yield* registerInstallation(limited),
            yield* registerInstallation(limited)
          ]
          const groupId = newGroupId()
          for (let i = 0; i < burst; i++) yield* alice.ds.sendGroupMessages([mlsMessage(groupId, `alice-${i}`)])
          const over = yield* Effect.flip(alice.ds.sendGroupMessages([mlsMessage(groupId, "one too many")]))
          expect(over).toMatchObject({ _tag: "DeliveryError", reason: "RateLimited", retryable: true })
          // Every authenticated operation draws on the same bucket.
          const welcome = WelcomeMessageInput.make({ installationId: bob.installation.id, payload: utf8("w") })
          expect(yield* Effect.flip(alice.ds.sendWelcomeMessages([welcome]))).toMatchObject({ reason: "RateLimited" })
          // Another installation has its own bucket, and reads are not metered.
          yield* bob.ds.sendGroupMessages([mlsMessage(groupId, "bob")])
          expect(textsOf(yield* readAll(alice.ds, groupId))).toEqual(["alice-0", "alice-1", "alice-2", "bob"])
          // Bytes are metered too: more than the byte burst at once is refused, whatever the request count.
          const bulky = yield* Effect.flip(carol.ds.sendGroupMessages([mlsMessage(groupId, "x".repeat(5000))]))
          expect(bulky).toMatchObject({ reason: "RateLimited", retryable: true })
          yield* carol.ds.sendGroupMessages([mlsMessage(groupId, "carol")])
          expect(textsOf(yield* readAll(limited, groupId))).toHaveLength(5)
        })))
    }

    // ---- queries ----

    it.effect("paging returns everything in order; limit is honoured and capped by the page size", () =>
      Effect.gen(function*() {
        const ds = yield* asPublisher
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
        expect(all.map((e) => textOf(e.payload))).toEqual(Array.from({ length: count }, (_, i) => `m${i}`))
        expect(all.map((e) => e.sequenceId)).toEqual(range(1, count))
      }))

    it.effect("a full last page points on; the next page is empty and ends", () =>
      Effect.gen(function*() {
        const ds = yield* asPublisher
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
        const ds = yield* asPublisher
        const [a, b, c] = [newGroupId(), newGroupId(), newGroupId()]
        yield* ds.sendGroupMessages([
          ...Array.from({ length: 5 }, (_, i) => mlsMessage(a, `a${i}`)),
          ...Array.from({ length: 2 }, (_, i) => mlsMessage(b, `b${i}`))
        ])
        const pages = yield* ds.batchQueryGroupMessages([
          { groupId: b, afterSequenceId: 0n },
          { groupId: c, afterSequenceId: 0n },
          { groupId: a, afterSequenceId: 1n, limit: 2 }
        ])
        expect(pages.map((p) => p.items.map((e) => textOf(e.payload)))).toEqual([["b0", "b1"], [], ["a1", "a2"]])
        expect(pages.map((p) => p.next)).toEqual([undefined, undefined, 3n])
        expect(pages[2]!.items.every((e) => e.groupId === a)).toBe(true)
      }))

    if (maxPayloadBytes >= 1024 * 1024) {
      it.effect("a batch answer holds one page of bytes: topics past it come back empty and point at their own cursor", () =>
        Effect.gen(function*() {
          const ds = yield* asPublisher
          // Four of these fill the answer's 4 MiB but for 4 KiB; a fifth does not fit.
          const big = 1024 * 1024 - 1024
          const heavy = Array.from({ length: 5 }, () => newGroupId())
          const [light, empty] = [newGroupId(), newGroupId()]
          for (const [i, groupId] of heavy.entries()) {
            yield* ds.sendGroupMessages([GroupMessageInput.make({ groupId, payload: mlsPayloadOfSize(groupId, big, i) })])
          }
          yield* ds.sendGroupMessages([mlsMessage(light, "l0")])
          const queries = [...heavy, light, empty].map((groupId) => ({ groupId, afterSequenceId: 0n }))
          const pages = yield* ds.batchQueryGroupMessages(queries)
          const answered = pages.reduce((n, p) => n + p.items.reduce((m, e) => m + e.payload.length, 0), 0)
          expect(answered).toBeLessThanOrEqual(MAX_PAGE_BYTES)
          expect(pages.map((p) => p.items.length)).toEqual([1, 1, 1, 1, 0, 1, 0])
          // The fifth was not read: unlike the topics read to their end, it points on, from where it was asked.
          expect(pages.map((p) => p.next)).toEqual([undefined, undefined, undefined, undefined, 0n, undefined, undefined])
          // Asked again from there, it is read; syncQuery answers its group part alike.
          const again = yield* ds.batchQueryGroupMessages([queries[4]!])
          expect(again.map((p) => p.items.map((e) => e.payload.length))).toEqual([[big]])
          const sync = yield* ds.syncQuery({ groups: queries.map((q) => ({ ...q, limit: 1 })), identities: [] })
          // One entry deep, a page read points on at its entry; the one not read, at its cursor.
          expect(sync.groups.map((p) => [p.items.length, p.next])).toEqual(
            [[1, 1n], [1, 1n], [1, 1n], [1, 1n], [0, 0n], [1, 1n], [0, undefined]]
          )
        }))
    }

    it.effect("an identical payload published twice is stored once", () =>
      Effect.gen(function*() {
        const ds = yield* asPublisher
        const [groupId, other] = [newGroupId(), newGroupId()]
        const [first] = yield* ds.sendGroupMessages([mlsMessage(groupId, "same")])
        const [again] = yield* ds.sendGroupMessages([mlsMessage(groupId, "same")])
        expect(again!.sequenceId).toBe(first!.sequenceId)
        expect(again!.serverTimeNs).toBe(first!.serverTimeNs)
        const [next] = yield* ds.sendGroupMessages([mlsMessage(groupId, "different")])
        expect(next!.sequenceId).toBe(2n)
        // Another topic is another topic.
        const [elsewhere] = yield* ds.sendGroupMessages([mlsMessage(other, "same")])
        expect(elsewhere!.sequenceId).toBe(1n)
        // Twice in one batch: stored once, both answered with the same envelope.
        const twice = yield* ds.sendGroupMessages([mlsMessage(groupId, "twin"), mlsMessage(groupId, "twin")])
        expect(twice.map((e) => e.sequenceId)).toEqual([3n, 3n])
        expect((yield* readAll(ds, groupId)).map((e) => textOf(e.payload))).toEqual(["same", "different", "twin"])
      }))

    it.effect("a conditional send lands whole, only right after where its sender read to, signed and checked like a send", () =>
      Effect.gen(function*() {
        const anonymous = yield* DeliveryService
        const { ds, installation } = yield* Publisher
        const groupId = newGroupId()
        const first = yield* ds.sendGroupMessagesIf([mlsMessage(groupId, "a")], 0n)
        expect(first._tag === "Stored" && first.envelopes.map((e) => [e.sequenceId, textOf(e.payload), e.groupId]))
          .toEqual([[1n, "a", groupId]])
        // Bob's message comes in after Alice read the topic at 1: nothing of hers is stored, and she learns where it ends.
        yield* ds.sendGroupMessages([mlsMessage(groupId, "b")])
        const batch = [mlsMessage(groupId, "c"), mlsMessage(groupId, "d")]
        expect(yield* ds.sendGroupMessagesIf(batch, 1n)).toMatchObject({ _tag: "TopicMoved", lastSequenceId: 2n })
        expect(textsOf(yield* readAll(anonymous, groupId))).toEqual(["a", "b"])
        const third = yield* ds.sendGroupMessagesIf(batch, 2n)
        expect(third._tag === "Stored" && third.envelopes.map((e) => e.sequenceId)).toEqual([3n, 4n])

        // Unsigned, or signed for another condition, other messages or another order: refused, nothing stored.
        const next = [mlsMessage(groupId, "e"), mlsMessage(groupId, "f")]
        expect(yield* Effect.flip(anonymous.sendGroupMessagesIf(next, 4n))).toMatchObject(unauthenticated)
        const signedOtherwise = [
          requestDigests.sendGroupMessagesIf(next, 9n),
          requestDigests.sendGroupMessagesIf([...next, ...next], 4n),
          requestDigests.sendGroupMessagesIf([...next].reverse(), 4n),
          requestDigests.sendGroupMessages(next)
        ]
        for (const digest of signedOtherwise) {
          const auth = yield* installation.signer("sendGroupMessagesIf", digest)
          const replaying = authenticatedAs(anonymous, (): Effect.Effect<RequestAuth> => Effect.succeed(auth))
          expect(yield* Effect.flip(replaying.sendGroupMessagesIf(next, 4n))).toMatchObject(unauthenticated)
        }
        // A negative end, no messages, messages to two groups, or bytes that are no MLS message of this group: a typed refusal.
        const refusals = [
          ds.sendGroupMessagesIf(next, -1n),
          ds.sendGroupMessagesIf([], 4n),
          ds.sendGroupMessagesIf([...next, mlsMessage(newGroupId(), "elsewhere")], 4n),
          ds.sendGroupMessagesIf([GroupMessageInput.make({ groupId, payload: utf8("not mls") })], 4n),
          ds.sendGroupMessagesIf([GroupMessageInput.make({ groupId, payload: mlsPayload(newGroupId(), "other group") })], 4n)
        ]
        for (const refused of refusals) {
          expect(yield* Effect.flip(refused)).toMatchObject({ _tag: "DeliveryError", reason: "InvalidRequest", retryable: false })
        }
        // Bounded like a send: the batch, and each payload.
        const tooMany = Array.from({ length: maxBatch + 1 }, (_, i) => mlsMessage(groupId, `m${i}`))
        expect(yield* Effect.flip(ds.sendGroupMessagesIf(tooMany, 4n)))
          .toMatchObject({ _tag: "DeliveryError", reason: "BatchTooLarge", retryable: false })
        expect(yield* Effect.flip(ds.sendGroupMessagesIf([mlsMessage(groupId, "x".repeat(maxPayloadBytes + 1))], 4n)))
          .toMatchObject({ _tag: "DeliveryError", reason: "PayloadTooLarge", retryable: false })
        expect(textsOf(yield* readAll(anonymous, groupId))).toEqual(["a", "b", "c", "d"])
      }))

    it.effect("a stored payload does not change when the sender reuses its buffer", () =>
      Effect.gen(function*() {
        const ds = yield* asPublisher
        const groupId = newGroupId()
        const buffer = mlsPayload(groupId, "original")
        const [returned] = yield* ds.sendGroupMessages([GroupMessageInput.make({ groupId, payload: buffer })])
        buffer.fill(0)
        const [stored] = yield* readAll(ds, groupId)
        expect(textOf(stored!.payload)).toBe("original")
        expect(textOf(returned!.payload)).toBe("original")
      }))

    // ---- garbage in ----

    it.effect("payloads, batches, cursors and ids are checked, and a send is all or nothing", () =>
      Effect.gen(function*() {
        const ds = yield* asPublisher
        const groupId = newGroupId()
        const oversizeText = "x".repeat(maxPayloadBytes + 1)

        const oversize = yield* Effect.flip(ds.sendGroupMessages([mlsMessage(groupId, oversizeText)]))
        expect(oversize).toMatchObject({ _tag: "DeliveryError", reason: "PayloadTooLarge", retryable: false })

        const empty = yield* Effect.flip(
          ds.sendGroupMessages([GroupMessageInput.make({ groupId, payload: new Uint8Array(0) })])
        )
        expect(empty).toMatchObject({ _tag: "DeliveryError", reason: "InvalidRequest", retryable: false })

        const noMessages = yield* Effect.flip(ds.sendGroupMessages([]))
        expect(noMessages).toMatchObject({ _tag: "DeliveryError", reason: "InvalidRequest" })

        const tooMany = yield* Effect.flip(
          ds.sendGroupMessages(Array.from({ length: maxBatch + 1 }, (_, i) => mlsMessage(groupId, `m${i}`)))
        )
        expect(tooMany).toMatchObject({ _tag: "DeliveryError", reason: "BatchTooLarge", retryable: false })
        const tooManyQueries = yield* Effect.flip(
          ds.batchQueryGroupMessages(Array.from({ length: maxBatch + 1 }, () => ({ groupId, afterSequenceId: 0n })))
        )
        expect(tooManyQueries).toMatchObject({ _tag: "DeliveryError", reason: "BatchTooLarge" })

        // A good message next to a bad one: neither is stored.
        const mixed = yield* Effect.flip(
          ds.sendGroupMessages([mlsMessage(groupId, "fine"), mlsMessage(groupId, oversizeText)])
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
        const ds = yield* asPublisher

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
            inbox.forge(
              { _tag: "AddInstallation", installationId: installation.id, signaturePublicKey: installation.signaturePublicKey },
              installation.secretKey
            )
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
        const ds = yield* asPublisher
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

    it.effect("key packages are accepted only from registered installations, each for itself", () =>
      Effect.gen(function*() {
        const ds = yield* asPublisher
        const inbox = newInbox()
        const stranger = yield* newInstallation(inbox)
        const asStranger = yield* signedBy(stranger)
        const upload = KeyPackageUpload.make({ installationId: stranger.id, keyPackage: stranger.keyPackage })
        // Not registered at all (the inbox does not even exist): its signature counts for nothing.
        const refused = yield* Effect.flip(asStranger.uploadKeyPackage(upload))
        expect(refused).toMatchObject(unauthenticated)
        // The inbox exists, the installation is not one of its installations.
        yield* ds.publishIdentityUpdate(inbox.create())
        const stillRefused = yield* Effect.flip(asStranger.uploadKeyPackage(upload))
        expect(stillRefused).toMatchObject(unauthenticated)
        // Once registered, another installation (the publisher) still cannot upload for it.
        yield* ds.publishIdentityUpdate(inbox.add(stranger))
        const forSomeoneElse = yield* Effect.flip(ds.uploadKeyPackage(upload))
        expect(forSomeoneElse).toMatchObject(forbidden)
        const anonymous = yield* Effect.flip((yield* DeliveryService).uploadKeyPackage(upload))
        expect(anonymous).toMatchObject(unauthenticated)
        const [fetched] = yield* ds.fetchKeyPackages([stranger.id])
        expect(fetched).toEqual({ installationId: stranger.id, keyPackage: undefined })
        // The installation itself can.
        yield* asStranger.uploadKeyPackage(upload)
        expect(yield* ds.fetchKeyPackages([stranger.id])).toEqual([{ installationId: stranger.id, keyPackage: stranger.keyPackage }])
        const oversize = yield* Effect.flip(
          asStranger.uploadKeyPackage(
            KeyPackageUpload.make({ installationId: stranger.id, keyPackage: new Uint8Array(maxPayloadBytes + 1) })
          )
        )
        expect(oversize).toMatchObject({ reason: "PayloadTooLarge" })
        expect(yield* ds.fetchKeyPackages([])).toEqual([])
      }))

    it.effect("a key package that does not verify, or names another installation, is refused", () =>
      Effect.gen(function*() {
        const ds = yield* asPublisher
        const inbox = newInbox()
        const [mine, other] = [yield* newInstallation(inbox), yield* newInstallation(inbox)]
        yield* ds.publishIdentityUpdate(inbox.create())
        yield* ds.publishIdentityUpdate(inbox.add(mine))
        yield* ds.publishIdentityUpdate(inbox.add(other))
        const asMine = yield* signedBy(mine)

        // One flipped bit in the signature at the end of the package.
        const tampered = mine.keyPackage.slice()
        tampered[tampered.length - 1]! ^= 1
        const badSignature = yield* Effect.flip(
          asMine.uploadKeyPackage(KeyPackageUpload.make({ installationId: mine.id, keyPackage: tampered }))
        )
        expect(badSignature).toMatchObject({ _tag: "DeliveryError", reason: "InvalidKeyPackage", retryable: false })

        const garbage = yield* Effect.flip(
          asMine.uploadKeyPackage(KeyPackageUpload.make({ installationId: mine.id, keyPackage: utf8("not a key package") }))
        )
        expect(garbage).toMatchObject({ reason: "InvalidKeyPackage" })

        // A genuine package of another installation, uploaded as this one's.
        const misfiled = yield* Effect.flip(
          asMine.uploadKeyPackage(KeyPackageUpload.make({ installationId: mine.id, keyPackage: other.keyPackage }))
        )
        expect(misfiled).toMatchObject({ reason: "InvalidKeyPackage" })

        // A genuine package of this installation whose credential claims another inbox.
        const claimingOther = yield* mine.keyPackageClaiming(newInbox().inboxId)
        const crossed = yield* Effect.flip(
          asMine.uploadKeyPackage(KeyPackageUpload.make({ installationId: mine.id, keyPackage: claimingOther }))
        )
        expect(crossed).toMatchObject({ reason: "InvalidKeyPackage" })

        expect((yield* ds.fetchKeyPackages([mine.id]))[0]!.keyPackage).toBeUndefined()
        yield* asMine.uploadKeyPackage(KeyPackageUpload.make({ installationId: mine.id, keyPackage: mine.keyPackage }))
        expect((yield* ds.fetchKeyPackages([mine.id]))[0]!.keyPackage).toEqual(mine.keyPackage)
      }))

    it.effect("an installation cannot be claimed by a second inbox", () =>
      Effect.gen(function*() {
        const ds = yield* asPublisher
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
        const ds = yield* asPublisher
        const inbox = newInbox()
        const laptop = yield* newInstallation(inbox)
        const phone = yield* newInstallation(inbox)
        const published = [
          yield* ds.publishIdentityUpdate(inbox.create()),
          yield* ds.publishIdentityUpdate(inbox.add(laptop)),
          yield* ds.publishIdentityUpdate(inbox.add(phone))
        ]
        const [asLaptop, asPhone] = [yield* signedBy(laptop), yield* signedBy(phone)]
        yield* asLaptop.uploadKeyPackage(KeyPackageUpload.make({ installationId: laptop.id, keyPackage: laptop.keyPackage }))
        // A new upload replaces the previous one: one key package per installation is kept.
        const laptopNext = yield* laptop.freshKeyPackage
        yield* asLaptop.uploadKeyPackage(KeyPackageUpload.make({ installationId: laptop.id, keyPackage: laptopNext }))
        yield* asPhone.uploadKeyPackage(KeyPackageUpload.make({ installationId: phone.id, keyPackage: phone.keyPackage }))
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
        // A revoked installation's signature counts for nothing any more.
        const refused = yield* Effect.flip(
          asLaptop.uploadKeyPackage(KeyPackageUpload.make({ installationId: laptop.id, keyPackage: laptop.keyPackage }))
        )
        expect(refused).toMatchObject(unauthenticated)
        const silenced = yield* Effect.flip(asLaptop.sendGroupMessages([mlsMessage(newGroupId(), "still here?")]))
        expect(silenced).toMatchObject(unauthenticated)
        // A revoked installation never comes back.
        const back = yield* Effect.flip(ds.publishIdentityUpdate(inbox.add(laptop)))
        expect(back._tag).toBe("InvalidIdentityUpdate")
      }))

    it.effect("syncQuery: group pages and the identity changes since each cursor in one call, bounded", () =>
      Effect.gen(function*() {
        const ds = yield* asPublisher
        const [a, b] = [newGroupId(), newGroupId()]
        yield* ds.sendGroupMessages([mlsMessage(a, "a0"), mlsMessage(a, "a1")])
        const [steady, growing] = [newInbox(), newInbox()]
        yield* ds.publishIdentityUpdate(steady.create())
        yield* ds.publishIdentityUpdate(growing.create())
        const phone = yield* newInstallation(growing)
        const added = yield* ds.publishIdentityUpdate(growing.add(phone))

        // The caller holds both logs up to their first entry: only the new device comes back.
        const answer = yield* ds.syncQuery({
          groups: [{ groupId: a, afterSequenceId: 0n, limit: 1 }, { groupId: b, afterSequenceId: 0n }],
          identities: [{ inboxId: steady.inboxId, afterSequence: 1 }, { inboxId: growing.inboxId, afterSequence: 1 }]
        })
        expect(answer.groups.map((p) => p.items.map((e) => textOf(e.payload)))).toEqual([["a0"], []])
        expect(answer.groups[0]!.next).toBe(1n)
        expect(answer.identities).toEqual([{ inboxId: growing.inboxId, updates: [added] }])
        // Nothing new: no identity answer at all; no groups is fine too.
        const quiet = yield* ds.syncQuery({
          groups: [],
          identities: [{ inboxId: steady.inboxId, afterSequence: 1 }, { inboxId: growing.inboxId, afterSequence: 2 }]
        })
        expect(quiet).toEqual({ groups: [], identities: [] })

        const invalid = { _tag: "DeliveryError", reason: "InvalidRequest", retryable: false }
        const ask = (identities: ReadonlyArray<{ readonly inboxId: InboxId; readonly afterSequence: number }>) =>
          Effect.flip(ds.syncQuery({ groups: [], identities }))
        expect(yield* ask([{ inboxId: steady.inboxId, afterSequence: -1 }])).toMatchObject(invalid)
        expect(yield* ask([{ inboxId: steady.inboxId, afterSequence: 1.5 }])).toMatchObject(invalid)
        expect(yield* ask([{ inboxId: steady.inboxId, afterSequence: 2 ** 40 }])).toMatchObject(invalid)
        expect(yield* ask([{ inboxId: "not-an-inbox" as InboxId, afterSequence: 0 }])).toMatchObject(invalid)
        const tooMany = Array.from({ length: 101 }, () => ({ inboxId: newInbox().inboxId, afterSequence: 0 }))
        expect(yield* ask(tooMany)).toMatchObject({ _tag: "DeliveryError", retryable: false })
        // The group part is held to the batch query's rules.
        const badCursor = yield* Effect.flip(ds.syncQuery({ groups: [{ groupId: a, afterSequenceId: -1n }], identities: [] }))
        expect(badCursor).toMatchObject(invalid)
      }))

    const maxIdentityUpdates = options.maxIdentityUpdates
    if (maxIdentityUpdates !== undefined) {
      it.effect(`an identity log holds at most ${maxIdentityUpdates} entries`, () =>
        Effect.gen(function*() {
          const ds = yield* asPublisher
          const inbox = newInbox()
          yield* ds.publishIdentityUpdate(inbox.create())
          for (let i = 1; i < maxIdentityUpdates; i++) yield* ds.publishIdentityUpdate(inbox.add(newInstallationKeys()))
          const full = yield* Effect.flip(ds.publishIdentityUpdate(inbox.add(newInstallationKeys())))
          expect(full).toMatchObject({ _tag: "DeliveryError", reason: "LimitExceeded", retryable: false })
          const [log] = yield* ds.getIdentityUpdates([{ inboxId: inbox.inboxId, afterSequence: 0 }])
          expect(log!.updates).toHaveLength(maxIdentityUpdates)
        }))
    }
  })
}
