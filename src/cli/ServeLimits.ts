/** The limits `converge serve` takes, as its options show them; the server is not loaded here. */
import { DEFAULT_MAX_SUBSCRIBED_TOPICS } from "../layers/TopicFanOut.ts"
import { DEFAULT_MAX_IDENTITY_ENTRIES, DEFAULT_TRANSPORT_LIMITS } from "../layers/TransportLimits.ts"

/** The limits `converge serve` takes, in the units of its options (timeouts in seconds). */
export interface ServeLimits {
  readonly maxBodyBytes: number
  readonly maxConnections: number
  readonly maxInFlight: number
  readonly maxSubscriptions: number
  /** Topics all subscriptions follow together, server-wide, on each face. */
  readonly maxSubscribedTopics: number
  readonly maxIdentityEntries: number
  readonly headersTimeout: number
  readonly requestTimeout: number
  readonly keepAliveTimeout: number
  readonly idleTimeout: number
  readonly slowReaderTimeout: number
}

const seconds = (millis: number) => millis / 1000

export const DEFAULT_SERVE_LIMITS: ServeLimits = {
  maxBodyBytes: DEFAULT_TRANSPORT_LIMITS.maxBodyBytes,
  maxConnections: DEFAULT_TRANSPORT_LIMITS.maxConnections,
  maxInFlight: DEFAULT_TRANSPORT_LIMITS.maxInFlightPerConnection,
  maxSubscriptions: DEFAULT_TRANSPORT_LIMITS.maxSubscriptionsPerConnection,
  maxSubscribedTopics: DEFAULT_MAX_SUBSCRIBED_TOPICS,
  maxIdentityEntries: DEFAULT_MAX_IDENTITY_ENTRIES,
  headersTimeout: seconds(DEFAULT_TRANSPORT_LIMITS.headersTimeoutMillis),
  requestTimeout: seconds(DEFAULT_TRANSPORT_LIMITS.requestTimeoutMillis),
  keepAliveTimeout: seconds(DEFAULT_TRANSPORT_LIMITS.keepAliveTimeoutMillis),
  idleTimeout: seconds(DEFAULT_TRANSPORT_LIMITS.idleTimeoutMillis),
  slowReaderTimeout: seconds(DEFAULT_TRANSPORT_LIMITS.slowReaderTimeoutMillis)
}

