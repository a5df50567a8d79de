/**
 * The `DeliveryStore` port in process memory: the store behind `DeliveryService.layerMemory`
 * and the test kit. It keeps the same tables as the SQL store (topic heads and entries,
 * inbox heads, installation owners, revocations, key packages) and the same rules, so the
 * store-backed delivery service over it behaves exactly as `converge serve` does:
 *
 * - One lock covers every write; a topic's ids start at 1, grow by one, and an append is
 *   announced only after all of its entries are in place (the "commit").
 * - Identical payloads on a topic are stored once; timestamps never go backwards per topic.
 * - Identity appends are compare-and-set on the inbox's log head; an installation belongs to
 *   one inbox; a revocation forgets the installation's key package.
 *
 * Server time comes from Effect's `Clock`, so `TestClock` drives it.
 */
import { Clock, Effect, HashMap, HashSet, Layer, PubSub, type Scope } from "effect"
import { bytesEqual, sha256Hex } from "../domain/Bytes.ts"
import type { InboxState } from "../domain/IdentityLog.ts"
import type { InboxId, InstallationId } from "../domain/Ids.ts"
import { type IdentityUpdateEnvelope, makeIdentityUpdateEnvelope } from "../domain/Wire.ts"
import { MAX_PAGE_BYTES } from "./DeliveryRequests.ts"
import {
  type AppendIdentityResult,
  ConditionalAppend,
  conditionalTopic,
  DeliveryStore,
  type StoredEntry,
  type Topic,
  type TopicChange
} from "../services/DeliveryStore.ts"

type Service = DeliveryStore["Type"]

interface TopicLog {
  readonly entries: Array<StoredEntry>
  /** Payload digest -> entries with it (collisions are compared byte for byte). */
  readonly byDigest: Map<string, Array<StoredEntry>>
  lastTimeNs: bigint
}

interface InboxHead {
  readonly rootPublicKey: string
  sequence: number
  headHash: string
  lastTimeNs: bigint
  readonly log: Array<IdentityUpdateEnvelope>
  readonly revoked: Set<InstallationId>
}

export const make: Effect.Effect<Service, never, Scope.Scope> = Effect.gen(function*() {
  const lock = yield* Effect.makeSemaphore(1)
  const pubsub = yield* Effect.acquireRelease(PubSub.unbounded<TopicChange>(), PubSub.shutdown)
  const topics = new Map<Topic, TopicLog>()
  const inboxes = new Map<InboxId, InboxHead>()
  const installations = new Map<InstallationId, { readonly inboxId: InboxId; readonly publicKey: string }>()
  const keyPackages = new Map<InstallationId, Uint8Array>()
  /** The identity log's global sequence (the SQL store's serial id). */
  let identitySequence = 0n

  const topicLog = (topic: Topic): TopicLog => {
    let log = topics.get(topic)
    if (log === undefined) {
      log = { entries: [], byDigest: new Map(), lastTimeNs: 0n }
      topics.set(topic, log)
    }
    return log
  }

  /** The stored copy of an identical payload on the topic, if any. Under the lock. */
  const storedCopy = (topic: Topic, payload: Uint8Array, digest: string) =>
    topics.get(topic)?.byDigest.get(digest)?.find((e) => bytesEqual(e.payload, payload))

  /** The entry for this payload on its topic: the stored copy of an identical one, else a new last entry. Under the lock. */
  const place = (topic: Topic, payload: Uint8Array, digest: string, now: bigint) => {
    const duplicate = storedCopy(topic, payload, digest)
    if (duplicate !== undefined) return { entry: duplicate, fresh: false }
    const log = topicLog(topic)
    const timeNs = now > log.lastTimeNs ? now : log.lastTimeNs
    const entry: StoredEntry = {
      topic,
      sequenceId: BigInt(log.entries.length + 1),
      serverTimeNs: timeNs,
      payload: payload.slice()
    }
    log.entries.push(entry)
    log.byDigest.set(digest, [...(log.byDigest.get(digest) ?? []), entry])
    log.lastTimeNs = timeNs
    return { entry, fresh: true }
  }

  // Announced once everything is in place, as the SQL stores do after their commit.
  const announce = (grown: ReadonlyMap<Topic, bigint>) =>
    PubSub.publishAll(pubsub, Array.from(grown, ([topic, sequenceId]): TopicChange => ({ topic, sequenceId })))

  /**
   * `append` and `appendIf`: the entries placed in order under the lock, unless `refusal`, judged
   * under it before anything is placed, says where the topic ends instead; then what grew is announced.
   */
  const placeUnless = (
    entries: ReadonlyArray<{ readonly topic: Topic; readonly payload: Uint8Array }>,
    refusal: (digests: ReadonlyArray<string>) => ConditionalAppend | undefined
  ) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeNanos
      const digests = entries.map((e) => sha256Hex(e.payload))
      const grown = new Map<Topic, bigint>()
      const outcome = yield* lock.withPermits(1)(Effect.sync(() =>
        refusal(digests) ?? ConditionalAppend.Appended({
          entries: entries.map(({ payload, topic }, index) => {
            const { entry, fresh } = place(topic, payload, digests[index]!, now)
            if (fresh) grown.set(topic, entry.sequenceId)
            return entry
          })
        })
      ))
      if (grown.size > 0) yield* announce(grown)
      return outcome
    })

  const append: Service["append"] = (entries) =>
    entries.length === 0 ? Effect.succeed([]) : placeUnless(entries, () => undefined).pipe(
      // Only a conditional append is ever refused.
      Effect.flatMap((outcome) =>
        outcome._tag === "Appended" ? Effect.succeed(outcome.entries) : Effect.dieMessage("an unconditional append was refused")
      )
    )

  const appendIf: Service["appendIf"] = (entries, ifTopicEndsAt) =>
    Effect.flatMap(conditionalTopic(entries), (topic) =>
      placeUnless(entries, (digests) => {
        const last = BigInt(topics.get(topic)?.entries.length ?? 0)
        if (last === ifTopicEndsAt) return undefined
        const resend = entries.every(({ payload }, i) => storedCopy(topic, payload, digests[i]!) !== undefined)
        return resend ? undefined : ConditionalAppend.Moved({ lastSequenceId: last })
      }))

  const read: Service["read"] = (topic, afterSequenceId, limit) =>
    Effect.sync(() => {
      const entries = topics.get(topic)?.entries ?? []
      if (limit <= 0 || afterSequenceId >= BigInt(entries.length)) return []
      // Ids are dense from 1, so the entries after n start at index n.
      const start = afterSequenceId < 0n ? 0 : Number(afterSequenceId)
      // As the SQL stores do: at most `MAX_PAGE_BYTES` of payload, but always one entry.
      const page: Array<StoredEntry> = []
      let bytes = 0
      for (const entry of entries.slice(start, start + limit)) {
        bytes += entry.payload.length
        if (page.length > 0 && bytes > MAX_PAGE_BYTES) break
        page.push(entry)
      }
      return page
    })

  const heads: Service["heads"] = (asked) =>
    Effect.sync(() => {
      const found = new Map<Topic, bigint>()
      for (const topic of asked) {
        const length = topics.get(topic)?.entries.length ?? 0
        if (length > 0) found.set(topic, BigInt(length))
      }
      return found
    })

  const loadInbox: Service["loadInbox"] = (inboxId) =>
    Effect.sync(() => {
      const head = inboxes.get(inboxId)
      if (head === undefined) return undefined
      const current = Array.from(installations).filter(([, owner]) => owner.inboxId === inboxId)
      const state: InboxState = {
        inboxId,
        rootPublicKey: head.rootPublicKey,
        installations: HashMap.fromIterable(current.map(([id, owner]) => [id, owner.publicKey] as const)),
        revoked: HashSet.fromIterable(head.revoked),
        sequence: head.sequence,
        headHash: head.headHash
      }
      return state
    })

  const appendIdentityUpdate: Service["appendIdentityUpdate"] = (update, headHash) =>
    Effect.gen(function*() {
      const now = yield* Clock.currentTimeNanos
      return yield* lock.withPermits(1)(Effect.sync((): AppendIdentityResult => {
        const action = update.action
        const existing = inboxes.get(update.inboxId)
        if (action._tag === "CreateInbox" ? existing !== undefined : (
          existing === undefined || existing.sequence !== update.sequence - 1 ||
          existing.headHash !== update.previousHash
        )) return { _tag: "Stale" }
        if (action._tag === "AddInstallation") {
          const owner = installations.get(action.installationId)
          if (owner !== undefined) return { _tag: "InstallationTaken", owner: owner.inboxId }
        }
        const head: InboxHead = existing ?? {
          rootPublicKey: action._tag === "CreateInbox" ? action.rootPublicKey : "",
          sequence: 0,
          headHash: "",
          lastTimeNs: 0n,
          log: [],
          revoked: new Set()
        }
        const timeNs = now > head.lastTimeNs ? now : head.lastTimeNs
        head.sequence = update.sequence
        head.headHash = headHash
        head.lastTimeNs = timeNs
        inboxes.set(update.inboxId, head)
        if (action._tag === "AddInstallation") {
          installations.set(action.installationId, { inboxId: update.inboxId, publicKey: action.signaturePublicKey })
        }
        if (action._tag === "RevokeInstallation") {
          if (installations.get(action.installationId)?.inboxId === update.inboxId) {
            installations.delete(action.installationId)
          }
          head.revoked.add(action.installationId)
          // A revoked installation may no longer be added to groups: its key package goes.
          keyPackages.delete(action.installationId)
        }
        identitySequence += 1n
        const envelope = makeIdentityUpdateEnvelope({ sequenceId: identitySequence, serverTimeNs: timeNs, update })
        head.log.push(envelope)
        return { _tag: "Appended", envelope }
      }))
    })

  const installation: Service["installation"] = (installationId) =>
    Effect.sync(() => {
      const owner = installations.get(installationId)
      return owner === undefined ? undefined : { inboxId: owner.inboxId, signaturePublicKey: owner.publicKey }
    })

  const identityUpdates: Service["identityUpdates"] = (inboxId, afterSequence) =>
    // Log entries are numbered densely from 1, so those after n start at index n.
    Effect.sync(() => (inboxes.get(inboxId)?.log ?? []).slice(Math.max(0, afterSequence)))

  const identityChanges: Service["identityChanges"] = (cursors, limit) =>
    Effect.sync(() => {
      const lowest = new Map<InboxId, number>()
      for (const { afterSequence, inboxId } of cursors) {
        lowest.set(inboxId, Math.min(afterSequence, lowest.get(inboxId) ?? afterSequence))
      }
      const out: Array<IdentityUpdateEnvelope> = []
      for (const inboxId of [...lowest.keys()].sort()) {
        for (const envelope of (inboxes.get(inboxId)?.log ?? []).slice(Math.max(0, lowest.get(inboxId)!))) {
          if (out.length >= limit) return out
          out.push(envelope)
        }
      }
      return out
    })

  const putKeyPackage: Service["putKeyPackage"] = (installationId, inboxId, keyPackage) =>
    lock.withPermits(1)(Effect.sync(() => {
      if (installations.get(installationId)?.inboxId !== inboxId) return false
      keyPackages.set(installationId, keyPackage.slice())
      return true
    }))

  const getKeyPackages: Service["getKeyPackages"] = (installationIds) =>
    Effect.sync(() => {
      const found = new Map<InstallationId, Uint8Array>()
      for (const id of installationIds) {
        const keyPackage = keyPackages.get(id)
        if (keyPackage !== undefined) found.set(id, keyPackage)
      }
      return found as ReadonlyMap<InstallationId, Uint8Array>
    })

  return {
    append,
    appendIf,
    read,
    heads,
    changes: PubSub.subscribe(pubsub),
    // Announced in process, after every append.
    changesMayMiss: false,
    loadInbox,
    appendIdentityUpdate,
    installation,
    identityUpdates,
    identityChanges,
    putKeyPackage,
    getKeyPackages
  } satisfies Service
})

/** A fresh, empty store for the layer's lifetime. */
export const layer: Layer.Layer<DeliveryStore> = Layer.scoped(DeliveryStore, make)
