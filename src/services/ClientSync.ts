/**
 * Keeping a client's store current: one group's round summarized, `syncAll` (welcomes, news,
 * devices, pending intents, history), and the message stream that follows the delivery
 * service's pushes.
 */
import { Effect, HashMap, Option, PubSub, Schedule, Stream } from "effect"
import type { GroupId } from "../domain/Ids.ts"
import { OWN_DEVICES_GROUP_NAME } from "../domain/HistoryArchive.ts"
import { makeSyncSummary, type Message, SyncSummary } from "../domain/Model.ts"
import type { StoredMessage } from "../domain/Stored.ts"
import { groupTopic, welcomeTopic } from "../domain/Topics.ts"
import type { ClientContext } from "./ClientContext.ts"
import type { EngineContext } from "./EngineContext.ts"
import { toMessage } from "./ClientMessages.ts"
import type { SyncError } from "./Conversation.ts"
import type * as GroupSync from "./GroupSync.ts"
import type * as HistorySync from "./HistorySync.ts"
import { failPendingIntents } from "./IntentQueue.ts"

const summarize = (outcome: GroupSync.PageOutcome | undefined, extra: Partial<SyncSummary> = {}) =>
  makeSyncSummary({
    received: outcome?.received ?? 0,
    messages: outcome?.messages ?? 0,
    commits: outcome?.commits ?? 0,
    skipped: outcome?.skipped ?? 0,
    skippedBy: outcome?.skippedBy ?? {},
    published: extra.published ?? 0,
    joined: extra.joined ?? 0
  })

/** One round of a group (read, publish, read back), summarized. */
export const syncGroupWith = ({ publisher }: ClientContext) => (groupId: GroupId) =>
  publisher.round(groupId).pipe(
    Effect.map(({ after, before, published }) =>
      SyncSummary.combine(summarize(before, { published }), summarize(after))
    )
  )

/** Whether our own inbox's log no longer lists this installation (it was revoked). */
const revokedItself = ({ identity }: EngineContext) =>
  identity.inboxState(identity.inboxId).pipe(
    Effect.map((state) => !HashMap.has(state.installations, identity.installationId)),
    Effect.orElseSucceed(() => false)
  )

/** Welcomes first, then every active group that has news or pending intents. */
const syncAllOf = (ctx: ClientContext, history: ReturnType<typeof HistorySync.make>) =>
  Effect.gen(function*() {
    const { consent, deviceSync, env, publisher, sync, welcomes } = ctx
    const { storage } = env
    const syncGroup = syncGroupWith(ctx)
    // A revoked installation is refused its welcomes, but may still read its groups' topics:
    // it syncs them, reads its removal and goes inactive there.
    let refused = false
    const joined = yield* welcomes.syncWelcomes.pipe(
      Effect.catchIf(
        (e) => e._tag === "DeliveryError" && e.reason === "Unauthenticated",
        (e) =>
          Effect.logWarning("the delivery service refuses this installation its welcomes", e.message).pipe(
            Effect.tap(() => {
              refused = true
            }),
            Effect.as({ joined: [], skipped: 0 })
          )
      )
    )
    yield* consent.onJoined(joined.joined).pipe(
      Effect.catchAll((e) => Effect.logWarning("consent of joined groups not settled", e.message))
    )
    const active = yield* storage.groups.summaries({ includeInactive: false })
    // News, and members' new or revoked devices as UpdateInstallations intents (pending below),
    // in one batched round trip; the periodic check behind it is a safety net.
    const news = yield* deviceSync.newsAndDevices(active)
    yield* publisher.checkInstallationsMany(active.map((g) => g.id))
    const pending = new Set((yield* storage.intents.byState(["ToPublish", "Published", "Committed"])).map((i) => i.groupId))
    let summary = makeSyncSummary({
      ...SyncSummary.empty,
      joined: joined.joined.length,
      skipped: joined.skipped,
      skippedBy: joined.skipped === 0 ? {} : { badWelcome: joined.skipped }
    })
    for (const group of active) {
      if (!news.has(group.id) && !pending.has(group.id)) continue
      // Revoked: the service takes no commit or message from us any more; read on, then go inactive below.
      const synced = yield* syncGroup(group.id).pipe(
        Effect.catchIf(
          (e) => refused && e._tag === "DeliveryError" && e.reason === "Unauthenticated",
          (e) => Effect.logWarning("the delivery service refuses this installation's publishing", e.message).pipe(
            Effect.as(SyncSummary.empty)
          )
        )
      )
      summary = SyncSummary.combine(summary, synced)
    }
    // Revoked (the identity log says so, not only the service): this installation is done.
    // What was there to read has been read above; it takes part in no group any more.
    if (refused && (yield* revokedItself(env))) {
      for (const group of active) {
        yield* storage.transaction(Effect.gen(function*() {
          yield* storage.groups.setMembership(group.id, "inactive")
          yield* failPendingIntents(env, group.id)
        }))
      }
    }
    // Removed after one of our commits landed: its welcomes are still owed to those it added.
    const activeIds = new Set(active.map((g) => g.id))
    const owed = new Set((yield* storage.intents.byState(["Committed"])).map((i) => i.groupId))
    for (const groupId of owed) {
      if (!activeIds.has(groupId)) yield* env.withGroupLock(groupId)(sync.postCommit(groupId))
    }
    const historyImported = yield* history.step(active)
    return SyncSummary.combine(summary, makeSyncSummary({ ...SyncSummary.empty, historyImported }))
  }).pipe(Effect.withSpan("Client.syncAll"))

/**
 * Keeps the local store current from the delivery service's pushes: every group topic and
 * the welcome topic, resubscribing (from the stored cursors) whenever a group is joined.
 */
const followNetwork = (ctx: ClientContext, syncAll: Effect.Effect<SyncSummary, SyncError>) =>
  Effect.gen(function*() {
    const { consent, env, welcomes } = ctx
    const { ds, identity, storage } = env
    const syncGroup = syncGroupWith(ctx)
    yield* syncAll
    const active = yield* storage.groups.list({ includeInactive: false })
    const filters = yield* Effect.forEach(active, (g) =>
      storage.cursors.get(groupTopic(g.id)).pipe(Effect.map((afterSequenceId) => ({ groupId: g.id, afterSequenceId }))))
    const welcomeCursor = yield* storage.cursors.get(welcomeTopic(identity.installationId))
    const groupEvents = filters.length === 0
      ? Stream.never
      : ds.subscribeGroupMessages(filters).pipe(Stream.map((e) => ({ _tag: "group" as const, groupId: e.groupId })))
    const welcomeEvents = ds.subscribeWelcomeMessages({
      installationId: identity.installationId,
      afterSequenceId: welcomeCursor
    }).pipe(Stream.map(() => ({ _tag: "welcome" as const })))
    yield* Stream.merge(groupEvents, welcomeEvents).pipe(
      Stream.mapEffect((event) =>
        event._tag === "group"
          ? syncGroup(event.groupId).pipe(Effect.as(false))
          : welcomes.syncWelcomes.pipe(
            Effect.tap((r) => consent.onJoined(r.joined).pipe(Effect.catchAll(() => Effect.void))),
            Effect.map((r) => r.joined.length > 0)
          )
      ),
      Stream.takeUntil((joinedNewGroup) => joinedNewGroup),
      Stream.runDrain
    )
  }).pipe(
    Effect.tapError((e) => Effect.logWarning("message stream failed; resubscribing", e.message)),
    Effect.retry(Schedule.spaced("100 millis")),
    Effect.forever
  )

/** Whether a stored message is streamed: not an own-devices payload, not in a denied conversation. */
const streamedIn = ({ consent, env: { storage } }: ClientContext) => (row: StoredMessage) =>
  Effect.gen(function*() {
    const group = yield* storage.groups.get(row.groupId)
    if (Option.isSome(group) && group.value.name === OWN_DEVICES_GROUP_NAME) return false
    return (yield* consent.stateOf({ conversationId: row.conversationId })) !== "denied"
  }).pipe(Effect.orElseSucceed(() => true))

export const make = (ctx: ClientContext, history: ReturnType<typeof HistorySync.make>) => {
  const { stored } = ctx.env
  const syncAll = syncAllOf(ctx, history)

  const streamMessages: Stream.Stream<Message, SyncError> = Stream.unwrapScoped(
    Effect.gen(function*() {
      // Subscribe before following the network, so nothing stored in between is missed.
      const subscription = yield* PubSub.subscribe(stored)
      yield* Effect.forkScoped(followNetwork(ctx, syncAll))
      return Stream.fromQueue(subscription).pipe(Stream.filterEffect(streamedIn(ctx)), Stream.map(toMessage))
    })
  ).pipe(Stream.withSpan("Client.streamMessages"))

  return { syncAll, streamMessages }
}
