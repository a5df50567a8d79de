/**
 * The Converge face's subscriptions share one reader of the store's change feed per service,
 * which hands an append only to the subscriptions following its topic: an append to a topic
 * nobody follows costs the idle subscriptions nothing (before, each subscription took its own
 * copy of the feed, so one append woke every subscription on the server). And the topics
 * followed server-wide are bounded (`maxSubscribedTopics`).
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Exit, Fiber, Layer, Queue, Stream } from "effect"
import { DeliveryError } from "../src/domain/Errors.ts"
import type { GroupId } from "../src/domain/Ids.ts"
import * as MemoryDeliveryStore from "../src/layers/MemoryDeliveryStore.ts"
import * as StoreDeliveryService from "../src/layers/StoreDeliveryService.ts"
import * as TopicFanOut from "../src/layers/TopicFanOut.ts"
import * as TsMlsCrypto from "../src/layers/TsMlsCrypto.ts"
import { DeliveryService } from "../src/services/DeliveryService.ts"
import { DeliveryStore, groupTopic, type TopicChange } from "../src/services/DeliveryStore.ts"

const newGroup = () => Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString("hex") as GroupId

/** Idle many-topic subscriptions in the measurement: enough that a per-subscription cost shows. */
const SUBSCRIPTIONS = 200
const TOPICS_EACH = 5
/** Appends measured: a few thousand microseconds of difference add up to something a clock sees. */
const APPENDS = 500

interface Tap {
  /** Changes handed to any reader of the feed: per append, how many readers woke for it. */
  handed: number
}

/** A memory store whose change feed counts what it hands to its readers. */
const tapped = (tap: Tap) =>
  Layer.scoped(
    DeliveryStore,
    Effect.map(DeliveryStore, (store): DeliveryStore["Type"] => ({
      ...store,
      changes: Effect.gen(function*() {
        const inner = yield* store.changes
        const queue = yield* Effect.acquireRelease(Queue.unbounded<TopicChange>(), Queue.shutdown)
        yield* Queue.take(inner).pipe(
          Effect.flatMap((change) => (tap.handed++, Queue.offer(queue, change))),
          Effect.forever,
          Effect.forkScoped
        )
        return queue
      })
    }))
  ).pipe(Layer.provide(MemoryDeliveryStore.layer))

const setup = (options: StoreDeliveryService.StoreDeliveryOptions = {}) =>
  Effect.gen(function*() {
    const tap: Tap = { handed: 0 }
    const context = yield* Layer.build(
      StoreDeliveryService.layer(options).pipe(Layer.provideMerge(tapped(tap)), Layer.provide(TsMlsCrypto.layer()))
    )
    const store = Context.get(context, DeliveryStore)
    const service = Context.get(context, DeliveryService)
    const send = (group: GroupId, text: string) =>
      store.append([{ topic: groupTopic(group), payload: new TextEncoder().encode(text) }])
    return { tap, store, service, send }
  })

/** Waits up to ~2 s (a busy host) until `done`. */
const until = (done: () => boolean) =>
  Effect.gen(function*() {
    for (let i = 0; i < 200 && !done(); i++) yield* Effect.sleep("10 millis")
  })

/** CPU microseconds (user + system) of `effect`. */
const cpuOf = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const before = process.cpuUsage()
    yield* effect
    const used = process.cpuUsage(before)
    return used.user + used.system
  })

describe("Converge subscriptions share one reader of the change feed", () => {
  it.scopedLive("an append to a topic nobody follows wakes none of 200 idle subscriptions; followers get theirs once, in order", () =>
    Effect.gen(function*() {
      const { send, service, tap } = yield* setup()
      const strangers = Array.from({ length: 20 }, newGroup)
      // Fresh payloads each time: the store takes an identical payload as a retry and announces nothing.
      let sent = 0
      const appendsToStrangers = Effect.forEach(
        Array.from({ length: APPENDS }, (_, i) => i),
        (i) => Effect.zipRight(Effect.suspend(() => send(strangers[i % strangers.length]!, `s${sent++}`)), Effect.yieldNow()),
        { discard: true }
      )
      // Warm up, then the cost of appends with no subscription at all.
      yield* appendsToStrangers
      yield* Effect.sleep("50 millis")
      const cpuAlone = yield* cpuOf(Effect.zipRight(appendsToStrangers, Effect.sleep("50 millis")))

      // 200 subscriptions of 5 topics; neighbours share one topic, so a topic has 1 or 2 followers.
      const topics = Array.from({ length: SUBSCRIPTIONS * (TOPICS_EACH - 1) }, newGroup)
      const topicsOf = (i: number) =>
        Array.from({ length: TOPICS_EACH }, (_, k) => topics[(i * (TOPICS_EACH - 1) + k) % topics.length]!)
      const received = Array.from({ length: SUBSCRIPTIONS }, () => [] as Array<string>)
      for (let i = 0; i < SUBSCRIPTIONS; i++) {
        yield* Effect.forkScoped(Stream.runForEach(
          service.subscribeGroupMessages(topicsOf(i).map((groupId) => ({ groupId, afterSequenceId: 0n }))),
          (e) => Effect.sync(() => received[i]!.push(`${e.groupId} ${e.sequenceId} ${new TextDecoder().decode(e.payload)}`))
        ))
      }
      // Opened (each has checked its heads) and idle.
      yield* Effect.sleep("300 millis")

      const handedBefore = tap.handed
      const cpuWith = yield* cpuOf(Effect.zipRight(appendsToStrangers, Effect.sleep("50 millis")))
      const handedPerAppend = (tap.handed - handedBefore) / APPENDS
      console.log(
        `fan-out: ${SUBSCRIPTIONS} idle subscriptions: ${handedPerAppend} feed readers woken per append; ` +
          `CPU per append ${(cpuAlone / APPENDS).toFixed(1)} us alone, ${(cpuWith / APPENDS).toFixed(1)} us with them`
      )
      // One reader per service, whatever the number of subscriptions (before: one per subscription).
      expect(handedPerAppend).toBe(1)
      // Nobody follows these topics: the subscriptions cost nothing per append. Room for a busy host.
      expect(cpuWith).toBeLessThan(cpuAlone * 3 + 100_000)

      // Topic shared by subscriptions 6 and 7 (the last of 6's, the first of 7's), and one of 6's alone.
      const shared = topicsOf(7)[0]!
      const alone = topicsOf(6)[1]!
      expect(topicsOf(6)).toContain(shared)
      for (let n = 1; n <= 5; n++) {
        yield* send(shared, `m${n}`)
        yield* send(alone, `a${n}`)
      }
      yield* until(() => received[6]!.length >= 10 && received[7]!.length >= 5)
      yield* Effect.sleep("100 millis")
      const expected = (group: GroupId, prefix: string) => [1, 2, 3, 4, 5].map((n) => `${group} ${n} ${prefix}${n}`)
      expect(received[7]).toEqual(expected(shared, "m"))
      expect(received[6]!.filter((r) => r.startsWith(shared))).toEqual(expected(shared, "m"))
      expect(received[6]!.filter((r) => r.startsWith(alone))).toEqual(expected(alone, "a"))
      expect(received[6]).toHaveLength(10)
      expect(received.filter((r, i) => i !== 6 && i !== 7 && r.length > 0)).toEqual([])
    }))
})

describe("a subscription whose change handler throws (a bug)", () => {
  it.scopedLive("costs the others nothing: every other follower still gets each change, and later ones too", () =>
    Effect.gen(function*() {
      const store = yield* DeliveryStore
      const fanOut = yield* TopicFanOut.make(store, 100)
      const [shared, other] = [groupTopic(newGroup()), groupTopic(newGroup())]
      const heard = { broken: 0, beside: [] as Array<bigint>, elsewhere: [] as Array<bigint> }
      // Registered first, so it is handed each change of `shared` before the follower beside it.
      yield* fanOut.join({ topics: [shared], onChange: () => { heard.broken++; throw new Error("a bug in a handler") } })
      yield* fanOut.join({ topics: [shared], onChange: (c) => void heard.beside.push(c.sequenceId) })
      yield* fanOut.join({ topics: [other], onChange: (c) => void heard.elsewhere.push(c.sequenceId) })
      const append = (topic: typeof shared, n: number) =>
        store.append([{ topic, payload: new TextEncoder().encode(`${topic} ${n}`) }])
      for (let n = 1; n <= 3; n++) {
        yield* append(shared, n)
        yield* append(other, n)
      }
      yield* until(() => heard.beside.length >= 3 && heard.elsewhere.length >= 3)
      expect(heard.broken).toBe(3)
      expect(heard.beside).toEqual([1n, 2n, 3n])
      expect(heard.elsewhere).toEqual([1n, 2n, 3n])
    }).pipe(Effect.provide(MemoryDeliveryStore.layer)))
})

describe("the topics followed server-wide are bounded", () => {
  it.scopedLive("past maxSubscribedTopics a subscription is refused at once (LimitExceeded, retryable); ending one frees its topics", () =>
    Effect.gen(function*() {
      const { service } = yield* setup({ maxSubscribedTopics: 10 })
      const groupsFilter = (n: number) => Array.from({ length: n }, () => ({ groupId: newGroup(), afterSequenceId: 0n }))
      const follow = (stream: Stream.Stream<unknown, DeliveryError>) => Effect.forkScoped(Stream.runDrain(stream))
      const first = yield* follow(service.subscribeGroupMessages(groupsFilter(6)))
      // A one-topic subscription counts too: 7.
      const single = yield* follow(service.subscribeGroupMessages(groupsFilter(1)))
      yield* Effect.sleep("100 millis")

      /** The refusal of a subscription of `n` topics: at once, not after a timeout. */
      const refusalOf = (n: number) =>
        Effect.gen(function*() {
          const refused = yield* Stream.runDrain(service.subscribeGroupMessages(groupsFilter(n))).pipe(
            Effect.timeout("2 seconds"),
            Effect.exit
          )
          const error = Exit.isFailure(refused) && refused.cause._tag === "Fail" ? refused.cause.error : undefined
          expect(error).toBeInstanceOf(DeliveryError)
          return error as DeliveryError
        })
      const refusal = yield* refusalOf(4)
      expect(refusal.reason).toBe("LimitExceeded")
      expect(refusal.retryable).toBe(true)
      expect(refusal.detail).toBe("the server follows 7 topics; 4 more would pass its limit of 10")

      // 3 more fit exactly.
      const fits = yield* follow(service.subscribeGroupMessages(groupsFilter(3)))
      yield* Effect.sleep("100 millis")
      expect(fits.unsafePoll()).toBeNull()
      expect((yield* refusalOf(1)).detail).toBe("the server follows 10 topics; 1 more would pass its limit of 10")

      // Ending the first subscription frees its 6.
      yield* Fiber.interrupt(first)
      const again = yield* follow(service.subscribeGroupMessages(groupsFilter(6)))
      yield* Effect.sleep("100 millis")
      expect(again.unsafePoll()).toBeNull()
      expect(single.unsafePoll()).toBeNull()
      yield* Fiber.interrupt(single)
    }))
})
