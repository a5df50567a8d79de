/**
 * History sync at scale: an installation holding N messages answers a new installation of its
 * inbox. The old installation's store is filled directly (published rows of one group, as if
 * received), so the figure is the history path alone: paging the feed, encrypting the pages in
 * the own-devices group, reading and importing them. Reports rounds, pages, time, and the heap
 * after each round (what the import holds at once is one page). Run alone with
 * `npx tsx bench/History.ts [N]`, or as the `history` section of `npm run bench`.
 */
import { Clock, Effect } from "effect"
import { randomBytes } from "node:crypto"
import { toHex } from "../src/domain/Bytes.ts"
import type { ConversationId, MessageId } from "../src/domain/Ids.ts"
import { StoredMessage } from "../src/domain/Stored.ts"
import { TestNetwork } from "../src/testing.ts"

/** Live heap: collected first when node runs with --expose-gc (otherwise garbage counts too). */
const heapMiB = () => {
  ;(globalThis as { gc?: () => void }).gc?.()
  return process.memoryUsage().heapUsed / 2 ** 20
}

export const benchHistory = (messages: number) =>
  Effect.scoped(Effect.gen(function*() {
    const net = yield* TestNetwork.make
    const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
    const group = yield* alice.createGroup([bob.inboxId], { name: "Archive" })
    const storage = yield* net.storage(alice)
    const now = yield* Clock.currentTimeNanos
    for (let i = 0; i < messages; i++) {
      yield* storage.messages.insert(StoredMessage.make({
        id: toHex(randomBytes(32)) as MessageId,
        groupId: group.id as never,
        conversationId: group.id as ConversationId,
        senderInboxId: bob.inboxId,
        senderInstallationId: bob.installationId,
        sentAtNs: now + BigInt(i),
        sequenceId: BigInt(1000 + i),
        kind: "text",
        content: `message ${i} ${"x".repeat(60)}`,
        membershipChange: null,
        deliveryStatus: "published",
        insertedAtNs: now
      }))
    }
    const alice2 = yield* net.client("alice2", { sameInboxAs: alice })
    const baseline = heapMiB()
    const started = performance.now()
    let rounds = 0
    let peakHeap = heapMiB()
    while ((yield* alice2.historySync).state !== "done" && rounds < 50) {
      rounds++
      yield* alice.syncAll
      yield* alice2.syncAll
      peakHeap = Math.max(peakHeap, heapMiB())
    }
    const ms = performance.now() - started
    const status = yield* alice2.historySync
    const held = (yield* (yield* alice2.conversation(group.id)).messages()).length
    console.log(
      `  history: ${messages} messages -> ${status.messagesImported} imported (${held} listed) in ${status.pagesImported} pages, ` +
        `${rounds} rounds, ${(ms / 1000).toFixed(1)} s (${Math.round(status.messagesImported / (ms / 1000))} msgs/s), ` +
        `heap after a round at most ${peakHeap.toFixed(0)} MiB (${baseline.toFixed(0)} MiB before the sync)`
    )
    return { ms, rounds, pages: status.pagesImported, imported: status.messagesImported, peakHeap, baseline }
  }))

if (import.meta.url === `file://${process.argv[1]}`) {
  const n = Number(process.argv[2] ?? "20000")
  Effect.runPromise(benchHistory(n)).catch((error: unknown) => {
    console.error("benchmark failed:", error)
    process.exitCode = 1
  })
}
