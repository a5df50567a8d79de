/**
 * Subscriptions of many topics on the XMTP V3 face: the opening replays only the topics that have
 * something after their cursor (found with one query per chunk of topics), each exactly once and in
 * order, then follows them live; the server bounds the topics all subscriptions follow together.
 */
import { expect, layer } from "@effect/vitest"
import { Chunk, Effect, Fiber, Stream } from "effect"
import { call, groupInput, ids, newGroupId, otherConnection, privateMessage, subscribe, Xmtp } from "./support/XmtpHarness.ts"
import * as XmtpHarness from "./support/XmtpHarness.ts"

const send = (group: Uint8Array, tag: string) =>
  Effect.flatMap(Xmtp, ({ mls }) => call(mls, "SendGroupMessages", { messages: [groupInput(privateMessage(group, "application", tag))] }))

/** Which group (by index in `groups`) and id each message is. */
const served = (groups: ReadonlyArray<Uint8Array>, messages: ReadonlyArray<any>) =>
  messages.map((m) => {
    const at = groups.findIndex((g) => Buffer.from(g).equals(Buffer.from(m.v1.groupId)))
    return `${at}:${ids([m])[0]}`
  })

layer(XmtpHarness.layer(), { excludeTestServices: true })("XMTP subscriptions of many topics", (it) => {
  it.scoped("1,000 topics: the backlog of the few with news after their cursor, once each, then live, with nothing lost meanwhile", () =>
    Effect.gen(function*() {
      const { mls } = yield* Xmtp
      const groups = Array.from({ length: 1000 }, () => newGroupId())
      // Past the first chunk of the opening's query too (topic 700).
      for (let i = 1; i <= 3; i++) yield* send(groups[10]!, `a${i}`)
      for (let i = 1; i <= 2; i++) yield* send(groups[700]!, `b${i}`)
      const filters = groups.map((groupId, i) => ({ groupId, idCursor: i === 10 ? 1 : 0 }))
      const sub = yield* subscribe(mls, "SubscribeGroupMessages", { filters })
      yield* sub.headers
      const received = yield* sub.messages.pipe(Stream.take(8), Stream.runCollect, Effect.fork)
      // Sent while the opening may still be running: each arrives once, in its topic's order.
      yield* send(groups[999]!, "c1")
      yield* send(groups[10]!, "a4")
      yield* send(groups[999]!, "c2")
      yield* send(groups[0]!, "d1")
      const got = served(groups, Chunk.toArray(yield* Fiber.join(received).pipe(Effect.timeout("20 seconds"))))
      expect(got.slice().sort()).toEqual(["0:1", "10:2", "10:3", "10:4", "700:1", "700:2", "999:1", "999:2"])
      const order = (topic: string) => got.filter((s) => s.startsWith(`${topic}:`))
      expect(order("10")).toEqual(["10:2", "10:3", "10:4"])
      expect(order("999")).toEqual(["999:1", "999:2"])
    }), { timeout: 60_000 })
})

/** The first message of a new subscription to `groups` (a message is sent to the first), or its refusal. */
const firstMessage = (client: any, groups: ReadonlyArray<Uint8Array>) =>
  Effect.scoped(Effect.gen(function*() {
    const sub = yield* subscribe(client, "SubscribeGroupMessages", { filters: groups.map((groupId) => ({ groupId, idCursor: 0 })) })
    const one = yield* sub.messages.pipe(Stream.take(1), Stream.runCollect, Effect.fork)
    yield* send(groups[0]!, "x")
    return ids(Chunk.toArray(yield* Fiber.join(one).pipe(Effect.timeout("10 seconds"))))
  }))

layer(XmtpHarness.layer({ maxSubscribedTopics: 5 }), { excludeTestServices: true })("XMTP subscriptions: the server's topic bound", (it) => {
  it.scoped("subscriptions past the topics the server follows in all are refused RESOURCE_EXHAUSTED, on any connection, until some end", () =>
    Effect.gen(function*() {
      const { mls } = yield* Xmtp
      const groups = (n: number) => Array.from({ length: n }, () => newGroupId())
      const other = yield* otherConnection
      yield* Effect.scoped(Effect.gen(function*() {
        const first = yield* subscribe(mls, "SubscribeGroupMessages", { filters: groups(3).map((groupId) => ({ groupId, idCursor: 0 })) })
        yield* first.headers
        // Followed once the stream runs: a refusal waits for that.
        const refusal = () => Effect.flip(firstMessage(other, groups(3)))
        const error: any = yield* refusal().pipe(Effect.eventually, Effect.timeout("10 seconds"))
        expect(error.code).toBe(8)
        expect(error.details).toMatch(/3 more would pass its limit of 5/)
        // Within the bound: followed, and live.
        expect(yield* firstMessage(other, groups(2))).toEqual([1])
      }))
      // The first subscription ended: its topics no longer count.
      expect(yield* firstMessage(other, groups(5)).pipe(Effect.retry({ times: 20 }), Effect.timeout("20 seconds"))).toEqual([1])
    }), { timeout: 60_000 })
})
