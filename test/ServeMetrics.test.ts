/** What `converge serve --metrics-port` counts of the delivery service it runs. */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Metrics from "../src/cli/Metrics.ts"
import { ConditionalSend, type DeliveryService } from "../src/services/DeliveryService.ts"
import { GroupMessageEnvelope } from "../src/domain/Wire.ts"
import { mlsMessage, newGroupId } from "./support/DeliveryFixtures.ts"

describe("serve metrics", () => {
  it.effect("a conditional send counts its messages as stored only when the topic took them", () =>
    Effect.gen(function*() {
      const groupId = newGroupId()
      const envelopeOf = (sequenceId: bigint) =>
        new GroupMessageEnvelope({ groupId, sequenceId, serverTimeNs: 1n, payload: new Uint8Array([1]) })
      const answers = [
        ConditionalSend.Stored({ envelopes: [envelopeOf(1n)] }),
        ConditionalSend.TopicMoved({ lastSequenceId: 2n }),
        ConditionalSend.Stored({ envelopes: [envelopeOf(3n), envelopeOf(4n)] })
      ]
      const measured = Metrics.instrument({
        sendGroupMessagesIf: () => Effect.succeed(answers.shift()!),
        sendGroupMessages: (messages) => Effect.succeed(messages.map((_, i) => envelopeOf(BigInt(10 + i))))
      } as Partial<DeliveryService["Type"]> as DeliveryService["Type"])

      for (let i = 0; i < 3; i++) yield* measured.sendGroupMessagesIf([mlsMessage(groupId, `m${i}`)], BigInt(i))
      yield* measured.sendGroupMessages([mlsMessage(groupId, "a"), mlsMessage(groupId, "b")])

      const text = yield* Metrics.prometheusText
      // Two of the three conditional sends were stored (three messages), and both messages of the plain one.
      expect(text).toMatch(/^converge_ds_group_messages_stored_total 5$/m)
      expect(text).toMatch(/^converge_ds_requests_total\{method="sendGroupMessagesIf"\} 3$/m)
    }))
})
