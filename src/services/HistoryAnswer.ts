/**
 * Answering another installation's history request: the archive read in keyset order
 * (conversations by id, then published messages in insertion order, then consent records), cut
 * into bounded pages (`HistoryArchive.pageCut`). Each page is queued as a message of the
 * own-devices group in one transaction with the answer's new position, so a crash neither loses
 * nor repeats a page, and memory holds one page at a time.
 */
import { Clock, Effect, Schema } from "effect"
import { randomBytes } from "node:crypto"
import { toHex } from "../domain/Bytes.ts"
import { ConsentRecord } from "../domain/Consent.ts"
import { messageIdOf } from "../domain/Content.ts"
import {
  ArchivedGroup,
  type ArchivedMessage,
  makeArchivedGroup,
  makeArchivedMessage,
  MAX_PAGE_BYTES,
  nextPhase,
  pageCut,
  type SyncPayload,
  SyncPayloadJson
} from "../domain/HistoryArchive.ts"
import type { GroupId } from "../domain/Ids.ts"
import { SendMessageData } from "../domain/Intent.ts"
import type { StoredGroup, StoredMessage } from "../domain/Stored.ts"
import type { EngineContext } from "./EngineContext.ts"
import type { HistoryAnswer } from "./HistoryStorage.ts"
import { queueIntent } from "./IntentQueue.ts"

const archivedGroup = (g: StoredGroup) =>
  makeArchivedGroup({
    id: g.id,
    kind: g.kind,
    dmId: g.dmId,
    name: g.name,
    description: g.description,
    createdAtNs: g.createdAtNs,
    lastMessageNs: g.lastMessageNs
  })

const archivedMessage = (m: StoredMessage) =>
  makeArchivedMessage({
    id: m.id,
    groupId: m.groupId,
    conversationId: m.conversationId,
    senderInboxId: m.senderInboxId,
    senderInstallationId: m.senderInstallationId,
    sentAtNs: m.sentAtNs,
    sequenceId: m.sequenceId,
    kind: m.kind,
    content: m.content,
    deliveryStatus: m.deliveryStatus,
    groupContext: m.groupContext,
    contentType: m.contentType,
    contentBytes: m.contentBytes,
    deleted: m.deleted,
    expiresAtNs: m.expiresAtNs
  })

/** About the encoded size: bigints as digits, bytes as base64 (4 characters per 3 bytes). */
const sizeOf = (value: unknown) =>
  JSON.stringify(value, (_, v) =>
    typeof v === "bigint" ? v.toString() : v instanceof Uint8Array ? "=".repeat(Math.ceil(v.length / 3) * 4) : v
  ).length

/** The entries the next page holds, by the paging rule; `exhausted` when the read found no more (a cut page is not). */
const cut = <A>(items: ReadonlyArray<A>, sizes: ReadonlyArray<number>, limit: number) => {
  const taken = pageCut(sizes, { maxItems: limit, maxBytes: MAX_PAGE_BYTES })
  return { rows: items.slice(0, taken), exhausted: items.length < limit && taken === items.length }
}

const empty = () => ({ groups: [] as Array<ArchivedGroup>, messages: [] as Array<ArchivedMessage>, consent: [] as Array<ConsentRecord> })

export const make = (ctx: EngineContext, pageItems: number) => {
  const { identity, storage } = ctx

  /** The next page of an answer: what it holds, the cursor after it, and whether its part is exhausted. */
  const nextPage = (answer: HistoryAnswer) =>
    Effect.gen(function*() {
      if (answer.phase === "consent") {
        const rows = yield* storage.consent.page(answer.cursor, pageItems)
        return { content: { ...empty(), consent: rows }, cursor: rows.at(-1)?.key ?? answer.cursor, exhausted: rows.length < pageItems }
      }
      const entries = yield* storage.history.feedAfter(answer.cursor === "" ? 0 : Number(answer.cursor), pageItems)
      const archived = entries.map((e) =>
        e.group !== undefined ? archivedGroup(e.group) : e.message !== undefined ? archivedMessage(e.message) : undefined
      )
      const { exhausted, rows } = cut(entries, archived.map((a) => (a === undefined ? 0 : sizeOf(a))), pageItems)
      const content = empty()
      for (const item of archived.slice(0, rows.length)) {
        if (item instanceof ArchivedGroup) content.groups.push(item)
        else if (item !== undefined) content.messages.push(item)
      }
      return { content, cursor: String(rows.at(-1)?.seq ?? (answer.cursor === "" ? 0 : answer.cursor)), exhausted }
    })

  /** Queues a payload as a message of the own-devices group (no local copy: it is not a conversation message). */
  const queuePayload = (groupId: GroupId, payload: SyncPayload, now: bigint) =>
    Effect.gen(function*() {
      const nonce = toHex(randomBytes(16))
      const text = yield* Schema.encode(SyncPayloadJson)(payload).pipe(Effect.orDie)
      const messageId = messageIdOf(groupId, identity.installationId, nonce)
      return yield* queueIntent(ctx, groupId, SendMessageData.make({ messageId, nonce, text }), now)
    })

  /**
   * Queues the answer's next page with the answer's new position, in one transaction; none when a
   * live answer has nothing new. The backlog's last page (the end of the consent records) says `last`.
   */
  const queueNextPage = (answer: HistoryAnswer) =>
    Effect.gen(function*() {
      const page = yield* nextPage(answer)
      const isEmpty = page.content.groups.length + page.content.messages.length === 0
      if (answer.phase === "live" && isEmpty) {
        // Passed-over entries still move the cursor, so they are not read again.
        if (page.cursor !== answer.cursor) yield* storage.history.saveAnswer({ ...answer, cursor: page.cursor })
        return { intentId: undefined, next: answer, exhausted: true }
      }
      const now = yield* Clock.currentTimeNanos
      const last = answer.phase === "consent" && page.exhausted
      const moveOn = page.exhausted && answer.phase !== "live"
      const next: HistoryAnswer = {
        ...answer,
        phase: moveOn ? nextPhase(answer.phase) : answer.phase,
        // The feed's position carries on into `live`; the consent records' does not.
        cursor: answer.phase === "consent" ? (moveOn ? answer.feedCursor : page.cursor) : page.cursor,
        feedCursor: answer.phase === "consent" ? answer.feedCursor : page.cursor,
        pageIndex: answer.pageIndex + 1
      }
      const intentId = yield* storage.transaction(Effect.gen(function*() {
        yield* storage.history.saveAnswer(next)
        return yield* queuePayload(answer.groupId, {
          _tag: "HistoryPage",
          requestId: answer.requestId,
          responder: identity.installationId,
          index: answer.pageIndex,
          last,
          ...page.content
        }, now)
      }))
      return { intentId, next, exhausted: page.exhausted }
    })

  return { queueNextPage, queuePayload }
}
