/**
 * Large groups: what joining and adding cost in requests, and that no shortcut lets in a
 * member the identity log does not vouch for.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import type { DeliveryService } from "../src/services/DeliveryService.ts"
import { registerBareInbox, TestNetwork } from "../src/testing.ts"

type Delivery = DeliveryService["Type"]

/** A delivery service that counts identity lookups, and can withhold one inbox's log. */
const watched = (calls: { identity: number }, withhold?: () => string | undefined) => (ds: Delivery): Delivery => ({
  ...ds,
  getIdentityUpdates: (queries) =>
    Effect.suspend(() => {
      calls.identity++
      return ds.getIdentityUpdates(queries).pipe(
        Effect.map((answers) => answers.map((a) => (a.inboxId === withhold?.() ? { ...a, updates: [] } : a)))
      )
    })
})

/** An inbox with one installation and a key package on the service, and no client behind it. */
const bareInbox = (net: TestNetwork) => registerBareInbox(net).pipe(Effect.map((inbox) => inbox.inboxId), Effect.orDie)

describe("A group of more than 100 inboxes", () => {
  it.scoped("grows past the service's lookup bound, and a newcomer joins it with lookups the service accepts", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const sizes: Array<number> = []
      const counting = (ds: Delivery): Delivery => ({
        ...ds,
        getIdentityUpdates: (queries) => Effect.suspend(() => (sizes.push(queries.length), ds.getIdentityUpdates(queries)))
      })
      const alice = yield* net.client("alice", { wrapDelivery: counting })
      const first = yield* Effect.forEach(Array.from({ length: 99 }), () => bareInbox(net))
      const group = yield* alice.createGroup(first)
      const more = yield* Effect.forEach(Array.from({ length: 20 }), () => bareInbox(net))
      yield* group.addMembers(more)
      const newcomer = yield* net.client("newcomer", { wrapDelivery: counting })
      yield* group.addMembers([newcomer.inboxId])
      expect((yield* group.members).length).toBe(121)

      const joined = yield* newcomer.syncAll
      expect(joined.joined).toBe(1)
      expect((yield* (yield* newcomer.conversation(group.id)).members).length).toBe(121)
      // The service refuses more than 100 inboxes per lookup: 120 take two requests.
      expect(Math.max(...sizes)).toBeLessThanOrEqual(100)
    }), 120_000)
})

describe("Creating a large group at once", () => {
  it.scoped("120 inboxes in one createGroup: key packages fetched in calls the service accepts", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const sizes: Array<number> = []
      const counting = (ds: Delivery): Delivery => ({
        ...ds,
        fetchKeyPackages: (ids) => Effect.suspend(() => (sizes.push(ids.length), ds.fetchKeyPackages(ids)))
      })
      const alice = yield* net.client("alice", { wrapDelivery: counting })
      const everyone = yield* Effect.forEach(Array.from({ length: 120 }), () => bareInbox(net))
      const group = yield* alice.createGroup(everyone)
      expect((yield* group.members).length).toBe(121)
      // The service refuses more than 100 ids per call: 120 installations take two.
      expect(Math.max(...sizes)).toBeLessThanOrEqual(100)
      expect(sizes.filter((n) => n > 0).length).toBeGreaterThanOrEqual(2)
    }), 120_000)
})

describe("Joining a large group", () => {
  it.scoped("a newcomer fetches the identity logs of every member in one request, not one per inbox", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const alice = yield* net.client("alice")
      const others = yield* Effect.forEach(["bob", "carol", "dave", "erin", "frank", "grace"], (n) => net.client(n))
      const group = yield* alice.createGroup(others.map((o) => o.inboxId))
      const calls = { identity: 0 }
      const newcomer = yield* net.client("newcomer", { wrapDelivery: watched(calls) })
      yield* group.addMembers([newcomer.inboxId])

      calls.identity = 0
      const joined = yield* newcomer.syncAll
      expect(joined.joined).toBe(1)
      // Seven inboxes to verify: one lookup for all of them, and one for the new member's first
      // check of the group's installations (one per inbox, eight, without the batch).
      expect(calls.identity).toBe(2)
      yield* group.send("hello, eight of us")
      yield* newcomer.syncAll
      const messages = yield* (yield* newcomer.conversation(group.id)).messages()
      expect(messages.map((m) => m.text)).toContain("hello, eight of us")
    }))

  it.scoped("a member whose inbox log does not hold its leaf still keeps the newcomer out", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const alice = yield* net.client("alice")
      const others = yield* Effect.forEach(["bob", "carol", "dave"], (n) => net.client(n))
      const group = yield* alice.createGroup(others.map((o) => o.inboxId))
      // The newcomer's service hides carol's log: her leaf cannot be vouched for.
      const calls = { identity: 0 }
      const newcomer = yield* net.client("newcomer", { wrapDelivery: watched(calls, () => others[1]!.inboxId) })
      yield* group.addMembers([newcomer.inboxId])

      const result = yield* newcomer.syncAll
      expect(result.joined).toBe(0)
      expect(result.skippedBy).toEqual({ badWelcome: 1 })
      expect(yield* newcomer.conversations()).toHaveLength(0)
    }))
})
