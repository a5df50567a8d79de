/**
 * The ledger of one page being applied: the group as it stood, the state and membership the page
 * has reached so far, and what the page owes the database at commit (MLS state, stored messages,
 * intent transitions, membership, the fork flag), with the counts it reports. The page's steps
 * share it; plain fields, so reading or updating one costs no effect.
 */
import { Effect } from "effect"
import type { StorageError } from "../domain/Errors.ts"
import type { ConversationId, MessageId } from "../domain/Ids.ts"
import { addSkipCounts, type GroupSnapshot, type SkipReason } from "../domain/ReceiveDecision.ts"
import type { MembershipState, StoredGroup, StoredMessage } from "../domain/Stored.ts"
import type { GroupMessageEnvelope } from "../domain/Wire.ts"
import type { EngineContext } from "./EngineContext.ts"
import type * as MessagingReceive from "./MessagingReceive.ts"
import type { MlsGroupState } from "./MlsCrypto.ts"

export interface PageOutcome {
  readonly received: number
  readonly messages: number
  readonly commits: number
  /** Every envelope skipped; `skippedBy` says why, per reason. */
  readonly skipped: number
  readonly skippedBy: Readonly<Partial<Record<SkipReason, number>>>
}

export const emptyOutcome: PageOutcome = { received: 0, messages: 0, commits: 0, skipped: 0, skippedBy: {} }

export const addOutcomes = (a: PageOutcome, b: PageOutcome): PageOutcome => ({
  received: a.received + b.received,
  messages: a.messages + b.messages,
  commits: a.commits + b.commits,
  skipped: a.skipped + b.skipped,
  skippedBy: addSkipCounts(a.skippedBy, b.skippedBy)
})

/** An own message that landed on this page: published where the DS put it, at commit. */
export interface DeliveredMessage {
  readonly id: MessageId
  readonly sentAtNs: bigint
  readonly sequenceId: bigint
  readonly expiresAtNs: bigint | null
}

export interface PageLedger {
  readonly ctx: EngineContext
  readonly group: StoredGroup
  /** The state the page started from: a page that leaves it as it was writes no state. */
  readonly initial: MlsGroupState
  readonly cursor: bigint
  readonly now: bigint
  /** Whether every signature check is waited for where it is made (see `PageApplier.start`). */
  readonly strict: boolean
  state: MlsGroupState
  membership: MembershipState
  forked: string | undefined
  /**
   * Whether a commit was applied after the last future-epoch commit of this page. A commit for
   * an epoch we never reached cannot be authenticated (its keys are in an epoch we do not
   * have): anyone who may post could forge its header. A fork is real only if nothing we can
   * process follows it, so the next commit we apply clears the flag again.
   */
  progressedSinceFork: boolean
  readonly writes: Array<Effect.Effect<unknown, StorageError>>
  readonly newMessages: Array<StoredMessage>
  /** Deletions read in this page (ours included), applied after the page's messages are stored. */
  readonly deletions: Array<MessagingReceive.Deletion>
  readonly handledIntents: Set<number>
  /** Whether a commit of this page brought in a revoked installation: its removal is queued. */
  revokedEntered: boolean
  outcome: PageOutcome
  /** The signature checks of the runs read without waiting for them: all must answer true before commit. */
  readonly confirmations: Array<Effect.Effect<boolean>>
  /** Own messages that landed on this page: written together at commit (an intent is handled once a page). */
  readonly delivered: {
    readonly messages: Array<DeliveredMessage>
    readonly intents: Array<{ readonly id: number; readonly sequenceId: bigint }>
  }
}

/** A fresh ledger for a page read from `cursor` of a group held at `initial`. */
export const make = (
  ctx: EngineContext,
  group: StoredGroup,
  initial: MlsGroupState,
  cursor: bigint,
  now: bigint,
  strict: boolean
): PageLedger => ({
  ctx,
  group,
  initial,
  cursor,
  now,
  strict,
  state: initial,
  membership: group.membershipState,
  forked: undefined,
  progressedSinceFork: false,
  writes: [],
  newMessages: [],
  deletions: [],
  handledIntents: new Set(),
  revokedEntered: false,
  outcome: emptyOutcome,
  confirmations: [],
  delivered: { messages: [], intents: [] }
})

/** The group as the page holds it now, for the decision table. */
export const snapshot = (page: PageLedger): GroupSnapshot => {
  const { group } = page
  const view = page.ctx.crypto.view(page.state)
  return {
    groupId: group.id,
    kind: group.kind,
    membership: page.membership,
    epoch: view.epoch,
    ownLeafIndex: view.ownLeafIndex,
    members: view.members
  }
}

/** Counts a skipped envelope, by reason, and says so in the debug log. */
export const skip = (page: PageLedger, envelope: GroupMessageEnvelope, reason: SkipReason, detail?: string) =>
  Effect.logDebug("skipping envelope", detail ?? reason).pipe(
    Effect.annotateLogs({ sequenceId: envelope.sequenceId.toString(), reason }),
    Effect.tap(() => {
      page.outcome = {
        ...page.outcome,
        skipped: page.outcome.skipped + 1,
        skippedBy: addSkipCounts(page.outcome.skippedBy, { [reason]: 1 })
      }
    })
  )

export const conversationOf = (group: StoredGroup): ConversationId =>
  group.dmId ?? (group.id as unknown as ConversationId)
