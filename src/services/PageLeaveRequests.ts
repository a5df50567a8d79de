/**
 * Leave requests across a page: the ones this installation holds (read once a page), the group
 * policy's judgement of a commit against them and the group's settings, and the requests a
 * commit made impossible (the leaver became the last super admin), voided alike on every member.
 */
import { Effect } from "effect"
import { commitRefusal, leaveBlocked } from "../domain/GroupSettings.ts"
import type { InboxId } from "../domain/Ids.ts"
import { type GroupSnapshot, newLeaves } from "../domain/ReceiveDecision.ts"
import { leavingInboxes } from "./IntentQueue.ts"
import type { Processed } from "./MlsCrypto.ts"
import type { PageLedger } from "./PageLedger.ts"

export const make = (page: PageLedger) => {
  const { ctx, leaving, removedHere, voidedHere } = page
  const { crypto, identity } = ctx
  const groupId = page.group.id

  /**
   * Why the group's policy refuses someone's commit, judged on the epoch it was built for: every
   * member runs this on the same settings, members and leave requests, so all skip it alike.
   */
  const policyRefusal = (
    before: GroupSnapshot,
    processed: Pick<Extract<Processed, { kind: "commit" }>, "committer" | "state" | "metadataBefore" | "metadataAfter">
  ) =>
    Effect.gen(function*() {
      const stored = (yield* storedLeavers)
        .filter((inboxId) => !removedHere.has(inboxId) && !voidedHere.has(inboxId))
      // The leaver holds no removal intent for itself, yet it asked too: it judges like the others.
      const own = page.membership === "pendingRemove" ? [identity.inboxId] : []
      const after = crypto.view(processed.state).members
      return commitRefusal({
        committer: processed.committer.inboxId,
        membersBefore: before.members.map((m) => m.inboxId),
        membersAfter: after.map((m) => m.inboxId),
        newLeafVersions: newLeaves(before.members, after).map((leaf) => leaf.protocolVersion ?? 1),
        leaving: [...leaving, ...stored, ...own],
        settingsBefore: processed.metadataBefore,
        settingsAfter: processed.metadataAfter
      })
    })

  /**
   * The leave requests this installation holds (its pending removals for them), read once a page:
   * the page's writes wait for its commit, so they are the same for every commit of the page, and
   * each read decodes every pending intent (an own commit's staged state among them).
   */
  let leavers: ReadonlyArray<InboxId> | undefined
  const storedLeavers = Effect.suspend(() =>
    leavers !== undefined ? Effect.succeed(leavers) : Effect.tap(leavingInboxes(ctx, groupId), (read) => {
      leavers = read
    })
  )

  /** Whether, in the epoch held now, a leave request of this inbox can no longer be carried out. */
  const blockedLeaver = (inboxId: InboxId) => {
    const view = crypto.view(page.state)
    return leaveBlocked(view.metadata, view.members.map((m) => m.inboxId), inboxId)
  }

  /** After a commit: voids the leave requests it made impossible (ours included: we are active again). */
  const voidBlockedLeaves = Effect.gen(function*() {
    if (page.membership === "inactive") return
    const stored = yield* storedLeavers
    const own = page.membership === "pendingRemove" ? [identity.inboxId] : []
    for (const inboxId of new Set([...leaving, ...stored, ...own])) {
      if (removedHere.has(inboxId) || voidedHere.has(inboxId) || !blockedLeaver(inboxId)) continue
      leaving.delete(inboxId)
      voidedHere.add(inboxId)
      if (inboxId === identity.inboxId) page.membership = "active"
      yield* Effect.logInfo("leave request voided: the leaver is the group's last super admin").pipe(
        Effect.annotateLogs({ inboxId })
      )
    }
  })

  return { policyRefusal, blockedLeaver, voidBlockedLeaves }
}
