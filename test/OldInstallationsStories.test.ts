/**
 * Installations below a group's minimum protocol version, as users meet them: an old device of a
 * member is left out of the group while its inbox's other devices join, an inbox with no device
 * new enough is refused before anything is created, and an old device that upgrades is added.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, TestClock } from "effect"
import type { ConversationId, GroupId } from "../src/domain/Ids.ts"
import type { Conversation } from "../src/services/Client.ts"
import { SKIPPED_INSTALLATION_RETRY } from "../src/services/SkippedInstallations.ts"
import { type TestClient, TestNetwork } from "../src/testing.ts"

const open = (client: TestClient, id: ConversationId) => client.conversation(id)
const installationsOf = (c: Conversation, client: TestClient) =>
  c.members.pipe(Effect.map((ms) => [...(ms.find((m) => m.inboxId === client.inboxId)?.installationIds ?? [])].sort()))
const texts = (c: Conversation) =>
  c.messages().pipe(Effect.map((ms) => ms.filter((m) => m.kind === "text").map((m) => m.text)))
const intentsAt = (net: TestNetwork, client: TestClient, c: Conversation) =>
  Effect.flatMap(net.storage(client), (s) =>
    s.intents.byGroup(c.id as unknown as GroupId, ["ToPublish", "Published", "Committed", "Processed", "Error"]))

describe("installations below a group's minimum version", () => {
  it.scoped("a member's old tablet stays out while the new phone joins; once upgraded, the tablet is added", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* alice.createGroup([bob.inboxId])
      const tablet = yield* net.client("bobTablet", { sameInboxAs: bob, protocolVersion: 1 })
      const phone = yield* net.client("bobPhone", { sameInboxAs: bob })

      // Alice's next sync adds Bob's new devices: the phone, not the tablet that cannot read the group.
      yield* alice.syncAll
      const sorted = (ids: ReadonlyArray<string>) => [...ids].sort()
      expect(yield* installationsOf(group, bob)).toEqual(sorted([bob.installationId, phone.installationId]))
      yield* group.send("for the phone")
      yield* phone.syncAll
      expect(yield* texts(yield* open(phone, group.id))).toEqual(["for the phone"])
      yield* tablet.syncAll
      expect((yield* tablet.conversations()).map((c) => c.id)).not.toContain(group.id)

      // Leaving the tablet out fails nothing, and later syncs do not ask again each time.
      const settled = yield* intentsAt(net, alice, group)
      expect(settled.filter((i) => i.state === "Error")).toEqual([])
      yield* Effect.all([alice.syncAll, alice.syncAll, alice.syncAll], { discard: true })
      expect((yield* intentsAt(net, alice, group)).length).toBe(settled.length)

      // Upgraded, the tablet hands out a new key package; the next try after the wait adds it.
      yield* net.restart(tablet, { protocolVersion: 2 })
      yield* tablet.syncAll
      yield* TestClock.adjust(SKIPPED_INSTALLATION_RETRY)
      yield* alice.syncAll
      expect(yield* installationsOf(group, bob)).toEqual(sorted([bob.installationId, phone.installationId, tablet.installationId]))
      yield* group.send("for the tablet too")
      yield* tablet.syncAll
      expect(yield* texts(yield* open(tablet, group.id))).toEqual(["for the tablet too"])
    }))

  it.scoped("an old tablet left out of a group still gets its history from the inbox's other device", () =>
    Effect.gen(function*() {
      const fast = { installationCheckInterval: "0 millis" } as const
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast)])
      const group = yield* alice.createGroup([bob.inboxId], { name: "Club" })
      yield* group.send("before the tablet")
      yield* bob.syncAll
      const tablet = yield* net.client("bobTablet", { ...fast, sameInboxAs: bob, protocolVersion: 1 })
      // Turns of request, answer and import between Bob's devices (Alice's syncs leave the tablet out).
      for (let round = 0; round < 3; round++) yield* Effect.all([alice.syncAll, bob.syncAll, tablet.syncAll], { discard: true })
      expect(yield* installationsOf(group, bob)).toEqual([bob.installationId])
      const atTablet = yield* open(tablet, group.id)
      expect(yield* atTablet.state).toBe("inactive")
      expect(yield* texts(atTablet)).toEqual(["before the tablet"])
    }))

  it.scoped("adding an inbox adds the devices that can read the group and leaves out the old ones", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, dave] = yield* Effect.all([net.client("alice"), net.client("dave")])
      const daveOld = yield* net.client("daveOld", { sameInboxAs: dave, protocolVersion: 1 })
      const group = yield* alice.createGroup([dave.inboxId])
      expect(yield* installationsOf(group, dave)).toEqual([dave.installationId])
      yield* group.send("hi Dave")
      yield* Effect.all([dave.syncAll, daveOld.syncAll])
      expect(yield* texts(yield* open(dave, group.id))).toEqual(["hi Dave"])
      expect((yield* daveOld.conversations()).map((c) => c.id)).not.toContain(group.id)
    }))

  it.scoped("two members add the same inbox at once: the one whose add lands second finds it in, its old device aside, and succeeds", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, carol, dave] = yield* Effect.all([net.client("alice"), net.client("carol"), net.client("dave")])
      const daveOld = yield* net.client("daveOld", { sameInboxAs: dave, protocolVersion: 1 })
      const group = yield* alice.createGroup([carol.inboxId])
      yield* carol.syncAll
      const atCarol = yield* open(carol, group.id)
      yield* group.addMembers([dave.inboxId])
      // Carol has not seen Alice's add: hers loses the race, is derived again, and has nothing left to do.
      yield* atCarol.addMembers([dave.inboxId])
      yield* alice.syncAll
      expect(yield* installationsOf(group, dave)).toEqual([dave.installationId])
      expect(yield* installationsOf(atCarol, dave)).toEqual([dave.installationId])
      expect((yield* daveOld.conversations()).map((c) => c.id)).not.toContain(group.id)
    }))

  it.scoped("an inbox with no device new enough is refused before a group is made, and by an existing group", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const carol = yield* net.client("carol", { protocolVersion: 1 })
      const tooOld = { _tag: "ProtocolVersionTooOld", required: 2, current: 1 }
      expect(yield* alice.createGroup([bob.inboxId, carol.inboxId]).pipe(Effect.flip)).toMatchObject(tooOld)
      expect(yield* alice.conversations()).toEqual([])

      const group = yield* alice.createGroup([bob.inboxId])
      expect(yield* group.addMembers([carol.inboxId]).pipe(Effect.flip)).toMatchObject(tooOld)
      expect((yield* group.members).map((m) => m.inboxId).sort()).toEqual([alice.inboxId, bob.inboxId].sort())
      expect((yield* intentsAt(net, alice, group)).filter((i) => i.state === "Error")).toEqual([])
    }))
})
