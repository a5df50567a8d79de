/**
 * The messaging rows of the SQLite store: a deleted message erased (and the text its intent
 * kept), expired messages removed, a deletion remembered until its target comes, direct
 * messages listed by the group they belong to.
 */
import { SqliteClient } from "@effect/sql-sqlite-node"
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Option } from "effect"
import type { ConversationId, GroupId, InboxId, InstallationId, MessageId } from "../src/domain/Ids.ts"
import { SendMessageData } from "../src/domain/Intent.ts"
import { StoredGroup, StoredMessage } from "../src/domain/Stored.ts"
import * as SqliteStorage from "../src/layers/SqliteStorage.ts"
import { Storage } from "../src/services/Storage.ts"

const groupId = "a".repeat(32) as GroupId
const other = "d".repeat(32) as GroupId
const inbox = "b".repeat(64) as InboxId
const installation = "c".repeat(64) as InstallationId
const id = (c: string) => c.repeat(64) as MessageId

/** A fresh in-memory database per test, with its SQL client to look at the raw rows. */
const store = SqliteStorage.layer.pipe(Layer.provideMerge(SqliteClient.layer({ filename: ":memory:" })))

const message = (c: string, overrides: Partial<StoredMessage> = {}) =>
  StoredMessage.make({
    id: id(c),
    groupId,
    conversationId: groupId as unknown as ConversationId,
    senderInboxId: inbox,
    senderInstallationId: installation,
    sentAtNs: 10n,
    sequenceId: null,
    kind: "text",
    content: `secret ${c}`,
    membershipChange: null,
    deliveryStatus: "published",
    insertedAtNs: 10n,
    ...overrides
  })

const setUp = Effect.gen(function*() {
  const storage = yield* Storage
  yield* storage.groups.insert(StoredGroup.make({
    id: groupId,
    kind: "group",
    dmId: null,
    membershipState: "active",
    epoch: 0n,
    mlsState: new Uint8Array([1]),
    maybeForked: false,
    forkDetails: null,
    quarantine: null,
    name: null,
    description: null,
    addedByInboxId: null,
    createdAtNs: 0n,
    lastMessageNs: 0n
  }))
  return storage
})

describe("Storage: messaging", () => {
  it.effect("erase keeps the row in place, flagged, and removes its text, content and the text of its intent", () =>
    Effect.gen(function*() {
      const storage = yield* setUp
      yield* storage.messages.insert(message("1", { contentType: "a/b:1", contentBytes: new Uint8Array([1, 2]) }))
      yield* storage.intents.insert({ groupId, data: SendMessageData.make({ messageId: id("1"), nonce: "e".repeat(32), text: "secret 1" }), createdAtNs: 1n })
      yield* storage.messages.erase(id("1"))
      const row = Option.getOrThrow(yield* storage.messages.get(id("1")))
      expect([row.deleted, row.content, row.contentType, row.contentBytes]).toEqual([true, "", null, null])
      const [intent] = yield* storage.intents.byGroup(groupId, ["ToPublish"])
      expect(intent!.data).toMatchObject({ _tag: "SendMessage", text: "" })
      // Not anywhere in the database any more.
      const sql = yield* SqlClient.SqlClient
      const dump = yield* sql<{ n: number }>`SELECT count(*) AS n FROM converge_messages, converge_intents
        WHERE converge_messages.content LIKE '%secret 1%' OR converge_intents.data LIKE '%secret 1%'`
      expect(Number(dump[0]!.n)).toBe(0)
    }).pipe(Effect.provide(store)))

  it.effect("expire removes what is due, content and all; nextExpiry names the next deadline", () =>
    Effect.gen(function*() {
      const storage = yield* setUp
      yield* storage.messages.insert(message("1", { expiresAtNs: 100n }))
      yield* storage.messages.insert(message("2", { expiresAtNs: 200n }))
      yield* storage.messages.insert(message("3"))
      expect(yield* storage.messages.nextExpiry).toEqual(Option.some(100n))
      expect(yield* storage.messages.expire(150n)).toBe(1)
      expect(yield* storage.messages.get(id("1"))).toEqual(Option.none())
      expect(yield* storage.messages.nextExpiry).toEqual(Option.some(200n))
      expect(yield* storage.messages.expire(200n)).toBe(1)
      expect(yield* storage.messages.nextExpiry).toEqual(Option.none())
      expect(Option.isSome(yield* storage.messages.get(id("3")))).toBe(true)
    }).pipe(Effect.provide(store)))

  it.effect("a remembered deletion is taken once; the first one for a target stays", () =>
    Effect.gen(function*() {
      const storage = yield* setUp
      const conversationId = groupId as unknown as ConversationId
      yield* storage.messages.rememberDeletion(id("9"), { conversationId, deleterInboxId: inbox, bySuperAdmin: false })
      yield* storage.messages.rememberDeletion(id("9"), { conversationId, deleterInboxId: inbox, bySuperAdmin: true })
      expect(yield* storage.messages.takeDeletion(id("9"))).toEqual(Option.some({ conversationId, deleterInboxId: inbox, bySuperAdmin: false }))
      expect(yield* storage.messages.takeDeletion(id("9"))).toEqual(Option.none())
    }).pipe(Effect.provide(store)))

  it.effect("direct messages are listed by the group they belong to, in order", () =>
    Effect.gen(function*() {
      const storage = yield* setUp
      yield* storage.messages.insert(message("1", { groupContext: other, sentAtNs: 30n }))
      yield* storage.messages.insert(message("2", { groupContext: other, sentAtNs: 20n }))
      yield* storage.messages.insert(message("3"))
      expect((yield* storage.messages.directMessages(other, {})).map((m) => m.id)).toEqual([id("2"), id("1")])
      expect((yield* storage.messages.directMessages(other, { direction: "desc", limit: 1 })).map((m) => m.id)).toEqual([id("1")])
      expect(yield* storage.messages.directMessages(groupId, {})).toEqual([])
    }).pipe(Effect.provide(store)))
})
