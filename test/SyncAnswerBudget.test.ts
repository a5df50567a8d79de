/**
 * Batch and sync answers fit one page's bytes, whatever the topics hold. Anyone who knows a
 * group's id can put a 1 MiB message at the head of its topic; a `syncQuery` one entry deep over
 * 20 such groups (what DeviceSync asks) once came back as 28 MB of JSON, which the client
 * refuses (16 MiB): the call failed, was retried, failed again, and the victim never synced.
 * Now the answer holds at most `MAX_PAGE_BYTES` of payload (its first entry always), and the
 * topics past it come back empty, pointing at their own cursor: asked again, never skipped.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import type { GroupId } from "../src/domain/Ids.ts"
import { groupTopic } from "../src/domain/Topics.ts"
import { type GroupMessageEnvelope, GroupMessageInput, type QueryPage } from "../src/domain/Wire.ts"
import { MAX_PAGE_BYTES } from "../src/layers/DeliveryRequests.ts"
import { serve } from "../src/layers/DeliveryServer.ts"
import type { GroupQuery } from "../src/services/DeliveryService.ts"
import type { Conversation } from "../src/services/Client.ts"
import { DeliveryService } from "../src/index.ts"
import { TestNetwork } from "../src/testing.ts"
import { mlsPayloadOfSize, newGroupId, registerInstallation } from "./support/DeliveryFixtures.ts"
import { clientLayer } from "./support/RpcHarness.ts"

const MiB = 1024 * 1024
/** What the README promises of a server's largest answer: 4 MiB of payload is about 5.4 MiB as JSON. */
const LARGEST_ANSWER_JSON = 5.5 * MiB

const payloadBytes = (pages: ReadonlyArray<QueryPage<GroupMessageEnvelope>>) =>
  pages.reduce((n, page) => n + page.items.reduce((m, e) => m + e.payload.length, 0), 0)

/** `count` fresh topics, each holding `perTopic` messages of about 1 MiB, written by a registered installation. */
const heavyTopics = (service: DeliveryService["Type"], count: number, perTopic: number) =>
  Effect.gen(function*() {
    const writer = yield* registerInstallation(service)
    const groups = Array.from({ length: count }, () => newGroupId())
    for (const groupId of groups) {
      for (let i = 0; i < perTopic; i++) {
        yield* writer.ds.sendGroupMessages([GroupMessageInput.make({ groupId, payload: mlsPayloadOfSize(groupId, MiB - 64, i) })])
      }
    }
    return groups
  })

/** A memory-backed server on a loopback port and an RPC client of it. */
const served = (service: DeliveryService["Type"]) =>
  Effect.gen(function*() {
    const { url } = yield* serve({ port: 0 }).pipe(Effect.provideService(DeliveryService, service))
    const client = yield* Layer.build(clientLayer(url)).pipe(Effect.map(Context.get(DeliveryService)))
    return { url, client }
  })

/** The raw JSON of one answer over HTTP (ndjson): what a client has to take in one message. */
const rawAnswer = (url: string, tag: string, payload: unknown) =>
  Effect.promise(() =>
    fetch(url, {
      method: "POST",
      headers: { "content-type": "application/ndjson" },
      body: JSON.stringify({ _tag: "Request", id: "1", tag, payload, headers: [] }) + "\n"
    }).then((r) => r.text())
  )

/**
 * Asks the batch again and again, each topic from where its last page pointed, until every
 * topic is read to its end; each answer's payload bytes and every entry read, per topic.
 */
const readAllInBatches = (
  ask: (queries: ReadonlyArray<GroupQuery>) => Effect.Effect<ReadonlyArray<QueryPage<GroupMessageEnvelope>>, unknown>,
  queries: ReadonlyArray<GroupQuery>
) =>
  Effect.gen(function*() {
    const read = new Map<GroupId, Array<bigint>>(queries.map((q) => [q.groupId, []]))
    const answers: Array<number> = []
    let open = queries
    while (open.length > 0) {
      const pages = yield* ask(open)
      answers.push(payloadBytes(pages))
      open = open.flatMap((q, i) => {
        const page = pages[i]!
        read.get(q.groupId)!.push(...page.items.map((e) => e.sequenceId))
        return page.next === undefined ? [] : [{ ...q, afterSequenceId: page.next }]
      })
    }
    return { read, answers }
  })

describe("a sync answer larger than the client takes", () => {
  it.scopedLive("a syncQuery of 20 topics whose next entries are 1 MiB each is answered, within one page's bytes", () =>
    Effect.gen(function*() {
      const service = yield* Layer.build(DeliveryService.layerMemory).pipe(Effect.map(Context.get(DeliveryService)))
      const groups = yield* heavyTopics(service, 20, 1)
      const { client, url } = yield* served(service)
      // The victim's DeviceSync asks exactly this: each group one entry deep.
      const queries = groups.map((groupId) => ({ groupId, afterSequenceId: 0n, limit: 1 }))
      const answer = yield* client.syncQuery({ groups: queries, identities: [] })
      expect(payloadBytes(answer.groups)).toBeLessThanOrEqual(MAX_PAGE_BYTES)
      // The topics past the budget were not read: empty, pointing at the cursor they were asked from.
      const notRead = answer.groups.filter((page) => page.items.length === 0)
      expect(notRead.length).toBeGreaterThan(0)
      expect(notRead.every((page) => page.next === 0n)).toBe(true)
      expect(answer.groups[0]!.items).toHaveLength(1)

      // What the client has to take in one message, with all 50 topics a call may ask for.
      const fifty = [...groups, ...(yield* heavyTopics(service, 30, 1))]
      const raw = yield* rawAnswer(url, "syncQuery", {
        groups: fifty.map((groupId) => ({ groupId, afterSequenceId: "0", limit: 1 })),
        identities: []
      })
      expect(raw.length).toBeLessThan(LARGEST_ANSWER_JSON)
      expect(raw).toContain(`"_tag":"Success"`)

      // Asked again from where each page pointed, every entry is read, once, in a few calls.
      const { answers, read } = yield* readAllInBatches(
        (open) => Effect.map(client.syncQuery({ groups: open, identities: [] }), (a) => a.groups),
        fifty.map((groupId) => ({ groupId, afterSequenceId: 0n, limit: 1 }))
      )
      expect([...read.values()].every((ids) => ids.length === 1 && ids[0] === 1n)).toBe(true)
      expect(Math.max(...answers)).toBeLessThanOrEqual(MAX_PAGE_BYTES)
      expect(answers.length).toBeLessThanOrEqual(Math.ceil(50 / 4) + 1)
    }), 120_000)

  it.scopedLive("a batch query over topics with several 1 MiB entries each reads on within the budget, in order, skipping nothing", () =>
    Effect.gen(function*() {
      const service = yield* Layer.build(DeliveryService.layerMemory).pipe(Effect.map(Context.get(DeliveryService)))
      const groups = yield* heavyTopics(service, 3, 3)
      const { client } = yield* served(service)
      const { answers, read } = yield* readAllInBatches(
        (open) => client.batchQueryGroupMessages(open),
        groups.map((groupId) => ({ groupId, afterSequenceId: 0n }))
      )
      expect([...read.values()]).toEqual(groups.map(() => [1n, 2n, 3n]))
      // Nine 1 MiB entries, at most four to an answer: three answers, each one page's worth.
      expect(Math.max(...answers)).toBeLessThanOrEqual(MAX_PAGE_BYTES)
      expect(answers).toHaveLength(3)
    }), 120_000)
})

const texts = (conversation: Conversation) =>
  conversation.messages().pipe(Effect.map((messages) => messages.filter((m) => m.kind === "text").map((m) => m.text)))

/**
 * Alice makes `count` groups with Bob; someone with an account puts a 1 MiB message at the
 * head of each topic, then Alice writes in each. One `syncAll` of Bob's, over RPC, reads it all.
 */
const victimSyncs = (count: number) =>
  Effect.gen(function*() {
    const net = yield* TestNetwork.makeWith({ delivery: "rpc" })
    const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
    const groups = yield* Effect.forEach(Array.from({ length: count }), () => alice.createGroup([bob.inboxId]))
    yield* bob.syncAll
    const intruder = yield* net.intruder
    for (const [i, group] of groups.entries()) {
      const groupId = group.id as unknown as GroupId
      yield* intruder.sendGroupMessages([GroupMessageInput.make({ groupId, payload: mlsPayloadOfSize(groupId, MiB - 64, i) })])
      yield* group.send(`after the flood ${i}`)
    }

    yield* bob.syncAll
    const storage = yield* net.storage(bob)
    for (const [i, group] of groups.entries()) {
      const groupId = group.id as unknown as GroupId
      expect(yield* texts(yield* bob.conversation(group.id))).toEqual([`after the flood ${i}`])
      // Read to the topic's end: the flood skipped as unreadable, nothing left behind.
      const topic = yield* net.inspect.groupMessages(groupId)
      expect(yield* storage.cursors.get(groupTopic(groupId))).toBe(topic[topic.length - 1]!.sequenceId)
    }
  })

describe("a victim whose groups are flooded with 1 MiB messages", () => {
  it.scopedLive("reads every message of its 20 groups in one syncAll over RPC", () => victimSyncs(20), 300_000)
  it.scopedLive("reads every message of its 50 groups (one syncQuery's worth) in one syncAll over RPC", () => victimSyncs(50), 300_000)
})
