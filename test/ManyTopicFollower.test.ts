/**
 * A many-topic subscription (`StoreTopicFollower.followMany`) asks the store's heads which topics
 * have news rather than reading each: these check that it still delivers every message once, in
 * order, when appends land during the opening, when the feed loses announcements (with a
 * safety poll where the store says it may, or after an `ANY_TOPIC`), and counts its reads.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Queue, Stream } from "effect"
import type { GroupId } from "../src/domain/Ids.ts"
import * as MemoryDeliveryStore from "../src/layers/MemoryDeliveryStore.ts"
import * as StoreDeliveryService from "../src/layers/StoreDeliveryService.ts"
import * as TsMlsCrypto from "../src/layers/TsMlsCrypto.ts"
import { DeliveryService } from "../src/services/DeliveryService.ts"
import { ANY_TOPIC, DeliveryStore, groupTopic, type Topic, type TopicChange } from "../src/services/DeliveryStore.ts"

const newGroup = () => Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString("hex") as GroupId

interface Tap {
  reads: number
  /** Announcements of these topics are dropped. */
  readonly deaf: Set<Topic>
  /** Subscribers' queues, to announce `ANY_TOPIC` on. */
  readonly queues: Set<Queue.Queue<TopicChange>>
  /** Runs before each `heads` answer (e.g. appends during the opening). */
  beforeHeads: Effect.Effect<void>
}

/** A memory store that counts reads, may drop announcements, and says whether its feed may miss them. */
const tapped = (tap: Tap, changesMayMiss: boolean) =>
  Layer.scoped(
    DeliveryStore,
    Effect.map(DeliveryStore, (store): DeliveryStore["Type"] => ({
      ...store,
      changesMayMiss,
      read: (...args) => Effect.suspend(() => (tap.reads++, store.read(...args))),
      heads: (topics) => Effect.zipRight(tap.beforeHeads, store.heads(topics)),
      changes: Effect.gen(function*() {
        const inner = yield* store.changes
        const queue = yield* Effect.acquireRelease(Queue.unbounded<TopicChange>(), Queue.shutdown)
        tap.queues.add(queue)
        yield* Effect.addFinalizer(() => Effect.sync(() => tap.queues.delete(queue)))
        yield* Queue.take(inner).pipe(
          Effect.flatMap((change) => (tap.deaf.has(change.topic) ? Effect.void : Queue.offer(queue, change))),
          Effect.forever,
          Effect.forkScoped
        )
        return queue
      })
    }))
  ).pipe(Layer.provide(MemoryDeliveryStore.layer))

const setup = (changesMayMiss: boolean, pollMillis = 100) =>
  Effect.gen(function*() {
    const tap: Tap = { reads: 0, deaf: new Set(), queues: new Set(), beforeHeads: Effect.void }
    const context = yield* Layer.build(
      StoreDeliveryService.layer({ pollMillis }).pipe(
        Layer.provideMerge(tapped(tap, changesMayMiss)),
        Layer.provide(TsMlsCrypto.layer())
      )
    )
    const store = Context.get(context, DeliveryStore)
    const groups = Array.from({ length: 600 }, newGroup)
    const send = (group: GroupId, text: string) =>
      store.append([{ topic: groupTopic(group), payload: new TextEncoder().encode(text) }])
    const received: Array<string> = []
    const subscribe = Effect.forkScoped(Stream.runForEach(
      Context.get(context, DeliveryService).subscribeGroupMessages(groups.map((groupId) => ({ groupId, afterSequenceId: 0n }))),
      (e) => Effect.sync(() => received.push(`${e.groupId} ${e.sequenceId} ${new TextDecoder().decode(e.payload)}`))
    ))
    const waitFor = (n: number) =>
      Effect.gen(function*() {
        for (let i = 0; i < 200 && received.length < n; i++) yield* Effect.sleep("10 millis")
        return received
      })
    return { tap, groups, send, received, subscribe, waitFor }
  })

describe("a many-topic subscription", () => {
  it.scopedLive("delivers what was there, what lands during the opening and after, once each, in order", () =>
    Effect.gen(function*() {
      const { groups, received, send, subscribe, tap, waitFor } = yield* setup(false)
      yield* send(groups[0]!, "a")
      yield* send(groups[550]!, "b")
      // Between the feed's subscription and the heads (and in the second chunk's gap too).
      let during = 0
      tap.beforeHeads = Effect.suspend(() => send(groups[++during * 100]!, `during ${during}`)).pipe(Effect.asVoid, Effect.orDie)
      yield* subscribe
      yield* waitFor(4)
      tap.beforeHeads = Effect.void
      yield* send(groups[0]!, "c")
      yield* send(groups[599]!, "d")
      yield* waitFor(6)
      yield* Effect.sleep("200 millis")
      expect(received.slice().sort()).toEqual([
        `${groups[0]} 1 a`,
        `${groups[0]} 2 c`,
        `${groups[100]} 1 during 1`,
        `${groups[200]} 1 during 2`,
        `${groups[550]} 1 b`,
        `${groups[599]} 1 d`
      ].sort())
      expect(received.indexOf(`${groups[0]} 1 a`)).toBeLessThan(received.indexOf(`${groups[0]} 2 c`))
    }))

  it.scopedLive("where the feed may miss an append, the safety poll of the heads finds it", () =>
    Effect.gen(function*() {
      const { groups, send, subscribe, tap, waitFor } = yield* setup(true, 50)
      tap.deaf.add(groupTopic(groups[1]!))
      yield* subscribe
      yield* Effect.sleep("100 millis")
      yield* send(groups[1]!, "unannounced")
      // 600 topics, 100 a poll every 50 ms: found within about 300 ms.
      expect(yield* waitFor(1)).toEqual([`${groups[1]} 1 unannounced`])
      expect(tap.reads).toBe(1)
    }))

  it.scopedLive("without a poll, ANY_TOPIC has the heads checked again: only the topic with news is read", () =>
    Effect.gen(function*() {
      const { groups, received, send, subscribe, tap, waitFor } = yield* setup(false)
      tap.deaf.add(groupTopic(groups[2]!))
      tap.deaf.add(groupTopic(groups[500]!))
      yield* subscribe
      yield* Effect.sleep("100 millis")
      yield* send(groups[2]!, "x")
      yield* send(groups[500]!, "y")
      yield* Effect.sleep("300 millis")
      // Nothing announced, nothing polled.
      expect(received).toEqual([])
      expect(tap.reads).toBe(0)
      for (const queue of tap.queues) yield* Queue.offer(queue, { topic: ANY_TOPIC, sequenceId: 0n })
      expect((yield* waitFor(2)).slice().sort()).toEqual([`${groups[2]} 1 x`, `${groups[500]} 1 y`].sort())
      expect(tap.reads).toBe(2)
    }))
})
