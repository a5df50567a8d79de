/** The welcome operations of the store-backed delivery service: send, query, subscribe (own welcomes only). */
import { Effect, Stream } from "effect"
import type { InstallationId } from "../domain/Ids.ts"
import { requestDigests } from "../domain/RequestAuth.ts"
import type { WelcomeMessageInput } from "../domain/Wire.ts"
import type { DeliveryService, WelcomeQuery } from "../services/DeliveryService.ts"
import { welcomeTopic } from "../services/DeliveryStore.ts"
import { serverSpan, SPAN } from "./DeliveryRequests.ts"
import { checkedSend, forbidden, type StoreDeliveryContext } from "./StoreDeliveryContext.ts"
import { follow } from "./StoreTopicFollower.ts"
import { page, toWelcomeEnvelope } from "./StoreTopicPages.ts"

type Service = DeliveryService["Type"]

/** A welcome topic is read by its own installation only. */
const ownWelcomes = (
  c: StoreDeliveryContext,
  op: "queryWelcomeMessages" | "subscribeWelcomeMessages",
  installationId: InstallationId,
  digest: string
) =>
  Effect.flatMap(c.authenticate(op, digest), (caller) =>
    caller.installationId === installationId
      ? Effect.void
      : Effect.fail(forbidden(`${op}: only ${installationId} may read its welcomes`)))

export const sendWelcomeMessages = (c: StoreDeliveryContext): Service["sendWelcomeMessages"] => (messages) =>
  Effect.gen(function*() {
    yield* checkedSend(c, "sendWelcomeMessages", messages, (m) =>
      c.checks.refusals.installationId(m.installationId, "sendWelcomeMessages") ??
        c.checks.refusals.payload(m.payload, `sendWelcomeMessages to ${m.installationId}`), requestDigests.sendWelcomeMessages)
    yield* c.stored(
      c.store.append(
        messages.map((m: WelcomeMessageInput) => ({ topic: welcomeTopic(m.installationId), payload: m.payload }))
      )
    )
  }).pipe(serverSpan("DeliveryService.sendWelcomeMessages"))

export const queryWelcomeMessages = (c: StoreDeliveryContext): Service["queryWelcomeMessages"] => (query: WelcomeQuery) =>
  Effect.gen(function*() {
    yield* c.checks.installationId(query.installationId, "queryWelcomeMessages")
    yield* c.checks.cursor(query.afterSequenceId, "queryWelcomeMessages")
    const limit = yield* c.checks.limit(query.limit, "queryWelcomeMessages")
    yield* ownWelcomes(c, 
      "queryWelcomeMessages",
      query.installationId,
      requestDigests.queryWelcomeMessages(query)
    )
    return yield* page(c, 
      welcomeTopic(query.installationId),
      query.afterSequenceId,
      limit,
      toWelcomeEnvelope(query.installationId)
    )
  }).pipe(serverSpan("DeliveryService.queryWelcomeMessages"))

export const subscribeWelcomeMessages = (c: StoreDeliveryContext): Service["subscribeWelcomeMessages"] => (filter) =>
  Stream.unwrap(
    Effect.gen(function*() {
      yield* c.checks.installationId(filter.installationId, "subscribeWelcomeMessages")
      yield* c.checks.cursor(filter.afterSequenceId, "subscribeWelcomeMessages")
      yield* ownWelcomes(c, 
        "subscribeWelcomeMessages",
        filter.installationId,
        requestDigests.subscribeWelcomeMessages(filter)
      )
      return follow(c, 
        welcomeTopic(filter.installationId),
        filter.afterSequenceId,
        toWelcomeEnvelope(filter.installationId)
      )
    })
  ).pipe(Stream.withSpan("DeliveryService.subscribeWelcomeMessages", SPAN))
