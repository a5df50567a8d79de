/**
 * Applies the receive decisions (`domain/ReceiveDecision`) of one page of a group topic. It
 * gathers each envelope's facts (MLS header, own intent), asks the table what the envelope is,
 * runs MLS where the answer says so, and accumulates the page's writes: MLS state, stored
 * messages, intent transitions, membership, the fork flag and the removals to queue. `commit`
 * writes them all with the cursor in one transaction, so a crash replays the whole page.
 *
 * The parts share the page's ledger (`PageLedger`): own envelopes (`PageOwnEnvelopes`), the
 * messages stored (`PageMessages`), leaving (`PageLeaving`), commits (`PageCommits`),
 * someone's application messages and their runs (`PageApplications`), one envelope by the table
 * (`PageEnvelope`) and the closing transaction (`PageTransaction`).
 */
import { Effect } from "effect"
import type { StoredGroup } from "../domain/Stored.ts"
import type { GroupMessageEnvelope } from "../domain/Wire.ts"
import type { EngineContext } from "./EngineContext.ts"
import type { MlsGroupState } from "./MlsCrypto.ts"
import * as PageApplications from "./PageApplications.ts"
import * as PageCommits from "./PageCommits.ts"
import * as PageEnvelope from "./PageEnvelope.ts"
import * as PageLeaving from "./PageLeaving.ts"
import * as PageLedger from "./PageLedger.ts"
import * as PageMessages from "./PageMessages.ts"
import * as PageOwnEnvelopes from "./PageOwnEnvelopes.ts"
import * as PageTransaction from "./PageTransaction.ts"

export { addOutcomes, emptyOutcome, type PageOutcome } from "./PageLedger.ts"
export { UnconfirmedSignatures } from "./PageTransaction.ts"

/**
 * Starts a page read from `cursor` of a group held at `initial`. Unless `strict`, runs of
 * someone's application messages are read while their signatures are still being checked beside
 * (on the thread pool); `commit` waits for those checks last, just before the transaction ends,
 * and fails with `UnconfirmedSignatures` (writing nothing) if one failed.
 */
export const start = (
  ctx: EngineContext,
  group: StoredGroup,
  initial: MlsGroupState,
  cursor: bigint,
  now: bigint,
  strict = false
) => {
  const page = PageLedger.make(ctx, group, initial, cursor, now, strict)
  const messages = PageMessages.make(page)
  const leaving = PageLeaving.make(page)
  const ownEnvelopes = PageOwnEnvelopes.make(page, messages)
  const applications = PageApplications.make(page, messages, ownEnvelopes)
  const { apply } = PageEnvelope.make(page, ownEnvelopes, PageCommits.make(page, messages, leaving), applications)
  const { commit, storesDeadline } = PageTransaction.make(page)
  const { ownApplication, ownMessage } = ownEnvelopes
  const { applyApplications, plainApplication } = applications

  /** Applies a page's envelopes in order: runs of someone's application messages together, the rest one by one. */
  const applyAll = (envelopes: ReadonlyArray<GroupMessageEnvelope>) =>
    Effect.gen(function*() {
      let before = PageLedger.snapshot(page)
      let run: Array<PageApplications.PlainApplication> = []
      for (const envelope of envelopes) {
        // Our own message changes neither state nor members: `apply`'s steps, without an effect each.
        const own = ownApplication(envelope, before)
        if (own !== undefined) {
          if (run.length > 0) yield* applyApplications(run, before)
          run = []
          page.outcome = { ...page.outcome, received: page.outcome.received + 1 }
          page.handledIntents.add(own.id)
          ownMessage(own, envelope)
          continue
        }
        const epoch = plainApplication(envelope, before)
        if (epoch !== undefined) {
          run.push({ envelope, epoch })
          continue
        }
        if (run.length > 0) yield* applyApplications(run, before)
        run = []
        yield* apply(envelope)
        before = PageLedger.snapshot(page)
      }
      if (run.length > 0) yield* applyApplications(run, before)
    })

  return {
    prefetch: ownEnvelopes.prefetch,
    apply,
    applyAll,
    commit,
    outcome: () => page.outcome,
    membership: () => page.membership,
    storesDeadline,
    /** Own intents this page settles as Processed (its own messages that landed), once committed. */
    delivered: () => page.delivered.intents.map((i) => i.id)
  }
}
