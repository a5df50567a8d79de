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
  ArchivedMessage,
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
  ArchivedGroup.make({
    id: g.id,
    kind: g.kind,
    dmId: g.dmId,
    name: g.name,
    description: g.description,
    createdAtNs: g.createdAtNs,
    lastMessageNs: g.lastMessageNs
  })

const archivedMessage = (m: StoredMessage) =>
  ArchivedMessage.make({
    id: m.id,
    groupId: m.groupId,
    conversationId: m.conversationId,
    senderInboxId: m.senderInboxId,
    senderInstallationId: m.senderInstallationId,
    sentAtNs: m.sentAtNs,
    sequenceId: m.sequenceId,
    kind: m.kind,
    content: m.content,
    deliveryStatus: m.deliveryStatus
  })

/** A message's position in insertion order, as the answer's cursor. */
const messageCursor = (m: StoredMessage) => `${m.insertedAtNs}:${m.id}`
const parseMessageCursor = (cursor: string) => {
  const [at, id] = cursor.split(":")
  return cursor === "" ? { insertedAtNs: -1n, id: "" } : { insertedAtNs: BigInt(at ?? "-1"), id: id ?? "" }
}

const sizeOf = (value: unknown) => JSON.stringify(value, (_, v) => (typeof v === "bigint" ? v.toString() : v)).length

/** The items the next page holds, by the paging rule; `exhausted` when the read found no more (a cut page is not). */
const cut = <A>(items: ReadonlyArray<A>, limit: number) => ({
  rows: items.slice(0, pageCut(items.map(sizeOf), { maxItems: limit, maxBytes: MAX_PAGE_BYTES })),
  exhausted: items.length < limit
})

export const make = (ctx: EngineContext, pageItems: number) => {
  const { identity, storage } = ctx

  /** The next page of an answer and where the answer stands after it. */
  const nextPage = (answer: HistoryAnswer) =>
    Effect.gen(function*() {
      const empty = { groups: [] as Array<ArchivedGroup>, messages: [] as Array<ArchivedMessage>, consent: [] as Array<ConsentRecord> }
      switch (answer.phase) {
        case "groups": {
          const read = yield* storage.history.groupsAfter(answer.cursor, pageItems)
          const { exhausted, rows } = cut(read, pageItems)
          const cursor = rows.at(-1)?.id
          return { content: { ...empty, groups: rows.map(archivedGroup) }, cursor, exhausted: exhausted && rows.length === read.length }
        }
        case "messages": {
          const read = yield* storage.history.messagesAfter(parseMessageCursor(answer.cursor), pageItems)
          const { exhausted, rows } = cut(read, pageItems)
          const last = rows.at(-1)
          return {
            content: { ...empty, messages: rows.map(archivedMessage) },
            cursor: last === undefined ? undefined : messageCursor(last),
            exhausted: exhausted && rows.length === read.length
          }
        }
        default: {
          const rows = yield* storage.consent.page(answer.cursor, pageItems)
          return { content: { ...empty, consent: rows }, cursor: rows.at(-1)?.key, exhausted: rows.length < pageItems }
        }
      }
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
   * Queues the answer's next page; returns the intent and whether the answer is complete. A phase
   * that has nothing more moves on; the consent phase's last page says `last`.
   */
  const queueNextPage = (answer: HistoryAnswer) =>
    Effect.gen(function*() {
      const page = yield* nextPage(answer)
      const now = yield* Clock.currentTimeNanos
      const last = answer.phase === "consent" && page.exhausted
      const next: HistoryAnswer = page.exhausted
        ? { ...answer, phase: nextPhase(answer.phase), cursor: "", pageIndex: answer.pageIndex + 1 }
        : { ...answer, cursor: page.cursor ?? answer.cursor, pageIndex: answer.pageIndex + 1 }
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
      return { intentId, next }
    })

  return { queueNextPage, queuePayload }
}
