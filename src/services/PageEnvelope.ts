/**
 * One envelope of a page, by the receive decision table: gathers its facts (MLS header, own
 * intent), asks the table what it is, and takes the step the answer calls for (our message or
 * commit, someone's commit or application message, a lost race, a fork) or counts it skipped.
 */
import { Effect, Option } from "effect"
import { classifyEnvelope, EnvelopeDecision, type GroupSnapshot, skipReasonOf } from "../domain/ReceiveDecision.ts"
import type { StoredIntent } from "../domain/Stored.ts"
import type { GroupMessageEnvelope } from "../domain/Wire.ts"
import type * as PageApplications from "./PageApplications.ts"
import type * as PageCommits from "./PageCommits.ts"
import { type PageLedger, skip, snapshot } from "./PageLedger.ts"
import type * as PageOwnEnvelopes from "./PageOwnEnvelopes.ts"

export const make = (
  page: PageLedger,
  { ownHeaderOf, ownIntentOf, ownMessage }: ReturnType<typeof PageOwnEnvelopes.make>,
  { commit, ownCommitWon }: ReturnType<typeof PageCommits.make>,
  { applicationMessage }: ReturnType<typeof PageApplications.make>
) => {
  const { ctx, cursor, handledIntents, writes } = page
  const { crypto, storage } = ctx
  const groupId = page.group.id

  /** Reads what the table needs; envelopes already read or of a group we left need nothing. */
  const factsOf = (envelope: GroupMessageEnvelope, before: GroupSnapshot) =>
    Effect.gen(function*() {
      const settled = envelope.sequenceId <= cursor || before.membership === "inactive"
      const mine = settled ? Option.none() : ownHeaderOf(envelope)
      if (Option.isSome(mine)) return { header: Option.some(mine.value.header), own: Option.some(mine.value.own) }
      const header = settled ? Option.none() : yield* crypto.inspect(envelope.payload).pipe(Effect.option)
      const own = Option.isSome(header) && header.value.groupId === groupId
        ? yield* ownIntentOf(envelope)
        : Option.none<StoredIntent>()
      return { header, own }
    })

  const apply = (envelope: GroupMessageEnvelope) =>
    Effect.gen(function*() {
      page.outcome = { ...page.outcome, received: page.outcome.received + 1 }
      const before = snapshot(page)
      const { header, own } = yield* factsOf(envelope, before)
      const decision = classifyEnvelope({
        sequenceId: envelope.sequenceId,
        cursor,
        header,
        ownIntent: Option.map(own, (i) => ({ id: i.id, kind: i.kind, state: i.state, hasStagedState: i.stagedState !== null })),
        handledIntents,
        group: before,
        maxPastEpochs: ctx.options.maxPastEpochs
      })
      if (Option.isSome(own) && decision._tag !== "Duplicate") handledIntents.add(own.value.id)
      switch (decision._tag) {
        case "OwnMessage":
          return ownMessage(Option.getOrThrow(own), envelope)
        case "OwnCommitWon":
          return yield* ownCommitWon(Option.getOrThrow(own), envelope, before)
        // Lost, or skipped by every member as too old: derived afresh at the current epoch (a
        // message keeps its id).
        case "OwnCommitLost":
        case "OwnMessageTooOld":
          yield* Effect.logDebug(`${describe(decision)}; group is at ${decision.currentEpoch}`).pipe(
            Effect.annotateLogs({ intentId: decision.intentId })
          )
          writes.push(storage.intents.resetToPublish(decision.intentId, { conflict: true }))
          break
        case "FutureEpochCommit":
          page.forked = `commit for epoch ${decision.epoch} at sequence ${envelope.sequenceId}; group at ${decision.currentEpoch}`
          page.progressedSinceFork = false
          yield* Effect.logWarning("group may be forked", page.forked)
          break
        case "Commit":
          return yield* commit(envelope, before)
        case "ApplicationMessage":
          return yield* applicationMessage(envelope, decision.epoch, before)
      }
      const reason = skipReasonOf(decision)
      if (reason !== undefined) yield* skip(page, envelope, reason, describe(decision))
    })

  return { apply }
}

/** A skip's detail for the debug log. */
const describe = (decision: EnvelopeDecision): string =>
  EnvelopeDecision.$match(decision, {
    AlreadyRead: () => "already read",
    NotAMemberAnymore: () => "this installation is no longer a member",
    Malformed: () => "malformed",
    ForeignGroup: ({ groupId }) => `belongs to group ${groupId ?? "?"}`,
    Duplicate: ({ intentId }) => `duplicate of own intent ${intentId}`,
    OwnMessage: () => "own message",
    OwnMessageTooOld: ({ epoch }) => `own message from epoch ${epoch} is older than maxPastEpochs`,
    OwnCommitWon: () => "own commit",
    OwnCommitLost: ({ epoch }) => `own commit for epoch ${epoch} lost`,
    PastEpochCommit: ({ epoch }) => `commit for past epoch ${epoch} lost the race`,
    FutureEpochCommit: ({ epoch }) => `commit for future epoch ${epoch}`,
    Commit: () => "commit",
    Unexpected: ({ kind }) => `unexpected ${kind}`,
    TooOldApplication: ({ epoch }) => `application message from epoch ${epoch} is older than maxPastEpochs`,
    ApplicationMessage: () => "application message"
  })
