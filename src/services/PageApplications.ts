/**
 * Someone's application messages on a page: one at a time (decrypted, then done what it asks:
 * store a text, judge a deletion), or a run of them in a row, decrypted in
 * one call and applied in a plain loop, their signatures checked beside unless the page is strict.
 */
import { Effect, Either, Option } from "effect"
import type { StorageError } from "../domain/Errors.ts"
import {
  applicationSkipReason,
  classifyApplication,
  classifyEnvelope,
  type GroupSnapshot
} from "../domain/ReceiveDecision.ts"
import type { GroupMessageEnvelope } from "../domain/Wire.ts"
import type { ProcessedApplication } from "./MlsCrypto.ts"
import { type PageLedger, skip } from "./PageLedger.ts"
import type * as PageMessages from "./PageMessages.ts"
import type * as PageOwnEnvelopes from "./PageOwnEnvelopes.ts"

/** Someone's application message within reach, and the epoch its header names. */
export interface PlainApplication {
  readonly envelope: GroupMessageEnvelope
  readonly epoch: bigint
}

export const make = (
  page: PageLedger,
  { deletionBy, textMessage }: ReturnType<typeof PageMessages.make>,
  { mayBeOwn }: ReturnType<typeof PageOwnEnvelopes.make>
) => {
  const { ctx, cursor, confirmations, deletions, handledIntents } = page
  const { crypto, identity } = ctx

  /** Someone's application message: decrypt it, then do what it asks. */
  const applicationMessage = (envelope: GroupMessageEnvelope, epoch: bigint, before: GroupSnapshot) =>
    Effect.gen(function*() {
      const processed = yield* crypto.process(page.state, envelope.payload).pipe(Effect.either)
      if (processed._tag === "Left" || processed.right.kind !== "application") {
        const detail = processed._tag === "Left" ? processed.left.message : "not an application message"
        return yield* skip(page, envelope, "unprocessable", detail)
      }
      const next = decrypted(envelope, epoch, before, processed.right)
      if (next !== undefined) yield* next
    })

  /** What a decrypted application message asks for; an effect only where one is needed. */
  const decrypted = (
    envelope: GroupMessageEnvelope,
    epoch: bigint,
    before: GroupSnapshot,
    processed: ProcessedApplication
  ): Effect.Effect<void, StorageError> | undefined => {
    const { plaintext, sender } = processed
    // Decrypting advances the receive ratchet, whatever the content turns out to be.
    page.state = processed.state
    const decision = classifyApplication({ epoch, sender, plaintext, group: before, ownInboxId: identity.inboxId })
    const reason = applicationSkipReason(decision)
    if (reason !== undefined) return skip(page, envelope, reason)
    if (decision._tag === "Text") return textMessage(decision, sender, envelope)
    if (decision._tag === "Delete") deletions.push(deletionBy(sender.inboxId, decision.target))
    return undefined
  }

  /**
   * Someone's application message within reach, decided as `apply` decides it (the same table,
   * no own intent with this payload, the header read once); undefined for anything else.
   */
  const plainApplication = (envelope: GroupMessageEnvelope, before: GroupSnapshot): bigint | undefined => {
    if (envelope.sequenceId <= cursor || before.membership === "inactive") return undefined
    if (mayBeOwn(envelope)) return undefined
    const header = crypto.header(envelope.payload)
    if (header === undefined || header.kind !== "application") return undefined
    const decision = classifyEnvelope({
      sequenceId: envelope.sequenceId,
      cursor,
      header: Option.some(header),
      ownIntent: Option.none(),
      handledIntents,
      group: before,
      maxPastEpochs: ctx.options.maxPastEpochs
    })
    return decision._tag === "ApplicationMessage" ? decision.epoch : undefined
  }

  /**
   * Someone's application messages in a row, decrypted in one call and applied in a plain loop:
   * the same steps as `apply` for each, without an effect per message. Application messages
   * change neither the epoch nor the members, so one snapshot serves the whole run.
   */
  const applyApplications = (run: ReadonlyArray<PlainApplication>, before: GroupSnapshot) =>
    Effect.gen(function*() {
      const payloads = run.map((r) => r.envelope.payload)
      const { results } = page.strict
        ? yield* crypto.processApplications(page.state, payloads)
        : yield* Effect.tap(crypto.processApplicationsUnconfirmed(page.state, payloads), (read) => {
          confirmations.push(read.confirmed)
        })
      for (const [i, { envelope, epoch }] of run.entries()) {
        page.outcome = { ...page.outcome, received: page.outcome.received + 1 }
        const processed = results[i]!
        const next = Either.isLeft(processed)
          ? skip(page, envelope, "unprocessable", processed.left.message)
          : decrypted(envelope, epoch, before, processed.right)
        if (next !== undefined) yield* next
      }
    })

  return { applicationMessage, plainApplication, applyApplications }
}
