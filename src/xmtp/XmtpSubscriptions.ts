/**
 * `SubscribeGroupMessages` and `SubscribeWelcomeMessages` as node-go serves them: every topic
 * named is replayed from above its cursor, then followed live, with a high-water mark per
 * topic so nothing is sent twice or skipped.
 *
 * What an idle subscription costs is about 150 bytes a topic (a short key, a slot, an entry in the
 * server's index) and nothing per second: one fiber per server takes the store's change feed and
 * marks only the subscriptions following a changed topic (`TopicFanOut`); the opening asks the
 * store once per 500 topics which have anything after their cursor and reads only those
 * (`MarkedTopics`: 1,000 reads per subscription of 1,000 topics stalled the event loop for
 * seconds); a polling safety net runs only where the feed can miss an append.
 * A subscription is registered with the feed before its first look at the store, so an append
 * meanwhile is seen either by that look or as a change.
 */
import type { mlsApi } from "@xmtp/proto"
import { Chunk, Effect, Stream } from "effect"
import { pageMayContinue } from "../layers/DeliveryRequests.ts"
import { inTurn } from "../layers/EventLoopTurns.ts"
import * as MarkedTopics from "../layers/MarkedTopics.ts"
import * as TopicFanOut from "../layers/TopicFanOut.ts"
import type { StoredEntry, Topic, TopicChange } from "../services/DeliveryStore.ts"
import { int64 } from "./Proto.ts"
import { groupMessageOf, welcomeMessageOf } from "./XmtpMlsApi.ts"
import { groupTopic, welcomeTopic, XmtpStore } from "./XmtpStore.ts"
import {
  checkCount,
  checkId,
  Code,
  MAX_PAGE_SIZE,
  MAX_RECORD_OVERHEAD,
  unavailable,
  type XmtpLimits,
  XmtpStatus
} from "./XmtpStatus.ts"

/**
 * A topic as held here: its kind's letter and its id's bytes, a character each. The store's name
 * (`xg/` + hex) is twice as long, and an idle subscription is mostly its 1,000 topics.
 */
type Key = string & { readonly XmtpTopicKey: unique symbol }

/** One flat string (a concatenation is a rope, which V8 copies again when it is hashed). */
const keyOf = (kind: "g" | "w", id: Uint8Array): Key => {
  const bytes = Buffer.allocUnsafe(1 + id.length)
  bytes[0] = kind.charCodeAt(0)
  bytes.set(id, 1)
  return bytes.toString("latin1") as Key
}

const topicOfKey = (key: Key): Topic =>
  (key[0] === "g" ? groupTopic : welcomeTopic)(Buffer.from(key.slice(1), "latin1"))

/** The key of a group or welcome topic; undefined for other topics (no subscription follows them). */
const keyOfTopic = (topic: Topic): Key | undefined =>
  topic.startsWith("xg/") ? keyOf("g", Buffer.from(topic.slice(3), "hex"))
  : topic.startsWith("xw/") ? keyOf("w", Buffer.from(topic.slice(3), "hex"))
  : undefined

/** One subscription's state, shared with the server's fan-out. */
interface Follower {
  /** Topic -> last id served, for those past 0: most of an idle subscription's cursors are 0. */
  readonly cursors: Map<Key, bigint>
  readonly topics: ReadonlyArray<Key>
  /** The topics to read, marked by the feed and by looks at the store's heads. */
  readonly marks: MarkedTopics.MarkedTopics<Key, XmtpStatus>
}

const cursorOf = (cursors: ReadonlyMap<Key, bigint>, key: Key) => cursors.get(key) ?? 0n

const markChange = (f: Follower, key: Key, change: TopicChange) => {
  // An announcement the reader has already served (it read past it) needs no read.
  if (change.sequenceId > cursorOf(f.cursors, key)) {
    f.marks.marked.add(key)
    f.marks.wake()
  }
}

/**
 * The server's fan-out of the store's change feed (`TopicFanOut`), by compact keys: a change
 * marks its topic on the subscriptions following it, `ANY_TOPIC` has every subscription compare
 * every head again. The reader is a daemon: it serves every subscription, until the store closes.
 */
const makeFanOut = (maxTopics: number) =>
  TopicFanOut.makeWith<Key, Follower, XmtpStatus, XmtpStore>({
    maxTopics,
    changes: Effect.flatMap(XmtpStore, (store) => store.changes),
    fork: Effect.forkDaemon,
    keyOf: keyOfTopic,
    onChange: markChange,
    onAnyTopic: (f) => f.marks.recheck(),
    refuse: (reason) => new XmtpStatus({ code: Code.ResourceExhausted, reason })
  })

type FanOut = ReturnType<typeof makeFanOut>

/** Marks those of `keys` (one `MarkedTopics` chunk) that have entries after their cursor: one query. */
const markNews = (store: XmtpStore["Type"], cursors: ReadonlyMap<Key, bigint>, marked: Set<Key>, keys: ReadonlyArray<Key>) =>
  Effect.gen(function*() {
    const chunk = new Map(keys.map((key) => [topicOfKey(key), key] as const))
    const heads = yield* Effect.catchAll(store.heads(Array.from(chunk.keys())), unavailable)
    for (const [topic, head] of heads) {
      const key = chunk.get(topic)!
      if (head > cursorOf(cursors, key)) marked.add(key)
    }
  })

/** Follows `topics` after their cursors, serving each new entry once, in each topic's order. */
const follow = <A>(fanOut: FanOut, { cursors, topics }: Parsed, serve: (entry: StoredEntry) => A, limits: XmtpLimits) =>
  Stream.unwrapScoped(Effect.gen(function*() {
    const store = yield* XmtpStore
    const marks: MarkedTopics.MarkedTopics<Key, XmtpStatus> = yield* MarkedTopics.make(topics, {
      check: (keys) => markNews(store, cursors, marks.marked, keys),
      poll: store.changesMayMiss,
      pollMillis: limits.pollMillis,
      pollPage: MAX_PAGE_SIZE
    })
    const f: Follower = { cursors, topics, marks }
    // Joined before the first look at the heads (in `awaitMarked`): an append meanwhile is seen
    // by one or the other.
    yield* fanOut.join(f)
    const pull = Effect.gen(function*() {
      yield* marks.awaitMarked
      const key = marks.marked.values().next().value as Key
      // Taken off before the read: a change during the read puts it back.
      marks.marked.delete(key)
      const after = cursorOf(cursors, key)
      const entries = yield* Effect.catchAll(store.read(topicOfKey(key), after, MAX_PAGE_SIZE, false), unavailable)
      if (pageMayContinue(entries, MAX_PAGE_SIZE, limits.maxPayloadBytes + MAX_RECORD_OVERHEAD)) marks.marked.add(key)
      const fresh = entries.filter((e) => e.sequenceId > after)
      const last = fresh[fresh.length - 1]
      if (last !== undefined) cursors.set(key, last.sequenceId)
      return Chunk.unsafeFromArray(fresh)
    })
    // One message decoded at a time, as the reader takes it: a page decoded whole doubled what a
    // reader that reads nothing holds.
    return Stream.repeatEffectChunk(pull).pipe(Stream.rechunk(1), Stream.map(serve))
  }))

interface Parsed {
  readonly topics: ReadonlyArray<Key>
  readonly cursors: Map<Key, bigint>
}

/** The topics named (a topic named twice is followed once, from its highest cursor) and their cursors past 0. */
const cursorsOf = <F>(filters: ReadonlyArray<F>, topicOf: (f: F) => Key, cursorOf: (f: F) => bigint): Parsed => {
  const all = new Map<Key, bigint>()
  for (const f of filters) {
    const topic = topicOf(f)
    const cursor = cursorOf(f)
    if ((all.get(topic) ?? -1n) < cursor) all.set(topic, cursor)
  }
  const cursors = new Map<Key, bigint>()
  for (const [topic, cursor] of all) if (cursor > 0n) cursors.set(topic, cursor)
  return { topics: Array.from(all.keys()), cursors }
}

/** A streaming RPC: its decoded request to the messages it sends. */
export type Streaming = (request: never) => Stream.Stream<unknown, XmtpStatus, XmtpStore>

/**
 * A subscription to the topics `parse` finds in `request`, checked and parsed in a turn. The
 * request's filters are let go of once parsed: grpc-js keeps the request on its call for the
 * life of the stream, and 1,000 filters (each id a Buffer on the message's bytes, and the bytes)
 * were most of what an idle subscription held.
 */
const subscription = <R extends { filters: Array<unknown> }>(
  fanOut: FanOut,
  limits: XmtpLimits,
  request: R,
  parse: (request: R) => Effect.Effect<Parsed, XmtpStatus>,
  serve: (entry: StoredEntry) => unknown
) => {
  let held: R | undefined = request
  return Stream.unwrap(Effect.suspend(() => {
    const taken = held!
    held = undefined
    return inTurn(parse(taken)).pipe(
      Effect.ensuring(Effect.sync(() => (taken.filters.length = 0))),
      Effect.map((parsed) => follow(fanOut, parsed, serve, limits))
    )
  }))
}

/** The streaming RPCs of one server (they share its fan-out of the change feed and its topic bound). */
export const make = (limits: XmtpLimits): Record<string, Streaming> => {
  const fanOut = makeFanOut(limits.maxSubscribedTopics)
  return {
    SubscribeGroupMessages: (request: mlsApi.SubscribeGroupMessagesRequest) =>
      subscription(fanOut, limits, request, (r) =>
        Effect.gen(function*() {
          yield* checkCount("SubscribeGroupMessages", r.filters, limits.maxFilters)
          for (const f of r.filters) yield* checkId("group id", f.groupId)
          return cursorsOf(r.filters, (f) => keyOf("g", f.groupId), (f) => int64(f.idCursor))
        }), (e) => groupMessageOf(e)),
    SubscribeWelcomeMessages: (request: mlsApi.SubscribeWelcomeMessagesRequest) =>
      subscription(fanOut, limits, request, (r) =>
        Effect.gen(function*() {
          yield* checkCount("SubscribeWelcomeMessages", r.filters, limits.maxFilters)
          for (const f of r.filters) yield* checkId("installation key", f.installationKey)
          return cursorsOf(r.filters, (f) => keyOf("w", f.installationKey), (f) => int64(f.idCursor))
        }), welcomeMessageOf)
  }
}
