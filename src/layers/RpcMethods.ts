/**
 * The delivery port's methods mapped onto the RPC client's: wire cursors clamped, envelopes
 * decoded, authenticated calls signed, idempotent calls retried (not `publishIdentityUpdate`),
 * subscriptions resumed, and the server's bounds on ids and filters hidden behind several calls.
 */
import type { RpcClient } from "@effect/rpc"
import type { RpcClientError } from "@effect/rpc/RpcClientError"
import { Effect, Stream } from "effect"
import {
  type DeliveryRpcs,
  toGroupMessageEnvelope,
  toIdentityUpdateEnvelope,
  toQueryPage,
  toWelcomeMessageEnvelope,
  toWireCursor
} from "../domain/DeliveryRpcs.ts"
import type { DeliveryError } from "../domain/Errors.ts"
import type { GroupId } from "../domain/Ids.ts"
import { requestDigests } from "../domain/RequestAuth.ts"
import {
  GroupMessageEnvelope,
  type GroupMessageInput,
  type IdentityUpdateEnvelope,
  type WelcomeMessageEnvelope
} from "../domain/Wire.ts"
import {
  ConditionalSend,
  type DeliveryService,
  type FetchedKeyPackage,
  type IdentityQuery,
  type InboxUpdates
} from "../services/DeliveryService.ts"
import { MAX_IDS_PER_LOOKUP, MAX_SUBSCRIBE_FILTERS } from "./DeliveryRequests.ts"
import { type Calls, chunksOf } from "./RpcCalls.ts"
import { transportErrors, unavailable } from "./RpcTransportErrors.ts"

type Service = DeliveryService["Type"]
export type Client = RpcClient.FromGroup<typeof DeliveryRpcs, RpcClientError>

/** Subscribes from each group's lowest cursor; resumes after a retryable failure. */
const subscribeGroups = (client: Client, resumable: Calls["resumable"]): Service["subscribeGroupMessages"] =>
  (filters) => {
    if (filters.length === 0) {
      // Nothing to follow: the server ends the stream at once (or says why not).
      return client.subscribeGroupMessages({ filters: [] }).pipe(
        Stream.catchAllCause((cause) => Stream.failCause(transportErrors("subscribeGroupMessages", cause))),
        Stream.map(toGroupMessageEnvelope)
      )
    }
    return Stream.suspend(() => {
      // Several filters on one topic follow it from the lowest cursor, as the service does.
      const cursors = new Map<GroupId, bigint>()
      for (const f of filters) {
        const seen = cursors.get(f.groupId)
        cursors.set(f.groupId, seen === undefined || f.afterSequenceId < seen ? f.afterSequenceId : seen)
      }
      return resumable(
        "subscribeGroupMessages",
        cursors,
        (e: GroupMessageEnvelope) => e.groupId,
        // More topics than one subscription may follow: several subscriptions, merged.
        () =>
          Stream.mergeAll(
            chunksOf(Array.from(cursors), MAX_SUBSCRIBE_FILTERS).map((chunk) =>
              client.subscribeGroupMessages({
                filters: chunk.map(([groupId, after]) => ({ groupId, afterSequenceId: toWireCursor(after) }))
              })
            ),
            { concurrency: "unbounded" }
          ).pipe(Stream.map(toGroupMessageEnvelope))
      )
    })
  }

/**
 * A sent message as the service stored it, from where the answer says it landed and what was sent
 * (copied: the caller may reuse its buffers).
 */
const landedAt = (
  message: GroupMessageInput,
  position: { readonly sequenceId: bigint; readonly serverTimeNs: bigint }
) =>
  new GroupMessageEnvelope({
    groupId: message.groupId,
    payload: message.payload.slice(),
    sequenceId: position.sequenceId,
    serverTimeNs: position.serverTimeNs
  }, true)

/** The answer is where each message landed, in order; the rest is what we sent. */
const landedAll = (
  op: string,
  messages: ReadonlyArray<GroupMessageInput>,
  positions: ReadonlyArray<{ readonly sequenceId: bigint; readonly serverTimeNs: bigint }>
) =>
  positions.length === messages.length
    ? Effect.succeed(positions.map((position, i) => landedAt(messages[i]!, position)))
    : Effect.fail(unavailable(`${op}: ${positions.length} positions answered for ${messages.length} messages`))

/** Group messages: send, query, batch query, sync query, subscribe. */
export const groupMethods = (
  client: Client,
  { authHeaders, idempotent, resumable }: Calls
): Pick<
  Service,
  | "sendGroupMessages"
  | "sendGroupMessagesIf"
  | "queryGroupMessages"
  | "batchQueryGroupMessages"
  | "syncQuery"
  | "subscribeGroupMessages"
> => ({
  sendGroupMessages: (messages) =>
    idempotent(
      "sendGroupMessages",
      Effect.flatMap(
        authHeaders("sendGroupMessages", requestDigests.sendGroupMessages(messages)),
        (headers) => client.sendGroupMessages({ messages }, { headers })
      )
    ).pipe(Effect.flatMap((positions) => landedAll("sendGroupMessages", messages, positions))),
  // Idempotent as a resend is: the same payload again comes back `Stored` where it landed.
  sendGroupMessagesIf: (messages, ifTopicEndsAt) =>
    idempotent(
      "sendGroupMessagesIf",
      Effect.suspend(() => {
        // Signed as it travels: the server checks the digest of the condition it receives.
        const wireEnd = toWireCursor(ifTopicEndsAt)
        return Effect.flatMap(
          authHeaders("sendGroupMessagesIf", requestDigests.sendGroupMessagesIf(messages, wireEnd)),
          (headers) => client.sendGroupMessagesIf({ messages, ifTopicEndsAt: wireEnd }, { headers })
        )
      })
    ).pipe(
      Effect.flatMap((answer): Effect.Effect<ConditionalSend, DeliveryError> =>
        answer._tag === "TopicMoved"
          ? Effect.succeed(ConditionalSend.TopicMoved({ lastSequenceId: answer.lastSequenceId }))
          : Effect.map(landedAll("sendGroupMessagesIf", messages, answer.positions), (envelopes) => ConditionalSend.Stored({ envelopes }))
      )
    ),
  queryGroupMessages: (query) =>
    idempotent(
      "queryGroupMessages",
      client.queryGroupMessages({ query: { ...query, afterSequenceId: toWireCursor(query.afterSequenceId) } })
    ).pipe(
      Effect.map((page) => toQueryPage(page, toGroupMessageEnvelope))
    ),
  batchQueryGroupMessages: (queries) =>
    idempotent(
      "batchQueryGroupMessages",
      client.batchQueryGroupMessages({
        queries: queries.map((q) => ({ ...q, afterSequenceId: toWireCursor(q.afterSequenceId) }))
      })
    ).pipe(
      Effect.map((pages) => pages.map((page) => toQueryPage(page, toGroupMessageEnvelope)))
    ),
  syncQuery: (query) =>
    idempotent(
      "syncQuery",
      client.syncQuery({
        groups: query.groups.map((q) => ({ ...q, afterSequenceId: toWireCursor(q.afterSequenceId) })),
        identities: query.identities
      })
    ).pipe(
      Effect.map((answer) => ({
        groups: answer.groups.map((page) => toQueryPage(page, toGroupMessageEnvelope)),
        identities: answer.identities.map((i): InboxUpdates => ({
          inboxId: i.inboxId as InboxUpdates["inboxId"],
          updates: i.updates.map(toIdentityUpdateEnvelope)
        }))
      }))
    ),
  subscribeGroupMessages: subscribeGroups(client, resumable)
})

/** Welcomes: send, query, subscribe; each (re)subscription signed anew. */
export const welcomeMethods = (
  client: Client,
  { authHeaders, idempotent, resumable }: Calls
): Pick<Service, "sendWelcomeMessages" | "queryWelcomeMessages" | "subscribeWelcomeMessages"> => ({
  sendWelcomeMessages: (messages) =>
    idempotent(
      "sendWelcomeMessages",
      Effect.flatMap(
        authHeaders("sendWelcomeMessages", requestDigests.sendWelcomeMessages(messages)),
        (headers) => client.sendWelcomeMessages({ messages }, { headers })
      )
    ),
  queryWelcomeMessages: (query) =>
    idempotent(
      "queryWelcomeMessages",
      Effect.suspend(() => {
        // Signed as it travels: the server verifies the clamped cursor it receives.
        const wire = { ...query, afterSequenceId: toWireCursor(query.afterSequenceId) }
        return Effect.flatMap(
          authHeaders("queryWelcomeMessages", requestDigests.queryWelcomeMessages(wire)),
          (headers) => client.queryWelcomeMessages({ query: wire }, { headers })
        )
      })
    ).pipe(
      Effect.map((page) => toQueryPage(page, toWelcomeMessageEnvelope))
    ),
  subscribeWelcomeMessages: (filter) =>
    Stream.suspend(() => {
      const cursors = new Map([[filter.installationId, filter.afterSequenceId]])
      return resumable(
        "subscribeWelcomeMessages",
        cursors,
        (e: WelcomeMessageEnvelope) => e.installationId,
        () => {
          const from = {
            installationId: filter.installationId,
            afterSequenceId: toWireCursor(cursors.get(filter.installationId) ?? filter.afterSequenceId)
          }
          // Each (re)subscription is signed anew: a statement is good for one request.
          return Stream.unwrap(Effect.map(
            authHeaders("subscribeWelcomeMessages", requestDigests.subscribeWelcomeMessages(from)),
            (headers) => client.subscribeWelcomeMessages({ filter: from }, { headers })
          )).pipe(Stream.map(toWelcomeMessageEnvelope))
        }
      )
    })
})

/**
 * Every entry asked for, whatever the server's answer bounds: queries go in calls of at
 * most the id limit, and a log the server cut short (`truncated`) is asked for again
 * after its last entry. A round that brings nothing new fails as `Unavailable` rather
 * than looping on a server that never moves on.
 */
const wholeIdentityLogs = (
  client: Client,
  idempotent: Calls["idempotent"],
  queries: ReadonlyArray<IdentityQuery>
): Effect.Effect<ReadonlyArray<InboxUpdates>, DeliveryError> =>
  Effect.gen(function*() {
    const logs = queries.map((): Array<IdentityUpdateEnvelope> => [])
    let pending = queries.map((query, index) => ({ index, query }))
    while (pending.length > 0) {
      const round = pending.slice(0, MAX_IDS_PER_LOOKUP)
      const answers = yield* idempotent(
        "getIdentityUpdates",
        client.getIdentityUpdates({ queries: round.map((p) => p.query) })
      )
      const again: typeof pending = []
      let progress = false
      for (const [i, { index, query }] of round.entries()) {
        const answer = answers[i]
        if (answer === undefined) continue
        const updates = answer.updates.map(toIdentityUpdateEnvelope)
        logs[index]!.push(...updates)
        if (updates.length > 0) progress = true
        if (answer.truncated === true) {
          const afterSequence = updates[updates.length - 1]?.update.sequence ?? query.afterSequence
          again.push({ index, query: { inboxId: query.inboxId, afterSequence } })
        }
      }
      if (!progress && again.length > 0) {
        return yield* Effect.fail(unavailable("getIdentityUpdates: the server cut every log short without entries"))
      }
      pending = [...again, ...pending.slice(MAX_IDS_PER_LOOKUP)]
    }
    return queries.map((q, i): InboxUpdates => ({ inboxId: q.inboxId, updates: logs[i]! }))
  })

/** Key packages and identity. */
export const identityMethods = (
  client: Client,
  { attempt, authHeaders, idempotent }: Calls
): Pick<Service, "uploadKeyPackage" | "fetchKeyPackages" | "publishIdentityUpdate" | "getIdentityUpdates"> => ({
  // A replace: doing it twice leaves what doing it once does.
  uploadKeyPackage: (upload) =>
    idempotent(
      "uploadKeyPackage",
      Effect.flatMap(
        authHeaders("uploadKeyPackage", requestDigests.uploadKeyPackage(upload)),
        (headers) => client.uploadKeyPackage({ upload }, { headers })
      )
    ),
  // In calls of at most the server's id limit, in order.
  fetchKeyPackages: (installationIds) =>
    Effect.forEach(
      chunksOf(installationIds, MAX_IDS_PER_LOOKUP),
      (chunk) => idempotent("fetchKeyPackages", client.fetchKeyPackages({ installationIds: chunk }))
    ).pipe(
      Effect.map((answers) =>
        answers.flat().map((f): FetchedKeyPackage => ({
          installationId: f.installationId as FetchedKeyPackage["installationId"],
          keyPackage: f.keyPackage
        }))
      )
    ),
  // Not idempotent: a lost response may hide a stored entry; the caller re-reads the log.
  publishIdentityUpdate: (update) =>
    attempt("publishIdentityUpdate", client.publishIdentityUpdate({ update })).pipe(
      Effect.map(toIdentityUpdateEnvelope)
    ),
  getIdentityUpdates: (queries) => wholeIdentityLogs(client, idempotent, queries)
})
