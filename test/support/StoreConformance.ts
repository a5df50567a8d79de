/**
 * The `DeliveryStore` contract, as one suite run against every store (memory, SQLite,
 * Postgres): the rules the store-backed delivery service builds on. Identity updates here
 * are not signed: the store appends what the service has already verified.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Chunk, Effect, type Layer, Queue } from "effect"
import { toHex, utf8 } from "../../src/domain/Bytes.ts"
import type { InboxId, InstallationId } from "../../src/domain/Ids.ts"
import { type IdentityAction, IdentityUpdate } from "../../src/domain/Wire.ts"
import { DeliveryStore, groupTopic, type Topic, welcomeTopic } from "../../src/services/DeliveryStore.ts"

const randomHex = (bytes: number) => toHex(crypto.getRandomValues(new Uint8Array(bytes)))
const newTopic = () => groupTopic(randomHex(16))
const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes)
const newInboxId = () => randomHex(32) as InboxId
const newInstallationId = () => randomHex(32) as InstallationId

const update = (inboxId: InboxId, sequence: number, previousHash: string, action: IdentityAction) =>
  new IdentityUpdate({ inboxId, sequence, previousHash, action, signature: "00" })

const created = (inboxId: InboxId) => update(inboxId, 1, "0".repeat(64), { _tag: "CreateInbox", rootPublicKey: "ab" })
const added = (inboxId: InboxId, sequence: number, previous: string, installationId: InstallationId) =>
  update(inboxId, sequence, previous, {
    _tag: "AddInstallation",
    installationId,
    signaturePublicKey: "cd",
    installationSignature: "00"
  })

const appendText = (topic: Topic, ...texts: ReadonlyArray<string>) =>
  Effect.flatMap(DeliveryStore, (store) => store.append(texts.map((t) => ({ topic, payload: utf8(t) }))))

/** `changesMayMiss`: what the store says of its feed (only Postgres's may lose an append). */
export const storeConformance = <E>(
  name: string,
  storeLayer: Layer.Layer<DeliveryStore, E>,
  expected: { readonly changesMayMiss: boolean } = { changesMayMiss: false }
) =>
  layer(storeLayer, { timeout: 60_000 })(`DeliveryStore conformance: ${name}`, (it) => {
    describe("topics", () => {
      it.effect("heads: each topic's last id, in one call of any size; topics without entries are absent", () =>
        Effect.gen(function*() {
          const store = yield* DeliveryStore
          // More topics than one query takes (500), with news at both ends and in another chunk.
          const topics = Array.from({ length: 1200 }, newTopic)
          const [first, middle, last] = [topics[0]!, topics[700]!, topics[1199]!]
          yield* appendText(first, "f1", "f2", "f3")
          yield* appendText(middle, "m1")
          yield* appendText(last, "l1", "l2")
          // A refused conditional append leaves its topic without entries.
          const refused = topics[5]!
          expect((yield* store.appendIf([{ topic: refused, payload: utf8("r") }], 3n))._tag).toBe("Moved")
          const heads = yield* store.heads([...topics, first])
          expect(Array.from(heads).sort()).toEqual([[first, 3n], [middle, 1n], [last, 2n]].sort())
          expect((yield* store.heads([])).size).toBe(0)
          // What a later append adds is in the next look.
          yield* appendText(middle, "m2")
          expect((yield* store.heads([middle])).get(middle)).toBe(2n)
          expect(store.changesMayMiss).toBe(expected.changesMayMiss)
        }))

      it.effect("ids start at 1 and grow by one per topic; topics are independent", () =>
        Effect.gen(function*() {
          const [a, b] = [newTopic(), newTopic()]
          const stored = yield* Effect.flatMap(DeliveryStore, (store) =>
            store.append([
              { topic: a, payload: utf8("a1") },
              { topic: b, payload: utf8("b1") },
              { topic: a, payload: utf8("a2") }
            ]))
          expect(stored.map((e) => [e.topic, e.sequenceId])).toEqual([[a, 1n], [b, 1n], [a, 2n]])
          const [a3] = yield* appendText(a, "a3")
          expect(a3!.sequenceId).toBe(3n)
        }))

      it.effect("an identical payload is stored once per topic, also within one call; other topics store it anew", () =>
        Effect.gen(function*() {
          const store = yield* DeliveryStore
          const [a, b] = [newTopic(), newTopic()]
          const first = yield* appendText(a, "same", "same")
          expect(first.map((e) => e.sequenceId)).toEqual([1n, 1n])
          const again = yield* appendText(a, "same")
          expect(again[0]).toEqual(first[0])
          const elsewhere = yield* appendText(b, "same")
          expect(elsewhere[0]!.sequenceId).toBe(1n)
          expect((yield* store.read(a, 0n, 10)).map((e) => text(e.payload))).toEqual(["same"])
        }))

      it.effect("20 concurrent appenders leave a topic gap-free and each payload once", () =>
        Effect.gen(function*() {
          const store = yield* DeliveryStore
          const topic = newTopic()
          yield* Effect.forEach(
            Array.from({ length: 20 }, (_, i) => i),
            (i) => appendText(topic, `m${i}`),
            { concurrency: "unbounded", discard: true }
          )
          const all = yield* store.read(topic, 0n, 100)
          expect(all.map((e) => e.sequenceId)).toEqual(Array.from({ length: 20 }, (_, i) => BigInt(i + 1)))
          expect(new Set(all.map((e) => text(e.payload))).size).toBe(20)
          for (let i = 1; i < all.length; i++) expect(all[i]!.serverTimeNs >= all[i - 1]!.serverTimeNs).toBe(true)
        }))

      it.effect("60 concurrent appenders over 3 topics, some resending the same payload, each get back what they stored", () =>
        Effect.gen(function*() {
          const store = yield* DeliveryStore
          const topics = [newTopic(), newTopic(), newTopic()]
          // Appender i sends two messages to topic i % 3; every fifth one resends appender 0's first.
          const sent = (i: number) =>
            i % 5 === 0 && i > 0 ? ["a0-0", `a${i}-1`] : [`a${i}-0`, `a${i}-1`]
          const answers = yield* Effect.forEach(
            Array.from({ length: 60 }, (_, i) => i),
            (i) => appendText(topics[i % 3]!, ...sent(i)),
            { concurrency: "unbounded" }
          )
          for (const [i, answer] of answers.entries()) {
            expect(answer.map((e) => text(e.payload))).toEqual(sent(i))
            expect(answer.every((e) => e.topic === topics[i % 3])).toBe(true)
          }
          for (const topic of topics) {
            const all = yield* store.read(topic, 0n, 100)
            expect(all.map((e) => e.sequenceId)).toEqual(all.map((_, k) => BigInt(k + 1)))
            expect(new Set(all.map((e) => text(e.payload))).size).toBe(all.length)
            // What each appender got back is what a reader finds at that id.
            const byId = new Map(all.map((e) => [e.sequenceId, text(e.payload)]))
            for (const [i, answer] of answers.entries()) {
              if (topics[i % 3] !== topic) continue
              for (const e of answer) expect(byId.get(e.sequenceId)).toBe(text(e.payload))
            }
          }
          // Topic 0 holds "a0-0" once, though appenders 15, 30 and 45 sent it again.
          const first = yield* store.read(topics[0]!, 0n, 100)
          expect(first.filter((e) => text(e.payload) === "a0-0")).toHaveLength(1)
          expect(first).toHaveLength(20 * 2 - 3)
        }))

      it.effect("reads are ascending after the cursor, at most `limit`, and empty past the end", () =>
        Effect.gen(function*() {
          const store = yield* DeliveryStore
          const topic = newTopic()
          yield* appendText(topic, "1", "2", "3", "4", "5")
          expect((yield* store.read(topic, 1n, 2)).map((e) => e.sequenceId)).toEqual([2n, 3n])
          expect((yield* store.read(topic, 4n, 10)).map((e) => e.sequenceId)).toEqual([5n])
          expect(yield* store.read(topic, 5n, 10)).toEqual([])
          expect(yield* store.read(topic, 1000n, 10)).toEqual([])
          expect(yield* store.read(topic, 0n, 0)).toEqual([])
          expect(yield* store.read(newTopic(), 0n, 10)).toEqual([])
        }))

      it.effect("a stored payload does not change when the caller reuses its buffer", () =>
        Effect.gen(function*() {
          const store = yield* DeliveryStore
          const topic = welcomeTopic(newInstallationId())
          const buffer = utf8("before")
          yield* store.append([{ topic, payload: buffer }])
          buffer.set(utf8("after!"))
          expect(text((yield* store.read(topic, 0n, 1))[0]!.payload)).toBe("before")
        }))

      it.scoped("an append is announced to subscribers, once its entries can be read", () =>
        Effect.gen(function*() {
          const store = yield* DeliveryStore
          const topic = newTopic()
          const changes = yield* store.changes
          yield* appendText(topic, "x", "y")
          // A store may announce extra or coalesced changes; ours must be among them.
          let announced = false
          while (!announced) {
            const batch = Chunk.toReadonlyArray(yield* Queue.takeBetween(changes, 1, 100))
            announced = batch.some((c) => c.topic === topic && c.sequenceId === 2n)
          }
          expect((yield* store.read(topic, 0n, 10)).map((e) => e.sequenceId)).toEqual([1n, 2n])
        }))
    })

    describe("conditional appends", () => {
      const appendIf = (topic: Topic, payload: string | ReadonlyArray<string>, ifTopicEndsAt: bigint) =>
        Effect.flatMap(DeliveryStore, (store) =>
          store.appendIf((typeof payload === "string" ? [payload] : payload).map((p) => ({ topic, payload: utf8(p) })), ifTopicEndsAt))
      const landedAt = (outcome: Effect.Effect.Success<ReturnType<typeof appendIf>>) =>
        outcome._tag === "Appended" ? outcome.entries[0]!.sequenceId : undefined
      const landedAll = (outcome: Effect.Effect.Success<ReturnType<typeof appendIf>>) =>
        outcome._tag === "Appended" ? outcome.entries.map((e) => e.sequenceId) : undefined

      it.effect("a conditional append lands only right after where its caller read to; a resend comes back wherever it is", () =>
        Effect.gen(function*() {
          const store = yield* DeliveryStore
          const topic = newTopic()
          expect(landedAt(yield* appendIf(topic, "first", 0n))).toBe(1n)
          // Someone else's message came in after this caller read the topic at 1.
          yield* appendText(topic, "theirs")
          expect(yield* appendIf(topic, "mine", 1n)).toEqual({ _tag: "Moved", lastSequenceId: 2n })
          expect((yield* store.read(topic, 0n, 10)).map((e) => text(e.payload))).toEqual(["first", "theirs"])
          // Read again to 2: it goes.
          expect(landedAt(yield* appendIf(topic, "mine", 2n))).toBe(3n)
          // The same bytes again, on a stale condition: the stored copy, nothing new.
          const resent = yield* appendIf(topic, "first", 0n)
          expect(landedAt(resent)).toBe(1n)
          expect(yield* store.read(topic, 3n, 10)).toEqual([])
          // A topic nobody wrote to ends at 0.
          expect(yield* appendIf(newTopic(), "early", 5n)).toEqual({ _tag: "Moved", lastSequenceId: 0n })
        }))

      it.effect("a batch lands whole right after where its caller read to, or nothing of it does; a whole resend comes back", () =>
        Effect.gen(function*() {
          const store = yield* DeliveryStore
          const topic = newTopic()
          expect(landedAll(yield* appendIf(topic, ["m1", "m2", "m3"], 0n))).toEqual([1n, 2n, 3n])
          // A commit came in after the caller read to 3: nothing of the next batch is stored.
          yield* appendText(topic, "commit")
          expect(yield* appendIf(topic, ["m4", "m5"], 3n)).toEqual({ _tag: "Moved", lastSequenceId: 4n })
          expect((yield* store.read(topic, 0n, 10)).map((e) => text(e.payload))).toEqual(["m1", "m2", "m3", "commit"])
          // The answer to the first batch was lost: sent again on its stale condition, it comes back where it is.
          expect(landedAll(yield* appendIf(topic, ["m1", "m2", "m3"], 0n))).toEqual([1n, 2n, 3n])
          // Part resend, part new, on a stale condition: refused whole (the caller reads its own first).
          expect(yield* appendIf(topic, ["m3", "m4"], 2n)).toEqual({ _tag: "Moved", lastSequenceId: 4n })
          expect(landedAll(yield* appendIf(topic, ["m4", "m5"], 4n))).toEqual([5n, 6n])
          expect((yield* store.read(topic, 0n, 10)).map((e) => text(e.payload))).toEqual(["m1", "m2", "m3", "commit", "m4", "m5"])
        }))

      it.effect("batches arriving together are judged in turn: one chained on another's end lands, a rival and a late one are refused, a resend is answered", () =>
        Effect.gen(function*() {
          const store = yield* DeliveryStore
          const topic = newTopic()
          // Started together, queued in this order: the SQL stores settle them in one group commit.
          const [first, chained, rival, resend, plain, late] = yield* Effect.all([
            appendIf(topic, ["a", "b"], 0n),
            appendIf(topic, ["c"], 2n),
            appendIf(topic, ["x", "y"], 0n),
            appendIf(topic, ["a", "b"], 0n),
            appendText(topic, "p"),
            appendIf(topic, ["z"], 3n)
          ], { concurrency: "unbounded" })
          expect(landedAll(first)).toEqual([1n, 2n])
          expect(landedAll(chained)).toEqual([3n])
          expect(rival).toEqual({ _tag: "Moved", lastSequenceId: 3n })
          expect(landedAll(resend)).toEqual([1n, 2n])
          expect(plain.map((e) => e.sequenceId)).toEqual([4n])
          expect(late).toEqual({ _tag: "Moved", lastSequenceId: 4n })
          expect((yield* store.read(topic, 0n, 10)).map((e) => text(e.payload))).toEqual(["a", "b", "c", "p"])
        }))

      it.effect("10 senders on the same end, beside plain appends: one lands there, the others are told where it ends", () =>
        Effect.gen(function*() {
          const store = yield* DeliveryStore
          const topic = newTopic()
          yield* appendText(topic, "a", "b")
          const [conditional, plain] = yield* Effect.all([
            Effect.forEach(Array.from({ length: 10 }, (_, i) => i), (i) => appendIf(topic, `c${i}`, 2n), { concurrency: "unbounded" }),
            Effect.forEach(Array.from({ length: 3 }, (_, i) => i), (i) => appendText(topic, `p${i}`), { concurrency: "unbounded" })
          ], { concurrency: "unbounded" })
          const all = yield* store.read(topic, 0n, 100)
          expect(all.map((e) => e.sequenceId)).toEqual(all.map((_, k) => BigInt(k + 1)))
          const landed = conditional.filter((o) => o._tag === "Appended")
          // At most one took the place after 2, and only if nothing came first: then it is entry 3.
          expect(landed.length).toBeLessThanOrEqual(1)
          if (landed.length === 1) expect(landedAt(landed[0]!)).toBe(3n)
          else expect(text(all[2]!.payload)).toMatch(/^p/)
          for (const refused of conditional.filter((o) => o._tag === "Moved")) {
            expect(refused._tag === "Moved" && refused.lastSequenceId >= 3n).toBe(true)
          }
          expect(all).toHaveLength(2 + landed.length + plain.length)
          expect(all.filter((e) => text(e.payload).startsWith("c"))).toHaveLength(landed.length)
        }))

      it.scoped("a conditional append is announced like any other", () =>
        Effect.gen(function*() {
          const store = yield* DeliveryStore
          const topic = newTopic()
          const changes = yield* store.changes
          yield* appendIf(topic, "x", 0n)
          let announced = false
          while (!announced) {
            const batch = Chunk.toReadonlyArray(yield* Queue.takeBetween(changes, 1, 100))
            announced = batch.some((c) => c.topic === topic && c.sequenceId === 1n)
          }
        }))
    })

    describe("identity", () => {
      it.effect("appends are compare-and-set on the log head", () =>
        Effect.gen(function*() {
          const store = yield* DeliveryStore
          const inboxId = newInboxId()
          expect(yield* store.loadInbox(inboxId)).toBeUndefined()
          const first = yield* store.appendIdentityUpdate(created(inboxId), "h1")
          expect(first._tag).toBe("Appended")
          expect((yield* store.appendIdentityUpdate(created(inboxId), "h1"))._tag).toBe("Stale")
          const installation = newInstallationId()
          // Names the wrong previous entry: somebody else moved the head.
          expect((yield* store.appendIdentityUpdate(added(inboxId, 2, "wrong", installation), "h2"))._tag).toBe("Stale")
          expect((yield* store.appendIdentityUpdate(added(inboxId, 3, "h1", installation), "h2"))._tag).toBe("Stale")
          expect((yield* store.appendIdentityUpdate(added(inboxId, 2, "h1", installation), "h2"))._tag).toBe("Appended")
          expect(yield* store.installation(installation)).toEqual({ inboxId, signaturePublicKey: "cd" })
          expect(yield* store.installation(newInstallationId())).toBeUndefined()
          const state = (yield* store.loadInbox(inboxId))!
          expect(state.sequence).toBe(2)
          expect(state.headHash).toBe("h2")
          expect([...state.installations].map(([id]) => id)).toEqual([installation])
          const log = yield* store.identityUpdates(inboxId, 0)
          expect(log.map((e) => e.update.sequence)).toEqual([1, 2])
          expect(log[0]!.sequenceId < log[1]!.sequenceId).toBe(true)
          expect((yield* store.identityUpdates(inboxId, 1)).map((e) => e.update.sequence)).toEqual([2])
        }))

      it.effect("an installation belongs to one inbox", () =>
        Effect.gen(function*() {
          const store = yield* DeliveryStore
          const [owner, squatter] = [newInboxId(), newInboxId()]
          const installation = newInstallationId()
          yield* store.appendIdentityUpdate(created(owner), "o1")
          yield* store.appendIdentityUpdate(added(owner, 2, "o1", installation), "o2")
          yield* store.appendIdentityUpdate(created(squatter), "s1")
          const taken = yield* store.appendIdentityUpdate(added(squatter, 2, "s1", installation), "s2")
          expect(taken).toEqual({ _tag: "InstallationTaken", owner })
          // Nothing of the refused update stays behind.
          expect((yield* store.loadInbox(squatter))!.sequence).toBe(1)
        }))

      it.effect("key packages: only for a current installation of the inbox; a revocation forgets them", () =>
        Effect.gen(function*() {
          const store = yield* DeliveryStore
          const inboxId = newInboxId()
          const [installation, stranger] = [newInstallationId(), newInstallationId()]
          yield* store.appendIdentityUpdate(created(inboxId), "k1")
          yield* store.appendIdentityUpdate(added(inboxId, 2, "k1", installation), "k2")
          expect(yield* store.putKeyPackage(installation, inboxId, utf8("kp-1"))).toBe(true)
          expect(yield* store.putKeyPackage(installation, inboxId, utf8("kp-2"))).toBe(true)
          expect(yield* store.putKeyPackage(stranger, inboxId, utf8("kp"))).toBe(false)
          expect(yield* store.putKeyPackage(installation, newInboxId(), utf8("kp"))).toBe(false)
          const found = yield* store.getKeyPackages([installation, stranger])
          expect(text(found.get(installation)!)).toBe("kp-2")
          expect(found.has(stranger)).toBe(false)
          yield* store.appendIdentityUpdate(
            update(inboxId, 3, "k2", { _tag: "RevokeInstallation", installationId: installation }),
            "k3"
          )
          expect((yield* store.getKeyPackages([installation])).size).toBe(0)
          expect(yield* store.installation(installation)).toBeUndefined()
          const state = (yield* store.loadInbox(inboxId))!
          expect([...state.installations]).toEqual([])
          expect([...state.revoked]).toEqual([installation])
          expect(yield* store.putKeyPackage(installation, inboxId, utf8("kp-3"))).toBe(false)
        }))

      it.effect("identity changes: several inboxes since each one's cursor in one read, bounded, nothing for the unchanged", () =>
        Effect.gen(function*() {
          const store = yield* DeliveryStore
          // Sorted ids, so the expected order (by inbox id) reads off the test.
          const [quiet, busy, fresh] = [newInboxId(), newInboxId(), newInboxId()].sort()
          const [phone, laptop] = [newInstallationId(), newInstallationId()]
          yield* store.appendIdentityUpdate(created(quiet!), "q1")
          yield* store.appendIdentityUpdate(created(busy!), "b1")
          yield* store.appendIdentityUpdate(added(busy!, 2, "b1", phone), "b2")
          yield* store.appendIdentityUpdate(added(busy!, 3, "b2", laptop), "b3")
          yield* store.appendIdentityUpdate(created(fresh!), "f1")
          const entries = (cursors: ReadonlyArray<readonly [InboxId, number]>, limit: number) =>
            store.identityChanges(cursors.map(([inboxId, afterSequence]) => ({ inboxId, afterSequence })), limit).pipe(
              Effect.map((es) => es.map((e) => `${e.update.inboxId === quiet ? "q" : e.update.inboxId === busy ? "b" : "f"}${e.update.sequence}`))
            )
          // The quiet inbox is caught up, the busy one is two behind, the fresh one never read; one unknown.
          const cursors = [[fresh!, 0], [quiet!, 1], [busy!, 1], [newInboxId(), 0]] as const
          expect(yield* entries(cursors, 100)).toEqual(["b2", "b3", "f1"])
          // Nothing new anywhere: nothing at all.
          expect(yield* entries([[quiet!, 1], [busy!, 3], [fresh!, 1]], 100)).toEqual([])
          // Bounded: each inbox gets a prefix of its news, continued from its last entry.
          const firstTwo = yield* entries(cursors, 2)
          expect(firstTwo).toHaveLength(2)
          expect(firstTwo).toEqual((yield* entries(cursors, 100)).slice(0, 2))
          // Asked twice, an inbox is read from its lowest cursor.
          expect(yield* entries([[busy!, 2], [busy!, 1]], 100)).toEqual(["b2", "b3"])
          expect(yield* entries([], 100)).toEqual([])
          // The envelopes are the log's own, as identityUpdates gives them.
          const viaChanges = yield* store.identityChanges([{ inboxId: busy!, afterSequence: 0 }], 100)
          expect(viaChanges).toEqual(yield* store.identityUpdates(busy!, 0))
        }))
    })
  })
