/**
 * Stories of `maxPastEpochs`: how far back a member still reads application messages. The engine's
 * rule and the keys the crypto keeps must say the same, or a sender counts as delivered a message
 * no member can decrypt.
 */
import { SqliteClient } from "@effect/sql-sqlite-node"
import { describe, expect, it } from "@effect/vitest"
import { type Context, Effect, Layer } from "effect"
import { Client, DeliveryService, InvalidInput, MlsCrypto } from "../src/index.ts"
import { TestNetwork } from "../src/testing.ts"
import { withoutCondition } from "./support/WithoutCondition.ts"

type Delivery = Context.Tag.Service<DeliveryService>

const textsOf = (messages: ReadonlyArray<{ readonly kind: string; readonly text: string; readonly deliveryStatus: string }>) =>
  messages.filter((m) => m.kind === "text").map((m) => [m.text, m.deliveryStatus] as const)

describe("maxPastEpochs", () => {
  it.live("with maxPastEpochs 5, Bob's message that lands four epochs late is read by Alice", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      let beforeSend: Effect.Effect<void, unknown> | undefined
      // Alice's key updates land between Bob's encryption and his send, which goes without the
      // condition (as libxmtp publishes): it lands after them.
      const wrapDelivery = (ds: Delivery): Delivery =>
        withoutCondition({
          ...ds,
          sendGroupMessages: (messages) =>
            Effect.suspend(() => {
              const during = beforeSend
              beforeSend = undefined
              return Effect.zipRight(during === undefined ? Effect.void : Effect.orDie(during), ds.sendGroupMessages(messages))
            })
        })
      const alice = yield* net.client("alice", { maxPastEpochs: 5 })
      const bob = yield* net.client("bob", { maxPastEpochs: 5, wrapDelivery })
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      const atBob = yield* bob.conversation(group.id)
      const epoch = (yield* atBob.debugInfo).epoch

      beforeSend = Effect.forEach([1, 2, 3, 4], () => group.updateKeys, { discard: true })
      yield* atBob.send("four epochs late")

      yield* alice.syncAll
      const sent = [["four epochs late", "published"]]
      expect(textsOf(yield* group.messages())).toEqual(sent)
      expect(textsOf(yield* atBob.messages())).toEqual(sent)
      expect((yield* group.debugInfo).epoch).toBe(epoch + 4n)
    })))

  it.scoped("a client asking to read further back than its MlsCrypto layer keeps keys is refused at start, saying what to change", () =>
    Effect.gen(function*() {
      const build = (maxPastEpochs: number, crypto: Layer.Layer<MlsCrypto>) =>
        Layer.build(
          Client.layer({ maxPastEpochs }).pipe(
            Layer.provide(DeliveryService.layerMemory),
            Layer.provide(crypto),
            Layer.provide(Layer.orDie(SqliteClient.layer({ filename: ":memory:" })))
          )
        ).pipe(Effect.scoped, Effect.flip)

      const refused = yield* build(5, MlsCrypto.layer())
      expect(refused).toBeInstanceOf(InvalidInput)
      expect(refused.message).toContain("MlsCrypto.layer({ maxPastEpochs })")

      // Kept as far back as asked: the client starts.
      const started = yield* Layer.build(
        Client.layer({ maxPastEpochs: 5 }).pipe(
          Layer.provide(DeliveryService.layerMemory),
          Layer.provide(MlsCrypto.layer({ maxPastEpochs: 5 })),
          Layer.provide(Layer.orDie(SqliteClient.layer({ filename: ":memory:" })))
        )
      ).pipe(Effect.scoped, Effect.either)
      expect(started._tag).toBe("Right")
    }))
})
