/**
 * A restart as a user in many groups meets it: the first sync after it catches up without
 * decoding every group's MLS state just to list who is in it (a 100-member state takes tens of
 * ms to decode; a client in 1,000 such groups waited a minute). The installation checks of a
 * sync read each group's roster, kept beside its state for the exact stored bytes; a state is
 * decoded only when something has to be done in the group; names and policies are read from the
 * roster too. Decodes are counted by the engine's
 * `converge_state_decodes_total` metric.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Metric } from "effect"
import type { Conversation } from "../src/services/Client.ts"
import * as EngineMetrics from "../src/services/EngineMetrics.ts"
import { type TestClient, TestNetwork } from "../src/testing.ts"

/** State decodes (in this test file's process) while `effect` runs, and its result. */
const countingDecodes = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const before = (yield* Metric.value(EngineMetrics.stateDecodes)).count
    const value = yield* effect
    return { decodes: (yield* Metric.value(EngineMetrics.stateDecodes)).count - before, value }
  })

const installationsOf = (c: Conversation, inbox: TestClient) =>
  c.members.pipe(Effect.map((ms) => [...(ms.find((m) => m.inboxId === inbox.inboxId)?.installationIds ?? [])].sort()))

describe("After a restart", () => {
  it.scoped("a client in many groups catches up without decoding any group's state when nothing happened", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("carol")])
      const groups = yield* Effect.forEach(Array.from({ length: 6 }), (_, i) =>
        alice.createGroup([bob.inboxId, carol.inboxId], { name: `group ${i}` }))
      yield* bob.syncAll
      yield* bob.syncAll

      yield* net.restart(bob)
      const { decodes, value: caughtUp } = yield* countingDecodes(bob.syncAll)
      expect(decodes).toBe(0)
      expect(caughtUp.joined).toBe(0)
      expect((yield* bob.conversations()).length).toBe(groups.length)

      // Listing members and reading names and policies read the kept rosters too.
      const { decodes: listing, value: members } = yield* countingDecodes(Effect.forEach(groups, (g) =>
        Effect.flatMap(bob.conversation(g.id), (c) => c.members)))
      expect(listing).toBe(0)
      expect(members.map((m) => m.map((member) => member.inboxId).sort())).toEqual(
        groups.map(() => [alice.inboxId, bob.inboxId, carol.inboxId].sort())
      )
      const { decodes: settings, value: metadata } = yield* countingDecodes(Effect.forEach(groups, (g) =>
        Effect.flatMap(bob.conversation(g.id), (c) => c.metadata)))
      expect(settings).toBe(0)
      expect(metadata.map((m) => m.name)).toEqual(groups.map((_, i) => `group ${i}`))
    }))

  it.scoped("a group renamed while a member was away reads its new name after the member's restart", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const group = yield* alice.createGroup([bob.inboxId], { name: "before" })
      yield* bob.syncAll
      expect((yield* (yield* bob.conversation(group.id)).metadata).name).toBe("before")

      yield* net.restart(bob)
      yield* group.updateMetadata({ name: "after" })
      yield* bob.syncAll
      expect((yield* (yield* bob.conversation(group.id)).metadata).name).toBe("after")
      // The roster kept was read from the state before the rename: it is not used for the new
      // state. The next read decodes that state once and keeps its roster for the restarts after.
      yield* net.restart(bob)
      const first = yield* countingDecodes(Effect.flatMap(bob.conversation(group.id), (c) => c.metadata))
      expect(first.value.name).toBe("after")
      expect(first.decodes).toBe(1)
      yield* net.restart(bob)
      const next = yield* countingDecodes(Effect.flatMap(bob.conversation(group.id), (c) => c.metadata))
      expect(next.value.name).toBe("after")
      expect(next.decodes).toBe(0)
    }))

  it.scoped("a member's new device is still added to every group, each group's state decoded once to do it", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const groups = yield* Effect.forEach(Array.from({ length: 4 }), () => bob.createGroup([alice.inboxId]))
      yield* Effect.all([alice.syncAll, bob.syncAll])

      const alicePhone = yield* net.client("alicePhone", { sameInboxAs: alice })
      yield* net.restart(bob)
      const { decodes } = yield* countingDecodes(bob.syncAll)
      // One decode per group for its commit adding the phone; the checks that found it decoded nothing.
      expect(decodes).toBe(groups.length)
      for (const group of groups) {
        expect(yield* installationsOf(yield* bob.conversation(group.id), alice)).toEqual([alice.installationId, alicePhone.installationId].sort())
      }
      yield* alicePhone.syncAll
      expect((yield* alicePhone.conversations()).length).toBe(groups.length)
    }))

  it.scoped("a group whose state moved on after its roster was kept is judged by its new state, not the kept roster", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("carol")])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      yield* bob.syncAll
      // Alice adds Carol; then Carol gets a phone. Bob's next sync checks the group by the
      // roster he kept (Alice and him), then reads the commit: his state now lists Carol.
      yield* group.addMembers([carol.inboxId])
      const carolPhone = yield* net.client("carolPhone", { sameInboxAs: carol })
      yield* bob.syncAll
      expect(yield* installationsOf(yield* bob.conversation(group.id), carol)).toEqual([carol.installationId])

      // After a restart the kept roster no longer matches the stored state: Carol's phone is found.
      yield* net.restart(bob)
      yield* bob.syncAll
      expect(yield* installationsOf(yield* bob.conversation(group.id), carol)).toEqual(
        [carol.installationId, carolPhone.installationId].sort()
      )
    }))
})
