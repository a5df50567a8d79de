/**
 * A received page writes less: its published messages enter the history feed as one run, not a
 * row each, and the message indexes no reader needs are gone. A new phone still receives every
 * message once and in order, a database from before upgrades in place, and what it held reads
 * back the same.
 */
import { Migrator, SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Layer } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import type { ConversationId, GroupId, InboxId, InstallationId, MessageId } from "../src/domain/Ids.ts"
import type { Message } from "../src/domain/Model.ts"
import { StoredMessage } from "../src/domain/Stored.ts"
import * as Migrations from "../src/layers/Migrations.ts"
import * as SqliteStorage from "../src/layers/SqliteStorage.ts"
import { Storage } from "../src/services/Storage.ts"
import { simulatedCrashOf, type TestClient, TestNetwork } from "../src/testing.ts"

const fast = { installationCheckInterval: "0 millis" } as const

const historyOf = (client: TestClient, id: ConversationId) =>
  client.conversation(id).pipe(
    Effect.flatMap((c) => c.messages()),
    Effect.map((ms) => ms.map((m: Message) => ({ id: m.id, sender: m.senderInstallationId, text: m.text, at: m.sentAtNs })))
  )

describe("A received page in the history feed", () => {
  it.scoped("messages that arrived in one page reach a new phone in smaller pages, across a crash, once each and in order", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      // Alice answers in pages of five: the run of Bob's twelve messages is cut inside.
      const alice = yield* net.client("alice", { ...fast, historyPageItems: 5 })
      const bob = yield* net.client("bob", fast)
      const group = yield* alice.createGroup([bob.inboxId], { name: "Many" })
      yield* bob.syncAll
      const atBob = yield* bob.conversation(group.id)
      for (let i = 0; i < 12; i++) yield* atBob.sendOptimistic(`from bob ${i}`)
      yield* atBob.publishPending
      yield* alice.syncAll
      expect((yield* historyOf(alice, group.id)).filter((m) => m.text.startsWith("from bob")).length).toBe(12)

      const alice2 = yield* net.client("alice2", { ...fast, sameInboxAs: alice })
      yield* Effect.forEach([alice, alice2, alice], (c) => c.syncAll, { discard: true })
      yield* net.crashAt(alice2, "history.afterPage")
      const crashed = yield* Effect.exit(alice2.syncAll)
      expect(Exit.isFailure(crashed) && simulatedCrashOf(crashed.cause)?.point).toBe("history.afterPage")
      yield* net.restart(alice2)
      expect(yield* alice2.historySync).toMatchObject({ state: "importing", pagesImported: 1 })

      yield* Effect.forEach([alice2, alice, alice2], (c) => c.syncAll, { discard: true })
      const done = yield* alice2.historySync
      expect(done.state).toBe("done")
      expect(done.pagesImported).toBeGreaterThan(3)
      const copied = yield* historyOf(alice2, group.id)
      expect(new Set(copied.map((m) => m.id)).size).toBe(copied.length)
      expect(copied).toEqual(yield* historyOf(alice, group.id))
    }))
})

// ---- a database as it was before the feed had runs (migrations 0001-0008) ----

const groupId = "a".repeat(32) as GroupId
const conversation = groupId as unknown as ConversationId
const inbox = "b".repeat(64) as InboxId
const installation = "c".repeat(64) as InstallationId
const idOf = (n: number) => n.toString(16).padStart(64, "e") as MessageId

const message = (n: number, status: "published" | "unpublished" = "published") =>
  StoredMessage.make({
    id: idOf(n),
    groupId,
    conversationId: conversation,
    senderInboxId: inbox,
    senderInstallationId: installation,
    sentAtNs: BigInt(1_000 + n),
    sequenceId: status === "published" ? BigInt(n) : null,
    kind: "text",
    content: `message ${n}`,
    membershipChange: null,
    deliveryStatus: status,
    insertedAtNs: BigInt(2_000 + n)
  })

/** The schema before this change: migrations up to 0008, and the feed's trigger row per message. */
const oldSchema = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const before = Object.fromEntries(Object.entries(Migrations.migrations).filter(([name]) => name < "0009"))
  yield* Migrator.make({})({ loader: Migrator.fromRecord(before), table: Migrations.migrationsTable })
  yield* sql`CREATE TRIGGER converge_history_feed_group AFTER INSERT ON converge_groups
    BEGIN INSERT INTO converge_history_feed (kind, ref) VALUES ('group', new.id); END`
  yield* sql`CREATE TRIGGER converge_history_feed_message AFTER INSERT ON converge_messages
    WHEN new.delivery_status = 'published'
    BEGIN INSERT INTO converge_history_feed (kind, ref) VALUES ('message', new.id); END`
  yield* sql`CREATE TRIGGER converge_history_feed_published AFTER UPDATE OF delivery_status ON converge_messages
    WHEN new.delivery_status = 'published' AND old.delivery_status != 'published'
    BEGIN INSERT INTO converge_history_feed (kind, ref) VALUES ('message', new.id); END`
  yield* sql`INSERT INTO converge_groups (id, kind, membership_state, epoch, mls_state, name, created_at_ns, last_message_ns)
    VALUES (${groupId}, 'group', 'active', 0, ${new Uint8Array([1])}, 'team', 1, 1)`
  for (const m of [message(1), message(2), message(3, "unpublished"), message(4)]) {
    yield* sql`INSERT INTO converge_messages (id, group_id, conversation_id, sender_inbox_id, sender_installation_id,
      sent_at_ns, sequence_id, kind, content, delivery_status, inserted_at_ns)
      VALUES (${m.id}, ${m.groupId}, ${m.conversationId}, ${m.senderInboxId}, ${m.senderInstallationId}, ${m.sentAtNs},
        ${m.sequenceId}, ${m.kind}, ${m.content}, ${m.deliveryStatus}, ${m.insertedAtNs})`
  }
  // The queued message goes out after the others came in: it follows them in the feed.
  yield* sql`UPDATE converge_messages SET delivery_status = 'published', sequence_id = 5 WHERE id = ${idOf(3)}`
})

/** What a reader of the feed sees: each entry's number and what it carries. */
const feedShown = (afterSeq: number, limit: number) =>
  Effect.flatMap(Storage, (storage) => storage.history.feedAfter(afterSeq, limit)).pipe(
    Effect.map((entries) => entries.map((e) => [e.seq, e.group?.id ?? e.message?.content ?? null]))
  )

describe("Upgrading a database from before feed runs", () => {
  it.effect("its messages and history read back the same; new pages follow as runs, readable from their middle", () =>
    Effect.gen(function*() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-catchup-writes-"))
      const filename = path.join(dir, "client.sqlite")
      yield* oldSchema.pipe(Effect.provide(SqliteClient.layer({ filename })))

      const upgraded = SqliteStorage.layer.pipe(Layer.provideMerge(SqliteClient.layer({ filename })))
      yield* Effect.gen(function*() {
        const storage = yield* Storage
        const sql = yield* SqlClient.SqlClient
        expect(yield* feedShown(0, 100)).toEqual([
          [1, groupId],
          [2, "message 1"],
          [3, "message 2"],
          [4, "message 4"],
          [5, "message 3"]
        ])
        const held = yield* storage.messages.byConversation(conversation, {})
        expect(held.map((m) => m.content)).toEqual(["message 1", "message 2", "message 3", "message 4"])

        // A page of four, one of them already held and one queued: the two new published ones are one run.
        const stored = yield* storage.messages.insertMany([message(6), message(2), message(7, "unpublished"), message(8)])
        expect(stored).toEqual([idOf(6), idOf(7), idOf(8)])
        const runs = yield* sql<{ seq: number }>`SELECT seq FROM converge_history_feed WHERE seq > 5`
        expect(runs.length).toBe(1)
        expect(yield* feedShown(5, 100)).toEqual([[6, "message 6"], [7, "message 8"]])
        // An answer whose page ended inside the run carries on after it; a limit cuts a run too.
        expect(yield* feedShown(6, 100)).toEqual([[7, "message 8"]])
        expect(yield* feedShown(3, 3)).toEqual([[4, "message 4"], [5, "message 3"], [6, "message 6"]])

        // What is stored later comes after the run: a sent message confirmed, a single received one.
        yield* storage.messages.markPublished(idOf(7), { sentAtNs: 1_007n, sequenceId: 9n })
        yield* storage.messages.insert(message(9))
        expect(yield* feedShown(7, 100)).toEqual([[8, "message 7"], [9, "message 9"]])
        expect((yield* storage.messages.byConversation(conversation, { direction: "desc", limit: 50 })).map((m) => m.content))
          .toEqual(["message 9", "message 8", "message 7", "message 6", "message 4", "message 3", "message 2", "message 1"])

        // Many one-message rows: a page of entries spans more rows than are read at first.
        for (let n = 100; n < 120; n++) yield* storage.messages.insert(message(n))
        const later = yield* feedShown(9, 20)
        expect(later.map(([seq]) => seq)).toEqual(Array.from({ length: 20 }, (_, i) => 10 + i))
        expect(later.at(-1)).toEqual([29, "message 119"])
        expect((yield* feedShown(0, 1000)).length).toBe(29)
      }).pipe(Effect.provide(upgraded))

      // Reopened: the migrations do not run again, and the feed reads the same.
      const again = yield* feedShown(0, 100).pipe(Effect.provide(upgraded))
      expect(again.map(([seq]) => seq)).toEqual(Array.from({ length: 29 }, (_, i) => i + 1))
      fs.rmSync(dir, { recursive: true, force: true })
    }))
})
