/**
 * Devices whose key packages cannot be used, as users meet them: one that never uploaded its key
 * package, one whose package no longer verifies (expired while it was offline, or damaged on the
 * way). Such a device is left out of an add while its inbox's other devices go in, and tried
 * again at the next installation check; before, one such device of one member failed every
 * membership commit of every group that member was in, again at every sync.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, TestClock } from "effect"
import type { ConversationId, GroupId, InstallationId } from "../src/domain/Ids.ts"
import type { Conversation } from "../src/services/Client.ts"
import type { DeliveryService } from "../src/services/DeliveryService.ts"
import { type TestClient, TestNetwork } from "../src/testing.ts"

const open = (client: TestClient, id: ConversationId) => client.conversation(id)
const sorted = (ids: ReadonlyArray<string>) => [...ids].sort()
const installationsOf = (c: Conversation, client: TestClient) =>
  c.members.pipe(Effect.map((ms) => sorted(ms.find((m) => m.inboxId === client.inboxId)?.installationIds ?? [])))
const texts = (c: Conversation) =>
  c.messages().pipe(Effect.map((ms) => ms.filter((m) => m.kind === "text").map((m) => m.text)))
const intentsAt = (net: TestNetwork, client: TestClient, c: Conversation) =>
  Effect.flatMap(net.storage(client), (s) =>
    s.intents.byGroup(c.id as unknown as GroupId, ["ToPublish", "Published", "Committed", "Processed", "Error"]))

/** A delivery service that damages the key package it hands out for `installation` while `damaging()`. */
const damagingKeyPackageOf = (installation: () => InstallationId | undefined, damaging: () => boolean) =>
  (honest: DeliveryService["Type"]): DeliveryService["Type"] => ({
    ...honest,
    fetchKeyPackages: (ids) =>
      Effect.map(honest.fetchKeyPackages(ids), (answer) =>
        answer.map((f) => {
          if (!damaging() || f.installationId !== installation() || f.keyPackage === undefined) return f
          const keyPackage = Uint8Array.from(f.keyPackage)
          keyPackage[keyPackage.length - 1]! ^= 0xff // the signature's last byte
          return { ...f, keyPackage }
        }))
  })

describe("devices whose key packages cannot be used", () => {
  it.scoped("a member's device that never uploaded a key package is left out; Alice's new tablet joins at once", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      // Bob's laptop registered, then crashed before its key package went out.
      const laptop = yield* net.client("bobLaptop", {
        sameInboxAs: bob,
        wrapDelivery: (honest) => ({ ...honest, uploadKeyPackage: () => Effect.void })
      })
      const tablet = yield* net.client("aliceTablet", { sameInboxAs: alice })

      yield* alice.syncAll
      expect(yield* installationsOf(group, alice)).toEqual(sorted([alice.installationId, tablet.installationId]))
      expect(yield* installationsOf(group, bob)).toEqual([bob.installationId])
      yield* group.send("for the tablet")
      yield* tablet.syncAll
      expect(yield* texts(yield* open(tablet, group.id))).toEqual(["for the tablet"])

      // Nothing failed. The next periodic check asks for the laptop's key package again: still
      // none, still nothing failed, and Bob's other devices are not held back.
      expect((yield* intentsAt(net, alice, group)).filter((i) => i.state === "Error")).toEqual([])
      yield* TestClock.adjust("5 seconds")
      const bobPhone = yield* net.client("bobPhone", { sameInboxAs: bob })
      yield* alice.syncAll
      expect((yield* intentsAt(net, alice, group)).filter((i) => i.state === "Error")).toEqual([])
      expect(yield* installationsOf(group, bob)).toEqual(sorted([bob.installationId, bobPhone.installationId]))
      expect((yield* laptop.conversations()).map((c) => c.id)).not.toContain(group.id)
    }))

  it.scoped("a device whose key package does not verify stays out of a new group while its sibling joins; once it verifies, the next check adds it", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      let damaging = true
      let tabletId: InstallationId | undefined
      const bob = yield* net.client("bob")
      const alice = yield* net.client("alice", { wrapDelivery: damagingKeyPackageOf(() => tabletId, () => damaging) })
      const tablet = yield* net.client("bobTablet", { sameInboxAs: bob })
      tabletId = tablet.installationId

      const group = yield* alice.createGroup([bob.inboxId])
      expect(yield* installationsOf(group, bob)).toEqual([bob.installationId])
      expect((yield* intentsAt(net, alice, group)).filter((i) => i.state === "Error")).toEqual([])
      yield* group.send("for the phone")
      yield* bob.syncAll
      expect(yield* texts(yield* open(bob, group.id))).toEqual(["for the phone"])

      damaging = false
      yield* TestClock.adjust("5 seconds")
      yield* alice.syncAll
      expect(yield* installationsOf(group, bob)).toEqual(sorted([bob.installationId, tablet.installationId]))
      yield* group.send("for the tablet too")
      yield* tablet.syncAll
      expect(yield* texts(yield* open(tablet, group.id))).toEqual(["for the tablet too"])
    }))

  it.scoped("a device that never comes back costs one key-package request a minute for all its groups; once it can be added, it joins within a minute", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      let laptopId: InstallationId | undefined
      let withoutKeyPackage = true
      let askedForLaptop = 0
      const bob = yield* net.client("bob")
      const alice = yield* net.client("alice", {
        wrapDelivery: (honest) => ({
          ...honest,
          fetchKeyPackages: (ids) => {
            if (laptopId !== undefined && ids.includes(laptopId)) askedForLaptop += 1
            return Effect.map(honest.fetchKeyPackages(ids), (answer) =>
              answer.map((f) => (withoutKeyPackage && f.installationId === laptopId ? { installationId: f.installationId, keyPackage: undefined } : f)))
          }
        })
      })
      const groups = yield* Effect.forEach([1, 2, 3], () => alice.createGroup([bob.inboxId]))
      // Bob's laptop registered, and its key package never reached the service.
      laptopId = (yield* net.client("bobLaptop", { sameInboxAs: bob })).installationId

      // Two minutes of Alice's syncs, every installation check due (every 5 s). Before, each of
      // the three groups asked for the laptop at each check: 72 requests.
      for (let i = 0; i < 24; i++) {
        yield* TestClock.adjust("5 seconds")
        yield* alice.syncAll
      }
      expect(askedForLaptop).toBeGreaterThan(0)
      expect(askedForLaptop).toBeLessThanOrEqual(6)
      for (const group of groups) expect(yield* installationsOf(group, bob)).toEqual([bob.installationId])
      expect((yield* Effect.forEach(groups, (g) => intentsAt(net, alice, g))).flat().filter((i) => i.state === "Error")).toEqual([])

      // Its key package arrives at last: within a minute it is in every group.
      withoutKeyPackage = false
      for (let i = 0; i < 12; i++) {
        yield* TestClock.adjust("5 seconds")
        yield* alice.syncAll
      }
      for (const group of groups) {
        expect(yield* installationsOf(group, bob)).toEqual(sorted([bob.installationId, laptopId]))
      }
    }))

  it.scoped("a DM reaches the peer's devices that can be reached; a peer with none is refused before anything is stored", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      yield* net.client("bobGhost", { sameInboxAs: bob, wrapDelivery: (honest) => ({ ...honest, uploadKeyPackage: () => Effect.void }) })
      const dm = yield* alice.findOrCreateDm(bob.inboxId)
      yield* dm.send("hi Bob")
      yield* bob.syncAll
      expect(yield* texts(yield* open(bob, dm.id))).toEqual(["hi Bob"])

      // Dave's only device never uploaded its key package: nobody of his could read the DM.
      const lonely = yield* net.client("dave", { wrapDelivery: (honest) => ({ ...honest, uploadKeyPackage: () => Effect.void }) })
      const refused = yield* alice.findOrCreateDm(lonely.inboxId).pipe(Effect.flip)
      expect(refused).toMatchObject({ _tag: "KeyPackageUnavailable", inboxId: lonely.inboxId, installationIds: [lonely.installationId] })
      expect((yield* alice.conversations()).map((c) => c.id)).toEqual([dm.id])
    }))

  it.scoped("the delivery service refuses a key package that advertises a protocol version below 1", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const refused = yield* net.client("mallory", { protocolVersion: 0 }).pipe(Effect.flip)
      expect(refused).toMatchObject({ _tag: "DeliveryError", reason: "InvalidKeyPackage" })
      expect(String(refused.message)).toContain("advertises protocol version 0")
    }))
})
