/**
 * `xmtp.identity.api.v1.IdentityApi`: append-only identity logs per inbox, verified on publish
 * by replaying the inbox's log and applying the update on top (`Associations.ts`), and an
 * index from Ethereum address to inbox kept with the log in one transaction.
 */
import { Effect, Either } from "effect"
import type { DeliveryStoreError } from "../services/DeliveryStore.ts"
import { addressesAdded, addressesRevoked, applyUpdate, ethereumAddress, MAX_LOG_ENTRIES, replay } from "./Associations.ts"
import type { GetIdentityUpdatesRequest, GetInboxIdsRequest, IdentityUpdate, PublishIdentityUpdateRequest } from "./Proto.ts"
import { codecs, IdentifierKind, int64 } from "./Proto.ts"
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

/** Verifies `update` on the inbox's current log and appends it, once the log is unchanged. */
const publishOnce = (update: IdentityUpdate, body: Uint8Array) =>
  Effect.gen(function*() {
    const store = yield* XmtpStore
    const log = yield* stored(store.identityLog(update.inboxId, 0n, MAX_LOG_ENTRIES + 1))
    if (log.length >= MAX_LOG_ENTRIES) {
      return yield* new XmtpStatus({ code: Code.ResourceExhausted, reason: `the inbox's log has ${MAX_LOG_ENTRIES} entries, the limit` })
    }
    const state = yield* Either.match(replay(yield* decodeLog(log.map((e) => e.body))), {
      onLeft: (e) => Effect.fail(new XmtpStatus({ code: Code.Internal, reason: `the stored log does not replay: ${e.reason}` })),
      onRight: Effect.succeed
    })
    yield* Either.match(applyUpdate(state, update), {
      onLeft: (e) => Effect.fail(invalid(`invalid identity update: ${e.reason}`)),
      onRight: () => Effect.void
    })
    return yield* stored(store.appendIdentity(update.inboxId, BigInt(log.length), body, MAX_LOG_ENTRIES, {
      added: addressesAdded(update),
      revoked: addressesRevoked(update)
    }))
  })

const publishIdentityUpdate = (limits: XmtpLimits) => (request: PublishIdentityUpdateRequest) =>
  Effect.gen(function*() {
    const update = request.identityUpdate
    if (update === undefined) return yield* refuse("no identity update")
    if (!INBOX_ID.test(update.inboxId)) return yield* refuse("invalid identity update: malformed inbox id")
    const body = codecs.identityUpdate.encode(update).finish()
    yield* checkBytes("identity update", body, limits.maxPayloadBytes)
    for (let attempt = 0; attempt <= STALE_RETRIES; attempt++) {
      const outcome = yield* publishOnce(update, body)
      if (outcome._tag === "Appended") return {}
      if (outcome._tag === "Full") {
        return yield* new XmtpStatus({ code: Code.ResourceExhausted, reason: `the inbox's log has ${MAX_LOG_ENTRIES} entries, the limit` })
      }
    }
    return yield* new XmtpStatus({ code: Code.Aborted, reason: "the inbox's log kept changing; try again" })
  }).pipe(Effect.annotateLogs({ rpc: "PublishIdentityUpdate" }))

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
  return {
    PublishIdentityUpdate: publishIdentityUpdate(limits),
    GetIdentityUpdates: getIdentityUpdates(limits),
    GetInboxIds: getInboxIds(limits),
    VerifySmartContractWalletSignatures: () =>
      Effect.fail(new XmtpStatus({
        code: Code.Unimplemented,
        reason: "smart-contract wallet signatures are not supported: this server reaches no chain"
      }))
  }
}