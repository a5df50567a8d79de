/**
 * The request checks every delivery-service layer applies, so the memory layer and the
 * store-backed server answer bad input with the same typed errors.
 */
import { Effect, FiberRef, Schema } from "effect"
import { DeliveryError } from "../domain/Errors.ts"
import { GroupId, InstallationId } from "../domain/Ids.ts"
import { QueryPage } from "../domain/Wire.ts"
import { MAX_IDS_PER_LOOKUP } from "../services/DeliveryService.ts"

export const invalidRequest = (detail: string) => new DeliveryError({ reason: "InvalidRequest", retryable: false, detail })

export interface RequestLimits {
  readonly maxPayloadBytes: number
  readonly pageSize: number
  readonly maxBatch: number
}

const isGroupId = Schema.is(GroupId)
const isInstallationId = Schema.is(InstallationId)

/** A refusal, or none: the checks of one request, run as plain code before any effect. */
export type Refusal = DeliveryError | undefined

const orVoid = (refusal: Refusal): Effect.Effect<void, DeliveryError> =>
  refusal === undefined ? Effect.void : Effect.fail(refusal)

export const makeChecks = ({ maxBatch, maxPayloadBytes, pageSize }: RequestLimits) => {
  const refusals = {
    payload: (payload: Uint8Array, what: string): Refusal => {
      if (!(payload instanceof Uint8Array)) return invalidRequest(`${what}: payload is not bytes`)
      if (payload.length === 0) return invalidRequest(`${what}: empty payload`)
      if (payload.length > maxPayloadBytes) {
        return new DeliveryError({
          reason: "PayloadTooLarge",
          retryable: false,
          detail: `${what}: payload of ${payload.length} bytes exceeds ${maxPayloadBytes}`
        })
      }
      return undefined
    },
    batch: (items: ReadonlyArray<unknown>, what: string): Refusal => {
      if (items.length === 0) return invalidRequest(`${what}: no items`)
      if (items.length > maxBatch) {
        return new DeliveryError({
          reason: "BatchTooLarge",
          retryable: false,
          detail: `${what}: ${items.length} items exceed the batch limit of ${maxBatch}`
        })
      }
      return undefined
    },
    groupId: (groupId: string, what: string): Refusal =>
      isGroupId(groupId) ? undefined : invalidRequest(`${what}: malformed group id ${groupId}`),
    installationId: (id: string, what: string): Refusal =>
      isInstallationId(id) ? undefined : invalidRequest(`${what}: malformed installation id ${id}`)
  }
  return {
    /** The same checks as plain functions, for a request checked whole in one step. */
    refusals,
    payload: (payload: Uint8Array, what: string): Effect.Effect<void, DeliveryError> =>
      orVoid(refusals.payload(payload, what)),
    batch: (items: ReadonlyArray<unknown>, what: string): Effect.Effect<void, DeliveryError> =>
      orVoid(refusals.batch(items, what)),
    cursor: (cursor: bigint, what: string): Effect.Effect<void, DeliveryError> =>
      typeof cursor === "bigint" && cursor >= 0n
        ? Effect.void
        : Effect.fail(invalidRequest(`${what}: cursor must be a non-negative bigint, got ${String(cursor)}`)),
    /** The effective page size; `limit` must be a positive integer when given. */
    limit: (limit: number | undefined, what: string): Effect.Effect<number, DeliveryError> => {
      if (limit === undefined) return Effect.succeed(pageSize)
      if (!Number.isInteger(limit) || limit <= 0) {
        return Effect.fail(invalidRequest(`${what}: limit must be a positive integer, got ${limit}`))
      }
      return Effect.succeed(Math.min(limit, pageSize))
    },
    groupId: (groupId: string, what: string): Effect.Effect<void, DeliveryError> =>
      orVoid(refusals.groupId(groupId, what)),
    installationId: (id: string, what: string): Effect.Effect<void, DeliveryError> =>
      orVoid(refusals.installationId(id, what))
  }
}

// ---- bounds on one request's work and one answer's size ----

/**
 * Most payload bytes in one page or stream chunk. A store stops filling a page before an
 * entry that would take it past this, but always returns at least one entry.
 */
export const MAX_PAGE_BYTES = 4 * 1024 * 1024

/**
 * Whether a page may continue, so it must carry a `next` cursor: it is full by count, or it
 * is so full by bytes that the store may have stopped on `maxPageBytes` before the next entry
 * (which is at most `maxPayloadBytes`). At worst an exhausted page of large entries points on
 * and the caller's next read comes back empty.
 */
export const pageMayContinue = (
  payloads: ReadonlyArray<{ readonly payload: Uint8Array }>,
  limit: number,
  maxPayloadBytes: number,
  maxPageBytes: number = MAX_PAGE_BYTES
): boolean => {
  if (payloads.length === 0) return false
  if (payloads.length >= limit) return true
  let bytes = 0
  for (const { payload } of payloads) bytes += payload.length
  return bytes > maxPageBytes - maxPayloadBytes
}

type Entry = { readonly sequenceId: bigint; readonly payload: Uint8Array }

/**
 * `page` cut to its longest prefix within `budget` payload bytes (at least one entry when
 * `atLeastOne`). A page cut short points at its last entry kept or, with none kept, at `after`
 * itself: nothing read, ask again from the same cursor. Only a topic read to its end has no `next`.
 */
export const cutPage = <A extends Entry>(
  page: QueryPage<A>,
  after: bigint,
  budget: number,
  atLeastOne: boolean
): { readonly page: QueryPage<A>; readonly bytes: number } => {
  let bytes = 0
  let kept = 0
  for (const item of page.items) {
    if (bytes + item.payload.length > budget && !(atLeastOne && kept === 0)) break
    bytes += item.payload.length
    kept++
  }
  if (kept === page.items.length) return { page, bytes }
  const items = page.items.slice(0, kept)
  return { page: new QueryPage(items, kept === 0 ? after : items[kept - 1]!.sequenceId), bytes }
}

/**
 * A batch answer's pages sharing one budget of payload bytes, in request order: a page that does
 * not fit keeps what does (possibly nothing) and points on. The first entry of the answer is
 * always kept, so asking again from the cursors answered always gets further.
 */
export const budgetPages = <A extends Entry>(
  pages: ReadonlyArray<QueryPage<A>>,
  afters: ReadonlyArray<bigint>,
  budget: number
): { readonly pages: ReadonlyArray<QueryPage<A>>; readonly bytes: number } => {
  let bytes = 0
  const cut = pages.map((page, i) => {
    const taken = cutPage(page, afters[i]!, budget - bytes, bytes === 0)
    bytes += taken.bytes
    return taken.page
  })
  return { pages: cut, bytes }
}

/** Most topics one subscription may follow: each costs the server a reader. */
export const MAX_SUBSCRIBE_FILTERS = 1000

export const checkFilterCount = (filters: ReadonlyArray<unknown>, what: string): Effect.Effect<void, DeliveryError> =>
  filters.length <= MAX_SUBSCRIBE_FILTERS ? Effect.void : Effect.fail(
    new DeliveryError({
      reason: "LimitExceeded",
      retryable: false,
      detail: `${what}: ${filters.length} filters exceed the limit of ${MAX_SUBSCRIBE_FILTERS} per subscription`
    })
  )

/** Most ids in one `fetchKeyPackages` or `getIdentityUpdates` call (the port's contract). */
export { MAX_IDS_PER_LOOKUP }

export const checkIdCount = (ids: ReadonlyArray<unknown>, what: string): Effect.Effect<void, DeliveryError> =>
  ids.length <= MAX_IDS_PER_LOOKUP ? Effect.void : Effect.fail(
    new DeliveryError({
      reason: "BatchTooLarge",
      retryable: false,
      detail: `${what}: ${ids.length} ids exceed the limit of ${MAX_IDS_PER_LOOKUP} per call`
    })
  )

/**
 * Span options of the server's hot paths: no call-site stack trace. The names already say where
 * a span comes from, and capturing a trace (a `new Error()`) on every request cost about 0.08 ms
 * of server CPU per message, spans exported or not.
 */
export const SPAN = { captureStackTrace: false } as const

/**
 * `Effect.withSpan(name, SPAN)` while the fiber's tracer is on. With it off (`converge serve`
 * without an OTLP collector) a span is a no-op that nothing reads, and opening, providing and
 * ending it was about 30 of a single-message send's 485 runtime operations on the server, per span.
 */
export const serverSpan = (name: string) => <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.withFiberRuntime((fiber) => fiber.getFiberRef(FiberRef.currentTracerEnabled) ? Effect.withSpan(self, name, SPAN) : self)
