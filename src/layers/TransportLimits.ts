/**
 * The limits of a delivery server's transport and answers, with their defaults: plain values,
 * so the command line can show them without loading the server.
 */
export interface TransportLimits {
  /** Largest HTTP request body and WebSocket message, in bytes. Default 8 MiB. */
  readonly maxBodyBytes?: number
  /** Open TCP connections (HTTP and WebSocket) per server; more get a 503. Default 1,024. */
  readonly maxConnections?: number
  /** Calls (unary and streams) running at once for one connection. Default 64. */
  readonly maxInFlightPerConnection?: number
  /** Subscriptions running at once for one connection. Default 32. */
  readonly maxSubscriptionsPerConnection?: number
  /** Time to receive a request's headers. Default 10 s. */
  readonly headersTimeoutMillis?: number
  /** Time to receive a whole HTTP request, body included. Default 30 s. */
  readonly requestTimeoutMillis?: number
  /** An idle keep-alive HTTP connection is closed after this. Default 5 s. */
  readonly keepAliveTimeoutMillis?: number
  /** A WebSocket with no traffic either way (clients ping every 10 s) is closed after this. Default 60 s. */
  readonly idleTimeoutMillis?: number
  /** An HTTP stream response whose reader takes nothing for this long is cut off. Default 30 s. */
  readonly slowReaderTimeoutMillis?: number
}

export const DEFAULT_TRANSPORT_LIMITS: Required<TransportLimits> = {
  maxBodyBytes: 8 * 1024 * 1024,
  maxConnections: 1024,
  maxInFlightPerConnection: 64,
  maxSubscriptionsPerConnection: 32,
  headersTimeoutMillis: 10_000,
  requestTimeoutMillis: 30_000,
  keepAliveTimeoutMillis: 5_000,
  idleTimeoutMillis: 60_000,
  slowReaderTimeoutMillis: 30_000
}

/** Most identity-log entries in one `getIdentityUpdates` answer. */
export const DEFAULT_MAX_IDENTITY_ENTRIES = 500
