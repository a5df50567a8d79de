/**
 * Leaving across a page: the group policy's judgement of a commit (the leavers anyone may
 * remove are those its epoch lists, `domain/Leaving`), and what an applied commit's settings
 * mean for this installation: its inbox listed (on its way out), or its request void.
 */
import { Effect } from "effect"
import { commitRefusal, settingsOrDefaults } from "../domain/GroupSettings.ts"
import { membershipIn } from "../domain/Leaving.ts"
import { FIRST_PROTOCOL_VERSION } from "../domain/Model.ts"
import { type GroupSnapshot, newLeaves } from "../domain/ReceiveDecision.ts"
import { voidOwnLeave } from "./IntentQueue.ts"
import type { Processed } from "./MlsCrypto.ts"
import type { PageLedger } from "./PageLedger.ts"

export const make = (page: PageLedger) => {
  const { crypto, identity } = page.ctx

  /**
   * Why the group's policy refuses someone's commit, judged on the epoch it was built for: every
   * member runs this on the same settings and members, so all skip it alike.
   */
  const policyRefusal = (
    before: GroupSnapshot,
    processed: Pick<Extract<Processed, { kind: "commit" }>, "committer" | "state" | "metadataBefore" | "metadataAfter">
  ) => {
    const after = crypto.view(processed.state).members
    return commitRefusal({
      committer: processed.committer.inboxId,
      membersBefore: before.members.map((m) => m.inboxId),
      membersAfter: after.map((m) => m.inboxId),
      newLeafVersions: newLeaves(before.members, after).map((leaf) => leaf.protocolVersion ?? FIRST_PROTOCOL_VERSION),
      settingsBefore: processed.metadataBefore,
      settingsAfter: processed.metadataAfter
    })
  }

  /**
   * After a commit (`metadataBefore`: the settings it was built on): our membership as its settings
   * have it (newly listed: leaving). A request of ours that became void makes us active again; the
   * page withdraws it (`voidOwnLeave`).
   */
  const settleOwnLeave = (metadataBefore: Uint8Array | undefined) => Effect.suspend(() => {
    const view = crypto.view(page.state)
    const settings = settingsOrDefaults(view.metadata)
    const listedBefore = settingsOrDefaults(metadataBefore).leaving.includes(identity.inboxId)
    const next = membershipIn(settings, view.members.map((m) => m.inboxId), identity.inboxId, page.membership, listedBefore)
    if (next === page.membership) return Effect.void
    page.membership = next
    if (next !== "active") return Effect.void
    const listed = settings.leaving.includes(identity.inboxId)
    page.writes.push(voidOwnLeave(page.ctx, page.group.id, listed, page.now))
    return Effect.logInfo("leave request voided: this inbox is the group's last super admin")
  })

  /** Our own leave commit was refused: unless the group lists us anyway, nobody was asked to remove us. */
  const ownLeaveRefused = () => {
    const listed = settingsOrDefaults(crypto.view(page.state).metadata).leaving.includes(identity.inboxId)
    if (page.membership === "pendingRemove" && !listed) page.membership = "active"
  }

  return { policyRefusal, settleOwnLeave, ownLeaveRefused }
}
