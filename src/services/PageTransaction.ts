/**
 * The transaction that ends a page: every write the page's ledger holds (intent transitions, own
 * messages delivered, new messages and deletions, MLS state, membership, the fork flag, the
 * removals of listed leavers queued) with the cursor, so a crash replays the whole page.
 */
import { Data, Effect } from "effect"
import type { MembershipChange } from "../domain/Content.ts"
import type { StoredMessage } from "../domain/Stored.ts"
import { groupTopic } from "../domain/Topics.ts"
import { failPendingIntents, queueInstallationUpdate, queueLeaverRemovals } from "./IntentQueue.ts"
import * as MessagingReceive from "./MessagingReceive.ts"
import type { PageLedger } from "./PageLedger.ts"

/**
 * A page whose runs were read before their signature checks were done, and one check failed: its
 * transaction is rolled back, and the page must be read again with every check waited for
 * (`strict`), which refuses the forged message exactly as reading one at a time does.
 */
export class UnconfirmedSignatures extends Data.TaggedError("UnconfirmedSignatures") {}

export const make = (page: PageLedger) => {
  const { ctx, group, initial, now, writes, newMessages, deletions, delivered, confirmations } = page
  const { crypto, storage } = ctx
  const groupId = group.id

  /** The page's own messages: published (which moves the group up: a trigger), their intents done. */
  const writeDelivered = Effect.gen(function*() {
    if (delivered.messages.length > 0) yield* storage.messages.markPublishedMany(delivered.messages)
    if (delivered.intents.length > 0) yield* storage.intents.markDelivered(delivered.intents)
  })

  /** A DM's groups each record the same membership changes: the conversation shows them once. */
  const repeatsInDm = (row: StoredMessage) =>
    Effect.gen(function*() {
      const key = (c: MembershipChange | null) => JSON.stringify([c?.addedInboxes, c?.removedInboxes])
      const earlier = yield* storage.messages.membershipChanges(row.conversationId)
      return earlier.some((m) => m.groupId !== row.groupId && key(m.membershipChange) === key(row.membershipChange))
    })

  /** Stores the page's new messages; returns those stored for the first time. */
  const insertMessages = Effect.gen(function*() {
    const rows: Array<StoredMessage> = []
    for (const row of newMessages) {
      if (row.kind === "membershipChange" && group.kind === "dm" && (yield* repeatsInDm(row))) continue
      rows.push(row)
    }
    // One statement for the page's rows, one touch for its latest text.
    const inserted = new Set(yield* storage.messages.insertMany(rows))
    // A deletion that arrived before its message (and may take it) erases it at once.
    const erased = yield* MessagingReceive.settleDeletionsOf(ctx, rows.filter((row) => inserted.has(row.id)))
    const fresh = rows.filter((row) => inserted.delete(row.id) && !erased.has(row.id))
    const lastText = rows.reduce<bigint | undefined>(
      (last, row) => row.kind === "text" && (last === undefined || row.sentAtNs > last) ? row.sentAtNs : last,
      undefined
    )
    if (lastText !== undefined) yield* storage.groups.touch(groupId, lastText)
    return fresh
  })

  /** Writes the page and moves the cursor to `last`, in one transaction; returns the messages stored. */
  const commitPage = (last: bigint) =>
    storage.transaction(Effect.gen(function*() {
      for (const write of writes) yield* write
      yield* writeDelivered
      // A crash here rolls the whole page back: it is replayed from the old cursor and state.
      yield* ctx.options.crashPoint("sync.midPage")
      const fresh = yield* insertMessages
      for (const deletion of deletions) yield* MessagingReceive.applyDeletion(ctx, deletion)
      // A page of only our own messages leaves the state as it was: nothing to write.
      if (page.state !== initial) {
        const { state } = page
        yield* storage.groups.saveState(groupId, { epoch: crypto.view(state).epoch, mlsState: ctx.encodeState(groupId, state) })
      }
      const { membership } = page
      if (membership !== group.membershipState) yield* storage.groups.setMembership(groupId, membership)
      if (membership === "inactive" && group.membershipState !== "inactive") yield* failPendingIntents(ctx, groupId)
      if (page.forked !== undefined && !page.progressedSinceFork) yield* storage.groups.markForked(groupId, page.forked)
      else if (page.progressedSinceFork && group.maybeForked) yield* storage.groups.clearForked(groupId)
      // A commit may have listed a leaver. Out of the group we queue nothing for it (failPendingIntents
      // above would miss it), and a DM is never left: nobody acts on its list.
      if (page.outcome.commits > 0 && membership !== "inactive" && group.kind === "group") {
        yield* queueLeaverRemovals(ctx, groupId, page.state, now)
      }
      if (page.revokedEntered && membership === "active") yield* queueInstallationUpdate(ctx, groupId, now)
      yield* storage.cursors.advance(groupTopic(groupId), last)
      // Last, so the checks finish while the page is written: one failed, nothing of the page stays.
      for (const confirmed of confirmations) if (!(yield* confirmed)) return yield* new UnconfirmedSignatures()
      return fresh
    }))

  /** Whether the page stores a message with a deadline (the disappearing-message sweeper must hear of it). */
  const storesDeadline = () =>
    delivered.messages.some((m) => m.expiresAtNs !== null) || newMessages.some((row) => row.expiresAtNs !== null)

  return { commit: commitPage, storesDeadline }
}
