/**
 * The delivery service's door: checks a request's signed statement (`domain/RequestAuth.ts`)
 * against the identity store, refuses replays, and meters each installation.
 *
 * - The signer must be a current installation (the store's `installation`), the signature must
 *   verify under its key, and its time must be within `windowMillis` of the service's clock.
 * - A nonce is accepted once per installation within the window. The replay memory is bounded
 *   (`maxRemembered`, oldest forgotten first); a statement older than the window is refused
 *   anyway, so only a flood of more than that many requests within one window could reopen it.
 * - Each installation has two token buckets: requests and bytes. An empty bucket is a
 *   retryable `RateLimited`, which clients retry under their transport `Schedule`.
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
  /** Nonces remembered against replays. Default 200,000. */
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

const refused = (reason: "Unauthenticated" | "RateLimited", detail: string) =>
  new DeliveryError({ reason, retryable: reason === "RateLimited", detail })

export const make = (
  store: DeliveryStore["Type"],
  stored: <A>(effect: Effect.Effect<A, DeliveryStoreError>) => Effect.Effect<A, DeliveryError>,
  options: AuthenticatorOptions = {}
) => {
  const windowNs = BigInt(options.windowMillis ?? DEFAULT_WINDOW_MILLIS) * 1_000_000n
  const maxRemembered = options.maxRemembered ?? DEFAULT_MAX_REMEMBERED
  const limit: RateLimit = { ...defaultRateLimit, ...options.rateLimit }
  /** `installation/nonce` -> when it stops mattering (its statement leaves the window). */
  const seen = new Map<string, bigint>()
  const buckets = new Map<InstallationId, Bucket>()

  /** Remembers a nonce; past the cap the oldest (first inserted, so first to expire) is forgotten. */
  const remember = (key: string, untilNs: bigint, nowNs: bigint) => {
    seen.set(key, untilNs)
    for (const [old, until] of seen) {
      if (seen.size <= maxRemembered && until > nowNs) break
      seen.delete(old)
    }
  }

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
    const key = `${auth.installationId}/${auth.nonce}`
    if (seen.has(key)) return Effect.fail(refused("Unauthenticated", `${op}: replayed request`))
    remember(key, timeNs + windowNs, now)
    const overLimit = meter(auth.installationId, bytes, now)
    if (overLimit !== undefined) return Effect.fail(refused("RateLimited", `${op}: ${overLimit}; slow down`))
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

  return { authenticate }
}
