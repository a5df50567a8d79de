/** The group-message operations of the store-backed delivery service: send, query, batch query, subscribe. */
import { Effect, Stream } from "effect"
import { CryptoError } from "../domain/Errors.ts"
import type { GroupId } from "../domain/Ids.ts"
import { requestDigests } from "../domain/RequestAuth.ts"
import type { GroupMessageInput } from "../domain/Wire.ts"
import { ConditionalSend, type DeliveryService, type GroupQuery } from "../services/DeliveryService.ts"
import { groupTopic, type Topic } from "../services/DeliveryStore.ts"
import { budgetPages, checkFilterCount, invalidRequest, MAX_PAGE_BYTES, serverSpan, SPAN } from "./DeliveryRequests.ts"
import { checkedSend, type StoreDeliveryContext } from "./StoreDeliveryContext.ts"
import { follow, followMany } from "./StoreTopicFollower.ts"
import { page, toGroupEnvelope } from "./StoreTopicPages.ts"

type Service = DeliveryService["Type"]

/**
 * A group topic takes only MLS group messages of its own group (the server reads the
 * header, as xmtp-node-go does): nobody can fill a topic with bytes no member can use, and
 * a topic comes into existence only with a well-formed message for it. The first message
 * that is not one fails the request; all are read in one step.
 */
const checkGroupMessages = (
  c: StoreDeliveryContext,
  op: "sendGroupMessages" | "sendGroupMessagesIf",
  messages: ReadonlyArray<GroupMessageInput>
) =>
  c.crypto.inspectAll(messages.map((m) => m.payload)).pipe(Effect.flatMap((headers) => {
    for (const [i, header] of headers.entries()) {
      const m = messages[i]!
      if (header instanceof CryptoError) {
        return Effect.fail(invalidRequest(`${op} to ${m.groupId}: not an MLS message (${header.detail})`))
      }
      if (header.groupId !== m.groupId || (header.kind !== "application" && header.kind !== "commit" && header.kind !== "proposal")) {
        return Effect.fail(invalidRequest(
          `${op} to ${m.groupId}: a ${header.kind} message of group ${header.groupId ?? "none"}`
        ))
      }
    }
    return Effect.void
  }))

export const sendGroupMessages = (c: StoreDeliveryContext): Service["sendGroupMessages"] => (messages) =>
  Effect.gen(function*() {
    yield* checkedSend(c, "sendGroupMessages", messages, (m) =>
      c.checks.refusals.groupId(m.groupId, "sendGroupMessages") ??
        c.checks.refusals.payload(m.payload, `sendGroupMessages to ${m.groupId}`), requestDigests.sendGroupMessages)
    yield* checkGroupMessages(c, "sendGroupMessages", messages)
    const entries = yield* c.stored(
      c.store.append(messages.map((m: GroupMessageInput) => ({ topic: groupTopic(m.groupId), payload: m.payload })))
    )
    return entries.map((e, i) => toGroupEnvelope(messages[i]!.groupId)(e))
  }).pipe(serverSpan("DeliveryService.sendGroupMessages"))

/** A condition is about one topic: every message of a conditional send is for the first one's group. */
const sameGroup = (first: GroupMessageInput | undefined, m: GroupMessageInput) =>
  first === undefined || m.groupId === first.groupId
    ? undefined
    : invalidRequest(`sendGroupMessagesIf: messages to ${first.groupId} and ${m.groupId}; one group a call`)

export const sendGroupMessagesIf = (c: StoreDeliveryContext): Service["sendGroupMessagesIf"] => (messages, ifTopicEndsAt) =>
  Effect.gen(function*() {
    yield* c.checks.cursor(ifTopicEndsAt, "sendGroupMessagesIf")
    yield* checkedSend(c, "sendGroupMessagesIf", messages, (m) =>
      c.checks.refusals.groupId(m.groupId, "sendGroupMessagesIf") ??
        c.checks.refusals.payload(m.payload, `sendGroupMessagesIf to ${m.groupId}`) ??
        sameGroup(messages[0], m), (ms) => requestDigests.sendGroupMessagesIf(ms, ifTopicEndsAt))
    yield* checkGroupMessages(c, "sendGroupMessagesIf", messages)
    const groupId = messages[0]!.groupId
    const outcome = yield* c.stored(
      c.store.appendIf(messages.map((m) => ({ topic: groupTopic(groupId), payload: m.payload })), ifTopicEndsAt)
    )
    return outcome._tag === "Appended"
      ? ConditionalSend.Stored({ envelopes: outcome.entries.map(toGroupEnvelope(groupId)) })
      : ConditionalSend.TopicMoved({ lastSequenceId: outcome.lastSequenceId })
  }).pipe(serverSpan("DeliveryService.sendGroupMessagesIf"))

export const queryGroupMessages = (c: StoreDeliveryContext): Service["queryGroupMessages"] => (query) =>
  Effect.gen(function*() {
    yield* c.checks.groupId(query.groupId, "queryGroupMessages")
    yield* c.checks.cursor(query.afterSequenceId, "queryGroupMessages")
    const limit = yield* c.checks.limit(query.limit, "queryGroupMessages")
    return yield* page(c, groupTopic(query.groupId), query.afterSequenceId, limit, toGroupEnvelope(query.groupId))
  }).pipe(serverSpan("DeliveryService.queryGroupMessages"))

export const batchQueryGroupMessages = (c: StoreDeliveryContext): Service["batchQueryGroupMessages"] => (queries) =>
  Effect.gen(function*() {
    yield* c.checks.batch(queries, "batchQueryGroupMessages")
    // Validate all first, so a bad query anywhere fails the whole call.
    const limits = yield* Effect.forEach(queries, (q: GroupQuery) =>
      Effect.gen(function*() {
        yield* c.checks.groupId(q.groupId, "batchQueryGroupMessages")
        yield* c.checks.cursor(q.afterSequenceId, "batchQueryGroupMessages")
        return yield* c.checks.limit(q.limit, "batchQueryGroupMessages")
      }))
    const pages = yield* Effect.forEach(
      queries,
      (q, i) => page(c, groupTopic(q.groupId), q.afterSequenceId, limits[i] ?? c.pageSize, toGroupEnvelope(q.groupId)),
      { concurrency: 4 }
    )
    // One answer, one page's worth of bytes (as the RPC server answers it): topics past the
    // budget come back empty, pointing at their own cursor, to be asked again.
    return budgetPages(pages, queries.map((q) => q.afterSequenceId), MAX_PAGE_BYTES).pages
  }).pipe(serverSpan("DeliveryService.batchQueryGroupMessages"))

export const subscribeGroupMessages = (c: StoreDeliveryContext): Service["subscribeGroupMessages"] => (filters) =>
  Stream.unwrap(
    Effect.gen(function*() {
      yield* checkFilterCount(filters, "subscribeGroupMessages")
      for (const f of filters) {
        yield* c.checks.groupId(f.groupId, "subscribeGroupMessages")
        yield* c.checks.cursor(f.afterSequenceId, "subscribeGroupMessages")
      }
      // One stream per topic: several filters for one group follow it from the lowest cursor.
      const cursors = new Map<GroupId, bigint>()
      for (const f of filters) {
        const seen = cursors.get(f.groupId)
        cursors.set(f.groupId, seen === undefined || f.afterSequenceId < seen ? f.afterSequenceId : seen)
      }
      // No filters: nothing to follow, so the stream ends at once. One topic: its follower as
      // it is. More: one reader for all of them (a follower per topic cost ~100 KB each).
      if (cursors.size === 0) return Stream.empty
      if (cursors.size === 1) {
        const [groupId, after] = cursors.entries().next().value!
        return follow(c, groupTopic(groupId), after, toGroupEnvelope(groupId))
      }
      const topics = new Map<Topic, bigint>()
      const groups = new Map<Topic, GroupId>()
      for (const [groupId, after] of cursors) {
        topics.set(groupTopic(groupId), after)
        groups.set(groupTopic(groupId), groupId)
      }
      return followMany(c, topics, (topic) => toGroupEnvelope(groups.get(topic)!))
    })
  ).pipe(Stream.withSpan("DeliveryService.subscribeGroupMessages", SPAN))
