/**
 * The engine's stories: several clients, one in-memory delivery service, real SQLite files
 * and real ts-mls. Each scenario reads like the behaviour it checks.
 */
import { SqliteClient } from "@effect/sql-sqlite-node"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Metric, Option, Redacted, Schedule } from "effect"
import * as EngineMetrics from "../src/services/EngineMetrics.ts"
import { randomBytes } from "node:crypto"
import type { EpochConflict, InvalidInput, StorageError } from "../src/domain/Errors.ts"
import type { ConversationId, GroupId } from "../src/domain/Ids.ts"
import { GroupMetadata, MAX_GROUP_DESCRIPTION, MAX_GROUP_NAME, PROTOCOL_VERSION } from "../src/domain/Model.ts"
import { GroupMessageInput } from "../src/domain/Wire.ts"
import type { Conversation } from "../src/services/Client.ts"
import { type TestClient, TestNetwork } from "../src/testing.ts"

const texts = (conversation: Conversation) =>
  conversation.messages().pipe(
    Effect.map((messages) => messages.filter((m) => m.kind === "text").map((m) => `${m.senderInboxId.slice(0, 4)}:${m.text}`))
  )

/** The chat, without the membership-change transcript entries. */
const chat = (conversation: Conversation) =>
  conversation.messages().pipe(Effect.map((messages) => messages.filter((m) => m.kind === "text")))

const open = (client: TestClient, id: ConversationId) => client.conversation(id)

const allEnvelopes = (net: TestNetwork, groupId: GroupId) => net.inspect.groupMessages(groupId)



/** What a conversation operation can fail with, read off its type. */
type ErrorOf<K extends keyof Conversation> = Conversation[K] extends (...args: ReadonlyArray<never>) => Effect.Effect<unknown, infer E>
  ? E
  : Conversation[K] extends Effect.Effect<unknown, infer E> ? E
  : never
/** Checked by the type checker (`npm run typecheck`): these lines do not compile if a channel widens. */
const conflictsNeverEscape: [{ [K in keyof Conversation]: Extract<ErrorOf<K>, EpochConflict> }[keyof Conversation]] extends
  [never] ? true : false = true
const readingCannotFailOnTheNetwork: [Exclude<ErrorOf<"messages">, StorageError | InvalidInput>] extends [never] ? true
  : false = true

describe("Engine", () => {
  it("error channels are narrow: no EpochConflict anywhere, messages fails only on input or storage", () => {
    expect([conflictsNeverEscape, readingCannotFailOnTheNetwork]).toEqual([true, true])
  })

  it.scoped("three members chat and read the same history with the right senders", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("carol")])
      const group = yield* alice.createGroup([bob.inboxId, carol.inboxId], { name: "trio" })
      yield* bob.syncAll
      yield* carol.syncAll
      const atBob = yield* open(bob, group.id)
      const atCarol = yield* open(carol, group.id)

      yield* group.send("hello from alice")
      yield* atBob.send("bob here")
      yield* atCarol.send("carol too")
      yield* Effect.all([alice.syncAll, bob.syncAll, carol.syncAll])

      const expected = [`${alice.inboxId.slice(0, 4)}:hello from alice`, `${bob.inboxId.slice(0, 4)}:bob here`, `${carol.inboxId.slice(0, 4)}:carol too`]
      expect(yield* texts(group)).toEqual(expected)
      expect(yield* texts(atBob)).toEqual(expected)
      expect(yield* texts(atCarol)).toEqual(expected)
      const fromBob = (yield* group.messages()).find((m) => m.text === "bob here")!
      expect(fromBob.senderInstallationId).toBe(bob.installationId)
      expect(fromBob.deliveryStatus).toBe("published")
      expect((yield* group.members).map((m) => m.inboxId).sort()).toEqual([alice.inboxId, bob.inboxId, carol.inboxId].sort())
    }))

  it.scoped("a removed member goes inactive and cannot read what is sent after", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("carol")])
      const group = yield* alice.createGroup([bob.inboxId, carol.inboxId])
      yield* Effect.all([bob.syncAll, carol.syncAll])
      yield* group.send("before")
      yield* group.removeMembers([carol.inboxId])
      yield* group.send("after")
      yield* Effect.all([bob.syncAll, carol.syncAll])

      const atCarol = yield* open(carol, group.id)
      expect(yield* atCarol.state).toBe("inactive")
      expect((yield* atCarol.messages()).map((m) => m.text)).toContain("before")
      expect((yield* atCarol.messages()).map((m) => m.text)).not.toContain("after")
      expect((yield* texts(yield* open(bob, group.id))).map((t) => t.split(":")[1])).toEqual(["before", "after"])
      const sendWhenGone = yield* atCarol.send("let me in").pipe(Effect.flip)
      expect(sendWhenGone._tag).toBe("GroupInactive")
      const change = (yield* group.messages()).find((m) => m.kind === "membershipChange" && m.text.includes(carol.inboxId))
      expect(change).toBeDefined()
    }))

  it.scoped("concurrent adds converge: Alice adds Carol while Bob adds Doris (the Delta Chat story)", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol, doris] = yield* Effect.all([
        net.client("alice"),
        net.client("bob"),
        net.client("carol"),
        net.client("doris")
      ])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      const atBob = yield* open(bob, group.id)
      // Neither has seen the other's change when making its own.
      yield* Effect.all([group.addMembers([carol.inboxId]), atBob.addMembers([doris.inboxId])], { concurrency: 2 })
      for (let round = 0; round < 2; round++) {
        for (const client of [alice, bob, carol, doris]) yield* client.syncAll
      }

      const everyone = [alice, bob, carol, doris]
      const infos = yield* Effect.forEach(everyone, (c) => open(c, group.id).pipe(Effect.flatMap((g) => g.debugInfo)))
      const members = yield* Effect.forEach(everyone, (c) =>
        open(c, group.id).pipe(Effect.flatMap((g) => g.members), Effect.map((ms) => ms.map((m) => m.inboxId).sort())))
      expect(new Set(infos.map((i) => `${i.epoch}/${i.epochAuthenticator}`)).size).toBe(1)
      for (const list of members) expect(list).toEqual(everyone.map((c) => c.inboxId).sort())
      expect(infos.every((i) => !i.maybeForked)).toBe(true)
    }))

  it.scoped("ten concurrent syncs publish exactly one commit and send each welcome once", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* alice.createGroup([])
      // Queue the add while Alice cannot read the topic, so it waits for the next sync.
      yield* net.faults.dropNext(100, "queryGroupMessages")
      const offline = yield* group.addMembers([bob.inboxId]).pipe(Effect.flip)
      expect(offline._tag).toBe("DeliveryError")
      yield* net.faults.healAll

      yield* Effect.all(Array.from({ length: 10 }, () => group.sync), { concurrency: "unbounded" })

      expect((yield* allEnvelopes(net, group.id as unknown as GroupId)).length).toBe(1)
      expect((yield* net.inspect.welcomes(bob.installationId)).length).toBe(1)
      expect((yield* bob.syncAll).joined).toBe(1)
      expect((yield* (yield* open(bob, group.id)).members).length).toBe(2)
    }))

  it.scoped("sendOptimistic stores the message unpublished; publishPending publishes it with the server's time", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* alice.createGroup([bob.inboxId])
      const id = yield* group.sendOptimistic("draft")
      const [queued] = yield* chat(group)
      expect([queued?.id, queued?.deliveryStatus]).toEqual([id, "unpublished"])

      yield* group.publishPending
      const [published] = yield* chat(group)
      const [envelope] = (yield* allEnvelopes(net, group.id as unknown as GroupId)).slice(-1)
      expect(published?.deliveryStatus).toBe("published")
      expect(published?.sentAtNs).toBe(envelope?.serverTimeNs)
      yield* bob.syncAll
      expect((yield* (yield* open(bob, group.id)).messages()).map((m) => m.id)).toEqual([id])
    }))

  it.scoped("a crash after the write-ahead, before the send, loses nothing and duplicates nothing", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const alice = yield* net.client("alice", { transportSchedule: Schedule.stop })
      const bob = yield* net.client("bob")
      const group = yield* alice.createGroup([bob.inboxId])
      yield* net.faults.dropNext(1, "sendGroupMessagesIf")
      const failed = yield* group.send("survives").pipe(Effect.flip)
      expect(failed._tag).toBe("DeliveryError")

      yield* net.restart(alice)
      const reopened = yield* open(alice, group.id)
      expect((yield* chat(reopened)).map((m) => m.deliveryStatus)).toEqual(["unpublished"])
      yield* reopened.publishPending
      expect((yield* chat(reopened)).map((m) => m.deliveryStatus)).toEqual(["published"])
      yield* bob.syncAll
      expect((yield* (yield* open(bob, group.id)).messages()).map((m) => m.text)).toEqual(["survives"])
      // One commit (the add) and one application message on the topic.
      expect((yield* allEnvelopes(net, group.id as unknown as GroupId)).length).toBe(2)
    }))

  it.scoped("a crash after the send, before the sync saw it, loses nothing and duplicates nothing", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const alice = yield* net.client("alice", { transportSchedule: Schedule.stop })
      const bob = yield* net.client("bob")
      const group = yield* alice.createGroup([bob.inboxId])
      yield* net.faults.loseNextResponse(1, "sendGroupMessagesIf")
      expect((yield* group.send("landed").pipe(Effect.flip))._tag).toBe("DeliveryError")

      yield* net.restart(alice)
      const reopened = yield* open(alice, group.id)
      yield* reopened.sync
      expect((yield* chat(reopened)).map((m) => [m.text, m.deliveryStatus])).toEqual([["landed", "published"]])
      yield* reopened.publishPending // nothing left to publish: no second copy
      yield* bob.syncAll
      expect((yield* (yield* open(bob, group.id)).messages()).map((m) => m.text)).toEqual(["landed"])
      expect((yield* allEnvelopes(net, group.id as unknown as GroupId)).length).toBe(2)
    }))

  it.scoped("garbage and foreign messages are refused at the door; tampered messages and replays are skipped", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* alice.createGroup([bob.inboxId])
      const other = yield* bob.createGroup([alice.inboxId])
      yield* other.send("in the other group")
      yield* bob.syncAll
      const groupId = group.id as unknown as GroupId
      const foreign = (yield* allEnvelopes(net, other.id as unknown as GroupId)).slice(-1)[0]!
      yield* group.send("first")
      const first = (yield* allEnvelopes(net, groupId)).slice(-1)[0]!
      const before = (yield* allEnvelopes(net, groupId)).length

      // An outsider with an account: the server takes only MLS messages of this topic's group.
      const intruder = yield* net.intruder
      const inject = (payload: Uint8Array) => intruder.sendGroupMessages([GroupMessageInput.make({ groupId, payload })])
      for (const refused of [new Uint8Array(randomBytes(200)), first.payload.slice(0, 40), foreign.payload]) {
        expect(yield* Effect.flip(inject(refused))).toMatchObject({ _tag: "DeliveryError", reason: "InvalidRequest" })
      }
      expect((yield* allEnvelopes(net, groupId)).length).toBe(before)
      const replay = yield* inject(first.payload)
      expect(replay[0]?.sequenceId).toBe(first.sequenceId) // the DS stores a replay once
      // Well-formed, for the right group, but tampered: it gets in, and no member can read it.
      const tampered = first.payload.slice()
      for (let i = tampered.length - 16; i < tampered.length; i++) tampered[i] = tampered[i]! ^ 0xff
      yield* inject(tampered)

      yield* group.send("second")
      const summary = yield* bob.syncAll
      expect(summary.skipped).toBeGreaterThanOrEqual(1)
      // Each skip is counted under its reason.
      expect(Object.values(summary.skippedBy).reduce((a, b) => a + b, 0)).toBe(summary.skipped)
      expect((yield* (yield* open(bob, group.id)).messages()).map((m) => m.text)).toEqual(["first", "second"])
      yield* (yield* open(bob, group.id)).send("still talking")
      yield* alice.syncAll
      expect((yield* chat(group)).map((m) => m.text)).toEqual(["first", "second", "still talking"])
    }))

  it.scoped("stored rows that do not decode are quarantined and skipped; the group keeps syncing", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      yield* group.send("before")
      const unsent = yield* group.sendOptimistic("queued, then corrupted")

      // Another connection to Alice's database damages three rows, as a bad disk or a bug would.
      yield* Effect.gen(function*() {
        const raw = yield* SqliteClient.SqliteClient
        yield* raw`UPDATE converge_intents SET data = substr(data, 1, length(data) - 5) WHERE state = 'ToPublish'`
        yield* raw`UPDATE converge_messages SET sender_inbox_id = 'nobody' WHERE content = 'before'`
        yield* raw`UPDATE converge_messages SET content = '{' WHERE kind = 'membershipChange'`
      }).pipe(Effect.provide(Layer.orDie(SqliteClient.layer({ filename: alice.filename }))))

      const summary = yield* alice.syncAll
      expect(summary.published).toBe(0)
      const groupId = group.id as unknown as GroupId
      const stored = Option.getOrThrow(yield* (yield* net.storage(alice)).groups.get(groupId))
      expect(stored.quarantine).not.toBeNull()
      // The unreadable intent failed, and the message it was sending with it.
      const atAlice = yield* group.messages()
      expect(atAlice.map((m) => [m.text, m.deliveryStatus])).toEqual([["queued, then corrupted", "failed"]])
      expect(atAlice[0]!.id).toBe(unsent)

      yield* group.send("after")
      yield* (yield* open(bob, group.id)).send("bob still here")
      yield* Effect.all([alice.syncAll, bob.syncAll])
      expect((yield* chat(group)).filter((m) => m.deliveryStatus === "published").map((m) => m.text)).toEqual([
        "after",
        "bob still here"
      ])
      expect((yield* chat(yield* open(bob, group.id))).map((m) => m.text)).toEqual(["before", "after", "bob still here"])
    }))

  it.scoped("a damaged cursor is logged, its group flagged and its topic read again: nothing lost, nothing twice, every group syncs", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("carol")])
      const group = yield* alice.createGroup([bob.inboxId])
      const other = yield* alice.createGroup([bob.inboxId])
      // Some history over three epochs, all read by Bob.
      yield* group.send("one")
      yield* group.addMembers([carol.inboxId])
      yield* group.send("two")
      yield* group.removeMembers([carol.inboxId])
      yield* group.send("three")
      yield* bob.syncAll
      const groupId = group.id as unknown as GroupId

      // Another connection to Bob's database damages the group's cursor and his welcomes' cursor.
      yield* Effect.gen(function*() {
        const raw = yield* SqliteClient.SqliteClient
        yield* raw`UPDATE converge_cursors SET sequence_id = 'garbage' WHERE topic = ${`g/${groupId}`}`
        yield* raw`UPDATE converge_cursors SET sequence_id = -1.5 WHERE topic = ${`w/${bob.installationId}`}`
      }).pipe(Effect.provide(Layer.orDie(SqliteClient.layer({ filename: bob.filename }))))

      yield* group.send("four")
      yield* other.send("elsewhere")
      yield* bob.syncAll
      const atBob = yield* open(bob, group.id)
      // Damaged again, then a send before any sync: its short path reads the cursor too.
      yield* Effect.gen(function*() {
        const raw = yield* SqliteClient.SqliteClient
        yield* raw`UPDATE converge_cursors SET sequence_id = 'garbage' WHERE topic = ${`g/${groupId}`}`
      }).pipe(Effect.provide(Layer.orDie(SqliteClient.layer({ filename: bob.filename }))))
      yield* group.send("five")
      yield* atBob.send("bob again")
      const texts = (yield* chat(atBob)).map((m) => m.text)
      expect(texts).toEqual(["one", "two", "three", "four", "five", "bob again"])
      expect((yield* chat(yield* open(bob, other.id))).map((m) => m.text)).toEqual(["elsewhere"])
      // Both welcomes read again, neither taken twice.
      expect((yield* bob.conversations()).length).toBe(2)
      const storage = yield* net.storage(bob)
      expect(Option.getOrThrow(yield* storage.groups.get(groupId)).quarantine).toContain("cursor")
      expect((yield* atBob.debugInfo).maybeForked).toBe(false)
      // The cursor is whole again, past everything read.
      const envelopes = yield* allEnvelopes(net, groupId)
      expect(yield* storage.cursors.get(`g/${groupId}`)).toBe(envelopes[envelopes.length - 1]!.sequenceId)
      // And the group goes on both ways.
      yield* alice.syncAll
      expect((yield* chat(group)).map((m) => m.text)).toEqual(["one", "two", "three", "four", "five", "bob again"])
    }))

  it.scoped("a forged future-epoch commit header flags a possible fork only until the next real commit", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      const groupId = group.id as unknown as GroupId
      const [commit] = (yield* allEnvelopes(net, groupId)).slice(-1)
      // A PrivateMessage: version, wire format, group id (length 16), then the epoch (8 bytes).
      const forged = commit!.payload.slice()
      new DataView(forged.buffer, forged.byteOffset).setBigUint64(2 + 2 + 1 + 16, 40n)
      const header = yield* net.crypto.inspect(forged)
      expect(header).toMatchObject({ kind: "commit", groupId, epoch: 40n })
      yield* (yield* net.intruder).sendGroupMessages([GroupMessageInput.make({ groupId, payload: forged })])
      yield* bob.syncAll
      const atBob = yield* open(bob, group.id)
      expect((yield* atBob.debugInfo).maybeForked).toBe(true)
      // A commit bob can process proves the group goes on: the flag was a forgery's.
      yield* group.updateKeys
      yield* bob.syncAll
      expect((yield* atBob.debugInfo).maybeForked).toBe(false)
      yield* group.send("not forked")
      yield* bob.syncAll
      expect((yield* atBob.messages()).map((m) => m.text)).toContain("not forked")
    }))

  it.scoped("with secrets sealed at rest, clients chat and restart as before", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.makeWith({ storageKey: Redacted.make(new Uint8Array(32).fill(42)) })
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* group.send("sealed")
      yield* net.restart(alice)
      yield* net.restart(bob)
      yield* bob.syncAll
      yield* (yield* open(bob, group.id)).send("still sealed")
      yield* alice.syncAll
      expect((yield* chat(yield* open(alice, group.id))).map((m) => m.text)).toEqual(["sealed", "still sealed"])
    }))

  it.scoped("the engine's metrics count what a sync received, applied and skipped, and time publishing", () =>
    Effect.gen(function*() {
      const count = (metric: Metric.Metric.Counter<number>) => Effect.map(Metric.value(metric), (s) => s.count)
      const before = {
        received: yield* count(EngineMetrics.messagesReceived),
        commits: yield* count(EngineMetrics.commitsApplied),
        publishes: (yield* Metric.value(EngineMetrics.publishDuration)).count
      }
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* group.send("one")
      yield* group.send("two")
      yield* bob.syncAll
      expect((yield* count(EngineMetrics.messagesReceived)) - before.received).toBeGreaterThanOrEqual(2)
      expect((yield* count(EngineMetrics.commitsApplied)) - before.commits).toBeGreaterThanOrEqual(1)
      expect((yield* Metric.value(EngineMetrics.publishDuration)).count - before.publishes).toBeGreaterThanOrEqual(3)
    }))

  it.scoped("bad input gets typed errors", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, nokeys] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("nokeys")])
      const group = yield* alice.createGroup([bob.inboxId])
      const unknownInbox = "f".repeat(64) as typeof bob.inboxId
      const tags = yield* Effect.all([
        group.addMembers([]).pipe(Effect.flip),
        group.addMembers([alice.inboxId]).pipe(Effect.flip),
        group.addMembers([bob.inboxId]).pipe(Effect.flip),
        alice.createGroup([nokeys.inboxId, nokeys.inboxId]).pipe(Effect.flip),
        group.addMembers([unknownInbox]).pipe(Effect.flip),
        group.addMembers(["not-an-inbox" as typeof bob.inboxId]).pipe(Effect.flip),
        alice.conversation("0".repeat(32) as ConversationId).pipe(Effect.flip),
        alice.conversation("nope" as ConversationId).pipe(Effect.flip)
      ]).pipe(Effect.map((errors) => errors.map((e) => e._tag)))
      expect(tags).toEqual([
        "InvalidInput",
        "InvalidInput",
        "InvalidInput",
        "InvalidInput",
        "InboxNotFound",
        "InvalidInput",
        "ConversationNotFound",
        "InvalidInput"
      ])
    }))

  it.scoped("a group's name and description reach every member, also one added later by another member", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("carol")])
      const group = yield* alice.createGroup([bob.inboxId], { name: "Climbing club", description: "Sundays, 9:00" })
      yield* bob.syncAll
      const atBob = yield* open(bob, group.id)
      // Bob adds Carol: she learns the name from the group itself, not from Bob's copy of it.
      yield* atBob.addMembers([carol.inboxId])
      yield* carol.syncAll
      const atCarol = yield* open(carol, group.id)
      for (const conversation of [group, atBob, atCarol]) {
        expect(yield* conversation.metadata).toEqual(
          GroupMetadata.make({ name: "Climbing club", description: "Sundays, 9:00", superAdmins: [alice.inboxId], minProtocolVersion: PROTOCOL_VERSION })
        )
      }
      // A restarted member reads it from its database.
      yield* net.restart(bob)
      expect((yield* (yield* open(bob, group.id)).metadata).name).toBe("Climbing club")
      // No name given, none shown; a DM never has one.
      const plain = yield* alice.createGroup([bob.inboxId])
      expect(yield* plain.metadata).toEqual(GroupMetadata.make({ name: null, description: null, superAdmins: [alice.inboxId], minProtocolVersion: PROTOCOL_VERSION }))
      expect(yield* (yield* alice.findOrCreateDm(carol.inboxId)).metadata).toEqual(GroupMetadata.none)
    }))

  it.scoped("a name or description over its limit is refused before anything is created", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const tooLong = yield* alice.createGroup([bob.inboxId], { name: "x".repeat(MAX_GROUP_NAME + 1) }).pipe(Effect.flip)
      expect(tooLong._tag).toBe("InvalidInput")
      expect(tooLong.message).toContain("group name or description")
      const wordy = { description: "y".repeat(MAX_GROUP_DESCRIPTION + 1) }
      expect((yield* alice.createGroup([bob.inboxId], wordy).pipe(Effect.flip))._tag).toBe("InvalidInput")
      expect(yield* alice.conversations()).toEqual([])
    }))
})
