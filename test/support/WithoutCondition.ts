/**
 * A client that publishes as libxmtp does (and as Converge does after a topic outgrew eight
 * reads in a row): its conditional sends go as plain ones, landing wherever the topic ends. How a
 * story gets a message to land epochs after it was encrypted, for the rules that judge one.
 */
import { type Context, Effect } from "effect"
import { ConditionalSend, type DeliveryService } from "../../src/services/DeliveryService.ts"

type Delivery = Context.Tag.Service<DeliveryService>

export const withoutCondition = (ds: Delivery): Delivery => ({
  ...ds,
  sendGroupMessagesIf: (messages) =>
    Effect.map(ds.sendGroupMessages(messages), (envelopes) => ConditionalSend.Stored({ envelopes }))
})
