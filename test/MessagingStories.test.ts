/**
 * Messaging as users meet it: a direct message inside a group that only its recipient reads,
 * replies and reactions through the example codecs, a type a client does not know, deleting a
 * message for everyone, and disappearing messages on the test clock.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Option, Schema, TestClock } from "effect"
import { utf8 } from "../src/domain/Bytes.ts"
import { ApplicationContentJson, messageIdOf } from "../src/domain/Content.ts"
import { type ConversationId, dmId, type GroupId, type MessageId } from "../src/domain/Ids.ts"
import { Reaction } from "../src/domain/codecs/Reaction.ts"
import { Reply } from "../src/domain/codecs/Reply.ts"
import type { Message } from "../src/domain/Model.ts"
import { GroupMessageInput } from "../src/domain/Wire.ts"
import type { Conversation } from "../src/services/Client.ts"
import { type TestClient, TestNetwork } from "../src/testing.ts"

const open = (client: TestClient, id: ConversationId) => client.conversation(id)
const texts = (c: Conversation) =>
  c.messages().pipe(Effect.map((ms) => ms.filter((m) => m.kind === "text")))
const textOf = (ms: ReadonlyArray<Message>) => ms.map((m) => m.text)
const SECOND = 1_000_000_000n

/** Lets the clients' background fibers (the disappearing-message sweeper) run until `done` holds. */
const settle = (done: Effect.Effect<boolean, unknown>) =>
  Effect.gen(function*() {
    for (let i = 0; i < 200; i++) {
      if (yield* done) return
      yield* Effect.yieldNow()
    }
  })

const threeFriends = Effect.gen(function*() {
  const net = yield* TestNetwork.make
  const [alice, bob, carol] = yield* Effect.all(["alice", "bob", "carol"].map((name) => net.client(name)))
  const group = yield* alice!.createGroup([bob!.inboxId, carol!.inboxId], { name: "Trip" })
  yield* Effect.all([bob!.syncAll, carol!.syncAll])
  const atBob = yield* open(bob!, group.id)
  const atCarol = yield* open(carol!, group.id)
  return { net, alice: alice!, bob: bob!, carol: carol!, group, atBob, atCarol }
})

describe("Direct messages inside a group", () => {
  it.scoped("alice writes bob in the group's context: bob reads it with the group, carol reads nothing, the group topic carries nothing", () =>
    Effect.gen(function*() {
      const { alice, atBob, atCarol, bob, carol, group, net } = yield* threeFriends
      const groupId = group.id as unknown as GroupId
      const onTopic = (yield* net.inspect.groupMessages(groupId)).length

      const id = yield* group.sendDirect(bob.inboxId, "psst: bring the tent")
      yield* Effect.all([bob.syncAll, carol.syncAll])

      expect(yield* net.inspect.groupMessages(groupId)).toHaveLength(onTopic)
      // Bob reads it in his DM with alice, attached to the group, and in the group's direct messages.
      const dm = yield* open(bob, dmId(alice.inboxId, bob.inboxId))
      const [received] = yield* texts(dm)
      expect(received).toMatchObject({ id, text: "psst: bring the tent", senderInboxId: alice.inboxId, groupContext: groupId })
      expect((yield* atBob.directMessages()).map((m) => m.id)).toEqual([id])
      expect(yield* texts(atBob)).toEqual([])
      // Carol: nothing, not even a DM.
      expect(yield* atCarol.directMessages()).toEqual([])
      expect(yield* texts(atCarol)).toEqual([])
      expect(yield* carol.conversations({ kind: "dm" })).toEqual([])

      // Bob answers in the same context; both list the exchange in order.
      const answer = yield* atBob.sendDirect(alice.inboxId, "already packed")
      yield* alice.syncAll
      expect(textOf(yield* group.directMessages())).toEqual(["psst: bring the tent", "already packed"])
      expect((yield* group.directMessages({ direction: "desc", limit: 1 })).map((m) => m.id)).toEqual([answer])
    }))

  it.scoped("only current members of a group may be written to, never oneself, and not from a DM", () =>
    Effect.gen(function*() {
      const { alice, bob, group, net } = yield* threeFriends
      const dave = yield* net.client("dave")
      expect(yield* group.sendDirect(dave.inboxId, "hi").pipe(Effect.flip)).toMatchObject({ _tag: "NotAMember", inboxId: dave.inboxId })
      expect((yield* group.sendDirect(alice.inboxId, "me").pipe(Effect.flip))._tag).toBe("InvalidInput")
      expect((yield* group.sendDirect("nope" as never, "x").pipe(Effect.flip))._tag).toBe("InvalidInput")
      const dm = yield* alice.findOrCreateDm(bob.inboxId)
      expect((yield* dm.sendDirect(bob.inboxId, "x").pipe(Effect.flip))._tag).toBe("InvalidInput")
      expect((yield* dm.directMessages().pipe(Effect.flip))._tag).toBe("InvalidInput")
    }))

  it.scoped("a direct message whose group the recipient has left is shown without the group", () =>
    Effect.gen(function*() {
      const { alice, atCarol, bob, group } = yield* threeFriends
      // Carol removes bob; alice has not read it yet and still takes bob for a member.
      yield* atCarol.removeMembers([bob.inboxId])
      yield* bob.syncAll
      yield* group.sendDirect(bob.inboxId, "see you there")
      yield* bob.syncAll
      const [received] = yield* texts(yield* open(bob, dmId(alice.inboxId, bob.inboxId)))
      expect(received).toMatchObject({ text: "see you there", groupContext: null })
      expect(yield* (yield* open(bob, group.id)).directMessages()).toEqual([])
    }))
})

describe("Typed content", () => {
  it.scoped("a reply and a reaction round-trip with their codecs; a type nobody knows shows its fallback", () =>
    Effect.gen(function*() {
      const { alice, atBob, atCarol, bob, carol, group } = yield* threeFriends
      const question = yield* group.send("who is in for Saturday?")
      yield* bob.syncAll
      yield* atBob.sendContent(Reply.encode(new Reply({ reference: question, text: "me!" })))
      yield* atBob.sendContent(Reaction.encode(new Reaction({ reference: question, emoji: "👍", action: "added" })))
      yield* group.sendContent({ type: "app.example/poll:1", bytes: utf8("{\"options\":[\"sat\",\"sun\"]}"), fallback: "a poll (update your app to vote)" })
      yield* Effect.all([alice.syncAll, carol.syncAll])

      for (const c of [group, atCarol]) {
        const [, reply, reaction, poll] = yield* texts(c)
        expect(Reply.decode(reply!)).toEqual(Option.some(new Reply({ reference: question, text: "me!" })))
        expect(Reaction.decode(reaction!)).toEqual(Option.some(new Reaction({ reference: question, emoji: "👍", action: "added" })))
        expect(reaction!.text).toBe("reacted 👍")
        // A client without a poll codec shows the fallback; the bytes are there for one that has it.
        expect(poll).toMatchObject({ text: "a poll (update your app to vote)", content: { type: "app.example/poll:1" } })
        expect(Reply.decode(poll!)).toEqual(Option.none())
        expect(new TextDecoder().decode(poll!.content!.bytes)).toBe("{\"options\":[\"sat\",\"sun\"]}")
      }
      // A plain text has no content.
      expect((yield* texts(atCarol))[0]!.content).toBeNull()
    }))

  it.scoped("content types and sizes are bounded", () =>
    Effect.gen(function*() {
      const { group } = yield* threeFriends
      const refused = (type: string, bytes: Uint8Array) =>
        group.sendContent({ type, bytes }).pipe(Effect.flip, Effect.map((e) => e._tag))
      expect(yield* refused("", new Uint8Array(1))).toBe("InvalidInput")
      expect(yield* refused("has spaces", new Uint8Array(1))).toBe("InvalidInput")
      expect(yield* refused("x".repeat(129), new Uint8Array(1))).toBe("InvalidInput")
      expect(yield* refused("app.example/blob:1", new Uint8Array(64 * 1024 + 1))).toBe("InvalidInput")
      expect(yield* group.sendContent({ type: "app.example/blob:1", bytes: new Uint8Array(64 * 1024) })).toMatch(/^[0-9a-f]{64}$/)
    }))
})

describe("Deleting a message for everyone", () => {
  it.scoped("the sender deletes it everywhere; a plain member cannot delete another's; a super admin can", () =>
    Effect.gen(function*() {
      const { alice, atBob, atCarol, bob, carol, group, net } = yield* threeFriends
      const oops = yield* atBob.send("oops, wrong group")
      const fine = yield* atCarol.send("fine message")
      yield* Effect.all([alice.syncAll, bob.syncAll, carol.syncAll])

      const denied = yield* atCarol.deleteMessage(oops).pipe(Effect.flip)
      expect(denied).toMatchObject({ _tag: "PermissionDenied", action: "deleteMessage" })
      yield* atBob.deleteMessage(oops)
      yield* Effect.all([alice.syncAll, carol.syncAll])
      for (const c of [group, atBob, atCarol]) {
        const [first, second] = yield* texts(c)
        // It keeps its place, erased.
        expect(first).toMatchObject({ id: oops, deleted: true, text: "", content: null })
        expect(second).toMatchObject({ id: fine, deleted: false, text: "fine message" })
      }
      // Erased from the database too, and from the intent that sent it.
      const bobsIntents = yield* (yield* net.storage(bob)).intents.byState(["Processed"])
      const sent = bobsIntents.flatMap((i) => i.data._tag === "SendMessage" && i.data.messageId === oops ? [i.data.text] : [])
      expect(sent).toEqual([""])
      expect((yield* atBob.deleteMessage(oops).pipe(Effect.flip))._tag).toBe("MessageAlreadyDeleted")

      // Alice created the group: a super admin deletes anyone's message.
      yield* group.deleteMessage(fine)
      yield* Effect.all([bob.syncAll, carol.syncAll])
      for (const c of [group, atBob, atCarol]) expect((yield* texts(c)).map((m) => m.deleted)).toEqual([true, true])
    }))

  it.scoped("in a DM only the sender deletes; unknown ids and transcript entries are refused", () =>
    Effect.gen(function*() {
      const { alice, bob, group } = yield* threeFriends
      const dm = yield* alice.findOrCreateDm(bob.inboxId)
      const hi = yield* dm.send("hi bob")
      yield* bob.syncAll
      const atBob = yield* open(bob, dm.id)
      expect((yield* atBob.deleteMessage(hi).pipe(Effect.flip))._tag).toBe("PermissionDenied")
      yield* dm.deleteMessage(hi)
      yield* bob.syncAll
      expect((yield* texts(atBob))[0]).toMatchObject({ id: hi, deleted: true, text: "" })

      expect((yield* group.deleteMessage("ab".repeat(32) as MessageId).pipe(Effect.flip))._tag).toBe("MessageNotFound")
      expect((yield* group.deleteMessage("nope" as MessageId).pipe(Effect.flip))._tag).toBe("InvalidInput")
      // A DM's message is not the group's to delete.
      expect((yield* group.deleteMessage(hi).pipe(Effect.flip))._tag).toBe("MessageNotFound")
      const [entry] = (yield* group.messages()).filter((m) => m.kind === "membershipChange")
      expect((yield* group.deleteMessage(entry!.id).pipe(Effect.flip))._tag).toBe("InvalidInput")
    }))

  it.scoped("a deletion that arrives before its message still ends with the message deleted", () =>
    Effect.gen(function*() {
      const { alice, bob, group, net } = yield* threeFriends
      // Bob's installation, outside the engine: the deletion first, then the message it names.
      const groupId = group.id as unknown as GroupId
      const row = Option.getOrThrow(yield* (yield* net.storage(bob)).groups.get(groupId))
      const nonce = "cd".repeat(16)
      const target = messageIdOf(groupId, bob.installationId, nonce)
      const encode = (content: typeof ApplicationContentJson.Type) => utf8(Schema.encodeSync(ApplicationContentJson)(content))
      const first = yield* net.crypto.encrypt(yield* net.crypto.deserialize(row.mlsState), encode({ _tag: "Delete", nonce: "ef".repeat(16), target }))
      const second = yield* net.crypto.encrypt(first.state, encode({ _tag: "Text", nonce, text: "regret" }))
      const asBob = yield* net.deliveryAs(bob)
      yield* asBob.sendGroupMessages([GroupMessageInput.make({ groupId, payload: first.message })])
      yield* alice.syncAll
      yield* asBob.sendGroupMessages([GroupMessageInput.make({ groupId, payload: second.message })])
      yield* alice.syncAll
      expect((yield* texts(group))).toMatchObject([{ id: target, deleted: true, text: "" }])
    }))
})

describe("Disappearing messages", () => {
  it.scoped("messages vanish on every member at their deadline, across restarts; a later setting applies to later messages", () =>
    Effect.gen(function*() {
      const { alice, atBob, bob, carol, group, net } = yield* threeFriends
      yield* group.updateMetadata({ disappearAfterNs: 60n * SECOND })
      yield* bob.syncAll
      expect((yield* atBob.metadata).disappearAfterNs).toBe(60n * SECOND)
      const doomed = yield* group.send("this message will self-destruct")
      // The setting changes: it applies to what is sent after the change only.
      yield* TestClock.adjust("10 seconds")
      yield* group.updateMetadata({ disappearAfterNs: null })
      const kept = yield* group.send("this one stays")
      yield* bob.syncAll
      expect((yield* texts(atBob)).map((m) => m.id)).toEqual([doomed, kept])
      // Bob restarts before the deadline: it is on disk, not only in memory.
      yield* net.restart(bob)

      yield* TestClock.adjust("45 seconds")
      expect((yield* texts(group)).map((m) => m.id)).toEqual([doomed, kept])
      yield* TestClock.adjust("10 seconds")
      const atBobAgain = yield* open(bob, group.id)
      const gone = Effect.all([texts(group), texts(atBobAgain)]).pipe(
        Effect.map((all) => all.every((ms) => ms.length === 1))
      )
      yield* settle(gone)
      for (const c of [group, atBobAgain]) expect((yield* texts(c)).map((m) => m.id)).toEqual([kept])
      expect(yield* (yield* net.storage(alice)).messages.get(doomed)).toEqual(Option.none())

      // Carol was away the whole time: when she comes back, the message has already gone.
      yield* net.restart(carol)
      yield* carol.syncAll
      expect(textOf(yield* texts(yield* open(carol, group.id)))).toEqual(["this one stays"])
      expect(yield* (yield* net.storage(carol)).messages.get(doomed)).toEqual(Option.none())
    }))

  it.scoped("a shorter setting's message vanishes first, on sender and reader alike, with nobody calling anything more", () =>
    Effect.gen(function*() {
      const { atBob, bob, group } = yield* threeFriends
      yield* group.updateMetadata({ disappearAfterNs: 600n * SECOND })
      const slow = yield* group.send("gone in ten minutes")
      yield* bob.syncAll
      // Both sweepers now sleep until the ten-minute deadline; a five-second one must wake them.
      yield* group.updateMetadata({ disappearAfterNs: 5n * SECOND })
      const fast = yield* group.sendOptimistic("gone in five seconds")
      yield* group.publishPending
      yield* bob.syncAll
      expect((yield* texts(atBob)).map((m) => m.id)).toEqual([slow, fast])

      yield* TestClock.adjust("6 seconds")
      const fastGone = Effect.all([texts(group), texts(atBob)]).pipe(
        Effect.map((all) => all.every((ms) => ms.length === 1))
      )
      yield* settle(fastGone)
      for (const c of [group, atBob]) expect((yield* texts(c)).map((m) => m.id)).toEqual([slow])

      // A sync that brings nothing new changes no deadline: the ten-minute one still holds.
      yield* bob.syncAll
      yield* TestClock.adjust("10 minutes")
      yield* settle(Effect.all([texts(group), texts(atBob)]).pipe(Effect.map((all) => all.every((ms) => ms.length === 0))))
      for (const c of [group, atBob]) expect(yield* texts(c)).toEqual([])
    }))
})

describe("Message ids", () => {
  it.scoped("alice's messages keep the id she was given at every member, in the order she sent them; bob's reply to one finds it at carol's", () =>
    Effect.gen(function*() {
      const { alice, atBob, atCarol, bob, carol, group } = yield* threeFriends
      const ids: Array<MessageId> = []
      for (const text of ["first", "second", "third"]) {
        ids.push(yield* group.send(text))
        yield* TestClock.adjust("1 second")
      }
      ids.push(yield* group.sendOptimistic("fourth"))
      yield* group.publishPending
      yield* Effect.all([bob.syncAll, carol.syncAll])

      // Their ids begin with her clock: the later the message, the greater its id.
      expect([...ids].sort()).toEqual(ids)
      for (const c of [group, atBob, atCarol]) expect((yield* texts(c)).map((m) => m.id)).toEqual(ids)
      yield* atBob.sendContent(Reply.encode(new Reply({ reference: ids[1]!, text: "agreed" })))
      yield* carol.syncAll
      const atCarolNow = yield* texts(atCarol)
      const reply = Option.getOrThrow(Reply.decode(atCarolNow.at(-1)!))
      expect(atCarolNow.find((m) => m.id === reply.reference)).toMatchObject({ text: "second", senderInboxId: alice.inboxId })
    }))
})
