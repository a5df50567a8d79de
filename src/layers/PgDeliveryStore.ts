/**
 * The `DeliveryStore` on Postgres (`@effect/sql-pg`): the SQL store of `SqlDeliveryStore.ts`
 * with LISTEN/NOTIFY for changes, so several servers can share one database. Kept apart so
 * that nothing else loads the Postgres driver.
 */
import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Clock, Deferred, Duration, Effect, Layer, PubSub, Queue, type Scope, Stream } from "effect"
import { toHex } from "../domain/Bytes.ts"
import { ANY_TOPIC, DeliveryStore, DeliveryStoreError, type Topic, type TopicChange } from "../services/DeliveryStore.ts"
import { MAX_PAGE_BYTES } from "./DeliveryRequests.ts"
import { makeWith, migrate } from "./SqlDeliveryStore.ts"

type Service = DeliveryStore["Type"]

export interface DeliveryStoreOptions {
  /** Postgres only: the LISTEN/NOTIFY channel for topic changes. Default `converge_ds`. */
  readonly channel?: string
  /** Postgres only: how often the notification connection is checked. Default 10 seconds. */
  readonly heartbeatMillis?: number
}

const DEFAULT_CHANNEL = "converge_ds"
const DEFAULT_HEARTBEAT_MILLIS = 10_000
/** How long a heartbeat may take to come back (at most) before the LISTEN connection counts as lost. */
const MAX_HEARTBEAT_TIMEOUT_MILLIS = 5000
/** How long the first LISTEN may take before the store fails to start. */
const STARTUP_TIMEOUT = Duration.seconds(15)

/** Heartbeats and probes share the channel with changes; no topic starts with `~`. */
const HEARTBEAT_PREFIX = "~hb "
/** Own notifications remembered until they come back (see `ownChanges`). */
const MAX_OWN_CHANGES = 10_000

const encodeChange = (change: TopicChange) => `${change.topic} ${change.sequenceId}`

const decodeChange = (payload: string): TopicChange => {
  const space = payload.lastIndexOf(" ")
  const topic = payload.slice(0, space) as Topic
  const sequence = payload.slice(space + 1)
  return space > 0 && /^[0-9]+$/.test(sequence)
    ? { topic, sequenceId: BigInt(sequence) }
    : { topic: ANY_TOPIC, sequenceId: 0n }
}

/**
 * The store on Postgres. Every instance LISTENs on `channel` with one connection (through
 * `PgClient.listen`) and fans out to its subscribers. `PgClient.listen` neither says when the
 * LISTEN is in place nor fails when its connection dies, so the instance confirms the LISTEN
 * with a NOTIFY to itself before it serves, and repeats that as a heartbeat; when a heartbeat
 * does not come back, it LISTENs again and announces `ANY_TOPIC`, since changes may have been
 * missed in between.
 */
export const makePg = (
  options: DeliveryStoreOptions,
  maxPageBytes: number = MAX_PAGE_BYTES
): Effect.Effect<Service, DeliveryStoreError, PgClient.PgClient | Scope.Scope> =>
  Effect.gen(function*() {
    const pg = yield* PgClient.PgClient
    yield* migrate.pipe(Effect.provideService(SqlClient.SqlClient, pg))
    const channel = options.channel ?? DEFAULT_CHANNEL
    const heartbeatMillis = options.heartbeatMillis ?? DEFAULT_HEARTBEAT_MILLIS
    if (!Number.isInteger(heartbeatMillis) || heartbeatMillis <= 0) {
      return yield* Effect.dieMessage(`DeliveryStore: heartbeatMillis must be a positive integer, got ${heartbeatMillis}`)
    }
    const heartbeatEvery = Duration.millis(heartbeatMillis)
    const heartbeatTimeout = Duration.millis(Math.min(MAX_HEARTBEAT_TIMEOUT_MILLIS, Math.max(250, heartbeatMillis)))

    const pubsub = yield* Effect.acquireRelease(PubSub.unbounded<TopicChange>(), PubSub.shutdown)
    const beats = yield* Queue.unbounded<string>()
    const instance = toHex(crypto.getRandomValues(new Uint8Array(8)))
    const ownBeats = `${HEARTBEAT_PREFIX}${instance} `
    let beatCount = 0

    /**
     * The notifications of this instance's own appends, sent inside their transactions: this
     * instance announces those commits itself, with their entries, so its subscribers need not
     * read them back; their NOTIFY is dropped when it comes. Bounded: past the cap the oldest
     * are forgotten and their NOTIFY passes (one extra read). Should a commit's outcome be lost
     * after it happened, its NOTIFY may have been dropped before that was known: the subscribers'
     * poll catches up. A transaction that failed forgets its notifications (`afterFailure`).
     */
    const ownChanges = new Set<string>()
    const noteOwn = (changes: ReadonlyArray<TopicChange>) =>
      Effect.sync(() => {
        for (const change of changes) {
          ownChanges.add(encodeChange(change))
          if (ownChanges.size > MAX_OWN_CHANGES) ownChanges.delete(ownChanges.values().next().value!)
        }
      })

    const onPayload = (payload: string): Effect.Effect<void> =>
      payload.startsWith(HEARTBEAT_PREFIX)
        // Other instances' heartbeats share the channel: only ours matter here.
        ? (payload.startsWith(ownBeats) ? Queue.offer(beats, payload) : Effect.void)
        : ownChanges.delete(payload)
        ? Effect.void
        : PubSub.publish(pubsub, decodeChange(payload))

    /** Sends one heartbeat and waits until it comes back through the LISTEN connection. */
    const heartbeat = (within: Duration.Duration) =>
      Effect.gen(function*() {
        yield* Queue.takeAll(beats)
        const token = `${ownBeats}${++beatCount}`
        // Not `pg.notify`: in @effect/sql-pg 0.53 it sends `NOTIFY chan, $1`, which Postgres
        // rejects (NOTIFY takes no bind parameters). `pg_notify` does.
        yield* pg`SELECT pg_notify(${channel}, ${token})`
        const arrived = Effect.flatMap(Queue.take(beats), (beat) => (beat === token ? Effect.void : Effect.fail("other")))
        yield* arrived.pipe(Effect.eventually, Effect.timeoutFail({ duration: within, onTimeout: () => "timeout" }))
      })

    const ready = yield* Deferred.make<void>()

    /** One LISTEN session: listen, confirm it, announce a re-read, then check it until it fails. */
    const session = Effect.scoped(Effect.gen(function*() {
      const listening = yield* pg.listen(channel).pipe(Stream.runForEach(onPayload), Effect.forkScoped)
      // The LISTEN is issued once the stream runs; probe until a NOTIFY of ours comes back.
      yield* heartbeat(Duration.millis(200)).pipe(
        Effect.retry({ times: Math.ceil(Duration.toMillis(STARTUP_TIMEOUT) / 200) })
      )
      yield* Deferred.succeed(ready, undefined)
      yield* PubSub.publish(pubsub, { topic: ANY_TOPIC, sequenceId: 0n })
      yield* Effect.forever(
        Effect.sleep(heartbeatEvery).pipe(
          Effect.zipRight(heartbeat(heartbeatTimeout).pipe(Effect.retry({ times: 1 })))
        )
      ).pipe(Effect.raceFirst(Effect.zipRight(listening.await, Effect.fail("the LISTEN stream ended"))))
    }))

    // Keep a session up for the store's lifetime. The listener's clock is the real one, so
    // that a TestClock in the caller's tests does not stop heartbeats or the startup probe.
    yield* Effect.forever(
      session.pipe(
        Effect.catchAllCause((cause) =>
          Effect.logWarning("DeliveryStore: LISTEN connection lost, listening again", cause).pipe(
            Effect.zipRight(Effect.sleep(Duration.millis(500)))
          )
        )
      )
    ).pipe(Effect.withClock(Clock.make()), Effect.forkScoped)

    yield* Deferred.await(ready).pipe(
      Effect.timeoutFail({
        duration: STARTUP_TIMEOUT,
        onTimeout: () =>
          new DeliveryStoreError({ operation: "listen", cause: `no LISTEN on ${channel} within ${Duration.format(STARTUP_TIMEOUT)}` })
      }),
      Effect.withClock(Clock.make())
    )

    return yield* makeWith({
      // Postgres delivers these when (and only if) the transaction commits.
      // One statement (one round trip) per 100 changes.
      inTransaction: (changes) =>
        Effect.zipRight(noteOwn(changes), Effect.forEach(
          Array.from({ length: Math.ceil(changes.length / 100) }, (_, i) => changes.slice(i * 100, (i + 1) * 100)),
          (chunk) => pg`SELECT ${pg.csv(chunk.map((change) => pg`pg_notify(${channel}, ${encodeChange(change)})`))}`,
          { discard: true }
        )),
      // And to this instance's own subscribers at once, with the entries, so they need not read
      // them back (their NOTIFY is dropped, see `ownChanges`).
      afterCommit: (changes) => PubSub.publishAll(pubsub, changes),
      // Not committed (or not known to be): its NOTIFY, if any, must pass.
      afterFailure: (changes) =>
        Effect.sync(() => {
          for (const change of changes) ownChanges.delete(encodeChange(change))
        }),
      changes: PubSub.subscribe(pubsub)
    // A commit whose outcome was lost may have had its NOTIFY dropped (`ownChanges`).
    }, maxPageBytes, true).pipe(Effect.provideService(SqlClient.SqlClient, pg))
  })

/** Postgres (`@effect/sql-pg`): several servers may share it; changes go through LISTEN/NOTIFY. */
export const layerPg = (
  options: DeliveryStoreOptions = {}
): Layer.Layer<DeliveryStore, DeliveryStoreError, PgClient.PgClient> => Layer.scoped(DeliveryStore, makePg(options))
