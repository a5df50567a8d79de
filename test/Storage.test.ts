import { SqliteClient } from "@effect/sql-sqlite-node"
import { describe, expect, it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { type ConfigError, Effect, Layer, Option, Redacted, Schema, SchemaAST, TestClock } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import type { ConversationId, GroupId, InboxId, InstallationId, MessageId } from "../src/domain/Ids.ts"
import { StoredGroup, StoredIdentity, InboxLogEntry, StoredKeyPackage, StoredIntent, StoredMessage } from "../src/domain/Stored.ts"
import { AddMembersData, LeaveData, makeSendMessageData, PostCommitData, RemoveMembersData } from "../src/domain/Intent.ts"
import { IdentityUpdate } from "../src/domain/Wire.ts"
import { type ConsentKey, ConsentRecord } from "../src/domain/Consent.ts"
import * as SqliteConnection from "../src/layers/SqliteConnection.ts"
import * as SqliteStorage from "../src/layers/SqliteStorage.ts"
import { IntentColumns } from "../src/layers/SqliteIntentStorage.ts"
import { MessageColumns } from "../src/layers/SqliteMessageStorage.ts"
import { listingQuery, summariesQuery, SummaryColumns } from "../src/layers/SqliteGroupStorage.ts"
import { Storage } from "../src/services/Storage.ts"

const hex = (n: number, fill: string) => fill.repeat(n)
const groupId = hex(32, "a") as GroupId
const inbox = hex(64, "b") as InboxId
const installation = hex(64, "c") as InstallationId

// The storage over either connection: @effect/sql-sqlite-node's, or ours with its lane for the hot paths.
const connections: ReadonlyArray<readonly [string, (filename: string) => Layer.Layer<SqlClient.SqlClient, SqlError | ConfigError.ConfigError>]> = [
  ["SqliteClient", (filename) => SqliteClient.layer({ filename })],
  ["SqliteConnection", (filename) => SqliteConnection.layer({ filename })]
]

const group = (overrides: Partial<StoredGroup> = {}) =>
  StoredGroup.make({
    id: groupId,
    kind: "group",
    dmId: null,
    membershipState: "active",
    epoch: 0n,
    mlsState: new Uint8Array([1, 2, 3]),
    maybeForked: false,
    forkDetails: null,
    quarantine: null,
    name: "team",
    description: null,
    addedByInboxId: null,
    // Beyond 2^53: nanosecond times must survive as bigint.
    createdAtNs: 1_763_700_000_123_456_789n,
    lastMessageNs: 1_763_700_000_123_456_789n,
    ...overrides
  })

const message = (id: string, sentAtNs: bigint) =>
  StoredMessage.make({
    id: id.repeat(64).slice(0, 64) as MessageId,
    groupId: groupId,
    conversationId: groupId as unknown as ConversationId,
    senderInboxId: inbox,
    senderInstallationId: installation,
    sentAtNs: sentAtNs,
    sequenceId: null,
    kind: "text",
    content: `hello ${id}`,
    membershipChange: null,
    deliveryStatus: "unpublished",
    insertedAtNs: sentAtNs
  })

describe.each(connections)("Storage over %s", (_, connect) => {
  const memoryStore = SqliteStorage.layer.pipe(Layer.provide(connect(":memory:")))
  const fileStore = (filename: string) => SqliteStorage.layer.pipe(Layer.provide(connect(filename)))

  it.effect("migrations run on a fresh file and are idempotent on reopen; data survives", () =>
    Effect.gen(function*() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-storage-"))
      const filename = path.join(dir, "client.sqlite")
      yield* Effect.gen(function*() {
        const storage = yield* Storage
        yield* storage.groups.insert(group())
      }).pipe(Effect.provide(fileStore(filename)))
      const reopened = yield* Effect.gen(function*() {
        const storage = yield* Storage
        return yield* storage.groups.get(groupId)
      }).pipe(Effect.provide(fileStore(filename)))
      expect(Option.getOrThrow(reopened).createdAtNs).toBe(1_763_700_000_123_456_789n)
      fs.rmSync(dir, { recursive: true, force: true })
    }))

  it.effect("groups round-trip, with DM lookups ordered by last use", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      const dm = `dm:${inbox}:${"d".repeat(64)}` as ConversationId
      yield* storage.groups.insert(group())
      yield* storage.groups.insert(group({ id: hex(32, "1") as GroupId, kind: "dm", dmId: dm, lastMessageNs: 5n }))
      yield* storage.groups.insert(group({ id: hex(32, "2") as GroupId, kind: "dm", dmId: dm, lastMessageNs: 7n }))
      expect(Option.getOrThrow(yield* storage.groups.get(groupId))).toEqual(group())

      yield* storage.groups.touch(hex(32, "1") as GroupId, 9n)
      yield* storage.groups.touch(hex(32, "2") as GroupId, 3n) // never moves backwards
      expect((yield* storage.groups.byDmId(dm)).map((g) => g.id)).toEqual([hex(32, "1"), hex(32, "2")])

      yield* storage.groups.saveState(groupId, { epoch: 4n, mlsState: new Uint8Array([9]) })
      yield* storage.groups.markForked(groupId, "future epoch 9")
      yield* storage.groups.setMembership(groupId, "inactive")
      const saved = Option.getOrThrow(yield* storage.groups.get(groupId))
      expect([saved.epoch, Array.from(saved.mlsState), saved.maybeForked, saved.membershipState])
        .toEqual([4n, [9], true, "inactive"])
      expect((yield* storage.groups.list({ includeInactive: false })).map((g) => g.id)).not.toContain(groupId)
      expect((yield* storage.groups.list({ includeInactive: true })).map((g) => g.id)).toContain(groupId)
    }).pipe(Effect.provide(memoryStore)))

  it.effect("messages are stored once, publish updates them, and read back by conversation in time order", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      yield* storage.groups.insert(group())
      expect(yield* storage.messages.insert(message("2", 20n))).toBe(true)
      expect(yield* storage.messages.insert(message("1", 10n))).toBe(true)
      expect(yield* storage.messages.insert(message("1", 10n))).toBe(false)
      const id = message("2", 0n).id
      yield* storage.messages.markPublished(id, { sentAtNs: 30n, sequenceId: 4n })
      const conversation = groupId as unknown as ConversationId
      const asc = yield* storage.messages.byConversation(conversation, {})
      expect(asc.map((m) => [m.content, m.sentAtNs, m.deliveryStatus])).toEqual([
        ["hello 1", 10n, "unpublished"],
        ["hello 2", 30n, "published"]
      ])
      const latest = yield* storage.messages.byConversation(conversation, { direction: "desc", limit: 1 })
      expect(latest.map((m) => m.content)).toEqual(["hello 2"])
      expect((yield* storage.messages.byConversation(conversation, { afterNs: 10n })).length).toBe(1)
      yield* storage.messages.markFailed(message("1", 0n).id)
      expect(Option.getOrThrow(yield* storage.messages.get(message("1", 0n).id)).deliveryStatus).toBe("failed")
    }).pipe(Effect.provide(memoryStore)))

  it.effect("a page's messages are stored in one call: each id once, and only those new are reported", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      yield* storage.groups.insert(group())
      yield* storage.messages.insert(message("1", 10n))
      const stored = yield* storage.messages.insertMany([message("1", 10n), message("2", 20n), message("3", 30n), message("2", 20n)])
      expect(stored).toEqual([message("2", 0n).id, message("3", 0n).id])
      const all = yield* storage.messages.byConversation(groupId as unknown as ConversationId, {})
      expect(all.map((m) => m.content)).toEqual(["hello 1", "hello 2", "hello 3"])
      expect(yield* storage.messages.insertMany([])).toEqual([])
    }).pipe(Effect.provide(memoryStore)))

  it.effect("a page's messages keep every field they were stored with, typed content and expiry included", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      yield* storage.groups.insert(group())
      const plain = { ...message("4", 40n), sequenceId: 7n, deliveryStatus: "published" as const }
      const typed = StoredMessage.make({
        ...message("5", 1_763_700_000_123_456_789n),
        sequenceId: 8n,
        deliveryStatus: "published",
        groupContext: hex(32, "d") as GroupId,
        contentType: "converge/reaction",
        contentBytes: new Uint8Array([0, 1, 254, 255]),
        deleted: true,
        expiresAtNs: 1_763_700_999_000_000_000n
      })
      expect(yield* storage.messages.insertMany([plain, typed])).toEqual([plain.id, typed.id])
      expect(Option.getOrThrow(yield* storage.messages.get(plain.id))).toEqual(plain)
      expect(Option.getOrThrow(yield* storage.messages.get(typed.id))).toEqual(typed)
    }).pipe(Effect.provide(memoryStore)))

  it.effect("group summaries list every group by last activity, without states; a damaged row is set aside", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      const other = "b".repeat(32) as GroupId
      yield* storage.groups.insert(group())
      yield* storage.groups.insert(group({ id: other, lastMessageNs: 1n }))
      const listed = yield* storage.groups.summaries({ includeInactive: false })
      expect(listed.map((g) => g.id)).toEqual([groupId, other])
      expect("mlsState" in listed[0]!).toBe(false)
      // A conversation list's rows: the same groups in the same order, each with what it shows.
      const { id, kind, dmId, name, membershipState } = listed[0]!
      const listing = yield* storage.groups.listing({ includeInactive: false })
      expect(listing.map((g) => g.id)).toEqual([groupId, other])
      expect(listing[0]).toEqual({ id, kind, dmId, name, membershipState })
      const sql = yield* SqlClient.SqlClient
      yield* sql`UPDATE converge_groups SET added_by_inbox_id = 'nobody' WHERE id = ${other}`
      expect((yield* storage.groups.summaries({ includeInactive: true })).map((g) => g.id)).toEqual([groupId])
      // The listing reads five columns: damage elsewhere leaves the group listed, damage there sets it aside.
      expect((yield* storage.groups.listing({ includeInactive: true })).map((g) => g.id)).toEqual([groupId, other])
      yield* sql`UPDATE converge_groups SET dm_id = 'not a conversation' WHERE id = ${other}`
      expect((yield* storage.groups.listing({ includeInactive: true })).map((g) => g.id)).toEqual([groupId])
      expect(Option.getOrThrow(yield* storage.groups.get(groupId)).quarantine).toBeNull()
    }).pipe(Effect.provide(SqliteStorage.layer.pipe(Layer.provideMerge(SqliteClient.layer({ filename: ":memory:" }))))))

  it.effect("group summaries come from one index, never from the rows that hold the states", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      for (const query of [summariesQuery, listingQuery]) {
        for (const includeInactive of [false, true]) {
          // A 100-member group's state is 60-80 KB in overflow pages: a listing walking them read
          // 1,000 such rows in 21 ms instead of 3.7.
          const plan = yield* sql.unsafe<{ detail: string }>(`EXPLAIN QUERY PLAN ${query(includeInactive)}`)
          expect(plan.map((step) => step.detail)).toEqual(["SCAN converge_groups USING COVERING INDEX converge_groups_summary"])
        }
      }
    }).pipe(Effect.provide(SqliteStorage.layer.pipe(Layer.provideMerge(SqliteClient.layer({ filename: ":memory:" }))))))

  // Rows are checked once, column by column, then renamed to the domain's fields without a second
  // check: every column's check must refuse what it guards on its own (or the table refuses the
  // damage: a foreign key, a CHECK). A blob where text belongs: SQLite turns numbers into text.
  const blob = new Uint8Array([0xff])
  const damaged = (sql: SqlClient.SqlClient, table: string, column: string, value: string | number | Uint8Array, id: string) =>
    sql`UPDATE ${sql.literal(table)} SET ${sql.literal(column)} = ${value} WHERE id = ${id}`.pipe(
      Effect.as(true),
      // Only a constraint counts as the table refusing: a misspelt column must fail the test.
      Effect.catchIf((e) => /constraint failed/i.test(String(e.cause)), () => Effect.succeed(false))
    )
  const damagedMessageColumns: ReadonlyArray<readonly [column: string, value: string | number | Uint8Array]> = [
    ["id", "not-hex"],
    ["group_id", "not-hex"],
    ["conversation_id", "nobody"],
    ["sender_inbox_id", "nobody"],
    ["sender_installation_id", "nobody"],
    ["sent_at_ns", "soon"],
    ["sequence_id", "first"],
    ["kind", "poem"],
    ["delivery_status", "lost"],
    ["inserted_at_ns", "then"],
    ["group_context", "nobody"],
    ["content", blob],
    ["content_type", blob],
    ["content_bytes", "not bytes"],
    ["deleted", "yes"],
    ["sent_at_ns", 2.5],
    ["expires_at_ns", "never"]
  ]
  it.effect.each(damagedMessageColumns)("a message row with a damaged %s is set aside, its group flagged", ([column, value]) =>
    Effect.gen(function*() {
      const storage = yield* Storage
      yield* storage.groups.insert(group())
      yield* storage.messages.insertMany([message("1", 10n), message("2", 20n)])
      const second = message("2", 0n).id
      if (!(yield* damaged(yield* SqlClient.SqlClient, "converge_messages", column, value, second))) return
      const listed = yield* storage.messages.byConversation(groupId as unknown as ConversationId, {})
      expect(listed.map((m) => m.content)).toEqual(["hello 1"])
      if (column !== "id") expect(yield* storage.messages.get(second)).toEqual(Option.none())
      expect(Option.getOrThrow(yield* storage.groups.get(groupId)).quarantine).toContain(column === "id" ? "not-hex" : second)
    }).pipe(Effect.provide(SqliteStorage.layer.pipe(Layer.provideMerge(SqliteClient.layer({ filename: ":memory:" }))))))

  // The decoded row is not checked again as the domain value, so each column must check exactly
  // what its field does: a refinement added to a domain field and not to its column fails here.
  const typesOf = (schema: Schema.Schema.Any, name: (key: string) => string) =>
    new Map((SchemaAST.typeAST(schema.ast) as SchemaAST.TypeLiteral).propertySignatures.map((p) =>
      [name(String(p.name)), String(p.type)] as const
    ))
  const camel = (column: string) => column.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase())
  it.each([
    ["message", MessageColumns, StoredMessage, ["membershipChange"], {}],
    ["group summary", SummaryColumns, StoredGroup, ["mlsState"], {}],
    ["intent", IntentColumns, StoredIntent, [], { post_commit_data: "postCommit" }]
  ] as const)("a %s row's columns decode to exactly its fields' types", (_, columns, domain, notColumns, renamed) => {
    const fields = typesOf(domain, (key) => key)
    for (const key of notColumns) fields.delete(key)
    const field = (column: string) => (renamed as Record<string, string>)[column] ?? camel(column)
    expect(typesOf(columns, field)).toEqual(fields)
  })

  const damagedSummaryColumns: ReadonlyArray<readonly [column: string, value: string | number | Uint8Array]> = [
    ["kind", "channel"],
    ["dm_id", "nobody"],
    ["membership_state", "lurking"],
    ["epoch", "next"],
    ["maybe_forked", "perhaps"],
    ["fork_details", blob],
    ["quarantine", blob],
    ["name", blob],
    ["description", blob],
    ["added_by_inbox_id", "nobody"],
    ["created_at_ns", "then"],
    ["last_message_ns", 1.5],
    ["maybe_forked", 0.5]
  ]
  it.effect.each(damagedSummaryColumns)("a group summary with a damaged %s is set aside", ([column, value]) =>
    Effect.gen(function*() {
      const storage = yield* Storage
      const other = "b".repeat(32) as GroupId
      yield* storage.groups.insert(group())
      yield* storage.groups.insert(group({ id: other, lastMessageNs: 1n }))
      if (!(yield* damaged(yield* SqlClient.SqlClient, "converge_groups", column, value, other))) return
      expect((yield* storage.groups.summaries({ includeInactive: true })).map((g) => g.id)).toEqual([groupId])
      const again = yield* storage.groups.summary(other)
      // A damaged quarantine column is mended by the note that sets the row aside.
      if (column === "quarantine") expect(Option.getOrThrow(again).quarantine).toContain("group row")
      else expect(again).toEqual(Option.none())
    }).pipe(Effect.provide(SqliteStorage.layer.pipe(Layer.provideMerge(SqliteClient.layer({ filename: ":memory:" }))))))

  it.effect("one group's summary is its row without the state; a damaged row reads as none", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      const other = "b".repeat(32) as GroupId
      yield* storage.groups.insert(group())
      yield* storage.groups.insert(group({ id: other }))
      yield* storage.groups.setMembership(groupId, "pendingRemove")
      const summary = Option.getOrThrow(yield* storage.groups.summary(groupId))
      expect(summary.membershipState).toBe("pendingRemove")
      expect(summary.id).toBe(groupId)
      expect("mlsState" in summary).toBe(false)
      expect(yield* storage.groups.summary("c".repeat(32) as GroupId)).toEqual(Option.none())
      const sql = yield* SqlClient.SqlClient
      yield* sql`UPDATE converge_groups SET added_by_inbox_id = 'nobody' WHERE id = ${other}`
      expect(yield* storage.groups.summary(other)).toEqual(Option.none())
    }).pipe(Effect.provide(SqliteStorage.layer.pipe(Layer.provideMerge(SqliteClient.layer({ filename: ":memory:" }))))))

  it.effect("queued intents are read back many at once; an id without a row is left out", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      yield* storage.groups.insert(group())
      const ids = yield* Effect.forEach([1n, 2n, 3n], (createdAtNs) =>
        storage.intents.insert({ groupId, data: AddMembersData.make({ inboxIds: [inbox] }), createdAtNs }))
      yield* storage.intents.markProcessed(ids[1]!)
      const found = yield* storage.intents.getMany([ids[2]!, 999, ids[0]!, ids[1]!])
      expect(new Map(found.map((i) => [i.id, i.state]))).toEqual(new Map([[ids[0]!, "ToPublish"], [ids[1]!, "Processed"], [ids[2]!, "ToPublish"]]))
      expect(yield* storage.intents.getMany([])).toEqual([])
    }).pipe(Effect.provide(SqliteStorage.layer.pipe(Layer.provideMerge(SqliteClient.layer({ filename: ":memory:" }))))))

  it.effect("what waits for a publish is listed by id, oldest first, and its states read back without the rows", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      yield* storage.groups.insert(group())
      const ids = yield* Effect.forEach([1n, 2n, 3n, 4n], (createdAtNs) =>
        storage.intents.insert({ groupId, data: AddMembersData.make({ inboxIds: [inbox] }), createdAtNs }))
      yield* storage.intents.markProcessed(ids[1]!)
      yield* storage.intents.markError(ids[3]!, "gone")
      expect(yield* storage.intents.idsByGroup(groupId, ["ToPublish", "Published", "Committed"])).toEqual([ids[0]!, ids[2]!])
      expect(yield* storage.intents.idsByGroup(groupId, ["Processed", "Error"])).toEqual([ids[1]!, ids[3]!])
      const states = yield* storage.intents.statesOf([ids[3]!, 999, ids[0]!, ids[1]!])
      expect(states).toEqual(new Map([[ids[3]!, "Error"], [ids[0]!, "ToPublish"], [ids[1]!, "Processed"]]))
      expect(yield* storage.intents.statesOf([])).toEqual(new Map())
    }).pipe(Effect.provide(memoryStore)))

  it.effect("settled intents are deleted once settled before the cut, a batch at a time; pending and failed ones stay", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      yield* storage.groups.insert(group())
      const ids = yield* Effect.forEach([1n, 2n, 3n, 4n, 5n, 6n], (createdAtNs) =>
        storage.intents.insert({ groupId, data: AddMembersData.make({ inboxIds: [inbox] }), createdAtNs }))
      const [pending, early, early2, late, failed, legacy] = ids as [number, number, number, number, number, number]
      // Settled at the clock's time: the first two at 100 s, the next one at 200 s.
      yield* TestClock.setTime(100_000)
      yield* storage.intents.markProcessed(early)
      yield* storage.intents.markDelivered([{ id: early2, sequenceId: 7n }])
      yield* TestClock.setTime(200_000)
      yield* storage.intents.markProcessed(late)
      yield* storage.intents.markError(failed, "refused")
      // Settled by a version that did not stamp the time.
      const sql = yield* SqlClient.SqlClient
      yield* sql`UPDATE converge_intents SET state = 'Processed' WHERE id = ${legacy}`

      const cut = 150_000_000_000n
      expect(yield* storage.intents.pruneSettled(cut, 2)).toBe(2)
      expect(yield* storage.intents.pruneSettled(cut, 2)).toBe(1)
      expect(yield* storage.intents.pruneSettled(cut, 2)).toBe(0)
      const left = yield* storage.intents.statesOf(ids)
      expect(left).toEqual(new Map([[pending, "ToPublish"], [late, "Processed"], [failed, "Error"]]))
    }).pipe(Effect.provide(SqliteStorage.layer.pipe(Layer.provideMerge(connect(":memory:"))))))

  it.effect("send's read under the group lock: the row, the topic's cursor and whether anything is queued ahead, in one", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      const topic = `g/${groupId}`
      yield* storage.groups.insert(group())
      const fresh = Option.getOrThrow(yield* storage.groups.getForSend(groupId, topic, ["ToPublish", "Published", "Committed"]))
      expect(fresh).toEqual({ group: group(), cursor: 0n, pending: false })
      yield* storage.cursors.advance(topic, 41n)
      const id = yield* storage.intents.insert({ groupId, data: AddMembersData.make({ inboxIds: [inbox] }), createdAtNs: 1n })
      const queued = Option.getOrThrow(yield* storage.groups.getForSend(groupId, topic, ["ToPublish", "Published", "Committed"]))
      expect([queued.cursor, queued.pending]).toEqual([41n, true])
      // Only the states asked for count; another topic's cursor does not.
      yield* storage.intents.markProcessed(id)
      const done = Option.getOrThrow(yield* storage.groups.getForSend(groupId, "g/other", ["ToPublish", "Published", "Committed"]))
      expect([done.cursor, done.pending]).toEqual([0n, false])
      expect(yield* storage.groups.getForSend("c".repeat(32) as GroupId, topic, ["ToPublish"])).toEqual(Option.none())
    }).pipe(Effect.provide(memoryStore)))

  it.effect("a group's intents are read by kind as well as state: a read for removals returns no other kind", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      yield* storage.groups.insert(group())
      const [add, forLeave, remove, leave, done] = yield* Effect.forEach([
        AddMembersData.make({ inboxIds: [inbox] }),
        RemoveMembersData.make({ inboxIds: [inbox], forLeaveRequest: true }),
        RemoveMembersData.make({ inboxIds: [inbox] }),
        LeaveData.make({ nonce: hex(32, "d") }),
        RemoveMembersData.make({ inboxIds: [inbox] })
      ], (data, i) => storage.intents.insert({ groupId, data, createdAtNs: BigInt(i + 1) }))
      yield* storage.intents.markProcessed(done!)
      const pending = ["ToPublish", "Published"] as const
      expect((yield* storage.intents.byGroup(groupId, pending, ["RemoveMembers"])).map((i) => i.id)).toEqual([forLeave, remove])
      expect((yield* storage.intents.byGroup(groupId, pending, ["Leave", "AddMembers"])).map((i) => i.id)).toEqual([add, leave])
      expect((yield* storage.intents.byGroup(groupId, pending)).map((i) => i.id)).toEqual([add, forLeave, remove, leave])
    }).pipe(Effect.provide(memoryStore)))

  it.effect("a queued message moves its group up the list as it is stored; a received one does not by itself", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      yield* storage.groups.insert(group())
      const lastMessage = Effect.map(storage.groups.get(groupId), (g) => Option.getOrThrow(g).lastMessageNs)
      const before = yield* lastMessage
      yield* storage.messages.insert(message("1", before + 10n))
      expect(yield* lastMessage).toBe(before + 10n)
      // An older queued message leaves it where it is.
      yield* storage.messages.insert(message("2", before + 5n))
      expect(yield* lastMessage).toBe(before + 10n)
      // A received page's rows are published: the page touches the group itself.
      yield* storage.messages.insertMany([{ ...message("3", before + 20n), deliveryStatus: "published", sequenceId: 3n }])
      expect(yield* lastMessage).toBe(before + 10n)
    }).pipe(Effect.provide(memoryStore)))

  it.effect("a queued message the service confirms moves its group to the service's time, never backwards", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      yield* storage.groups.insert(group())
      const lastMessage = Effect.map(storage.groups.get(groupId), (g) => Option.getOrThrow(g).lastMessageNs)
      const before = yield* lastMessage
      yield* storage.messages.insert(message("1", before + 10n))
      yield* storage.messages.insert(message("2", before + 11n))
      yield* storage.messages.markPublishedMany([
        { id: message("1", 0n).id, sentAtNs: before + 30n, sequenceId: 4n, expiresAtNs: null },
        { id: message("2", 0n).id, sentAtNs: before + 25n, sequenceId: 5n, expiresAtNs: null }
      ])
      expect(yield* lastMessage).toBe(before + 30n)
      // A confirmation at an older server time leaves the group where it is.
      yield* storage.messages.insert(message("3", before + 12n))
      yield* storage.messages.markPublishedMany([{ id: message("3", 0n).id, sentAtNs: before + 20n, sequenceId: 6n, expiresAtNs: null }])
      expect(yield* lastMessage).toBe(before + 30n)
    }).pipe(Effect.provide(memoryStore)))

  it.effect("a batch of application messages is written ahead in one call; an intent no longer queued is left as it is", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      yield* storage.groups.insert(group())
      const ids = yield* Effect.forEach([1n, 2n, 3n], (createdAtNs) =>
        storage.intents.insert({ groupId, data: AddMembersData.make({ inboxIds: [inbox] }), createdAtNs }))
      yield* storage.intents.markError(ids[2]!, "gone")
      yield* storage.intents.markPublishedMany(ids.map((id, i) => ({
        id,
        payloadHash: `h${i}`,
        payload: new Uint8Array([i + 1]),
        publishedEpoch: 7n
      })))
      const read = yield* storage.intents.getMany(ids)
      const byId = new Map(read.map((i) => [i.id, i]))
      for (const [i, id] of ids.slice(0, 2).entries()) {
        const intent = byId.get(id)!
        expect([intent.state, intent.payloadHash, intent.publishedEpoch, intent.attempts]).toEqual(["Published", `h${i}`, 7n, 1])
        expect(intent.payload).toEqual(new Uint8Array([i + 1]))
        expect(Option.getOrThrow(yield* storage.intents.byPayloadHash(`h${i}`)).id).toBe(id)
      }
      expect(byId.get(ids[2]!)!.state).toBe("Error")
      expect(byId.get(ids[2]!)!.payload).toBeNull()
    }).pipe(Effect.provide(SqliteStorage.layer.pipe(Layer.provideMerge(SqliteClient.layer({ filename: ":memory:" }))))))

  it.effect("a message queued already written ahead is stored Published with its payload, in one call", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      yield* storage.groups.insert(group())
      const data = makeSendMessageData({ messageId: "ab".repeat(32) as MessageId, nonce: "n1", text: "hello" })
      const id = yield* storage.intents.insertPublished({ groupId, data, createdAtNs: 5n }, {
        payloadHash: "h-written-ahead",
        payload: new Uint8Array([9, 8]),
        publishedEpoch: 3n
      })
      const intent = Option.getOrThrow(yield* storage.intents.get(id))
      expect([intent.state, intent.kind, intent.payloadHash, intent.publishedEpoch, intent.attempts, intent.conflicts])
        .toEqual(["Published", "SendMessage", "h-written-ahead", 3n, 1, 0])
      expect([intent.payload, intent.stagedState, intent.postCommit, intent.createdAtNs]).toEqual([new Uint8Array([9, 8]), null, null, 5n])
      expect(intent.data).toEqual(data)
      expect(Option.getOrThrow(yield* storage.intents.byPayloadHash("h-written-ahead")).id).toBe(id)
      expect((yield* storage.intents.byGroup(groupId, ["Published"])).map((i) => i.id)).toEqual([id])
    }).pipe(Effect.provide(SqliteStorage.layer.pipe(Layer.provideMerge(SqliteClient.layer({ filename: ":memory:" }))))))

  it.effect("own intents of a whole page are found by their payload hashes in one call", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      yield* storage.groups.insert(group())
      const ids = yield* Effect.forEach(["aa", "bb"], (hash) =>
        Effect.gen(function*() {
          const id = yield* storage.intents.insert({ groupId, data: AddMembersData.make({ inboxIds: [inbox] }), createdAtNs: 1n })
          yield* storage.intents.markPublished(id, { payloadHash: hash, payload: new Uint8Array([1]), publishedEpoch: 1n, stagedState: null, postCommit: null })
          return id
        }))
      const found = yield* storage.intents.byPayloadHashes(["bb", "cc", "aa"])
      expect(found.map((i) => i.id).sort()).toEqual([...ids].sort())
      expect(yield* storage.intents.byPayloadHashes([])).toEqual([])
    }).pipe(Effect.provide(memoryStore)))

  it.effect("intents move through their states with guarded transitions", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      yield* storage.groups.insert(group())
      const id = yield* storage.intents.insert({ groupId, data: AddMembersData.make({ inboxIds: [inbox] }), createdAtNs: 1n })
      yield* storage.intents.markPublished(id, {
        payloadHash: "ab",
        payload: new Uint8Array([7]),
        publishedEpoch: 3n,
        stagedState: new Uint8Array([8]),
        postCommit: PostCommitData.make({ welcome: new Uint8Array([9]), installationIds: [installation] })
      })
      const published = Option.getOrThrow(yield* storage.intents.byPayloadHash("ab"))
      const welcomes = PostCommitData.make({ welcome: new Uint8Array([1, 2]), installationIds: [] })
      expect([published.state, published.publishedEpoch, published.attempts]).toEqual(["Published", 3n, 1])
      // A second write-ahead of the same intent is refused: it is no longer ToPublish.
      yield* storage.intents.markPublished(id, {
        payloadHash: "cd",
        payload: new Uint8Array(),
        publishedEpoch: 4n,
        stagedState: null,
        postCommit: null
      })
      expect(Option.isNone(yield* storage.intents.byPayloadHash("cd"))).toBe(true)

      yield* storage.intents.resetToPublish(id, { conflict: true })
      const reset = Option.getOrThrow(yield* storage.intents.get(id))
      expect([reset.state, reset.payloadHash, reset.stagedState, reset.conflicts]).toEqual(["ToPublish", null, null, 1])

      yield* storage.intents.markPublished(id, {
        payloadHash: "ef",
        payload: new Uint8Array([1]),
        publishedEpoch: 4n,
        stagedState: null,
        postCommit: welcomes
      })
      yield* storage.intents.markCommitted(id, 12n)
      const committed = Option.getOrThrow(yield* storage.intents.get(id))
      expect([committed.state, committed.sequenceId, committed.postCommit]).toEqual(["Committed", 12n, welcomes])
      expect(committed.data).toEqual(AddMembersData.make({ inboxIds: [inbox] }))
      expect((yield* storage.intents.byGroup(groupId, ["Committed"])).map((i) => i.id)).toEqual([id])
      yield* storage.intents.markProcessed(id)
      yield* storage.intents.markError(id, "too late") // terminal: ignored
      expect(Option.getOrThrow(yield* storage.intents.get(id)).state).toBe("Processed")
    }).pipe(Effect.provide(memoryStore)))

  it.effect("cursors only move forward", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      expect(yield* storage.cursors.get("g/x")).toBe(0n)
      yield* storage.cursors.advance("g/x", 5n)
      yield* storage.cursors.advance("g/x", 3n)
      expect(yield* storage.cursors.get("g/x")).toBe(5n)
    }).pipe(Effect.provide(memoryStore)))

  it.effect("a damaged cursor reads as the topic's start and is set back there, once; the others read as stored", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      yield* storage.cursors.advance("g/x", 5n)
      yield* storage.cursors.advance("g/y", 7n)
      yield* storage.cursors.advance("w/z", 9n)
      const sql = yield* SqlClient.SqlClient
      // A text sorts above every number in SQLite: `advance` alone would never move past it.
      yield* sql`UPDATE converge_cursors SET sequence_id = 'garbage' WHERE topic = 'g/x'`
      yield* sql`UPDATE converge_cursors SET sequence_id = 2.5 WHERE topic = 'w/z'`
      expect(yield* storage.cursors.getMany(["g/x", "g/y", "w/z"])).toEqual(new Map([["g/x", 0n], ["g/y", 7n], ["w/z", 0n]]))
      const stored = yield* sql<{ topic: string; sequence_id: unknown }>`SELECT topic, sequence_id FROM converge_cursors ORDER BY topic`
      expect(stored.map((r) => [r.topic, Number(r.sequence_id)])).toEqual([["g/x", 0], ["g/y", 7], ["w/z", 0]])
      yield* storage.cursors.advance("g/x", 3n)
      expect(yield* storage.cursors.get("g/x")).toBe(3n)
    }).pipe(Effect.provide(SqliteStorage.layer.pipe(Layer.provideMerge(SqliteClient.layer({ filename: ":memory:" }))))))

  it.effect("a damaged consent stamp does not stop new decisions: the highest stamp counts the readable ones", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      const record = (id: string, atNs: bigint) =>
        new ConsentRecord({ key: `inbox:${id.repeat(64)}` as ConsentKey, state: "allowed", atNs, by: installation })
      yield* storage.consent.put(record("a", 10n), { unsent: false })
      yield* storage.consent.put(record("b", 20n), { unsent: false })
      const sql = yield* SqlClient.SqlClient
      yield* sql`UPDATE converge_consent SET at_ns = 'garbage' WHERE subject = ${`inbox:${"b".repeat(64)}`}`
      expect(yield* storage.consent.highestStamp).toBe(10n)
    }).pipe(Effect.provide(SqliteStorage.layer.pipe(Layer.provideMerge(SqliteClient.layer({ filename: ":memory:" }))))))

  it.effect("identity, key packages and cached identity logs round-trip", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      const identity = StoredIdentity.make({
        inboxId: inbox,
        installationId: installation,
        rootSecretKey: new Uint8Array([1]),
        signaturePrivateKey: new Uint8Array([2]),
        signaturePublicKey: new Uint8Array([3]),
        registered: false,
        createdAtNs: 1n
      })
      yield* storage.identity.insert(identity)
      yield* storage.identity.markRegistered
      expect(Option.getOrThrow(yield* storage.identity.get)).toEqual(StoredIdentity.make({ ...identity, registered: true }))

      const kp = StoredKeyPackage.make({
        ref: "r1",
        publicPackage: new Uint8Array([4]),
        privatePackage: new Uint8Array([5]),
        createdAtNs: 2n
      })
      yield* storage.keyPackages.insert(kp)
      expect(yield* storage.keyPackages.list).toEqual([kp])
      yield* storage.keyPackages.remove("r1")
      expect(yield* storage.keyPackages.list).toEqual([])

      const entry = InboxLogEntry.make({
        inboxId: inbox,
        sequence: 1,
        update: IdentityUpdate.make({
          inboxId: inbox,
          sequence: 1,
          previousHash: "",
          action: { _tag: "RevokeInstallation", installationId: installation },
          signature: "00"
        })
      })
      yield* storage.inboxLogs.append([entry, entry])
      expect(yield* storage.inboxLogs.entries(inbox)).toEqual([entry])
    }).pipe(Effect.provide(memoryStore)))

  it.effect("a failed transaction leaves nothing behind", () =>
    Effect.gen(function*() {
      const storage = yield* Storage
      yield* storage.groups.insert(group())
      const result = yield* storage.transaction(
        Effect.gen(function*() {
          yield* storage.messages.insert(message("3", 1n))
          yield* storage.cursors.advance(`g/${groupId}`, 9n)
          return yield* Effect.fail("crash" as const)
        })
      ).pipe(Effect.flip)
      expect(result).toBe("crash")
      expect(yield* storage.messages.byConversation(groupId as unknown as ConversationId, {})).toEqual([])
      expect(yield* storage.cursors.get(`g/${groupId}`)).toBe(0n)
    }).pipe(Effect.provide(memoryStore)))
})

describe("secrets at rest", () => {
  const key = Redacted.make(new Uint8Array(32).fill(7))
  const otherKey = Redacted.make(new Uint8Array(32).fill(9))
  const sealedStore = (filename: string, k: Redacted.Redacted<Uint8Array> | undefined) =>
    (k === undefined ? SqliteStorage.layer : SqliteStorage.layerWithKey(k)).pipe(
      Layer.provideMerge(SqliteClient.layer({ filename }))
    )
  const identity = StoredIdentity.make({
    inboxId: inbox,
    installationId: installation,
    rootSecretKey: new Uint8Array(32).fill(1),
    signaturePrivateKey: new Uint8Array(48).fill(2),
    signaturePublicKey: new Uint8Array(32).fill(3),
    registered: true,
    createdAtNs: 1n
  })
  const secretState = new Uint8Array(64).fill(5)

  it.effect("keys and group states are sealed in the file, and open only with the same key", () =>
    Effect.gen(function*() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-sealed-"))
      const filename = path.join(dir, "client.sqlite")
      yield* Effect.gen(function*() {
        const storage = yield* Storage
        yield* storage.identity.insert(identity)
        yield* storage.groups.insert(group({ mlsState: secretState }))
        yield* storage.groups.saveState(groupId, { epoch: 1n, mlsState: secretState })
        // What the file holds: none of the secrets in the clear.
        const sql = yield* SqlClient.SqlClient
        const [row] = yield* sql<{ root_secret_key: Uint8Array; signature_private_key: Uint8Array }>`
          SELECT root_secret_key, signature_private_key FROM converge_identity`
        const [state] = yield* sql<{ mls_state: Uint8Array }>`SELECT mls_state FROM converge_groups`
        for (const [sealed, secret] of [
          [row!.root_secret_key, identity.rootSecretKey!],
          [row!.signature_private_key, identity.signaturePrivateKey],
          [state!.mls_state, secretState]
        ] as const) {
          expect(Buffer.from(sealed).subarray(0, 3).toString()).toBe("cv1")
          expect(Buffer.from(sealed).includes(Buffer.from(secret))).toBe(false)
        }
        expect((yield* storage.identity.get).pipe(Option.getOrThrow).signaturePrivateKey).toEqual(identity.signaturePrivateKey)
      }).pipe(Effect.provide(sealedStore(filename, key)))

      // Reopened with the key: everything reads back.
      const again = yield* Effect.gen(function*() {
        const storage = yield* Storage
        return [yield* storage.identity.get, yield* storage.groups.get(groupId)] as const
      }).pipe(Effect.provide(sealedStore(filename, key)))
      expect(Option.getOrThrow(again[0]).rootSecretKey).toEqual(identity.rootSecretKey)
      expect(Option.getOrThrow(again[1]).mlsState).toEqual(secretState)

      // Without the key, or with another: a typed error, never a fresh identity.
      for (const wrong of [undefined, otherKey]) {
        const failure = yield* Effect.flatMap(Storage, (s) => s.identity.get).pipe(
          Effect.provide(sealedStore(filename, wrong)),
          Effect.flip
        )
        expect(failure).toMatchObject({ _tag: "StorageError", detail: expect.stringMatching(/storage key/) })
      }
      fs.rmSync(dir, { recursive: true, force: true })
    }))
})
