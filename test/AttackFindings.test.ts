/**
 * Findings of the attack round against `converge serve` (each one failed before its fix), played
 * against an in-process delivery server on loopback.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Stream } from "effect"
import { serve } from "../src/layers/DeliveryServer.ts"
import { DeliveryService } from "../src/index.ts"
import { WelcomeMessageInput } from "../src/domain/Wire.ts"
import { registerInstallation } from "./support/DeliveryFixtures.ts"
import type { GroupId } from "../src/domain/Ids.ts"
import * as MemoryDeliveryStore from "../src/layers/MemoryDeliveryStore.ts"
import * as StoreDeliveryService from "../src/layers/StoreDeliveryService.ts"
import * as TsMlsCrypto from "../src/layers/TsMlsCrypto.ts"
import { DeliveryStore, groupTopic } from "../src/services/DeliveryStore.ts"
import { overWebSocket, WebSocket } from "./support/RawWebSocket.ts"
import { postNdjson } from "./support/NdjsonPost.ts"


const groupId = "0".repeat(32)
const requestWithId = (id: unknown, tag: string, payload: unknown) =>
  JSON.stringify({ _tag: "Request", id, tag, payload, headers: [] })
const queryWithId = (id: unknown) => requestWithId(id, "queryGroupMessages", { query: { groupId, afterSequenceId: "0" } })

const post = postNdjson


describe("request ids", () => {
  // @effect/rpc's server turns every request id into a BigInt (quadratic in the digits) and
  // echoes it back: a 2-million-digit id held the event loop for seconds (3 million: 11 s on
  // `converge serve`), for every caller, without an account.
  const hugeId = "9".repeat(2_000_000)

  it.scopedLive("a request with a huge id is refused without parsing it, and nothing else waits", () =>
    Effect.gen(function*() {
      const { url } = yield* serve({ port: 0 }).pipe(Effect.provide(DeliveryService.layerMemory))
      const answer = yield* Effect.promise(() => post(url, queryWithId(hugeId) + "\n"))
      expect(answer.text.length).toBeLessThan(1000)
      expect(answer.text).toContain("request id")
      expect(answer.millis).toBeLessThan(1000)
      // A normal request on the same server is still served.
      const normal = yield* Effect.promise(() => post(url, queryWithId("1") + "\n"))
      expect(normal.text).toContain(`"_tag":"Success"`)
    }))

  it.scopedLive("an Interrupt or Ack with a huge request id costs nothing either", () =>
    Effect.gen(function*() {
      const { url } = yield* serve({ port: 0 }).pipe(Effect.provide(DeliveryService.layerMemory))
      const frames = [
        JSON.stringify({ _tag: "Interrupt", requestId: hugeId }),
        JSON.stringify({ _tag: "Ack", requestId: hugeId }),
        queryWithId("7")
      ]
      const { messages, millis } = yield* Effect.promise(() =>
        overWebSocket(url, frames, (m) => m.some((x) => x._tag === "Exit" && x.requestId === "7"), 60_000)
      )
      expect(messages.some((x) => x._tag === "Exit" && x.requestId === "7")).toBe(true)
      expect(millis).toBeLessThan(1000)
    }))
})

describe("subscriptions to many topics", () => {
  const randomGroupId = () => Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString("hex")
  const subscribeMany = (id: number, topics: number) =>
    requestWithId(String(id), "subscribeGroupMessages", {
      filters: Array.from({ length: topics }, () => ({ groupId: randomGroupId(), afterSequenceId: "0" }))
    })

  // Every topic of a subscription was its own follower (a PubSub subscription, two fibers, a
  // merge's queue): one connection, without an account, with 8 subscriptions of 1,000 topics
  // took `converge serve` to 950 MiB and kept it busy for 55 s after it hung up (32 of them:
  // 2.6 GiB, and a normal request answered after 243 s).
  it.scopedLive("8 subscriptions of 1,000 topics on one connection leave the server responsive", () =>
    Effect.gen(function*() {
      const { url } = yield* serve({ port: 0 }).pipe(Effect.provide(DeliveryService.layerMemory))
      const heapBefore = process.memoryUsage().heapUsed
      const ws = new WebSocket(url.replace(/^http/, "ws"))
      yield* Effect.promise(() => new Promise<void>((resolve) => ws.on("open", () => resolve())))
      for (let i = 1; i <= 8; i++) ws.send(subscribeMany(i, 1000))
      yield* Effect.sleep("3 seconds")
      const during = yield* Effect.promise(() => post(url, queryWithId("1") + "\n"))
      const heapDuring = process.memoryUsage().heapUsed
      ws.close()
      yield* Effect.sleep("1 second")
      const after = yield* Effect.promise(() => post(url, queryWithId("2") + "\n"))
      console.log(
        `[attack] 8 x 1000 topics: a query during ${during.millis.toFixed(0)} ms, after ${after.millis.toFixed(0)} ms, ` +
          `heap +${((heapDuring - heapBefore) / 2 ** 20).toFixed(0)} MiB`
      )
      expect(during.text).toContain(`"_tag":"Success"`)
      expect(during.millis).toBeLessThan(1000)
      expect(after.millis).toBeLessThan(1000)
      expect(heapDuring - heapBefore).toBeLessThan(200 * 2 ** 20)
    }))
})

describe("who receives welcomes", () => {
  // `sendWelcomeMessages` answered with the envelope as stored on the recipient's welcome topic:
  // its sequence id was how many welcomes that installation had been sent. Anyone with an
  // account (registering is free) sent one junk welcome now and one later and learned how many
  // welcomes, so how many new groups and DMs, the installation got in between, and when:
  // polled for two installations, joins at the same moments said they were added together.
  // The send now answers nothing (as XMTP's node-go answers `{}`).
  it.effect("a stranger learns nothing of another installation's welcomes from its own sends", () =>
    Effect.gen(function*() {
      const service = yield* DeliveryService
      const victim = yield* registerInstallation(service)
      const friend = yield* registerInstallation(service)
      const stranger = yield* registerInstallation(service)
      const probe = (tag: string) =>
        stranger.ds.sendWelcomeMessages([
          WelcomeMessageInput.make({ installationId: victim.installation.id, payload: new TextEncoder().encode(tag) })
        ])
      const before = yield* probe("probe 1")
      // The victim is invited to three conversations.
      for (const n of [1, 2, 3]) {
        yield* friend.ds.sendWelcomeMessages([
          WelcomeMessageInput.make({ installationId: victim.installation.id, payload: new TextEncoder().encode(`w${n}`) })
        ])
      }
      const after = yield* probe("probe 2")
      // Both answers are the same, and empty: nothing in them moved with the victim's welcomes.
      expect([before, after]).toEqual([undefined, undefined])
      // The welcomes are all there for the victim, and only the victim reads them.
      const own = yield* victim.ds.queryWelcomeMessages({ installationId: victim.installation.id, afterSequenceId: 0n })
      expect(own.items).toHaveLength(5)
    }).pipe(Effect.provide(DeliveryService.layerMemory)))
})

describe("idle subscriptions", () => {
  // The safety-net poll re-read every followed topic each `pollMillis`: one anonymous
  // connection with 32 subscriptions of 1,000 topics asked for 6,400 store reads a second
  // while nothing happened, and each opening read all 1,000 topics. Now the opening asks the
  // store's heads, reads only topics with news, and an in-process feed (memory, SQLite) is not
  // polled at all.
  it.scopedLive("an idle subscription to 1,000 topics reads only those with news, and nothing while idle", () =>
    Effect.gen(function*() {
      let reads = 0
      const counting = Layer.effect(
        DeliveryStore,
        Effect.map(DeliveryStore, (store) => ({
          ...store,
          read: (...args: Parameters<typeof store.read>) => Effect.suspend(() => (reads++, store.read(...args)))
        }))
      ).pipe(Layer.provide(MemoryDeliveryStore.layer))
      const context = yield* Layer.build(
        StoreDeliveryService.layer({ pollMillis: 200 }).pipe(Layer.provideMerge(counting), Layer.provide(TsMlsCrypto.layer()))
      )
      const service = Context.get(context, DeliveryService)
      const filters = Array.from({ length: 1000 }, () => ({
        groupId: Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString("hex") as GroupId,
        afterSequenceId: 0n
      }))
      // Two topics with a message each before the opening.
      const store = Context.get(context, DeliveryStore)
      for (const f of [filters[3]!, filters[600]!]) {
        yield* store.append([{ topic: groupTopic(f.groupId), payload: new Uint8Array([1, 2, 3]) }])
      }
      const received: Array<string> = []
      yield* Effect.forkScoped(Stream.runForEach(service.subscribeGroupMessages(filters), (e) => Effect.sync(() => received.push(e.groupId))))
      yield* Effect.sleep("1 second")
      expect(received.sort()).toEqual([filters[3]!.groupId, filters[600]!.groupId].sort())
      expect(reads).toBe(2)
      // Five poll intervals in that second: nothing read.
      yield* Effect.sleep("1 second")
      expect(reads).toBe(2)
    }))
})

describe("request headers", () => {
  // @effect/rpc's server took a request's `headers` as given and threw on anything but a list of
  // pairs: the WebSocket closed (1005) with every call in flight on it, an HTTP POST got an empty 500.
  const malformed: ReadonlyArray<unknown> = [5, "abc", null, { name: "value" }, [[1, 2]], [["only-a-name"]], [["x-a", 5]]]
  const queryWithHeaders = (id: string, headers: unknown) =>
    JSON.stringify({ _tag: "Request", id, tag: "queryGroupMessages", payload: { query: { groupId, afterSequenceId: "0" } }, headers })
  const refusedTyped = {
    _tag: "Exit",
    requestId: "1",
    exit: { _tag: "Failure", cause: { _tag: "Fail", error: { _tag: "DeliveryError", reason: "InvalidRequest", retryable: false } } }
  }

  it.scopedLive("over WebSocket, malformed headers get a typed InvalidRequest and the connection goes on", () =>
    Effect.gen(function*() {
      const { url } = yield* serve({ port: 0 }).pipe(Effect.provide(DeliveryService.layerMemory))
      for (const headers of malformed) {
        const answer = yield* Effect.promise(() =>
          overWebSocket(
            url,
            [queryWithHeaders("1", headers), queryWithHeaders("2", [])],
            (m) => m.some((x) => x._tag === "Exit" && x.requestId === "2"),
            5_000
          )
        )
        expect(answer.closeCode, JSON.stringify(headers)).toBeUndefined()
        expect(answer.messages[0], JSON.stringify(headers)).toMatchObject(refusedTyped)
        expect(JSON.stringify(answer.messages[0])).toContain("headers must be a list of [name, value] string pairs")
        expect(answer.messages[1]).toMatchObject({ requestId: "2", exit: { _tag: "Success", value: { items: [] } } })
      }
    }))

  it.scopedLive("over HTTP, the same answer instead of an empty 500", () =>
    Effect.gen(function*() {
      const { url } = yield* serve({ port: 0 }).pipe(Effect.provide(DeliveryService.layerMemory))
      for (const headers of [...malformed, undefined]) {
        const answer = yield* Effect.promise(() => post(url, queryWithHeaders("1", headers) + "\n"))
        expect(answer.status, JSON.stringify(headers)).toBe(200)
        expect(JSON.parse(answer.text), JSON.stringify(headers)).toMatchObject(refusedTyped)
      }
      const normal = yield* Effect.promise(() => post(url, queryWithHeaders("1", []) + "\n"))
      expect(JSON.parse(normal.text)).toMatchObject({ requestId: "1", exit: { _tag: "Success" } })
    }))
})
