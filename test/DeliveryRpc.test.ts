/**
 * The delivery service over the network: `DeliveryServer` on a random loopback port, the
 * `RpcDeliveryService` client (WebSocket and HTTP transports), real sockets throughout.
 * Connection drops are injected with a TCP proxy that cuts every connection on demand, and
 * by stopping the server and starting another on the same port over the same store.
 */
import { describe, expect, it } from "@effect/vitest"
import { Socket } from "@effect/platform"
import { NodeSocket } from "@effect/platform-node"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Chunk, Context, Effect, Exit, Fiber, Layer, Ref, Schedule, Schema, Scope, Stream } from "effect"
import * as fs from "node:fs"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { fromUtf8, utf8 } from "../src/domain/Bytes.ts"
import type { GroupId } from "../src/domain/Ids.ts"
import { AUTH_HEADER, RequestAuthJson, requestDigests } from "../src/domain/RequestAuth.ts"
import { type GroupMessageEnvelope, GroupMessageInput, KeyPackageUpload, WelcomeMessageInput } from "../src/domain/Wire.ts"
import { serve } from "../src/layers/DeliveryServer.ts"
import * as FaultyDeliveryService from "../src/layers/FaultyDeliveryService.ts"
import type { RateLimit } from "../src/layers/RequestAuthenticator.ts"
import type { StoreDeliveryOptions } from "../src/layers/StoreDeliveryService.ts"
import * as SqliteStorage from "../src/layers/SqliteStorage.ts"
import { Client } from "../src/services/Client.ts"
import { authenticatedAs } from "../src/services/DeliveryAuth.ts"
import { DeliveryService } from "../src/index.ts"
import { DeliveryStore } from "../src/index.ts"
import { MlsCrypto } from "../src/index.ts"
import { deliveryConformance } from "./support/DeliveryConformance.ts"
import {
  mlsMessage,
  newGroupId,
  newInbox,
  newInstallationKeys,
  randomBytes,
  range,
  readAll,
  registerInstallation,
  textOf,
  textsOf
} from "./support/DeliveryFixtures.ts"
import { type ClientOptions, clientLayer, cuttableProxy, fastClientOptions, rpcLayer } from "./support/RpcHarness.ts"

// ---- fixtures ----

/** A new installation registered on `ds`, and `ds` as that installation. */
const signedIn = (ds: DeliveryService["Type"]) => Effect.map(registerInstallation(ds), (registered) => registered.ds)

/** The in-memory delivery service wrapped in fault controls, in the current scope. */
const memoryWithFaults = (options: StoreDeliveryOptions = {}) =>
  Layer.build(DeliveryService.layerMemoryWith(options)).pipe(
    Effect.flatMap((context) => FaultyDeliveryService.make(Context.get(context, DeliveryService)))
  )

/** A memory service (with its fault controls) served on a random loopback port. */
const memoryServer = (options: StoreDeliveryOptions = {}) =>
  Effect.gen(function*() {
    const memory = yield* memoryWithFaults(options)
    const address = yield* serve({ port: 0 }).pipe(Effect.provideService(DeliveryService, memory.service))
    return { memory, address }
  })

/** A network client in the current scope. */
const connect = (url: string, options: ClientOptions = {}) =>
  Layer.build(clientLayer(url, { ...fastClientOptions, ...options })).pipe(Effect.map(Context.get(DeliveryService)))

const transports = ["websocket", "http"] as const

// ---- every operation, both transports ----

describe.each(transports)("over %s", (transport) => {
  it.scopedLive("every operation round-trips, with typed errors arriving as themselves", () =>
    Effect.gen(function*() {
      const { address } = yield* memoryServer({ maxPayloadBytes: 1024, pageSize: 3 })
      const network = yield* connect(address.url, { transport })
      const groupId = newGroupId()

      // identity: an inbox and the installation the rest of the test acts as
      const inbox = newInbox()
      const installation = newInstallationKeys()
      const created = yield* network.publishIdentityUpdate(inbox.create())
      expect(created.update.inboxId).toBe(inbox.inboxId)
      expect(created.sequenceId).toBeTypeOf("bigint")
      yield* network.publishIdentityUpdate(inbox.add(installation))
      const updates = yield* network.getIdentityUpdates([
        { inboxId: inbox.inboxId, afterSequence: 0 },
        { inboxId: newInbox().inboxId, afterSequence: 0 }
      ])
      expect(updates[0]!.updates.map((u) => u.update.action._tag)).toEqual(["CreateInbox", "AddInstallation"])
      expect(updates[1]!.updates).toEqual([])
      // Each request is signed by the installation and the statement travels in a header.
      const ds = authenticatedAs(network, installation.signer)

      // group messages: send, dedup of an identical resend, paging, batch query
      const sent = yield* ds.sendGroupMessages([mlsMessage(groupId, "a"), mlsMessage(groupId, "b")])
      expect(sent.map((e) => [e.groupId, e.sequenceId, textOf(e.payload)])).toEqual([[groupId, 1n, "a"], [groupId, 2n, "b"]])
      expect(sent[0]!.serverTimeNs).toBeTypeOf("bigint")
      const again = yield* ds.sendGroupMessages([mlsMessage(groupId, "a")])
      expect(again[0]!.sequenceId).toBe(1n)
      for (const body of ["c", "d", "e"]) yield* ds.sendGroupMessages([mlsMessage(groupId, body)])
      const first = yield* ds.queryGroupMessages({ groupId, afterSequenceId: 0n })
      expect(textsOf(first.items)).toEqual(["a", "b", "c"])
      expect(first.next).toBe(3n)
      const last = yield* ds.queryGroupMessages({ groupId, afterSequenceId: 3n, limit: 5 })
      expect(last.items.map((e) => e.sequenceId)).toEqual([4n, 5n])
      expect(last.next).toBeUndefined()
      expect((yield* readAll(network, groupId)).map((e) => e.sequenceId)).toEqual(range(1, 5))
      const empty = newGroupId()
      const batch = yield* ds.batchQueryGroupMessages([
        { groupId, afterSequenceId: 4n },
        { groupId: empty, afterSequenceId: 0n }
      ])
      expect(batch.map((p) => p.items.map((e) => e.sequenceId))).toEqual([[5n], []])
      expect(batch[1]!.next).toBeUndefined()

      // welcomes, to the installation's own topic (only it may read them)
      yield* ds.sendWelcomeMessages([
        WelcomeMessageInput.make({ installationId: installation.id, payload: utf8("w1") }),
        WelcomeMessageInput.make({ installationId: installation.id, payload: utf8("w2") })
      ])
      const welcomePage = yield* ds.queryWelcomeMessages({ installationId: installation.id, afterSequenceId: 1n })
      expect(welcomePage.items.map((w) => fromUtf8(w.payload))).toEqual(["w2"])
      const welcomeStream = yield* ds.subscribeWelcomeMessages({ installationId: installation.id, afterSequenceId: 0n })
        .pipe(Stream.take(2), Stream.runCollect)
      expect(Chunk.toArray(welcomeStream).map((w) => fromUtf8(w.payload))).toEqual(["w1", "w2"])

      // key packages: bytes that are no key package are refused (the conformance suite round-trips real ones)
      const keyPackage = randomBytes(100)
      const garbage = yield* Effect.flip(
        ds.uploadKeyPackage(KeyPackageUpload.make({ installationId: installation.id, keyPackage }))
      )
      expect(garbage).toMatchObject({ _tag: "DeliveryError", reason: "InvalidKeyPackage" })
      const stranger = newInstallationKeys()
      const fetched = yield* ds.fetchKeyPackages([installation.id, stranger.id])
      expect(fetched).toEqual([
        { installationId: installation.id, keyPackage: undefined },
        { installationId: stranger.id, keyPackage: undefined }
      ])

      // typed errors
      const tooLarge = yield* Effect.flip(ds.sendGroupMessages([
        GroupMessageInput.make({ groupId, payload: randomBytes(1025) })
      ]))
      expect(tooLarge).toMatchObject({ _tag: "DeliveryError", reason: "PayloadTooLarge", retryable: false })
      const forged = yield* Effect.flip(ds.publishIdentityUpdate(inbox.forge({
        _tag: "RevokeInstallation",
        installationId: installation.id
      })))
      expect(forged._tag).toBe("InvalidIdentityUpdate")
      const forSomeoneElse = yield* Effect.flip(
        ds.uploadKeyPackage(KeyPackageUpload.make({ installationId: stranger.id, keyPackage }))
      )
      expect(forSomeoneElse).toMatchObject({ _tag: "DeliveryError", reason: "Forbidden", retryable: false })
      const othersWelcomes = yield* Effect.flip(ds.queryWelcomeMessages({ installationId: stranger.id, afterSequenceId: 0n }))
      expect(othersWelcomes).toMatchObject({ _tag: "DeliveryError", reason: "Forbidden" })
      const unsigned = yield* Effect.flip(network.sendGroupMessages([mlsMessage(groupId, "unsigned")]))
      expect(unsigned).toMatchObject({ _tag: "DeliveryError", reason: "Unauthenticated", retryable: false })
      const unsignedStream = yield* Effect.flip(
        Stream.runCollect(network.subscribeWelcomeMessages({ installationId: installation.id, afterSequenceId: 0n }))
      )
      expect(unsignedStream).toMatchObject({ _tag: "DeliveryError", reason: "Unauthenticated" })
      const notMls = yield* Effect.flip(ds.sendGroupMessages([GroupMessageInput.make({ groupId, payload: utf8("m") })]))
      expect(notMls).toMatchObject({ _tag: "DeliveryError", reason: "InvalidRequest" })
      const negative = yield* Effect.flip(ds.queryGroupMessages({ groupId, afterSequenceId: -1n }))
      expect(negative).toMatchObject({ _tag: "DeliveryError", reason: "InvalidRequest" })
      const zeroLimit = yield* Effect.flip(ds.queryGroupMessages({ groupId, afterSequenceId: 0n, limit: 0 }))
      expect(zeroLimit).toMatchObject({ reason: "InvalidRequest" })
      const malformed = new GroupMessageInput({ groupId: "not-hex" as GroupId, payload: utf8("m") }, true)
      expect(yield* Effect.flip(ds.sendGroupMessages([malformed]))).toMatchObject({ reason: "InvalidRequest" })
      const badStream = yield* Effect.flip(
        Stream.runCollect(ds.subscribeGroupMessages([{ groupId, afterSequenceId: -1n }]))
      )
      expect(badStream).toMatchObject({ _tag: "DeliveryError", reason: "InvalidRequest" })
      expect(yield* Effect.flip(ds.getIdentityUpdates([{ inboxId: inbox.inboxId, afterSequence: -1 }])))
        .toMatchObject({ reason: "InvalidRequest" })
      // An empty subscription ends at once, as in process.
      expect(Chunk.size(yield* Stream.runCollect(ds.subscribeGroupMessages([])))).toBe(0)
    }))

  it.scopedLive("a subscriber gets the backlog, then every live message once, in order, under concurrent publishers", () =>
    Effect.gen(function*() {
      const { address } = yield* memoryServer()
      const publisher = yield* signedIn(yield* connect(address.url, { transport }))
      const subscriber = yield* connect(address.url, { transport })
      const groupId = newGroupId()
      const other = newGroupId()
      for (let i = 0; i < 10; i++) yield* publisher.sendGroupMessages([mlsMessage(groupId, `early-${i}`)])

      const total = 10 + 5 * 20
      const received = yield* Effect.fork(
        Stream.runCollect(Stream.take(subscriber.subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]), total))
      )
      // Five publishers, each an installation with its own connection, also writing to a topic nobody follows.
      const publishers = yield* Effect.forEach(
        Array.from({ length: 5 }, (_, p) => p),
        () => Effect.flatMap(connect(address.url, { transport }), signedIn)
      )
      yield* Effect.forEach(
        publishers,
        (ds, p) =>
          Effect.forEach(
            Array.from({ length: 20 }, (_, i) => i),
            (i) => ds.sendGroupMessages([mlsMessage(groupId, `live-${p}-${i}`), mlsMessage(other, `other-${p}-${i}`)])
          ),
        { concurrency: "unbounded", discard: true }
      )
      const got = Chunk.toArray(yield* Fiber.join(received))
      expect(got.map((e) => e.sequenceId)).toEqual(range(1, total))
      expect(got.every((e) => e.groupId === groupId)).toBe(true)
      expect(new Set(got.map((e) => textOf(e.payload))).size).toBe(total)
      const stored = yield* readAll(publisher, groupId)
      expect(got.map((e) => textOf(e.payload))).toEqual(stored.map((e) => textOf(e.payload)))
    }))

  it.scopedLive("a client's calls, one after another, travel over one connection", () =>
    Effect.gen(function*() {
      const { address } = yield* memoryServer()
      const proxy = yield* cuttableProxy(address.port)
      const ds = yield* signedIn(yield* connect(proxy.url(address.url), { transport }))
      const groupId = newGroupId()
      for (const text of ["a", "b", "c", "d"]) {
        yield* ds.sendGroupMessages([mlsMessage(groupId, text)])
        yield* ds.queryGroupMessages({ groupId, afterSequenceId: 0n })
      }
      expect(textsOf(yield* readAll(ds, groupId))).toEqual(["a", "b", "c", "d"])
      // HTTP keeps its connection alive between calls, as WebSocket does: no handshake per call.
      expect(yield* proxy.accepted).toBe(1)
    }))

  it.scopedLive("a subscription resumes from its cursors after its connection is cut, without loss or duplicate", () =>
    Effect.gen(function*() {
      const { address, memory } = yield* memoryServer()
      const proxy = yield* cuttableProxy(address.port)
      const ds = yield* connect(proxy.url(address.url), { transport })
      const a = newGroupId()
      const b = newGroupId()
      const direct = yield* signedIn(memory.service)
      yield* direct.sendGroupMessages([mlsMessage(a, "a-0"), mlsMessage(b, "b-0")])

      // Per topic: 1 before, 3 rounds of 9 around the cuts, 3 after.
      const total = 2 * (1 + 3 * 9 + 3)
      const seen = yield* Ref.make<Array<GroupMessageEnvelope>>([])
      const consumer = yield* Effect.fork(
        ds.subscribeGroupMessages([{ groupId: a, afterSequenceId: 0n }, { groupId: b, afterSequenceId: 0n }]).pipe(
          Stream.tap((e) => Ref.update(seen, (all) => [...all, e])),
          Stream.take(total),
          Stream.runDrain
        )
      )
      const waitFor = (n: number) =>
        Ref.get(seen).pipe(
          Effect.repeat({ until: (all) => all.length >= n, schedule: Schedule.spaced("5 millis") })
        )
      yield* waitFor(2)
      // Three cuts: while idle, while publishing, and while refusing reconnection for a while.
      for (let round = 0; round < 3; round++) {
        const publishing = yield* Effect.fork(
          Effect.forEach(range(1, 9), (i) =>
            direct.sendGroupMessages([mlsMessage(a, `a-${round}-${i}`), mlsMessage(b, `b-${round}-${i}`)]).pipe(
              Effect.zipLeft(Effect.sleep("2 millis"))
            ), { discard: true })
        )
        if (round === 2) yield* proxy.refuse(true)
        expect(yield* proxy.cut).toBeGreaterThan(0)
        if (round === 2) {
          yield* Effect.sleep("300 millis")
          yield* proxy.refuse(false)
        }
        yield* Fiber.join(publishing)
        yield* waitFor(2 + 18 * (round + 1))
      }
      yield* direct.sendGroupMessages(
        Array.from({ length: 3 }, (_, i) => mlsMessage(a, `tail-a-${i}`)).concat(
          Array.from({ length: 3 }, (_, i) => mlsMessage(b, `tail-b-${i}`))
        )
      )
      yield* Fiber.join(consumer)
      const got = yield* Ref.get(seen)
      for (const groupId of [a, b]) {
        const mine = got.filter((e) => e.groupId === groupId)
        expect(mine.map((e) => e.sequenceId)).toEqual(range(1, total / 2))
        const stored = yield* readAll(direct, groupId)
        expect(mine.map((e) => textOf(e.payload))).toEqual(stored.map((e) => textOf(e.payload)))
      }
      // The cuts really did reconnect.
      expect(yield* proxy.accepted).toBeGreaterThan(transport === "websocket" ? 3 : 4)
    }))

  it.scopedLive("a subscription survives a server restart on the same port over the same store", () =>
    Effect.gen(function*() {
      const memory = yield* memoryWithFaults()
      // Another server's publisher, writing to the same store.
      const direct = yield* signedIn(memory.service)
      const startServer = (port: number) =>
        Effect.gen(function*() {
          const scope = yield* Scope.make()
          const address = yield* serve({ port }).pipe(
            Effect.provideService(DeliveryService, memory.service),
            Scope.extend(scope)
          )
          return { address, stop: Scope.close(scope, Exit.void) }
        })
      const first = yield* startServer(0)
      const network = yield* connect(first.address.url, { transport })
      const ds = yield* signedIn(network)
      const groupId = newGroupId()
      // The welcomes' recipient reads them over its own signed subscription, re-signed when it resumes.
      const { installation, ds: recipient } = yield* registerInstallation(network)
      yield* ds.sendGroupMessages([mlsMessage(groupId, "m-0")])

      const groupStream = yield* Effect.fork(
        Stream.runCollect(Stream.take(ds.subscribeGroupMessages([{ groupId, afterSequenceId: 0n }]), 20))
      )
      const welcomeStream = yield* Effect.fork(
        Stream.runCollect(
          Stream.take(recipient.subscribeWelcomeMessages({ installationId: installation.id, afterSequenceId: 0n }), 10)
        )
      )
      for (let i = 1; i < 5; i++) yield* ds.sendGroupMessages([mlsMessage(groupId, `m-${i}`)])
      yield* ds.sendWelcomeMessages([WelcomeMessageInput.make({ installationId: installation.id, payload: utf8("w-0") })])
      yield* Effect.sleep("50 millis")
      yield* first.stop
      // While the server is down the store keeps taking writes (another instance, say).
      for (let i = 5; i < 15; i++) yield* direct.sendGroupMessages([mlsMessage(groupId, `m-${i}`)])
      for (let i = 1; i < 5; i++) {
        yield* direct.sendWelcomeMessages([WelcomeMessageInput.make({ installationId: installation.id, payload: utf8(`w-${i}`) })])
      }
      // Calls fail as Unavailable meanwhile (no retries here, so the test need not wait).
      const down = yield* Effect.flip(
        connect(first.address.url, { transport, retrySchedule: Schedule.stop }).pipe(
          Effect.flatMap((c) => c.queryGroupMessages({ groupId, afterSequenceId: 0n }))
        )
      )
      expect(down).toMatchObject({ _tag: "DeliveryError", reason: "Unavailable", retryable: true })

      const second = yield* startServer(first.address.port)
      for (let i = 15; i < 20; i++) yield* ds.sendGroupMessages([mlsMessage(groupId, `m-${i}`)])
      for (let i = 5; i < 10; i++) {
        yield* ds.sendWelcomeMessages([WelcomeMessageInput.make({ installationId: installation.id, payload: utf8(`w-${i}`) })])
      }
      const groupGot = Chunk.toArray(yield* Fiber.join(groupStream))
      expect(groupGot.map((e) => textOf(e.payload))).toEqual(Array.from({ length: 20 }, (_, i) => `m-${i}`))
      const welcomeGot = Chunk.toArray(yield* Fiber.join(welcomeStream))
      expect(welcomeGot.map((e) => fromUtf8(e.payload))).toEqual(Array.from({ length: 10 }, (_, i) => `w-${i}`))
      yield* second.stop
    }))
})

// ---- timeouts, retries, unavailability ----

describe("client policies", () => {
  it.scopedLive("a call with no answer times out as a retryable Timeout", () =>
    Effect.gen(function*() {
      const memory = yield* memoryWithFaults()
      const calls = yield* Ref.make(0)
      const hanging: DeliveryService["Type"] = {
        ...memory.service,
        queryGroupMessages: () => Effect.zipRight(Ref.update(calls, (n) => n + 1), Effect.never)
      }
      const address = yield* serve({ port: 0 }).pipe(Effect.provideService(DeliveryService, hanging))
      const ds = yield* signedIn(yield* connect(address.url, {
        timeout: "150 millis",
        retrySchedule: Schedule.recurs(2)
      }))
      const error = yield* Effect.flip(ds.queryGroupMessages({ groupId: newGroupId(), afterSequenceId: 0n }))
      expect(error).toMatchObject({ _tag: "DeliveryError", reason: "Timeout", retryable: true })
      // Idempotent: tried once and retried twice.
      expect(yield* Ref.get(calls)).toBe(3)
      // The connection is still good for other calls.
      expect((yield* ds.sendGroupMessages([mlsMessage(newGroupId(), "x")]))[0]!.sequenceId).toBe(1n)
    }))

  // The connection keeps the timeouts (RpcCallTimeouts): a call it times out, and a call whose
  // caller is interrupted, both end on the server too.
  it.scopedLive("a timed-out call and an interrupted caller's call are interrupted on the server", () =>
    Effect.gen(function*() {
      const memory = yield* memoryWithFaults()
      const started = yield* Ref.make(0)
      const interrupted = yield* Ref.make(0)
      const hanging: DeliveryService["Type"] = {
        ...memory.service,
        queryGroupMessages: () =>
          Effect.zipRight(Ref.update(started, (n) => n + 1), Effect.never).pipe(
            Effect.onInterrupt(() => Ref.update(interrupted, (n) => n + 1))
          )
      }
      const address = yield* serve({ port: 0 }).pipe(Effect.provideService(DeliveryService, hanging))
      const waitFor = (ref: Ref.Ref<number>, n: number) =>
        Ref.get(ref).pipe(
          Effect.repeat({ until: (v) => v >= n, schedule: Schedule.spaced("10 millis") }),
          Effect.timeout("5 seconds")
        )
      let calls = 0
      for (const transport of transports) {
        const ds = yield* connect(address.url, { transport, timeout: "200 millis", retrySchedule: Schedule.recurs(0) })
        const query = ds.queryGroupMessages({ groupId: newGroupId(), afterSequenceId: 0n })
        const error = yield* Effect.flip(query)
        expect(error).toMatchObject({ _tag: "DeliveryError", reason: "Timeout", retryable: true })
        yield* waitFor(interrupted, ++calls)

        const caller = yield* Effect.fork(query)
        yield* waitFor(started, ++calls)
        expect(Exit.isInterrupted(yield* Fiber.interrupt(caller))).toBe(true)
        yield* waitFor(interrupted, calls)
      }
    }))

  // "ws" ends in "s" too: a ws:// URL was taken for wss:// (or https://) and met a plain server with TLS.
  it.scopedLive("a ws:// URL reaches a plain server over either transport", () =>
    Effect.gen(function*() {
      const { address } = yield* memoryServer()
      for (const transport of transports) {
        const ds = yield* connect(address.url.replace(/^http/, "ws"), { transport })
        const page = yield* ds.queryGroupMessages({ groupId: newGroupId(), afterSequenceId: 0n })
        expect(page.items).toEqual([])
      }
    }))

  it.scopedLive("idempotent calls are retried through transient failures; publishIdentityUpdate is not", () =>
    Effect.gen(function*() {
      const { address, memory } = yield* memoryServer()
      const ds = yield* signedIn(yield* connect(address.url))
      const groupId = newGroupId()

      // Each attempt is signed anew: a retry is not refused as a replay.
      yield* memory.faults.dropNext(2, "sendGroupMessages")
      expect((yield* ds.sendGroupMessages([mlsMessage(groupId, "m")]))[0]!.sequenceId).toBe(1n)
      // The response of a stored send is lost: the retry gets the same envelope, stored once.
      yield* memory.faults.loseNextResponse(1, "sendGroupMessages")
      expect((yield* ds.sendGroupMessages([mlsMessage(groupId, "n")]))[0]!.sequenceId).toBe(2n)
      // So is a conditional send's: its retry finds its own bytes stored where they landed.
      yield* memory.faults.loseNextResponse(1, "sendGroupMessagesIf")
      const conditional = yield* ds.sendGroupMessagesIf([mlsMessage(groupId, "o"), mlsMessage(groupId, "p")], 2n)
      expect(conditional._tag === "Stored" && conditional.envelopes.map((e) => e.sequenceId)).toEqual([3n, 4n])
      yield* memory.faults.dropNext(2, "queryGroupMessages")
      expect((yield* ds.queryGroupMessages({ groupId, afterSequenceId: 0n })).items.length).toBe(4)
      yield* memory.faults.dropNext(1, "getIdentityUpdates")
      yield* ds.getIdentityUpdates([{ inboxId: newInbox().inboxId, afterSequence: 0 }])
      yield* memory.faults.dropNext(1, "fetchKeyPackages")
      yield* ds.fetchKeyPackages([newInstallationKeys().id])

      const inbox = newInbox()
      yield* memory.faults.loseNextResponse(1, "publishIdentityUpdate")
      const lost = yield* Effect.flip(ds.publishIdentityUpdate(inbox.create()))
      expect(lost).toMatchObject({ _tag: "DeliveryError", reason: "Timeout", retryable: true })
      // Not retried: stored once, and the caller finds it by re-reading the log.
      const log = yield* ds.getIdentityUpdates([{ inboxId: inbox.inboxId, afterSequence: 0 }])
      expect(log[0]!.updates.length).toBe(1)
      const stats = yield* memory.faults.stats
      expect(stats).toMatchObject({ dropped: 6, lostResponses: 3 })
    }))

  it.scopedLive("with nothing listening, calls fail as Unavailable after their retries", () =>
    Effect.gen(function*() {
      // A port that was just free: bind, note it, release.
      const scope = yield* Scope.make()
      const memory = yield* memoryWithFaults()
      const address = yield* serve({ port: 0 }).pipe(
        Effect.provideService(DeliveryService, memory.service),
        Scope.extend(scope)
      )
      yield* Scope.close(scope, Exit.void)
      for (const transport of transports) {
        const ds = yield* connect(address.url, { transport, retrySchedule: Schedule.recurs(2) })
        const error = yield* Effect.flip(ds.queryGroupMessages({ groupId: newGroupId(), afterSequenceId: 0n }))
        expect(error).toMatchObject({ _tag: "DeliveryError", reason: "Unavailable", retryable: true })
      }
    }))
  it.scopedLive("over HTTP, an answer that ends without a result fails fast as Unavailable; a wrong path is not retried", () =>
    Effect.gen(function*() {
      // Not an RPC server: every POST gets an empty 200.
      let requests = 0
      const server = http.createServer((request, response) => {
        requests += 1
        request.resume()
        request.on("end", () => {
          response.writeHead(200, { "content-type": "application/ndjson" })
          response.end()
        })
      })
      const port = yield* Effect.acquireRelease(
        Effect.async<number>((resume) => {
          server.listen(0, "127.0.0.1", () => resume(Effect.succeed((server.address() as AddressInfo).port)))
        }),
        () =>
          Effect.async<void>((resume) => {
            server.closeAllConnections()
            server.close(() => resume(Effect.void))
          })
      )
      const ds = yield* connect(`http://127.0.0.1:${port}/rpc`, {
        transport: "http",
        timeout: "10 seconds",
        retrySchedule: Schedule.recurs(1)
      })
      const started = Date.now()
      const error = yield* Effect.flip(ds.fetchKeyPackages([newInstallationKeys().id]))
      expect(error).toMatchObject({ _tag: "DeliveryError", reason: "Unavailable", retryable: true })
      expect(Date.now() - started).toBeLessThan(5000)
      expect(requests).toBe(2)

      const { address } = yield* memoryServer()
      const wrong = yield* connect(address.url + "/nope", { transport: "http" })
      expect(yield* Effect.flip(wrong.fetchKeyPackages([]))).toMatchObject({ reason: "InvalidRequest", retryable: false })
    }))
})

// ---- bad requests ----

describe("bad requests", () => {
  it.scopedLive("malformed HTTP bodies and payloads get error responses and the server keeps serving", () =>
    Effect.gen(function*() {
      const { address } = yield* memoryServer()
      const ds = yield* signedIn(yield* connect(address.url))
      const groupId = newGroupId()
      yield* ds.sendGroupMessages([mlsMessage(groupId, "before")])

      const post = (body: string, url: string = address.url) =>
        Effect.promise(async () => {
          const response = await fetch(url, {
            method: "POST",
            headers: { "content-type": "application/ndjson" },
            body
          })
          return { status: response.status, body: await response.text() }
        })
      const responses = (body: string) =>
        body.split("\n").filter((line) => line.length > 0).map((line) => JSON.parse(line) as Record<string, unknown>)

      // Not JSON at all: a protocol defect.
      const garbage = yield* post("this is not json\n{{{\n")
      expect(responses(garbage.body)).toContainEqual(expect.objectContaining({ _tag: "Defect" }))
      // Binary noise, or a last line without its newline: refused before the RPC layer.
      const noise = yield* post(String.fromCharCode(...randomBytes(64)).replaceAll("\n", " "))
      expect(noise.status).toBe(400)
      expect(responses(noise.body)).toEqual([expect.objectContaining({ _tag: "Defect" })])
      const unterminated = yield* post(JSON.stringify({ _tag: "Request", id: "0", tag: "fetchKeyPackages", payload: { installationIds: [] }, headers: [] }))
      expect(unterminated.status).toBe(400)
      // Well-formed ndjson, wrong payload shape: that request dies, with the reason.
      const wrongShape = yield* post(
        JSON.stringify({ _tag: "Request", id: "1", tag: "queryGroupMessages", payload: { query: { groupId: 7 } }, headers: [] }) + "\n"
      )
      const [exit] = responses(wrongShape.body)
      expect(exit).toMatchObject({ _tag: "Exit", requestId: "1", exit: { _tag: "Failure", cause: { _tag: "Die" } } })
      // An unknown procedure.
      const unknown = yield* post(
        JSON.stringify({ _tag: "Request", id: "2", tag: "dropAllTables", payload: {}, headers: [] }) + "\n"
      )
      expect(responses(unknown.body).some((r) => r._tag === "Defect" || r._tag === "Exit")).toBe(true)
      // A well-formed request with a bad value: the service's typed error, encoded.
      const badValue = yield* post(
        JSON.stringify({
          _tag: "Request",
          id: "3",
          tag: "queryGroupMessages",
          payload: { query: { groupId, afterSequenceId: "-5" } },
          headers: []
        }) + "\n"
      )
      expect(responses(badValue.body)[0]).toMatchObject({
        _tag: "Exit",
        exit: { _tag: "Failure", cause: { _tag: "Fail", error: { _tag: "DeliveryError", reason: "InvalidRequest" } } }
      })
      // A GET that is not a WebSocket upgrade, and a wrong path.
      const notUpgrade = yield* Effect.promise(() => fetch(address.url).then((r) => r.status))
      expect(notUpgrade).toBeGreaterThanOrEqual(400)
      const wrongPath = yield* Effect.promise(() => fetch(address.url + "/nope", { method: "POST", body: "x" }).then((r) => r.status))
      expect(wrongPath).toBe(404)

      // Still serving, over both transports.
      yield* ds.sendGroupMessages([mlsMessage(groupId, "after")])
      const viaHttp = yield* connect(address.url, { transport: "http" })
      expect((yield* readAll(viaHttp, groupId)).map((e) => textOf(e.payload))).toEqual(["before", "after"])

      // A body over the server's limit: 413, which the HTTP client reports as PayloadTooLarge.
      const memory = yield* memoryWithFaults()
      const small = yield* serve({ port: 0, maxBodyBytes: 4096 }).pipe(Effect.provideService(DeliveryService, memory.service))
      const huge = yield* post("x".repeat(10_000) + "\n", small.url)
      expect(huge.status).toBe(413)
      const smallClient = yield* signedIn(yield* connect(small.url, { transport: "http" }))
      const tooBig = yield* Effect.flip(smallClient.sendGroupMessages([
        GroupMessageInput.make({ groupId, payload: randomBytes(8000) })
      ]))
      expect(tooBig).toMatchObject({ _tag: "DeliveryError", reason: "PayloadTooLarge", retryable: false })
      expect((yield* smallClient.sendGroupMessages([mlsMessage(groupId, "small")]))[0]!.sequenceId).toBe(1n)
    }))

  it.scopedLive("a request's signature rides in its x-converge-auth header; a missing, malformed or borrowed one is refused", () =>
    Effect.gen(function*() {
      const { address, memory } = yield* memoryServer()
      const { installation } = yield* registerInstallation(memory.service)
      const groupId = newGroupId()
      const messages = [mlsMessage(groupId, "by hand")]
      const statementFor = (signed: ReadonlyArray<GroupMessageInput>) =>
        Effect.map(
          installation.signer("sendGroupMessages", requestDigests.sendGroupMessages(signed)),
          Schema.encodeSync(RequestAuthJson)
        )
      /** One sendGroupMessages request in ndjson, as any HTTP client could send it; its exit. */
      const send = (auth: string | undefined) =>
        Effect.promise(async () => {
          const request = {
            _tag: "Request",
            id: "1",
            tag: "sendGroupMessages",
            payload: {
              messages: messages.map((m) => ({ groupId: m.groupId, payload: Buffer.from(m.payload).toString("base64") }))
            },
            headers: auth === undefined ? [] : [[AUTH_HEADER, auth]]
          }
          const response = await fetch(address.url, {
            method: "POST",
            headers: { "content-type": "application/ndjson" },
            body: JSON.stringify(request) + "\n"
          })
          const [exit] = (await response.text()).split("\n").filter((line) => line.length > 0)
          return JSON.parse(exit!) as Record<string, unknown>
        })
      const refused = {
        _tag: "Exit",
        exit: { _tag: "Failure", cause: { _tag: "Fail", error: { _tag: "DeliveryError", reason: "Unauthenticated" } } }
      }

      expect(yield* send(undefined)).toMatchObject(refused)
      expect(yield* send("not a statement")).toMatchObject(refused)
      // A statement for another request.
      expect(yield* send(yield* statementFor([mlsMessage(groupId, "something else")]))).toMatchObject(refused)
      // A genuine statement, padded past the header's size limit (still valid JSON).
      expect(yield* send((yield* statementFor(messages)).padEnd(2000))).toMatchObject(refused)
      expect(yield* readAll(memory.service, groupId)).toEqual([])

      const statement = yield* statementFor(messages)
      expect(yield* send(statement)).toMatchObject({ _tag: "Exit", exit: { _tag: "Success" } })
      // The same header again is a replay.
      expect(yield* send(statement)).toMatchObject(refused)
      expect(textsOf(yield* readAll(memory.service, groupId))).toEqual(["by hand"])
    }))

  it.scopedLive("garbage on a WebSocket gets a protocol error and the server keeps serving others", () =>
    Effect.gen(function*() {
      const { address } = yield* memoryServer()
      const socket = yield* Socket.makeWebSocket(address.url.replace(/^http/, "ws")).pipe(
        Effect.provide(NodeSocket.layerWebSocketConstructor)
      )
      const got = yield* Ref.make<Array<string>>([])
      yield* Effect.forkScoped(socket.runRaw((data) =>
        Ref.update(got, (all) => [...all, typeof data === "string" ? data : new TextDecoder().decode(data)])
      ))
      const write = yield* socket.writer
      yield* write("not json")
      yield* write(JSON.stringify({ _tag: "Request", id: "1", tag: "fetchKeyPackages", payload: 5, headers: [] }))
      // The server answers both; the connection may then be closed on the defect.
      const replies = yield* Ref.get(got).pipe(
        Effect.filterOrFail((all) => all.length >= 2),
        Effect.retry(Schedule.spaced("10 millis").pipe(Schedule.upTo("2 seconds"))),
        Effect.orElse(() => Ref.get(got))
      )
      expect(replies.length).toBeGreaterThan(0)
      expect(replies.join("\n")).toMatch(/Defect|Die/)
      const ds = yield* signedIn(yield* connect(address.url))
      expect((yield* ds.sendGroupMessages([mlsMessage(newGroupId(), "fine")]))[0]!.sequenceId).toBe(1n)
    }))
})

// ---- the engine over the network ----

describe("engine over RPC", () => {
  it.scopedLive("two clients, each with its own connection to one server, chat both ways", () =>
    Effect.gen(function*() {
      const { address } = yield* memoryServer()
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-rpc-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true })))
      const crypto = yield* Layer.build(MlsCrypto.layer())
      const makeClient = (name: string) =>
        Layer.build(
          Client.layerWithStorage({ transportSchedule: Schedule.recurs(3), conflictSchedule: Schedule.recurs(5) }).pipe(
            Layer.provide(SqliteStorage.layer),
            Layer.provide(Layer.orDie(SqliteClient.layer({ filename: path.join(dir, `${name}.sqlite`) }))),
            Layer.provide(clientLayer(address.url)),
            Layer.provide(Layer.succeedContext(crypto))
          )
        ).pipe(Effect.map(Context.get(Client)))
      const alice = yield* makeClient("alice")
      const bob = yield* makeClient("bob")

      const group = yield* alice.createGroup([bob.inboxId], { name: "over the wire" })
      yield* group.send("hello bob")
      yield* bob.syncAll
      const atBob = yield* bob.conversation(group.id)
      yield* atBob.send("hi alice")
      yield* group.send("how are you?")
      yield* Effect.all([alice.syncAll, bob.syncAll])

      const chat = (c: typeof group) =>
        c.messages().pipe(Effect.map((all) => all.filter((m) => m.kind === "text").map((m) => m.text)))
      expect(yield* chat(group)).toEqual(["hello bob", "hi alice", "how are you?"])
      expect(yield* chat(atBob)).toEqual(["hello bob", "hi alice", "how are you?"])
      const fromBob = (yield* group.messages()).find((m) => m.text === "hi alice")!
      expect(fromBob.senderInboxId).toBe(bob.inboxId)
      expect(fromBob.deliveryStatus).toBe("published")

      // Live: Bob's message stream rides a network subscription.
      const bobStream = yield* Effect.fork(
        bob.streamMessages.pipe(Stream.filter((m) => m.kind === "text"), Stream.take(1), Stream.runCollect)
      )
      yield* Effect.sleep("200 millis")
      yield* group.send("streamed to you")
      const streamed = Chunk.toArray(yield* Fiber.join(bobStream))
      expect(streamed.map((m) => [m.text, m.senderInboxId])).toEqual([["streamed to you", alice.inboxId]])
    }))
})

// ---- the port's conformance suite, over the network ----

/** A memory-backed server with this rate limit, over the network. */
const rateLimitedOverRpc = (options: ClientOptions) => (rateLimit: Partial<RateLimit>) =>
  rpcLayer(DeliveryService.layerMemoryWith({ authentication: { rateLimit } }), options)

deliveryConformance("over RPC (websocket, memory-backed server)", rpcLayer(DeliveryService.layerMemory), {
  rateLimited: rateLimitedOverRpc(fastClientOptions)
})
const overHttp: ClientOptions = { ...fastClientOptions, transport: "http" }
deliveryConformance("over RPC (http, memory-backed server)", rpcLayer(DeliveryService.layerMemory, overHttp), {
  rateLimited: rateLimitedOverRpc(overHttp)
})

/** The server `converge serve` runs by default: the store-backed service on a SQLite file. */
const sqliteStoreService = DeliveryService.layerStore({ maxIdentityUpdates: 8 }).pipe(
  Layer.provide(DeliveryStore.layerSqlite),
  Layer.provide(
    Layer.unwrapScoped(
      Effect.gen(function*() {
        const dir = yield* Effect.acquireRelease(
          Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "converge-rpc-ds-"))),
          (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
        )
        return SqliteClient.layer({ filename: path.join(dir, "ds.sqlite") })
      })
    )
  ),
  Layer.provide(MlsCrypto.layer())
)
deliveryConformance("over RPC (websocket, SQLite-store server)", rpcLayer(sqliteStoreService), { maxIdentityUpdates: 8 })
