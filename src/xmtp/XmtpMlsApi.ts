/**
 * `xmtp.mls.api.v1.MlsApi` with node-go's semantics:
 * - sends read each MLS message's header for its group id and commit-ness and store it on the group's
 *   topic (identical payloads once); welcomes go to the installation's topic as they are;
 * - queries are newest first unless ASCENDING, the limit is capped at 100, ASC returns ids
 *   above the cursor and DESC ids below it (0: from the newest), and the answer's `id_cursor`
 *   is the last id only when the page may continue;
 * - key packages are verified before they are stored (`MlsInspect.ts`);
 * - the commit log is stored and served ascending, with node-go's batch limits.
 * Subscriptions are in `XmtpSubscriptions.ts`.
 */
import type { mlsApi } from "@xmtp/proto"
import { Clock, Effect } from "effect"
import type { DeliveryStoreError, StoredEntry, Topic } from "../services/DeliveryStore.ts"
import { MAX_PAGE_BYTES, pageMayContinue } from "../layers/DeliveryRequests.ts"
import { inspectGroupMessage, verifyXmtpKeyPackage } from "./MlsInspect.ts"
import { codecs, int64, SORT_ASCENDING } from "./Proto.ts"
import { commitLogTopic, groupTopic, welcomeTopic, XmtpStore } from "./XmtpStore.ts"
import {
  checkBytes,
  checkCount,
  checkId,
  checkMaxBytes,
  Code,
  invalid,
  MAX_COMMIT_LOG_INSERTS,
  MAX_ANSWER_BYTES,
  MAX_COMMIT_LOG_QUERIES,
  MAX_PAGE_SIZE,
  MAX_RECORD_OVERHEAD,
  refuse,
  unavailable,
  type XmtpLimits,
  XmtpStatus
} from "./XmtpStatus.ts"

type PagingInfo = mlsApi.PagingInfo | undefined

const stored = <A>(effect: Effect.Effect<A, DeliveryStoreError>) => Effect.catchAll(effect, unavailable)

/** A stored group message as served: the payload's record with the entry's id and time. */
export const groupMessageOf = (entry: StoredEntry, includeContent = true): object => {
  const v1 = codecs.groupMessage.decode(entry.payload).v1!
  return {
    v1: {
      ...(includeContent ? v1 : { groupId: v1.groupId, isCommit: v1.isCommit }),
      id: String(entry.sequenceId),
      createdNs: String(entry.serverTimeNs)
    }
  }
}

/** A stored welcome as served (a V1 welcome or a welcome pointer), with the entry's id and time. */
export const welcomeMessageOf = (entry: StoredEntry): object => {
  const message = codecs.welcomeMessage.decode(entry.payload)
  const stamp = { id: String(entry.sequenceId), createdNs: String(entry.serverTimeNs) }
  return message.v1 !== undefined
    ? { v1: { ...message.v1, ...stamp } }
    : { welcomePointer: { ...message.welcomePointer!, ...stamp } }
}

/**
 * A node-go page: direction, capped limit, and the cursor to continue from (0 when done). With a
 * `budget`, the page keeps only the entries whose payloads fit it (the first one always when
 * `atLeastOne`), and a page cut so names its last entry as the cursor.
 */
const page = <A>(
  topic: Topic,
  paging: PagingInfo,
  maxPayloadBytes: number,
  serve: (entry: StoredEntry) => A,
  budget: { readonly bytes: number; readonly atLeastOne: boolean } = { bytes: Infinity, atLeastOne: true }
) =>
  Effect.gen(function*() {
    const store = yield* XmtpStore
    const ascending = paging?.direction === SORT_ASCENDING
    const requested = paging?.limit ?? 0
    const limit = requested > 0 && requested <= MAX_PAGE_SIZE ? requested : MAX_PAGE_SIZE
    const cursor = int64(paging?.idCursor)
    const read = yield* stored(store.read(topic, cursor, limit, !ascending))
    let bytes = 0
    let kept = 0
    for (const entry of read) {
      if (bytes + entry.payload.length > budget.bytes && !(kept === 0 && budget.atLeastOne)) break
      bytes += entry.payload.length
      kept += 1
    }
    const entries = kept === read.length ? read : read.slice(0, kept)
    const last = entries[entries.length - 1]
    const more = last !== undefined &&
      (kept < read.length || pageMayContinue(entries, limit, maxPayloadBytes + MAX_RECORD_OVERHEAD))
    // Cut before its first entry: go on from where the caller asked (0 cannot say "again").
    const next = more ? String(last.sequenceId) : kept < read.length ? String(cursor) : "0"
    return {
      messages: entries.map(serve),
      pagingInfo: { direction: ascending ? 1 : 2, limit, idCursor: next },
      bytes
    }
  })

/** A unary RPC: its decoded request to its response (a plain object the codec completes). */
export type Unary = (request: never) => Effect.Effect<unknown, XmtpStatus, XmtpStore>

const sendGroupMessages = (limits: XmtpLimits) => (request: mlsApi.SendGroupMessagesRequest) =>
  Effect.gen(function*() {
    const store = yield* XmtpStore
    yield* checkCount("SendGroupMessages", request.messages, limits.maxBatch)
    // Everything is checked before anything is stored: a send is all or nothing. Sizes of all
    // first, then headers: reading a header is constant time (`inspectGroupMessage`).
    const inputs: Array<NonNullable<mlsApi.GroupMessageInput["v1"]>> = []
    for (const input of request.messages) {
      const v1 = input.v1
      if (v1 === undefined) return yield* refuse("invalid group message")
      yield* checkBytes("group message", v1.data, limits.maxPayloadBytes)
      yield* checkMaxBytes("sender hmac", v1.senderHmac, 1024)
      inputs.push(v1)
    }
    const entries: Array<{ topic: Topic; payload: Uint8Array }> = []
    for (const v1 of inputs) {
      const facts = yield* inspectGroupMessage(v1.data).pipe(
        Effect.mapError((e) => invalid(`invalid group message: ${e.reason}`))
      )
      // A group id no query could name (`QueryGroupMessages` checks it so) is refused here too.
      yield* checkId("invalid group message: group id", facts.groupId)
      const record = {
        v1: { groupId: facts.groupId, data: v1.data, senderHmac: v1.senderHmac, shouldPush: v1.shouldPush, isCommit: facts.isCommit }
      }
      entries.push({ topic: groupTopic(facts.groupId), payload: codecs.groupMessage.encode(codecs.groupMessage.fromPartial(record)).finish() })
    }
    yield* stored(store.append(entries))
    return {}
  })

const welcomeEntry = (limits: XmtpLimits) => (input: mlsApi.SendWelcomeMessagesRequest["messages"][number]) =>
  Effect.gen(function*() {
    const v1 = input.v1
    if (v1 !== undefined) {
      yield* checkId("installation key", v1.installationKey)
      yield* checkBytes("welcome", v1.data, limits.maxPayloadBytes)
      yield* checkMaxBytes("welcome metadata", v1.welcomeMetadata, 64 * 1024)
      if (v1.hpkePublicKey.length === 0 && v1.wrapperAlgorithm !== 3) return yield* refuse("invalid welcome message")
      yield* checkMaxBytes("hpke public key", v1.hpkePublicKey, 4096)
      return { topic: welcomeTopic(v1.installationKey), message: { v1: { ...v1, id: "0", createdNs: "0" } } }
    }
    const pointer = input.welcomePointer
    if (pointer === undefined) return yield* refuse("invalid welcome message: missing version")
    yield* checkId("installation key", pointer.installationKey)
    yield* checkBytes("welcome pointer", pointer.welcomePointer, limits.maxPayloadBytes)
    yield* checkBytes("hpke public key", pointer.hpkePublicKey, 4096)
    if (pointer.wrapperAlgorithm !== 2) return yield* refuse("invalid welcome pointer wrapper algorithm")
    return { topic: welcomeTopic(pointer.installationKey), message: { welcomePointer: { ...pointer, id: "0", createdNs: "0" } } }
  })

const sendWelcomeMessages = (limits: XmtpLimits) => (request: mlsApi.SendWelcomeMessagesRequest) =>
  Effect.gen(function*() {
    const store = yield* XmtpStore
    yield* checkCount("SendWelcomeMessages", request.messages, limits.maxBatch)
    const entries = yield* Effect.forEach(request.messages, welcomeEntry(limits))
    yield* stored(store.append(entries.map(({ message, topic }) => ({
      topic,
      payload: codecs.welcomeMessage.encode(codecs.welcomeMessage.fromPartial(message)).finish()
    }))))
    return {}
  })

const uploadKeyPackage = (limits: XmtpLimits) => (request: mlsApi.UploadKeyPackageRequest) =>
  Effect.gen(function*() {
    const store = yield* XmtpStore
    const bytes = request.keyPackage?.keyPackageTlsSerialized
    if (bytes === undefined) return yield* refuse("no key package")
    yield* checkBytes("key package", bytes, limits.maxPayloadBytes)
    const now = yield* Clock.currentTimeMillis
    const facts = yield* verifyXmtpKeyPackage(bytes, BigInt(Math.floor(now / 1000))).pipe(
      Effect.mapError((e) => invalid(`invalid identity: ${e.reason}`))
    )
    yield* stored(store.putKeyPackage(facts.installationKey, bytes))
    return {}
  })

const fetchKeyPackages = (limits: XmtpLimits) => (request: mlsApi.FetchKeyPackagesRequest) =>
  Effect.gen(function*() {
    const store = yield* XmtpStore
    yield* checkCount("FetchKeyPackages", request.installationKeys, limits.maxIdsPerLookup)
    for (const key of request.installationKeys) yield* checkId("installation key", key)
    const found = yield* stored(store.keyPackages(request.installationKeys))
    const answer = request.installationKeys.map((key) => found.get(Buffer.from(key).toString("hex")) ?? new Uint8Array(0))
    // One key named many times is answered as many times: counted before anything is encoded.
    yield* withinAnswer("FetchKeyPackages", answer.reduce((n, bytes) => n + bytes.length, 0), "ask for fewer installations")
    return { keyPackages: answer.map((keyPackageTlsSerialized) => ({ keyPackageTlsSerialized })) }
  })

/** RESOURCE_EXHAUSTED when an answer would carry more than `MAX_ANSWER_BYTES`. */
const withinAnswer = (what: string, bytes: number, advice: string) =>
  bytes <= MAX_ANSWER_BYTES
    ? Effect.void
    : Effect.fail(new XmtpStatus({ code: Code.ResourceExhausted, reason: `${what}: the answer would carry ${bytes} bytes, over ${MAX_ANSWER_BYTES}: ${advice}` }))

const queryGroupMessages = (limits: XmtpLimits) => (request: mlsApi.QueryGroupMessagesRequest) =>
  Effect.gen(function*() {
    yield* checkId("group id", request.groupId)
    return yield* page(groupTopic(request.groupId), request.pagingInfo, limits.maxPayloadBytes, (e) => groupMessageOf(e))
  })

const queryWelcomeMessages = (limits: XmtpLimits) => (request: mlsApi.QueryWelcomeMessagesRequest) =>
  Effect.gen(function*() {
    yield* checkId("installation key", request.installationKey)
    return yield* page(welcomeTopic(request.installationKey), request.pagingInfo, limits.maxPayloadBytes, welcomeMessageOf)
  })

/** With content, an answer carries at most this much payload (a newest message may be up to 1 MiB). */
const MAX_NEWEST_CONTENT_BYTES = MAX_PAGE_BYTES

/**
 * Most payload bytes one `GetNewestGroupMessage` reads, content or not (telling a commit apart
 * needs the stored record): 1,000 small groups fit many times over; 1,000 groups whose newest
 * message is 1 MiB, each anyone may post, do not.
 */
const MAX_NEWEST_READ_BYTES = 16 * 1024 * 1024

const newestTooLarge = (groups: number, bytes: number, max: number) =>
  new XmtpStatus({
    code: Code.ResourceExhausted,
    reason: `the newest messages of ${groups} groups come to ${bytes} bytes, over ${max}: ask for fewer groups`
  })

const getNewestGroupMessage = (limits: XmtpLimits) => (request: mlsApi.GetNewestGroupMessageRequest) =>
  Effect.gen(function*() {
    const store = yield* XmtpStore
    yield* checkCount("GetNewestGroupMessage", request.groupIds, limits.maxFilters)
    for (const id of request.groupIds) yield* checkId("group id", id)
    // Sizes first, so nothing over the budgets is read; a group named twice is read once.
    const named = request.groupIds.map(groupTopic)
    const topics = [...new Set(named)]
    const sizes = yield* stored(store.newestSizes(topics))
    const sizeOf = (topic: Topic) => sizes.get(topic) ?? 0
    const read = topics.reduce((n, topic) => n + sizeOf(topic), 0)
    if (read > MAX_NEWEST_READ_BYTES) return yield* newestTooLarge(topics.length, read, MAX_NEWEST_READ_BYTES)
    const answered = named.reduce((n, topic) => n + sizeOf(topic), 0)
    if (request.includeContent && answered > MAX_NEWEST_CONTENT_BYTES) {
      return yield* newestTooLarge(request.groupIds.length, answered, MAX_NEWEST_CONTENT_BYTES)
    }
    // Messages landing meanwhile are counted as they are read: the budget holds either way.
    let loaded = 0
    const newest = new Map<Topic, StoredEntry>()
    yield* Effect.forEach(topics.filter((topic) => sizes.has(topic)), (topic) =>
      Effect.flatMap(stored(store.read(topic, 0n, 1, true)), (entries) => {
        const entry = entries[0]
        if (entry === undefined) return Effect.void
        loaded += entry.payload.length
        if (loaded > MAX_NEWEST_READ_BYTES) return Effect.fail(newestTooLarge(topics.length, loaded, MAX_NEWEST_READ_BYTES))
        newest.set(topic, entry)
        return Effect.void
      }), { concurrency: 4, discard: true })
    const served = request.includeContent ? named.reduce((n, topic) => n + (newest.get(topic)?.payload.length ?? 0), 0) : 0
    if (served > MAX_NEWEST_CONTENT_BYTES) return yield* newestTooLarge(request.groupIds.length, served, MAX_NEWEST_CONTENT_BYTES)
    return {
      responses: named.map((topic) => {
        const entry = newest.get(topic)
        return entry === undefined ? {} : { groupMessage: groupMessageOf(entry, request.includeContent) }
      })
    }
  })

const batchPublishCommitLog = (limits: XmtpLimits) => (request: mlsApi.BatchPublishCommitLogRequest) =>
  Effect.gen(function*() {
    const store = yield* XmtpStore
    yield* checkCount("BatchPublishCommitLog", request.requests, MAX_COMMIT_LOG_INSERTS)
    const entries: Array<{ topic: Topic; payload: Uint8Array }> = []
    for (const entry of request.requests) {
      yield* checkId("group id", entry.groupId)
      yield* checkBytes("commit log entry", entry.serializedCommitLogEntry, limits.maxPayloadBytes)
      // An Ed25519 signature and key, as libxmtp makes them: anything else only inflates every reader's page.
      if (entry.signature === undefined || entry.signature.bytes.length !== 64 || entry.signature.publicKey.length !== 32) {
        return yield* refuse("invalid commit log entry: its signature must be 64 bytes and its public key 32")
      }
      const record = { sequenceId: "0", serializedCommitLogEntry: entry.serializedCommitLogEntry, signature: entry.signature }
      entries.push({
        topic: commitLogTopic(entry.groupId),
        payload: codecs.commitLogEntry.encode(codecs.commitLogEntry.fromPartial(record)).finish()
      })
    }
    yield* stored(store.append(entries))
    return {}
  })

/**
 * Each group's page of its commit log, ascending. The pages share one answer's budget: anyone may
 * post to any group's log, so five logs of 4 MiB would otherwise make every batch naming them
 * fail. The first page always carries an entry, so a batch asked again always gets further.
 */
const batchQueryCommitLog = (limits: XmtpLimits) => (request: mlsApi.BatchQueryCommitLogRequest) =>
  Effect.gen(function*() {
    yield* checkCount("BatchQueryCommitLog", request.requests, MAX_COMMIT_LOG_QUERIES)
    for (const query of request.requests) {
      yield* checkId("group id", query.groupId)
      if (query.pagingInfo?.direction === 2) return yield* refuse("descending direction is not supported")
    }
    let left = MAX_ANSWER_BYTES
    const responses = yield* Effect.forEach(request.requests, (query, i) =>
      Effect.gen(function*() {
        const paging = { direction: SORT_ASCENDING, limit: query.pagingInfo?.limit ?? 0, idCursor: query.pagingInfo?.idCursor } as PagingInfo
        const found = yield* page(commitLogTopic(query.groupId), paging, limits.maxPayloadBytes, (e) => ({
          ...codecs.commitLogEntry.decode(e.payload),
          sequenceId: String(e.sequenceId)
        }), { bytes: left, atLeastOne: i === 0 })
        left -= found.bytes
        return { groupId: query.groupId, commitLogEntries: found.messages, pagingInfo: found.pagingInfo }
      }))
    return { responses }
  })

const unimplemented = (reason: string) => () => Effect.fail(new XmtpStatus({ code: Code.Unimplemented, reason }))

export const make = (limits: XmtpLimits): Record<string, Unary> => {
  return {
    SendGroupMessages: sendGroupMessages(limits),
    SendWelcomeMessages: sendWelcomeMessages(limits),
    UploadKeyPackage: uploadKeyPackage(limits),
    FetchKeyPackages: fetchKeyPackages(limits),
    QueryGroupMessages: queryGroupMessages(limits),
    QueryWelcomeMessages: queryWelcomeMessages(limits),
    GetNewestGroupMessage: getNewestGroupMessage(limits),
    BatchPublishCommitLog: batchPublishCommitLog(limits),
    BatchQueryCommitLog: batchQueryCommitLog(limits),
    RegisterInstallation: unimplemented("RegisterInstallation is deprecated: use UploadKeyPackage"),
    RevokeInstallation: unimplemented("unimplemented"),
    GetIdentityUpdates: unimplemented("unimplemented: use xmtp.identity.api.v1.IdentityApi")
  }
}