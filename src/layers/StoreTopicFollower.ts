/**
 * A subscription to one topic of the store: it replays the topic after a cursor, then follows
 * it live. It joins the service's one reader of the change feed (`TopicFanOut`, which hands it
 * only its topics' changes) before the first read, so every append committed after that read
 * is announced to it. Once caught up, the entries a change carries (the
 * writer's own commits) are handed on without reading the store when they follow the last
 * delivered id without a gap; any other change, a gap, or too many waiting entries mean a read,
 * as without them. No gap, no duplicate, strict order, also when other servers append.
 */
import { Chunk, Effect, Stream } from "effect"
import type { DeliveryError } from "../domain/Errors.ts"
import { ANY_TOPIC, type StoredEntry, type Topic, type TopicChange } from "../services/DeliveryStore.ts"
import { pageMayContinue } from "./DeliveryRequests.ts"
import * as MarkedTopics from "./MarkedTopics.ts"
import type { StoreDeliveryContext } from "./StoreDeliveryContext.ts"

/** Most payload bytes a subscription holds from announcements before it reads the store instead. */
const MAX_ANNOUNCED_BYTES = 256 * 1024

/** Where one subscription stands. */
interface Following {
  lastDelivered: bigint
  /** Entries announced since the last pull, and whether something announced needs a read. */
  announced: Array<StoredEntry>
  announcedBytes: number
  mustRead: boolean
  /** Set once a read came back short: the topic holds nothing more until it changes. */
  caughtUp: boolean
}

/** Notes a change; whether it may concern this topic beyond what was delivered. */
const note = (s: Following, topic: Topic, pageSize: number, change: TopicChange): boolean => {
  if (change.topic === ANY_TOPIC) {
    s.mustRead = true
    return true
  }
  if (change.topic !== topic || change.sequenceId <= s.lastDelivered) return false
  // Another announcement of entries already given (Postgres: the NOTIFY after the
  // writer's own announcement): covered, if they turn out to follow on without a gap.
  const given = s.announced[s.announced.length - 1]
  if (change.entries === undefined && given !== undefined && change.sequenceId <= given.sequenceId) return false
  const bytes = change.entries?.reduce((n, e) => n + e.payload.length, 0) ?? 0
  if (
    change.entries === undefined || s.announced.length + change.entries.length > pageSize ||
    s.announcedBytes + bytes > MAX_ANNOUNCED_BYTES
  ) {
    // Held back by size (or never given): the store has them.
    s.announced = []
    s.announcedBytes = 0
    s.mustRead = true
  } else {
    s.announced.push(...change.entries)
    s.announcedBytes += bytes
  }
  return true
}

/** The next items: the announced entries when they follow on without a gap, else a read of the store. */
const pull = <E>(
  c: StoreDeliveryContext,
  s: Following,
  topic: Topic,
  awaitChange: Effect.Effect<void>,
  toEnvelope: (e: StoredEntry) => E
) =>
  // Decided each time it runs: the stream repeats this one effect.
  Effect.suspend(() =>
    s.caughtUp ? Effect.zipRight(awaitChange, pullNow(c, s, topic, toEnvelope)) : pullNow(c, s, topic, toEnvelope)
  )

/** `pull` without waiting for a change: what the topic has now after the last delivered id. */
const pullNow = <E>(
  c: StoreDeliveryContext,
  s: Following,
  topic: Topic,
  toEnvelope: (e: StoredEntry) => E
) =>
  Effect.gen(function*() {
    const given = s.announced
    const read = s.mustRead
    s.announced = []
    s.announcedBytes = 0
    s.mustRead = false
    if (s.caughtUp && !read && given.length > 0) {
      const fresh = given.filter((e) => e.sequenceId > s.lastDelivered)
      if (fresh.every((e, i) => e.sequenceId === s.lastDelivered + 1n + BigInt(i))) {
        const last = fresh[fresh.length - 1]
        if (last !== undefined) s.lastDelivered = last.sequenceId
        return fresh.map((e) => toEnvelope({ ...e, payload: e.payload.slice() }))
      }
    }
    const entries = yield* c.stored(c.store.read(topic, s.lastDelivered, c.pageSize))
    s.caughtUp = !pageMayContinue(entries, c.pageSize, c.maxPayloadBytes)
    // Strictly above the last delivered id, in order: a guard that costs nothing.
    const fresh = entries.filter((e) => e.sequenceId > s.lastDelivered)
    const last = fresh[fresh.length - 1]
    if (last !== undefined) s.lastDelivered = last.sequenceId
    return fresh.map(toEnvelope)
  })

/** Replays the topic after `after`, then follows it live. */
export const follow = <E>(
  c: StoreDeliveryContext,
  topic: Topic,
  after: bigint,
  toEnvelope: (e: StoredEntry) => E
): Stream.Stream<E, DeliveryError> =>
  Stream.unwrapScoped(
    Effect.gen(function*() {
      const s: Following = { lastDelivered: after, announced: [], announcedBytes: 0, mustRead: false, caughtUp: false }
      // The service's feed notes each change of this topic into one flag (the latch) and a bounded
      // buffer as it comes, so a subscriber that is slow to pull holds bounded memory here,
      // however busy the topic is; changes of other topics never reach this subscription.
      const changed = yield* Effect.makeLatch(false)
      // Joined before the first read: every append after that read is announced.
      yield* c.fanOut.join({
        topics: [topic],
        onChange: (change) => (note(s, topic, c.pageSize, change) ? changed.unsafeOpen() : undefined)
      })
      // The safety net where the feed may miss an append: the latch also opens every poll
      // interval, so a caught-up subscription reads the store at least that often.
      if (c.store.changesMayMiss) yield* changed.open.pipe(Effect.delay(c.pollMillis), Effect.forever, Effect.forkScoped)
      /**
       * Caught up: waits for a change of this topic (or the next poll), then closes the latch
       * before the read, so a change during the read re-opens it.
       */
      const awaitChange = Effect.zipRight(changed.await, changed.close)
      return Stream.repeatEffectChunk(
        Effect.map(pull(c, s, topic, awaitChange, toEnvelope), (items) => Chunk.unsafeFromArray(items))
      )
    })
  )

/**
 * Replays several topics after their cursors, then follows them live, with one reader for all
 * of them: a topic that changed (or has news at the opening) is marked, and the reader serves the
 * marked topics one read at a time, in turn. What one more topic costs is its `Following` (a few
 * fields) and its share of the announcements, not a reader of its own: a follower per topic (a
 * change subscription, two fibers and a merge's queue each) held about 100 KB and kept
 * `converge serve` busy for a minute after one connection with 8 subscriptions of 1,000
 * topics hung up. Which topics have news is asked of the store's heads (`MarkedTopics`), not
 * read topic by topic. The same rules as `follow` per topic: no gap, no duplicate, strict order.
 */
export const followMany = <E>(
  c: StoreDeliveryContext,
  cursors: ReadonlyMap<Topic, bigint>,
  toEnvelope: (topic: Topic) => (e: StoredEntry) => E
): Stream.Stream<E, DeliveryError> =>
  Stream.unwrapScoped(
    Effect.gen(function*() {
      const states = new Map<Topic, Following>()
      for (const [topic, after] of cursors) {
        states.set(topic, { lastDelivered: after, announced: [], announcedBytes: 0, mustRead: false, caughtUp: false })
      }
      // Announced bytes held for all topics: past the cap, a topic reads the store instead.
      let heldBytes = 0
      /** The topic reads the store next time: what it was announced may not be all there is. */
      const mustRead = (topic: Topic, s: Following) => {
        heldBytes -= s.announcedBytes
        s.announced = []
        s.announcedBytes = 0
        s.mustRead = true
        marks.marked.add(topic)
      }
      const topics = Array.from(states.keys())
      const marks: MarkedTopics.MarkedTopics<Topic, DeliveryError> = yield* MarkedTopics.make(topics, {
        check: (topics) => checkHeads(c, states, topics, mustRead, marks.marked),
        poll: c.store.changesMayMiss,
        pollMillis: c.pollMillis,
        pollPage: c.pageSize
      })
      const noteOne = (topic: Topic, s: Following, change: TopicChange) => {
        const before = s.announcedBytes
        const concerned = note(s, topic, c.pageSize, change)
        heldBytes += s.announcedBytes - before
        if (heldBytes > MAX_ANNOUNCED_BYTES) mustRead(topic, s)
        else if (concerned) marks.marked.add(topic)
      }
      // Joined before the first look at the heads (in `awaitMarked`): an append meanwhile is seen
      // by one or the other. The feed hands over only this subscription's topics and `ANY_TOPIC`.
      yield* c.fanOut.join({
        topics,
        onChange: (change) => {
          // Changes may have been missed: the heads say which topics have news, not a read of each.
          if (change.topic === ANY_TOPIC) return marks.recheck()
          const s = states.get(change.topic)
          if (s !== undefined) noteOne(change.topic, s, change)
          marks.wake()
        }
      })
      const next = Effect.gen(function*() {
        yield* marks.awaitMarked
        const topic = marks.marked.values().next().value as Topic
        // Unmarked before the read: a change during the read marks it again.
        marks.marked.delete(topic)
        const s = states.get(topic)!
        heldBytes -= s.announcedBytes
        const items = yield* pullNow(c, s, topic, toEnvelope(topic))
        // A page that may continue: read on, after the other marked topics.
        if (!s.caughtUp) marks.marked.add(topic)
        return Chunk.unsafeFromArray(items)
      })
      return Stream.repeatEffectChunk(next)
    })
  )

/**
 * Compares `topics`' heads with what was delivered: a topic with more is to read the store; one
 * without (and nothing pending) is caught up, so what the feed announces next can be handed on.
 */
const checkHeads = (
  c: StoreDeliveryContext,
  states: ReadonlyMap<Topic, Following>,
  topics: ReadonlyArray<Topic>,
  mustRead: (topic: Topic, s: Following) => void,
  marked: ReadonlySet<Topic>
) =>
  Effect.map(c.stored(c.store.heads(topics)), (heads) => {
    for (const topic of topics) {
      const s = states.get(topic)!
      if ((heads.get(topic) ?? 0n) > s.lastDelivered) mustRead(topic, s)
      // The feed was joined before this look: whatever lands after it is announced.
      else if (!marked.has(topic) && !s.mustRead && s.announced.length === 0) s.caughtUp = true
    }
  })
