/**
 * What the XMTP V3 face answers a refused or failed call with: a gRPC status code and a reason,
 * as node-go does. Plus the bounds it applies (the Converge face's, and node-go's where they
 * are stricter).
 */
import { Data, Effect } from "effect"
import type { DeliveryStoreError } from "../services/DeliveryStore.ts"

/** gRPC status codes used here (grpc/status.h). */
export const Code = {
  InvalidArgument: 3,
  NotFound: 5,
  ResourceExhausted: 8,
  FailedPrecondition: 9,
  Aborted: 10,
  Unimplemented: 12,
  Internal: 13,
  Unavailable: 14
} as const

export class XmtpStatus extends Data.TaggedError("XmtpStatus")<{ readonly code: number; readonly reason: string }> {
  override get message() {
    return this.reason
  }
}

export const invalid = (reason: string) => new XmtpStatus({ code: Code.InvalidArgument, reason })
export const refuse = (reason: string) => Effect.fail(invalid(reason))

/** A store failure: retryable for the client, logged here with its cause. */
export const unavailable = (error: DeliveryStoreError) =>
  Effect.logWarning("xmtp: the store failed", error).pipe(
    Effect.zipRight(Effect.fail(new XmtpStatus({ code: Code.Unavailable, reason: `the store failed in ${error.operation}` })))
  )

export interface XmtpLimits {
  /** Largest MLS message, welcome, key package or identity update, in bytes (the Converge face's payload bound). */
  readonly maxPayloadBytes: number
  /** Most messages in one send (the Converge face's batch bound). */
  readonly maxBatch: number
  /** Most ids in one lookup (key packages, identity logs, inbox ids). */
  readonly maxIdsPerLookup: number
  /** Most topics one subscription or `GetNewestGroupMessage` may name. */
  readonly maxFilters: number
  /** How often a subscription checks a page of its topics when told nothing (a safety net; Postgres only). */
  readonly pollMillis: number
  /** Most topics all subscriptions of the server follow together (a topic followed twice counts twice). */
  readonly maxSubscribedTopics: number
  /** Most identity-log entries in one `GetIdentityUpdates` answer (`--max-identity-entries`). */
  readonly maxIdentityEntries: number
}

export const DEFAULT_XMTP_LIMITS: XmtpLimits = {
  maxPayloadBytes: 1024 * 1024,
  maxBatch: 50,
  maxIdsPerLookup: 100,
  maxFilters: 1000,
  pollMillis: 5000,
  // About 200 MiB of subscription state at ~200 bytes a topic; the per-connection bound alone
  // allows 1,024 connections x 32 subscriptions x 1,000 topics.
  maxSubscribedTopics: 1_000_000,
  maxIdentityEntries: 500
}

/** node-go's page size: a larger or missing limit means this. */
export const MAX_PAGE_SIZE = 100
/** node-go's commit-log batch limits. */
export const MAX_COMMIT_LOG_INSERTS = 10
export const MAX_COMMIT_LOG_QUERIES = 20
/** Longest group id or installation key accepted (libxmtp's are 16 and 32 bytes). */
export const MAX_ID_BYTES = 64

/**
 * How much a stored record may exceed its payload bound: a welcome's metadata (64 KiB) and HPKE
 * key (4 KiB), a group message's sender HMAC (1 KiB), ids and framing. A page the store cut by
 * bytes is told apart from a last page with this (a record is at most payload + overhead).
 */
export const MAX_RECORD_OVERHEAD = 72 * 1024

/**
 * Most payload bytes one answer carries, whatever it batches: what one page may (gRPC clients
 * take 4 MiB messages unless told otherwise).
 */
export const MAX_ANSWER_BYTES = 4 * 1024 * 1024

export const checkCount = (what: string, items: ReadonlyArray<unknown>, max: number, min = 1) =>
  items.length < min
    ? refuse(`${what}: nothing to do`)
    : items.length > max
    ? Effect.fail(new XmtpStatus({ code: Code.InvalidArgument, reason: `${what}: ${items.length} items exceed the limit of ${max}` }))
    : Effect.void

export const checkId = (what: string, id: Uint8Array | undefined) =>
  id === undefined || id.length === 0
    ? refuse(`${what} is required`)
    : id.length > MAX_ID_BYTES
    ? refuse(`${what} is longer than ${MAX_ID_BYTES} bytes`)
    : Effect.void

export const checkBytes = (what: string, bytes: Uint8Array | undefined, max: number) =>
  bytes === undefined || bytes.length === 0
    ? refuse(`${what} is empty`)
    : bytes.length > max
    ? Effect.fail(new XmtpStatus({ code: Code.InvalidArgument, reason: `${what} is ${bytes.length} bytes, over the limit of ${max}` }))
    : Effect.void

/** An optional field's bound: empty is fine. */
export const checkMaxBytes = (what: string, bytes: Uint8Array, max: number) =>
  bytes.length > max
    ? Effect.fail(new XmtpStatus({ code: Code.InvalidArgument, reason: `${what} is ${bytes.length} bytes, over the limit of ${max}` }))
    : Effect.void
