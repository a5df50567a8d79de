/**
 * Applying what arrives in the own-devices group: archive pages answering our request, consent
 * updates, and other installations' requests (noted for `HistoryAnswer`). Each payload is applied
 * in one transaction with the deletion of its row and the progress it makes, so a crash replays
 * it whole or not at all; imports are keyed by message and group id, so a replay adds nothing twice.
 */
import { Clock, Effect, Option, Schema } from "effect"
import { MembershipChangeJson } from "../domain/Content.ts"
import type { ConsentRecord } from "../domain/Consent.ts"
import { type ArchivedGroup, type ArchivedMessage, type HistoryPage, SyncPayloadJson } from "../domain/HistoryArchive.ts"
import { dmPeer, type ConversationId } from "../domain/Ids.ts"
import { StoredGroup, StoredMessage } from "../domain/Stored.ts"
import type { EngineContext } from "./EngineContext.ts"
import type { HistoryProgress } from "./HistoryStorage.ts"

/** Rows read per pass over the own-devices groups' inbound payloads. */
const INBOUND_BATCH = 20

/** A group known only from history: no MLS state, so no member of it here; shown inactive. */
const placeholderOf = (g: ArchivedGroup) =>
  StoredGroup.make({
    id: g.id,
    kind: g.kind,
    dmId: g.dmId,
    membershipState: "inactive",
    epoch: 0n,
    mlsState: new Uint8Array(0),
    maybeForked: false,
    forkDetails: null,
    quarantine: null,
    name: g.name,
    description: g.description,
    addedByInboxId: null,
    createdAtNs: g.createdAtNs,
    lastMessageNs: g.lastMessageNs
  })

export const make = (ctx: EngineContext) => {
  const { identity, storage } = ctx
  const self = identity.inboxId

  /** A DM must name us; a group has no DM id. Anything else is not ours to store. */
  const soundGroup = (g: ArchivedGroup) =>
    g.kind === "dm" ? g.dmId !== null && dmPeer(g.dmId, self) !== undefined : g.dmId === null

  const importGroup = (g: ArchivedGroup) =>
    Effect.gen(function*() {
      if (!soundGroup(g)) return yield* Effect.logWarning("archived group skipped: not a conversation of this inbox")
      if (Option.isNone(yield* storage.groups.get(g.id))) yield* storage.groups.insert(placeholderOf(g))
    })

  /** Stores one archived message if its group is known and it belongs there; true if it was new. */
  const importMessage = (m: ArchivedMessage, now: bigint) =>
    Effect.gen(function*() {
      const group = yield* storage.groups.get(m.groupId)
      if (Option.isNone(group) || m.deliveryStatus !== "published") return false
      // Past its deadline it disappeared everywhere: a new device never stores it.
      if (m.expiresAtNs !== null && m.expiresAtNs <= now) return false
      if (m.conversationId !== (group.value.dmId ?? (group.value.id as unknown as ConversationId))) return false
      const membershipChange = m.kind === "membershipChange"
        ? yield* Schema.decodeUnknown(MembershipChangeJson)(m.content).pipe(Effect.option)
        : Option.none()
      if (m.kind === "membershipChange" && Option.isNone(membershipChange)) return false
      const inserted = yield* storage.messages.insert(StoredMessage.make({
        ...m,
        membershipChange: Option.getOrNull(membershipChange),
        insertedAtNs: now
      }))
      if (inserted) yield* storage.groups.touch(m.groupId, m.sentAtNs)
      // Deleted on another of our devices since we imported it: erased here too.
      if (!inserted && m.deleted) {
        const held = yield* storage.messages.get(m.id)
        if (Option.isSome(held) && !held.value.deleted) yield* storage.messages.erase(m.id)
      }
      return inserted
    })

  const mergeConsent = (records: ReadonlyArray<ConsentRecord>) =>
    Effect.forEach(records, (r) => storage.consent.put(r, { unsent: false }), { discard: true })

  /**
   * A page answering our request, from any installation that answers it. A page out of order
   * means one was lost: the request starts over (a new id) and nothing imported is lost.
   */
  const importPage = (page: HistoryPage, progress: HistoryProgress, now: bigint) =>
    Effect.gen(function*() {
      const expected = yield* storage.history.nextIndex(page.requestId, page.responder)
      if (page.index !== expected) {
        yield* Effect.logWarning("history page missing: requesting again").pipe(
          Effect.annotateLogs({ expected, got: page.index })
        )
        const state = progress.state === "done" ? "done" as const : "idle" as const
        return { progress: { ...progress, state, requestId: null, requestedFrom: "" }, imported: 0 }
      }
      yield* storage.history.saveNextIndex(page.requestId, page.responder, page.index + 1)
      yield* Effect.forEach(page.groups, importGroup, { discard: true })
      let imported = 0
      for (const m of page.messages) if (yield* importMessage(m, now)) imported++
      return {
        imported,
        progress: {
          ...progress,
          state: page.last || progress.state === "done" ? "done" as const : "importing" as const,
          pagesImported: progress.pagesImported + 1,
          messagesImported: progress.messagesImported + imported
        }
      }
    })

  /** Applies one inbound row; returns messages imported and whether it was a page of ours. */
  const applyRow = (row: StoredMessage, progress: HistoryProgress) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeNanos
      const decoded = yield* Schema.decodeUnknown(SyncPayloadJson)(row.content).pipe(Effect.option)
      return yield* storage.transaction(Effect.gen(function*() {
        yield* storage.history.dropMessage(row.id)
        if (Option.isNone(decoded) || row.senderInstallationId === identity.installationId) {
          if (Option.isNone(decoded)) yield* Effect.logWarning("own-devices payload does not decode: skipped")
          return { progress, imported: 0, page: false }
        }
        const payload = decoded.value
        switch (payload._tag) {
          case "ConsentUpdate":
            yield* mergeConsent(payload.records)
            return { progress, imported: 0, page: false }
          case "HistoryRequest":
            // Noted now, answered once this installation holds the whole history itself. A newer
            // request from the same installation replaces its older ones.
            if (payload.requester === row.senderInstallationId) {
              for (const older of yield* storage.history.openAnswers) {
                if (older.requester === payload.requester) yield* storage.history.saveAnswer({ ...older, phase: "done" })
              }
              if (Option.isNone(yield* storage.history.answer(payload.requestId))) {
                yield* storage.history.saveAnswer({
                  requestId: payload.requestId,
                  requester: payload.requester,
                  groupId: row.groupId,
                  phase: "feed",
                  cursor: "",
                  feedCursor: "",
                  pageIndex: 0
                })
              }
            }
            return { progress, imported: 0, page: false }
          case "HistoryPage": {
            yield* mergeConsent(payload.consent)
            if (payload.requestId !== progress.requestId) {
              return { progress, imported: 0, page: false }
            }
            const result = yield* importPage(payload, progress, now)
            yield* storage.history.saveProgress(result.progress)
            return { ...result, page: true }
          }
        }
      }))
    })

  /** Applies every inbound payload of these groups; returns the messages imported. */
  const applyInbound = (groupIds: ReadonlyArray<StoredGroup["id"]>, initial: HistoryProgress) =>
    Effect.gen(function*() {
      let progress = initial
      let imported = 0
      while (true) {
        const rows = yield* storage.history.inbound(groupIds, INBOUND_BATCH)
        if (rows.length === 0) return { progress, imported }
        for (const row of rows) {
          const result = yield* applyRow(row, progress)
          progress = result.progress
          imported += result.imported
          // Imported messages may carry deadlines: the sweeper hears of them once they are stored.
          if (result.imported > 0) yield* ctx.wakeSweeper
          if (result.page) yield* ctx.options.crashPoint("history.afterPage")
        }
      }
    })

  return { applyInbound }
}
