/**
 * The scale goals of issue 16, through the public API of real clients (TestNetwork):
 * `syncAll` over many idle groups (in memory and over RPC on loopback), `conversations()` over
 * them, the latest 50 of a conversation of 100,000 stored messages, and adding one member to a
 * 100-member group and that member's welcome join. Sizes shrink with `BENCH_SCALE`.
 */
import { Effect } from "effect"
import { messageIdOf } from "../src/domain/Content.ts"
import type { ConversationId, GroupId, InstallationId } from "../src/domain/Ids.ts"
import { StoredMessage } from "../src/domain/Stored.ts"
import { TestNetwork, type TestDelivery } from "../src/testing.ts"

const median = (samples: ReadonlyArray<number>) => {
  const sorted = [...samples].sort((a, b) => a - b)
  return sorted[Math.floor((sorted.length - 1) / 2)] ?? NaN
}

const time = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const start = performance.now()
    const value = yield* effect
    return [performance.now() - start, value] as const
  })

const samples = <A, E, R>(count: number, effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    yield* effect
    const out: Array<number> = []
    for (let i = 0; i < count; i++) out.push((yield* time(effect))[0])
    return median(out)
  })

const rssMiB = () => process.memoryUsage().rss / (1024 * 1024)

/**
 * Bob is in `groups` groups that Alice created (joined from welcomes in one syncAll). Then:
 * bob's idle syncAll, alice's conversations() sorted by last activity, and the process RSS
 * (both clients and the delivery service).
 */
export const manyGroups = (groups: number, delivery: TestDelivery) =>
  Effect.scoped(Effect.gen(function*() {
    const net = yield* TestNetwork.makeWith({ delivery })
    const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
    const rssBefore = rssMiB()
    const [setupMs] = yield* time(Effect.forEach(Array.from({ length: groups }), () => alice.createGroup([bob.inboxId]), {
      discard: true
    }))
    const joined = yield* bob.syncAll
    // Idle from here; the periodic member-installation check is not due within the samples.
    yield* bob.syncAll
    const idleSyncAll = yield* samples(9, bob.syncAll)
    const conversations = yield* samples(9, alice.conversations())
    const listed = yield* alice.conversations()
    return {
      groups,
      joined: joined.joined,
      setupMs,
      idleSyncAll,
      conversations,
      listed: listed.length,
      rssMiB: rssMiB(),
      rssGrowthMiB: rssMiB() - rssBefore
    }
  }))

/**
 * A conversation with `count` stored messages (written to Bob's database directly, as a long
 * history would be), then the latest 50 read through the API.
 */
export const latestOfMany = (count: number) =>
  Effect.scoped(Effect.gen(function*() {
    const net = yield* TestNetwork.make
    const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
    const conversation = yield* alice.createGroup([bob.inboxId])
    yield* bob.syncAll
    const storage = yield* net.storage(bob)
    const groupId = conversation.id as unknown as GroupId
    const sender = "a".repeat(64) as InstallationId
    const base = 1_700_000_000_000_000_000n
    for (let from = 0; from < count; from += 5000) {
      const rows = Array.from({ length: Math.min(5000, count - from) }, (_, k) => {
        const i = from + k
        return StoredMessage.make({
          id: messageIdOf(groupId, sender, `n${i}`),
          groupId,
          conversationId: conversation.id as ConversationId,
          senderInboxId: alice.inboxId,
          senderInstallationId: sender,
          sentAtNs: base + BigInt(i) * 1_000_000n,
          sequenceId: BigInt(i + 10),
          kind: "text",
          content: `message ${i} ${"x".repeat(60)}`,
          membershipChange: null,
          deliveryStatus: "published",
          insertedAtNs: base
        })
      })
      yield* storage.transaction(storage.messages.insertMany(rows))
    }
    const handle = yield* bob.conversation(conversation.id)
    const latest = yield* handle.messages({ limit: 50, direction: "desc" })
    if (latest.length !== 50 || latest[0]?.text.startsWith(`message ${count - 1} `) !== true) {
      console.log(`   (warning: the latest 50 are not the newest stored: ${latest[0]?.text.slice(0, 20)})`)
    }
    return { count, latest50: yield* samples(20, handle.messages({ limit: 50, direction: "desc" })) }
  }))

/**
 * Alice's 100-member group (99 other inboxes, one installation each); she adds one more inbox
 * (create + confirm through the API), and the newcomer joins from the welcome in its syncAll.
 */
export const largeGroup = (size: number, rounds: number) =>
  Effect.scoped(Effect.gen(function*() {
    const net = yield* TestNetwork.make
    const alice = yield* net.client("alice")
    const others = yield* Effect.forEach(Array.from({ length: size - 1 }), (_, i) => net.client(`member-${i}`), {
      concurrency: 4
    })
    const conversation = yield* alice.createGroup(others.map((o) => o.inboxId))
    const adds: Array<number> = []
    const joins: Array<number> = []
    for (let r = 0; r < rounds + 1; r++) {
      const newcomer = yield* net.client(`newcomer-${r}`)
      const [add] = yield* time(conversation.addMembers([newcomer.inboxId]))
      const [join, joined] = yield* time(newcomer.syncAll)
      if (joined.joined !== 1) console.log(`   (warning: the newcomer joined ${joined.joined})`)
      // The first round warms up; the group grows by one per round (size, size + 1, ...).
      if (r > 0) {
        adds.push(add)
        joins.push(join)
      }
      yield* conversation.removeMembers([newcomer.inboxId])
    }
    return { size, add: median(adds), join: median(joins) }
  }))
