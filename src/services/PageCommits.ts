/**
 * The commits of a page: our own, first for its epoch (its staged state adopted once checked as
 * the others check it), and someone's for our epoch (processed, every leaf of its result checked,
 * judged by the group's policy). An adopted commit moves the page's state, membership and
 * transcript on, and its settings say whether this inbox is on its way out.
 */
import { Effect } from "effect"
import { encodeGovernanceError, PermissionDenied } from "../domain/Errors.ts"
import { commitChanges, type CommitChanges, type GroupSnapshot, ownCommitChanges } from "../domain/ReceiveDecision.ts"
import type { StoredIntent } from "../domain/Stored.ts"
import type { GroupMessageEnvelope } from "../domain/Wire.ts"
import { failIntent } from "./IntentQueue.ts"
import * as LeafAuthentication from "./LeafAuthentication.ts"
import type { LeafMember, MlsGroupState } from "./MlsCrypto.ts"
import { type PageLedger, skip } from "./PageLedger.ts"
import type * as PageLeaving from "./PageLeaving.ts"
import type * as PageMessages from "./PageMessages.ts"

export const make = (
  page: PageLedger,
  { recordSettingsChange, recordTranscript }: ReturnType<typeof PageMessages.make>,
  { ownLeaveRefused, policyRefusal, settleOwnLeave }: ReturnType<typeof PageLeaving.make>
) => {
  const { ctx, writes } = page
  const { crypto, identity, storage } = ctx
  const groupId = page.group.id

  const adopt = (next: MlsGroupState, changes: CommitChanges, committer: LeafMember, envelope: GroupMessageEnvelope) => {
    recordTranscript(changes.transcript, committer, envelope)
    if (!changes.leftGroup) recordSettingsChange(next, committer, envelope)
    page.state = next
    page.progressedSinceFork = true
    if (changes.leftGroup) page.membership = "inactive"
    page.outcome = { ...page.outcome, commits: page.outcome.commits + 1 }
  }

  /** Our commit is first for its epoch: its staged state becomes the group's. */
  const ownCommitWon = (intent: StoredIntent, envelope: GroupMessageEnvelope, before: GroupSnapshot) =>
    Effect.gen(function*() {
      const staged = yield* ctx.loadStaged(groupId, intent.stagedState!, page.state)
      const after = crypto.view(staged)
      const current = crypto.view(page.state)
      const me = current.members.find((m) => m.leafIndex === before.ownLeafIndex)!
      // Built from what the delivery service handed us: checked as the other members check it.
      const refused = yield* LeafAuthentication.commitLeavesProblem(identity, current, after, me)
      if (refused !== undefined) {
        if (intent.kind === "Leave") ownLeaveRefused()
        writes.push(failIntent(ctx, intent, `own commit refused: ${refused}`))
        return yield* skip(page, envelope, "unauthenticatedCommit", refused)
      }
      // Judged like anyone's: if the others skip it, so do we, or the group would fork.
      const refusal = policyRefusal(before, {
        committer: me,
        state: staged,
        metadataBefore: current.metadata,
        metadataAfter: after.metadata
      })
      if (refusal !== undefined) {
        if (intent.kind === "Leave") ownLeaveRefused()
        const denied = new PermissionDenied({ action: "commit", required: refusal })
        writes.push(failIntent(ctx, intent, encodeGovernanceError(denied)))
        return yield* skip(page, envelope, "policyViolation", refusal)
      }
      adopt(staged, ownCommitChanges(before, after), me, envelope)
      writes.push(storage.intents.markCommitted(intent.id, envelope.sequenceId))
      yield* settleOwnLeave(current.metadata)
    })

  /** Someone's commit for our epoch: processed, then every leaf of its result checked. */
  const commit = (envelope: GroupMessageEnvelope, before: GroupSnapshot) =>
    Effect.gen(function*() {
      const current = crypto.view(page.state)
      const processed = yield* crypto.process(page.state, envelope.payload).pipe(Effect.either)
      if (processed._tag === "Left" || processed.right.kind !== "commit") {
        return yield* skip(page, envelope, "unprocessable", processed._tag === "Left" ? processed.left.message : "not a commit")
      }
      const after = crypto.view(processed.right.state)
      const refused = yield* LeafAuthentication.commitLeavesProblem(identity, current, after, processed.right.committer)
      if (refused !== undefined) return yield* skip(page, envelope, "unauthenticatedCommit", refused)
      const refusal = policyRefusal(before, processed.right)
      if (refusal !== undefined) return yield* skip(page, envelope, "policyViolation", refusal)
      // A device revoked since it was added is let in (members read revocations at different
      // times) and removed at once.
      if (after.active && (yield* LeafAuthentication.enteringRevoked(identity, current, after))) page.revokedEntered = true
      adopt(processed.right.state, commitChanges(before, after, identity.inboxId), processed.right.committer, envelope)
      yield* settleOwnLeave(current.metadata)
    })

  return { ownCommitWon, commit }
}
