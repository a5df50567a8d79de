/**
 * `xmtp.identity.api.v1.IdentityApi`: append-only identity logs per inbox, verified on publish
 * by applying the update on top of the state the inbox's log replays to (`Associations.ts`),
 * and an index from Ethereum address to inbox kept with the log in one transaction.
 *
 * Replaying a log costs up to 32 signature recoveries an entry, so each server keeps the
 * states it verified last (`VerifiedStates`), each with a digest of the log it came from: a
 * publish reads the log as stored, and replays only what a state of that very log lacks.
 */
import { Effect, Either } from "effect"
import { createHash } from "node:crypto"
import type { DeliveryStoreError } from "../services/DeliveryStore.ts"
import type { AssociationState } from "./Associations.ts"
import {
  addressesAdded,
  addressesRevoked,
  applyUpdate,
  checkShape,
  ethereumAddress,
  MAX_LOG_ENTRIES,
  replay
} from "./Associations.ts"
import type { GetIdentityUpdatesRequest, GetInboxIdsRequest, IdentityUpdate, PublishIdentityUpdateRequest } from "./Proto.ts"
import { codecs, IdentifierKind, int64 } from "./Proto.ts"
import { sharedVerification, type Verification } from "./SignatureTurns.ts"
import type { Unary } from "./XmtpMlsApi.ts"
import { XmtpStore } from "./XmtpStore.ts"
import { checkBytes, checkCount, Code, invalid, refuse, unavailable, type XmtpLimits, XmtpStatus } from "./XmtpStatus.ts"

const stored = <A>(effect: Effect.Effect<A, DeliveryStoreError>) => Effect.catchAll(effect, unavailable)

const INBOX_ID = /^[0-9a-f]{64}$/

/** How often a publish is verified again after another publish to the same inbox won the race. */
const STALE_RETRIES = 5

const decodeLog = (bodies: ReadonlyArray<Uint8Array>) =>
  Effect.try({
    try: () => bodies.map((body) => codecs.identityUpdate.decode(body)),
    catch: () => new XmtpStatus({ code: Code.Internal, reason: "a stored identity update does not decode" })
  })

// ---- verified states ----

/** The digest of a log one entry longer than the log `previous` is the digest of ("" for none). */
export const extendDigest = (previous: string, body: Uint8Array) =>
  createHash("sha256").update(previous).update(":").update(body).digest("hex")

/** Digests of every prefix of a log: `[i]` is that of its first i entries. */
export const prefixDigests = (bodies: ReadonlyArray<Uint8Array>): ReadonlyArray<string> => {
  const digests = [""]
  for (const body of bodies) digests.push(extendDigest(digests[digests.length - 1]!, body))
  return digests
}

/** An inbox's association state after the first `length` entries of the log `digest` names. */
export interface VerifiedState {
  readonly length: number
  readonly digest: string
  readonly state: AssociationState | undefined
}

/** What a state holds in memory, in members and signatures seen: its weight in the cache's budget. */
const weightOf = (verified: VerifiedState) => 1 + (verified.state === undefined ? 0 : verified.state.members.size + verified.state.seen.size)

/**
 * The states a server verified last, one per inbox, at most `capacity` inboxes and `budget`
 * members and signatures in all (a long log's state holds thousands), the least recently
 * used evicted first. A state serves only the log its digest names (`from`).
 */
export class VerifiedStates {
  private readonly entries = new Map<string, VerifiedState>()
  private weight = 0

  constructor(readonly capacity = 1024, readonly budget = 200_000) {}

  /** The longest verified prefix of the log whose prefix digests are `digests`: the cached state, or none. */
  from(inboxId: string, digests: ReadonlyArray<string>): VerifiedState {
    const known = this.entries.get(inboxId)
    if (known === undefined || digests[known.length] !== known.digest) return { length: 0, digest: "", state: undefined }
    this.entries.delete(inboxId)
    this.entries.set(inboxId, known)
    return known
  }

  keep(inboxId: string, verified: VerifiedState) {
    this.drop(inboxId)
    if (weightOf(verified) > this.budget) return
    this.entries.set(inboxId, verified)
    this.weight += weightOf(verified)
    for (const oldest of this.entries.keys()) {
      if (this.entries.size <= this.capacity && this.weight <= this.budget) break
      this.drop(oldest)
    }
  }

  get size() {
    return this.entries.size
  }

  private drop(inboxId: string) {
    const known = this.entries.get(inboxId)
    if (known === undefined) return
    this.entries.delete(inboxId)
    this.weight -= weightOf(known)
  }
}

/** Replays longer than this many entries take the server's one replay slot: the same cold log asked at once is replayed once. */
const SHORT_REPLAY = 16

/** The state of the inbox's log as stored (`bodies`, with their prefix `digests`), replaying what the cache lacks. */
const verifiedState = (
  { cache, replaySlot, verification }: Publisher,
  inboxId: string,
  bodies: ReadonlyArray<Uint8Array>,
  digests: ReadonlyArray<string>
) =>
  Effect.gen(function*() {
    const catchUp = Effect.gen(function*() {
      const start = cache.from(inboxId, digests)
      if (start.length === bodies.length) return start.state
      const rest = yield* decodeLog(bodies.slice(start.length))
      const kept = (state: AssociationState, count: number) => {
        const length = start.length + count
        cache.keep(inboxId, { length, digest: digests[length]!, state })
      }
      return yield* replay(rest, start.state, kept, verification).pipe(
        Effect.mapError((e) => new XmtpStatus({ code: Code.Internal, reason: `the stored log does not replay: ${e.reason}` }))
      )
    })
    const missing = bodies.length - cache.from(inboxId, digests).length
    return missing <= SHORT_REPLAY ? yield* catchUp : yield* replaySlot.withPermits(1)(catchUp)
  })

// ---- publishing ----

interface Publisher {
  readonly cache: VerifiedStates
  readonly replaySlot: Effect.Semaphore
  /** Every signature check of this server's publishes and replays goes through it. */
  readonly verification: Verification
}

/**
 * Signature checks run in one turn of the event loop, server-wide (~2 ms each): other requests
 * wait a few milliseconds for a turn, however many costly updates are being checked.
 */
const CHECKS_PER_TURN = 2

/** Verifies `update` on the inbox's current log and appends it, once the log is unchanged. */
const publishOnce = (publisher: Publisher, update: IdentityUpdate, body: Uint8Array) =>
  Effect.gen(function*() {
    const store = yield* XmtpStore
    const log = yield* stored(store.identityLog(update.inboxId, 0n, MAX_LOG_ENTRIES + 1))
    if (log.length >= MAX_LOG_ENTRIES) {
      return yield* new XmtpStatus({ code: Code.ResourceExhausted, reason: `the inbox's log has ${MAX_LOG_ENTRIES} entries, the limit` })
    }
    const bodies = log.map((e) => e.body)
    const digests = prefixDigests(bodies)
    const state = yield* verifiedState(publisher, update.inboxId, bodies, digests)
    const next = yield* applyUpdate(state, update, publisher.verification).pipe(
      Effect.mapError((e) => invalid(`invalid identity update: ${e.reason}`))
    )
    const outcome = yield* stored(store.appendIdentity(update.inboxId, BigInt(log.length), body, MAX_LOG_ENTRIES, {
      added: addressesAdded(update),
      revoked: addressesRevoked(update)
    }))
    // Appended at this length: the log is the one read plus `body`, whichever server reads it next.
    if (outcome._tag === "Appended") {
      publisher.cache.keep(update.inboxId, { length: log.length + 1, digest: extendDigest(digests[log.length]!, body), state: next })
    }
    return outcome
  })

const publishIdentityUpdate = (limits: XmtpLimits, publisher: Publisher) =>
  Effect.fn("IdentityApi.PublishIdentityUpdate")(function*(request: PublishIdentityUpdateRequest) {
    const update = request.identityUpdate
    if (update === undefined) return yield* refuse("no identity update")
    if (!INBOX_ID.test(update.inboxId)) return yield* refuse("invalid identity update: malformed inbox id")
    // A publish starts in its turn of the server's queue of checks: 64 arriving at once (one
    // connection's streams) would otherwise all run their cheap checks in one go of the loop.
    yield* publisher.verification(() => Either.void)
    const body = codecs.identityUpdate.encode(update).finish()
    yield* checkBytes("identity update", body, limits.maxPayloadBytes)
    // Refused before the log is read: what no state of it could make valid.
    yield* Either.mapLeft(checkShape(update), (e) => invalid(`invalid identity update: ${e.reason}`))
    for (let attempt = 0; attempt <= STALE_RETRIES; attempt++) {
      const outcome = yield* publishOnce(publisher, update, body)
      if (outcome._tag === "Appended") return {}
      if (outcome._tag === "Full") {
        return yield* new XmtpStatus({ code: Code.ResourceExhausted, reason: `the inbox's log has ${MAX_LOG_ENTRIES} entries, the limit` })
      }
    }
    return yield* new XmtpStatus({ code: Code.Aborted, reason: "the inbox's log kept changing; try again" })
  }, Effect.annotateLogs({ rpc: "PublishIdentityUpdate" }))

/**
 * Every inbox's log after its cursor, at most `maxIdentityEntries` entries in all (the Converge
 * face's bound): inboxes past the budget get what is left of it, possibly nothing, and their
 * clients ask again from where they got to.
 */
const getIdentityUpdates = (limits: XmtpLimits) => (request: GetIdentityUpdatesRequest) =>
  Effect.gen(function*() {
    const store = yield* XmtpStore
    yield* checkCount("GetIdentityUpdates", request.requests, limits.maxIdsPerLookup)
    for (const r of request.requests) if (!INBOX_ID.test(r.inboxId)) return yield* refuse(`malformed inbox id`)
    let budget = limits.maxIdentityEntries
    const responses = []
    for (const r of request.requests) {
      const log = budget <= 0 ? [] : yield* stored(store.identityLog(r.inboxId, int64(r.sequenceId), Math.min(MAX_LOG_ENTRIES, budget)))
      budget -= log.length
      const updates = yield* decodeLog(log.map((e) => e.body))
      responses.push({
        inboxId: r.inboxId,
        updates: log.map((e, i) => ({ sequenceId: String(e.sequenceId), serverTimestampNs: String(e.serverTimeNs), update: updates[i] }))
      })
    }
    return { responses }
  })

const getInboxIds = (limits: XmtpLimits) => (request: GetInboxIdsRequest) =>
  Effect.gen(function*() {
    const store = yield* XmtpStore
    yield* checkCount("GetInboxIds", request.requests, limits.maxIdsPerLookup)
    const responses = yield* Effect.forEach(request.requests, (r) =>
      Effect.gen(function*() {
        if (r.identifier.length > 256) return yield* refuse("an identifier is longer than 256 characters")
        const address = r.identifierKind === IdentifierKind.Passkey ? undefined : ethereumAddress(r.identifier)
        const inboxId = address === undefined ? undefined : yield* stored(store.inboxOf(address))
        return { identifier: r.identifier, identifierKind: r.identifierKind, ...(inboxId === undefined ? {} : { inboxId }) }
      }))
    return { responses }
  })

export const make = (limits: XmtpLimits): Record<string, Unary> => {
  const publisher: Publisher = {
    cache: new VerifiedStates(),
    replaySlot: Effect.unsafeMakeSemaphore(1),
    verification: sharedVerification(CHECKS_PER_TURN)
  }
  return {
    PublishIdentityUpdate: publishIdentityUpdate(limits, publisher),
    GetIdentityUpdates: getIdentityUpdates(limits),
    GetInboxIds: getInboxIds(limits),
    VerifySmartContractWalletSignatures: () =>
      Effect.fail(new XmtpStatus({
        code: Code.Unimplemented,
        reason: "smart-contract wallet signatures are not supported: this server reaches no chain"
      }))
  }
}