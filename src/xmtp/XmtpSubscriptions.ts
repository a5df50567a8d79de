/**
 * `SubscribeGroupMessages` and `SubscribeWelcomeMessages` as node-go serves them: every topic
 * named is replayed from above its cursor, then followed live, with a high-water mark per
 * topic so nothing is sent twice or skipped. The store's change feed is joined before the
 * first read, so an append during the replay is seen either by the replay or as a change.
 */
import type { mlsApi } from "@xmtp/proto"
import { Chunk, Effect, Queue, Stream } from "effect"
import { pageMayContinue } from "../layers/DeliveryRequests.ts"
import * as MarkedTopics from "../layers/MarkedTopics.ts"
import { ANY_TOPIC, type StoredEntry, type Topic } from "../services/DeliveryStore.ts"
import { int64 } from "./Proto.ts"
import { groupMessageOf, welcomeMessageOf } from "./XmtpMlsApi.ts"
import { groupTopic, welcomeTopic, XmtpStore } from "./XmtpStore.ts"
import { checkCount, checkId, MAX_PAGE_SIZE, MAX_RECORD_OVERHEAD, unavailable, type XmtpLimits, type XmtpStatus } from "./XmtpStatus.ts"

/** Follows `cursors` (topic -> last id seen), serving each new entry once, in each topic's order. */
const follow = <A>(cursors: Map<Topic, bigint>, serve: (entry: StoredEntry) => A, limits: XmtpLimits) =>
  Stream.unwrapScoped(Effect.gen(function*() {
    const store = yield* XmtpStore
    const changes = yield* store.changes
    const { awaitMarked, marked: dirty, wake } = yield* MarkedTopics.make(Array.from(cursors.keys()), {
      pollMillis: limits.pollMillis,
      pollPage: MAX_PAGE_SIZE,
      initiallyMarked: true
    })
    const mark = (topic: Topic) => {
      if (topic === ANY_TOPIC) for (const t of cursors.keys()) dirty.add(t)
      else if (cursors.has(topic)) dirty.add(topic)
    }
    // Drains the feed all the time into `dirty`, so a slow reader holds O(topics) here.
    yield* Queue.take(changes).pipe(
      Effect.zip(Queue.takeAll(changes)),
      Effect.flatMap(([first, rest]) =>
        Effect.suspend(() => {
          mark(first.topic)
          for (const change of rest) mark(change.topic)
          return wake
        })
      ),
      Effect.forever,
      Effect.forkScoped
    )
    const pull = Effect.gen(function*() {
      yield* awaitMarked
      const topic = dirty.values().next().value as Topic
      // Taken off before the read: a change during the read puts it back.
      dirty.delete(topic)
      const after = cursors.get(topic)!
      const entries = yield* Effect.catchAll(store.read(topic, after, MAX_PAGE_SIZE, false), unavailable)
      if (pageMayContinue(entries, MAX_PAGE_SIZE, limits.maxPayloadBytes + MAX_RECORD_OVERHEAD)) dirty.add(topic)
      const fresh = entries.filter((e) => e.sequenceId > after)
      const last = fresh[fresh.length - 1]
      if (last !== undefined) cursors.set(topic, last.sequenceId)
      return Chunk.unsafeFromArray(fresh)
    })
    // One message decoded at a time, as the reader takes it: a page decoded whole doubled what a
    // reader that reads nothing holds.
    return Stream.repeatEffectChunk(pull).pipe(Stream.rechunk(1), Stream.map(serve))
  }))

/** The highest cursor named per topic (a topic named twice is followed once). */
const cursorsOf = <F>(filters: ReadonlyArray<F>, topicOf: (f: F) => Topic, cursorOf: (f: F) => bigint) => {
  const cursors = new Map<Topic, bigint>()
  for (const f of filters) {
    const topic = topicOf(f)
    const cursor = cursorOf(f)
    if ((cursors.get(topic) ?? -1n) < cursor) cursors.set(topic, cursor)
  }
  return cursors
}

/** A streaming RPC: its decoded request to the messages it sends. */
export type Streaming = (request: never) => Stream.Stream<unknown, XmtpStatus, XmtpStore>

export const make = (limits: XmtpLimits): Record<string, Streaming> => ({
  SubscribeGroupMessages: (request: mlsApi.SubscribeGroupMessagesRequest) =>
    Stream.unwrap(Effect.gen(function*() {
      yield* checkCount("SubscribeGroupMessages", request.filters, limits.maxFilters)
      for (const f of request.filters) yield* checkId("group id", f.groupId)
      const cursors = cursorsOf(request.filters, (f) => groupTopic(f.groupId), (f) => int64(f.idCursor))
      return follow(cursors, (e) => groupMessageOf(e), limits)
    })),
  SubscribeWelcomeMessages: (request: mlsApi.SubscribeWelcomeMessagesRequest) =>
    Stream.unwrap(Effect.gen(function*() {
      yield* checkCount("SubscribeWelcomeMessages", request.filters, limits.maxFilters)
      for (const f of request.filters) yield* checkId("installation key", f.installationKey)
      const cursors = cursorsOf(request.filters, (f) => welcomeTopic(f.installationKey), (f) => int64(f.idCursor))
      return follow(cursors, welcomeMessageOf, limits)
    }))
})
