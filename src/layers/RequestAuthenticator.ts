/**
 * The delivery service's door: checks a request's signed statement (`domain/RequestAuth.ts`)
 * against the identity store, refuses replays, and meters each installation.
 *
 * - The signer must be a current installation (the store's `installation`), the signature must
 *   verify under its key, and its time must be within `windowMillis` of the service's clock.
 * - A nonce is accepted once per installation within the window. Only accepted requests are
 *   remembered (a refused one, e.g. `RateLimited`, takes no room), in a set per installation;
 *   see `replayMemory` for its bounds and why forgetting never reopens a replay.
 * - Each installation has two token buckets: requests and bytes. An empty bucket is a
 *   retryable `RateLimited`, which clients retry under their transport `Schedule`.
 * - A statement older than what the replay memory still holds is a retryable `LimitExceeded`
 *   (the memory's bound, not the caller, refused it): clients sign each attempt anew, so the
 *   retry carries a fresh time and nonce and passes. A replayed header stays refused however
 *   often it is sent, so the flag gives an attacker nothing.
 */
import { Effect, FiberRef, Option } from "effect"
import { DeliveryError } from "../domain/Errors.ts"
import type { InboxId, InstallationId } from "../domain/Ids.ts"
import { type AuthenticatedOperation, type RequestAuth, verifyRequest } from "../domain/RequestAuth.ts"
import { currentSigner } from "../services/DeliveryAuth.ts"
import type { CurrentInstallation, DeliveryStore, DeliveryStoreError } from "../services/DeliveryStore.ts"

export interface RateLimit {
  /** Requests per second an installation may sustain. */
  readonly requestsPerSecond: number
  /** Requests an idle installation may send at once. */
  readonly requestBurst: number
  /** Bytes per second (payloads and key packages) an installation may sustain. */
  readonly bytesPerSecond: number
  readonly byteBurst: number
}

export interface AuthenticatorOptions {
  /** How far a request's time may be from the service's clock. Default 5 minutes. */
  readonly windowMillis?: number
  /** Nonces remembered against replays, all installations together. Default 200,000. */
  readonly maxRemembered?: number
  readonly rateLimit?: Partial<RateLimit>
}

export const defaultRateLimit: RateLimit = {
  requestsPerSecond: 50,
  requestBurst: 500,
  bytesPerSecond: 4 * 1024 * 1024,
  byteBurst: 64 * 1024 * 1024
}

const DEFAULT_WINDOW_MILLIS = 5 * 60 * 1000
const DEFAULT_MAX_REMEMBERED = 200_000
/** Installations whose buckets are kept; the least recently seen are forgotten (a fresh, full bucket). */
const MAX_METERED = 100_000

export interface Caller {
  readonly installationId: InstallationId
  readonly inboxId: InboxId
}

interface Bucket {
  requests: number
  bytes: number
  atNs: bigint
}

interface Refusal {
  readonly reason: "Unauthenticated" | "RateLimited" | "LimitExceeded"
  readonly detail: string
}

// Not `Unauthenticated` for what a fresh signature would pass: the engine reads that reason as
// "this installation is revoked" (it fails the intent, stops reading its welcomes).
const refused = (reason: Refusal["reason"], detail: string) =>
  new DeliveryError({ reason, retryable: reason !== "Unauthenticated", detail })

/** An accepted statement the replay memory holds. */
interface Remembered {
  readonly timeNs: bigint
  readonly installationId: InstallationId
  readonly nonce: string
}

// A binary min-heap on statement time: the memory expires and forgets the oldest statement first.
const heapPush = (heap: Array<Remembered>, entry: Remembered) => {
  let i = heap.push(entry) - 1
  while (i > 0) {
    const parent = (i - 1) >> 1
    if (heap[parent]!.timeNs <= entry.timeNs) break
    heap[i] = heap[parent]!
    i = parent
  }
  heap[i] = entry
}

const heapPop = (heap: Array<Remembered>): Remembered => {
  const top = heap[0]!
  const last = heap.pop()!
  if (heap.length === 0) return top
  let i = 0
  for (;;) {
    const left = 2 * i + 1
    if (left >= heap.length) break
    const child = left + 1 < heap.length && heap[left + 1]!.timeNs < heap[left]!.timeNs ? left + 1 : left
    if (heap[child]!.timeNs >= last.timeNs) break
    heap[i] = heap[child]!
    i = child
  }
  heap[i] = last
  return top
}

/**
 * The nonces of accepted statements still inside the window, a set per installation.
 *
 * - An installation's set is bounded by its rate limit: a statement matters until its time plus
 *   the window, and its time is at most a window ahead, so at most `maxPerInstallation` (burst
 *   plus two windows of its rate) are live. Past that (its bucket was forgotten) its requests are
 *   refused as `RateLimited`: an installation never pushes out anyone's nonces, even its own.
 * - All sets together hold at most `maxRemembered`. Past that, many installations (a Sybil
 *   flood) would push out others' nonces, so the oldest statement is forgotten and
 *   `forgottenThroughNs` rises to its time: any statement signed at or before it is refused as
 *   a possible replay (retryably). Forgetting the oldest keeps that mark below every statement
 *   still held, so fresh statements pass; only old-but-valid ones fail, and clients sign each
 *   attempt anew.
 *
 * Invariant: an accepted statement still in the window is in its set, or is at or before
 * `forgottenThroughNs`; either way it is refused if presented again.
 */
const replayMemory = (windowNs: bigint, maxRemembered: number, maxPerInstallation: number) => {
  const nonces = new Map<InstallationId, Set<string>>()
  const byTime: Array<Remembered> = []
  let forgottenThroughNs = -1n

  const forget = (entry: Remembered) => {
    const set = nonces.get(entry.installationId)!
    set.delete(entry.nonce)
    if (set.size === 0) nonces.delete(entry.installationId)
  }

  /** Why this statement may not be accepted (after dropping the ones the window refuses anyway). */
  const refusal = (
    installationId: InstallationId,
    nonce: string,
    timeNs: bigint,
    nowNs: bigint
  ): Refusal | undefined => {
    while (byTime.length > 0 && byTime[0]!.timeNs + windowNs < nowNs) forget(heapPop(byTime))
    const set = nonces.get(installationId)
    if (set?.has(nonce)) return { reason: "Unauthenticated", detail: "replayed request" }
    if (timeNs <= forgottenThroughNs) {
      // Maybe an honest request signed just before a flood moved the mark: signed anew, it passes.
      const detail = "the request is older than the replay memory holds (a possible replay); sign it anew"
      return { reason: "LimitExceeded", detail }
    }
    if ((set?.size ?? 0) >= maxPerInstallation) {
      return { reason: "RateLimited", detail: `more than ${maxPerInstallation} requests within the time window; slow down` }
    }
    return undefined
  }

  /** Remembers an accepted statement; past the global bound the oldest is forgotten, behind the mark. */
  const remember = (installationId: InstallationId, nonce: string, timeNs: bigint) => {
    const set = nonces.get(installationId)
    if (set === undefined) nonces.set(installationId, new Set([nonce]))
    else set.add(nonce)
    heapPush(byTime, { timeNs, installationId, nonce })
    while (byTime.length > maxRemembered) {
      const oldest = heapPop(byTime)
      forget(oldest)
      if (oldest.timeNs > forgottenThroughNs) forgottenThroughNs = oldest.timeNs
    }
  }

  return { refusal, remember, size: () => byTime.length, installations: () => nonces.size }
}

export const make = (
  store: DeliveryStore["Type"],
  stored: <A>(effect: Effect.Effect<A, DeliveryStoreError>) => Effect.Effect<A, DeliveryError>,
  options: AuthenticatorOptions = {}
) => {
  const windowNs = BigInt(options.windowMillis ?? DEFAULT_WINDOW_MILLIS) * 1_000_000n
  const maxRemembered = options.maxRemembered ?? DEFAULT_MAX_REMEMBERED
  const limit: RateLimit = { ...defaultRateLimit, ...options.rateLimit }
  // +1: a statement exactly at the window's edge is still accepted.
  const maxPerInstallation = limit.requestBurst + Math.ceil(limit.requestsPerSecond * 2 * Number(windowNs) / 1e9) + 1
  const memory = replayMemory(windowNs, maxRemembered, maxPerInstallation)
  const buckets = new Map<InstallationId, Bucket>()

  /** Takes one request and `bytes` from the installation's buckets, refilled for the time passed. */
  const meter = (installationId: InstallationId, bytes: number, nowNs: bigint) => {
    const bucket = buckets.get(installationId) ?? { requests: limit.requestBurst, bytes: limit.byteBurst, atNs: nowNs }
    const seconds = Number(nowNs > bucket.atNs ? nowNs - bucket.atNs : 0n) / 1e9
    bucket.requests = Math.min(limit.requestBurst, bucket.requests + seconds * limit.requestsPerSecond)
    bucket.bytes = Math.min(limit.byteBurst, bucket.bytes + seconds * limit.bytesPerSecond)
    bucket.atNs = nowNs
    buckets.delete(installationId)
    buckets.set(installationId, bucket)
    if (buckets.size > MAX_METERED) buckets.delete(buckets.keys().next().value!)
    if (bucket.requests < 1) return `more than ${limit.requestsPerSecond} requests per second`
    if (bucket.bytes < bytes) return `more than ${limit.bytesPerSecond} bytes per second`
    bucket.requests -= 1
    bucket.bytes -= bytes
    return undefined
  }

  /** The checks after the key lookup, as plain code: the signature, replays, the quotas. */
  const admit = (
    op: AuthenticatedOperation,
    digest: string,
    bytes: number,
    auth: RequestAuth,
    timeNs: bigint,
    now: bigint,
    installation: CurrentInstallation | undefined
  ): Effect.Effect<Caller, DeliveryError> => {
    if (installation === undefined) {
      return Effect.fail(refused("Unauthenticated", `${op}: ${auth.installationId} is not a current installation`))
    }
    if (!verifyRequest(auth, op, digest, installation.signaturePublicKey)) {
      return Effect.fail(refused("Unauthenticated", `${op}: the request's signature does not verify`))
    }
    const notNew = memory.refusal(auth.installationId, auth.nonce, timeNs, now)
    if (notNew !== undefined) return Effect.fail(refused(notNew.reason, `${op}: ${notNew.detail}`))
    const overLimit = meter(auth.installationId, bytes, now)
    if (overLimit !== undefined) return Effect.fail(refused("RateLimited", `${op}: ${overLimit}; slow down`))
    // Only now, accepted: a refused request must take no room in the memory.
    memory.remember(auth.installationId, auth.nonce, timeNs)
    return Effect.succeed({ installationId: auth.installationId, inboxId: installation.inboxId })
  }

  /**
   * The caller of this request, or a refusal. `bytes` is what the request asks the service to
   * store, for the byte quota. Every request comes this way: its pure steps are plain code
   * between the three effects it needs (the signer, the clock, the key lookup).
   */
  const authenticate = (
    op: AuthenticatedOperation,
    digest: string,
    bytes = 0
  ): Effect.Effect<Caller, DeliveryError> =>
    Effect.flatMap(FiberRef.get(currentSigner), (signer) => {
      if (Option.isNone(signer)) return Effect.fail(refused("Unauthenticated", `${op} needs a signed request`))
      return Effect.flatMap(signer.value(op, digest), (auth) =>
        Effect.clockWith((clock) => {
          const now = clock.unsafeCurrentTimeNanos()
          const timeNs = BigInt(auth.timeNs)
          const skew = timeNs > now ? timeNs - now : now - timeNs
          if (skew > windowNs) {
            return Effect.fail(
              refused("Unauthenticated", `${op}: the request's time is more than ${windowNs / 1_000_000n} ms off`)
            )
          }
          return Effect.flatMap(
            stored(store.installation(auth.installationId)),
            (installation) => admit(op, digest, bytes, auth, timeNs, now, installation)
          )
        }))
    })

  return {
    authenticate,
    /** Statements and installations the replay memory holds (for tests of its bounds). */
    remembered: () => ({ statements: memory.size(), installations: memory.installations() })
  }
}
