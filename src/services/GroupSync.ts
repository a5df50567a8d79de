/**
 * Group sync: read a group topic from the stored cursor, in the delivery service's order,
 * one page at a time. What each envelope means is decided by `domain/ReceiveDecision`;
 * `PageApplier` applies the decisions and writes the page's MLS state, stored messages,
 * intent states and cursor in one transaction, so a crash replays the page from the old
 * cursor with the old state and nothing is applied twice.
 */
import { Clock, Effect, Option, PubSub, Schema } from "effect"
import type { DeliveryError } from "../domain/Errors.ts"
import { settingsOrDefaults } from "../domain/GroupSettings.ts"
import type { GroupId, InboxId } from "../domain/Ids.ts"
import type { PostCommitData } from "../domain/Intent.ts"
import type { MembershipState, StoredGroup, StoredIntent } from "../domain/Stored.ts"
import { groupTopic } from "../domain/Topics.ts"
import { continuesCursor } from "../domain/SentAnswer.ts"
import { type GroupMessageEnvelope, makeWelcomeMessageInput, makeWelcomePayload, type WelcomeMessageInput, WelcomePayloadJson } from "../domain/Wire.ts"
import { fetchKeyPackagesInChunks } from "./DeliveryService.ts"
import { type EngineContext, loadGroupRow } from "./EngineContext.ts"
import { failIntent, failPendingIntents, newLeave, queueIntent, queueRemoval } from "./IntentQueue.ts"
import type { GroupView, LeafMember, MlsGroupState } from "./MlsCrypto.ts"
import * as EngineMetrics from "./EngineMetrics.ts"
import * as PageApplier from "./PageApplier.ts"

export type { PageOutcome } from "./PageApplier.ts"

/** Inboxes with at least one installation in the group, and which installations. */
export const membersByInbox = (view: GroupView): Map<InboxId, Array<LeafMember>> => {
  const byInbox = new Map<InboxId, Array<LeafMember>>()
  for (const leaf of view.members) {
    const list = byInbox.get(leaf.inboxId) ?? []
    list.push(leaf)
    byInbox.set(leaf.inboxId, list)
  }
  return byInbox
}

/** The cause of an intent whose commit landed but whose welcomes could not be sent. */
export const WELCOMES_UNDELIVERABLE = "welcomes undeliverable"

/** What a publish sent to a group topic, in order, and the service's answer (the stored envelopes). */
export interface Sent {
  readonly payloads: ReadonlyArray<Uint8Array>
  readonly answer: ReadonlyArray<GroupMessageEnvelope>
  /** The group's row and state as the publisher left them (stored), if it read them under this lock. */
  readonly held?: Held
  /**
   * The intents behind `payloads` as stored, where the publisher holds their rows whole (read or
   * just written ahead under this lock): reading a page of only these back asks for none of them.
   */
  readonly intents?: ReadonlyArray<StoredIntent>
}

/** A group's row and its state as stored, read under the group lock that is still held. */
interface Held {
  readonly group: StoredGroup
  readonly state: MlsGroupState
}

export const make = (ctx: EngineContext) => {
  const { crypto, ds, identity, storage } = ctx

  /**
   * Reads one page and applies it. Returns the outcome and whether the topic may have more.
   * Runs under the group lock.
   */
  const receivePage = Effect.fn("GroupSync.receivePage")(function*(groupId: GroupId, at?: bigint) {
    const cursor = at ?? (yield* storage.cursors.get(groupTopic(groupId)))
    const page = yield* ds.queryGroupMessages({ groupId, afterSequenceId: cursor, limit: ctx.options.pageSize })
    // Nothing read (the end, or a page that carried nothing): the cursor stays, so the next sync asks again from it.
    if (page.items.length === 0) return { outcome: PageApplier.emptyOutcome, more: false, membership: undefined, cursor }
    const last = page.items[page.items.length - 1]!.sequenceId
    return { ...(yield* applyPage(groupId, cursor, page.items)), more: page.next !== undefined, cursor: last }
  })

  /**
   * Applies the topic's entries after `cursor` as one page, in one transaction. Under the group
   * lock; `held`: the row and state as stored, when the caller has just read them under it.
   */
  const applyPage = (
    groupId: GroupId,
    cursor: bigint,
    items: ReadonlyArray<GroupMessageEnvelope>,
    held?: Held,
    known?: ReadonlyArray<StoredIntent>
  ) =>
    Effect.gen(function*() {
      // Read once: a rolled-back page's re-read starts from exactly this row and state (the
      // provisional commit's serialization evicted the decoded state from the cache).
      const group = held?.group ?? (yield* loadGroupRow(ctx, groupId))
      const start: Held = { group, state: held?.state ?? (yield* ctx.loadState(group)) }
      return yield* applyPageOnce(groupId, cursor, items, start, known, false).pipe(
        // A forged signature among the runs: the page's transaction rolled back; read it again, every check awaited.
        Effect.catchTag("UnconfirmedSignatures", () =>
          applyPageOnce(groupId, cursor, items, start, known, true).pipe(
            // A strict read waits for each check where it is made: it has none left to fail at commit.
            Effect.catchTag("UnconfirmedSignatures", Effect.die)
          ))
      )
    })
  const applyPageOnce = (
    groupId: GroupId,
    cursor: bigint,
    items: ReadonlyArray<GroupMessageEnvelope>,
    { group, state }: Held,
    known: ReadonlyArray<StoredIntent> | undefined,
    strict: boolean
  ) =>
    Effect.gen(function*() {
      const applier = PageApplier.start(ctx, group, state, cursor, yield* Clock.currentTimeNanos, strict)
      yield* applier.prefetch(items, known)
      yield* applier.applyAll(items)
      const inserted = yield* applier.commit(items[items.length - 1]!.sequenceId)
      yield* PubSub.publishAll(ctx.stored, inserted)
      if (applier.storesDeadline()) yield* ctx.wakeSweeper
      return { outcome: applier.outcome(), membership: applier.membership(), delivered: applier.delivered() }
    })
  /**
   * On our way out of a group. Asked to leave, and nobody else is left to commit the removal: we
   * are out, once our own leave has landed too (our other devices must learn that the inbox
   * left). Our other devices still in the group are removed by commit first: one of them may not
   * have read the leave yet, and what it sends meanwhile must either reach us or be refused by
   * the group. Neither listed as leaving nor with a leave on its way (a request an earlier
   * version sent as a message): we ask again, as a commit.
   */
  const settlePendingRemove = (groupId: GroupId, known: MembershipState | undefined) =>
    Effect.gen(function*() {
      // The membership a page just stored, if one was read: only a pending removal needs the row.
      if (known !== undefined && known !== "pendingRemove") return
      // No page read (a sync without news): the row's membership, without its MLS state.
      const summary = yield* storage.groups.summary(groupId)
      if (Option.isSome(summary) && summary.value.membershipState !== "pendingRemove") return
      const group = yield* loadGroupRow(ctx, groupId)
      if (group.membershipState !== "pendingRemove" || group.kind !== "group") return
      const view = crypto.view(yield* ctx.loadState(group))
      const pending = yield* storage.intents.byGroup(groupId, ["ToPublish", "Published"])
      if (pending.some((intent) => intent.kind === "Leave")) return
      const settings = settingsOrDefaults(view.metadata)
      if (!settings.leaving.includes(identity.inboxId)) {
        yield* queueIntent(ctx, groupId, newLeave(), yield* Clock.currentTimeNanos)
        return
      }
      if (!view.members.every((m) => m.inboxId === identity.inboxId)) return
      if (view.members.some((m) => m.leafIndex !== view.ownLeafIndex)) {
        // Removing our own inbox removes our other devices (Publisher: never this one).
        yield* queueRemoval(ctx, groupId, identity.inboxId, yield* Clock.currentTimeNanos)
        return
      }
      yield* storage.transaction(Effect.gen(function*() {
        yield* storage.groups.setMembership(groupId, "inactive")
        yield* failPendingIntents(ctx, groupId)
      }))
    })

  /**
   * Reads the topic to its end. `known`: the group's membership as the caller read it under the
   * group lock still held (what a sync without news would otherwise read again); `at`: the cursor
   * as stored, read under that lock too.
   */
  const receiveTo = Effect.fn("GroupSync.receive")(function*(groupId: GroupId, known?: MembershipState, at?: bigint) {
    let total = PageApplier.emptyOutcome
    let membership: MembershipState | undefined = known
    let cursor: bigint
    let first = at
    while (true) {
      const page = yield* receivePage(groupId, first)
      first = undefined
      total = PageApplier.addOutcomes(total, page.outcome)
      membership = page.membership ?? membership
      cursor = page.cursor
      if (!page.more) break
    }
    yield* settlePendingRemove(groupId, membership)
    yield* EngineMetrics.recordSync(total)
    return { total, cursor }
  }, (effect, groupId) => Effect.annotateLogs(effect, { groupId }))
  const receive = (groupId: GroupId, known?: MembershipState) =>
    Effect.map(receiveTo(groupId, known), ({ total }) => total)

  /**
   * Reads back what this installation just published. When the send's answer continues the
   * cursor exactly (`domain/SentAnswer`), it is the topic's next page: applied as a query's page
   * would be (same applier, same checks, one transaction per page), without asking again.
   * Otherwise the topic is read to its end as `receive` does. Under the group lock. With the
   * outcome, the own intents the read-back settled (Processed, committed): nobody reads them again.
   * `at`: the cursor as `receiveTo` left it, when the caller knows nothing can have moved it since.
   */
  const receiveSent = Effect.fn("GroupSync.receiveSent")(function*(
    groupId: GroupId,
    sent: Sent,
    at?: bigint
  ) {
    const confirmed = new Set<number>()
    const cursor = at ?? (yield* storage.cursors.get(groupTopic(groupId)))
    if (!continuesCursor(groupId, cursor, sent.payloads, sent.answer)) {
      return { total: yield* receive(groupId), confirmed }
    }
    let total = PageApplier.emptyOutcome
    let membership: MembershipState | undefined
    for (let i = 0; i < sent.answer.length; i += ctx.options.pageSize) {
      // A page may change the state: only the first starts from what the publisher held.
      const held = i === 0 ? sent.held : undefined
      const page = yield* applyPage(groupId, cursor + BigInt(i), sent.answer.slice(i, i + ctx.options.pageSize), held, sent.intents)
      for (const id of page.delivered) confirmed.add(id)
      total = PageApplier.addOutcomes(total, page.outcome)
      membership = page.membership
    }
    yield* settlePendingRemove(groupId, membership)
    yield* EngineMetrics.recordSync(total)
    return { total, confirmed: confirmed as ReadonlySet<number> }
  }, (effect, groupId) => Effect.annotateLogs(effect, { groupId }))

  /** Sends the welcomes of own commits that are confirmed, then marks them Processed. */
  const postCommit = Effect.fn("GroupSync.postCommit")(function*(groupId: GroupId) {
    const committed = yield* storage.intents.byGroup(groupId, ["Committed"])
    for (const intent of committed) {
      yield* ctx.options.crashPoint("postCommit.beforeWelcomes")
      yield* sendWelcomes(groupId, intent)
    }
  })

  /** The key packages the recipients were added with (fetched again for rows from before they were kept). */
  const welcomeKeyPackages = (post: PostCommitData): Effect.Effect<ReadonlyArray<Uint8Array | undefined>, DeliveryError> =>
    post.keyPackages.length === post.installationIds.length
      ? Effect.succeed(post.keyPackages)
      : Effect.map(fetchKeyPackagesInChunks(ds, post.installationIds), (fetched) => fetched.map((f) => f.keyPackage))

  /** A commit's welcomes, each sealed to the key package its recipient was added with. */
  const sealWelcomes = (groupId: GroupId, commitSequenceId: bigint, post: PostCommitData) =>
    Effect.gen(function*() {
      // Only its DM id is needed: the summary, without the MLS state's bytes.
      const group = yield* storage.groups.summary(groupId).pipe(
        Effect.flatMap(Option.match({
          onSome: Effect.succeed,
          onNone: () => loadGroupRow(ctx, groupId)
        }))
      )
      const payload = new TextEncoder().encode(
        Schema.encodeSync(WelcomePayloadJson)(
          makeWelcomePayload({
            groupId,
            commitSequenceId,
            welcome: post.welcome,
            ...(group.dmId === null ? {} : { dmId: group.dmId })
          })
        )
      )
      // Sealed to each recipient's key package: the server and everyone else see no group id,
      // no cursor and no DM peer. Sealing is randomized, so a resend after a crash stores a
      // second copy; the joiner takes a group once.
      const keyPackages = yield* welcomeKeyPackages(post)
      const messages: Array<WelcomeMessageInput> = []
      for (const [i, installationId] of post.installationIds.entries()) {
        const keyPackage = keyPackages[i]
        if (keyPackage === undefined) {
          yield* Effect.logWarning("no key package to seal a welcome to; the installation is not welcomed").pipe(
            Effect.annotateLogs({ groupId, installationId })
          )
          continue
        }
        // The commit was built with this very key package, so it decodes: a failure is a bug.
        const sealed = yield* crypto.sealToKeyPackage(keyPackage, payload).pipe(Effect.orDie)
        messages.push(makeWelcomeMessageInput({ installationId, payload: sealed }))
      }
      return messages
    })

  const sendWelcomes = (groupId: GroupId, intent: StoredIntent) =>
    Effect.gen(function*() {
      const post = intent.postCommit
      if (post !== null && intent.sequenceId !== null) {
        // No flush first: the welcomes carry what the commit wrote ahead (these very welcomes, the
        // key packages they are sealed to), synced before the commit went out, and the commit's
        // sequence id, which reading the topic again gives back. A power loss that undid the
        // confirmation has the commit confirmed again from the topic and its welcomes sealed and
        // sent again (the same welcome, under fresh HPKE randomness); the joiner takes the group once.
        const messages = yield* sealWelcomes(groupId, intent.sequenceId, post)
        for (let i = 0; i < messages.length; i += 50) {
          const refused = yield* ds.sendWelcomeMessages(messages.slice(i, i + 50)).pipe(
            Effect.as(false),
            // Revoked after its commit landed: the service takes nothing more from this
            // installation, and nobody else holds these welcomes. The intent ends in Error.
            Effect.catchIf((e) => e.reason === "Unauthenticated", () => Effect.succeed(true))
          )
          if (refused) {
            return yield* failIntent(ctx, intent, `${WELCOMES_UNDELIVERABLE}: this installation was revoked`)
          }
        }
      }
      yield* storage.intents.markProcessed(intent.id)
    })

  return { receive, receiveTo, receiveSent, postCommit, membersByInbox }
}
