/**
 * Publishing a group's pending intents in order, under its lock: each payload derived at the
 * current epoch (or a written-ahead one re-sent byte for byte while its epoch is current), written
 * ahead, then sent. Application messages go in batches; a commit goes alone and ends the call.
 */
import { Effect, Metric } from "effect"
import { sha256Hex } from "../domain/Bytes.ts"
import { encodeGovernanceError, type StorageError } from "../domain/Errors.ts"
import type { GroupId } from "../domain/Ids.ts"
import { isCommitKind } from "../domain/Intent.ts"
import { validatedMaker } from "../domain/SchemaClass.ts"
import { publishedIntent, type StoredGroup, type StoredIntent } from "../domain/Stored.ts"
import { type GroupMessageEnvelope, GroupMessageInput } from "../domain/Wire.ts"
import { type EngineContext, loadGroupRow } from "./EngineContext.ts"
import * as EngineMetrics from "./EngineMetrics.ts"
import type * as IntentDerivation from "./IntentDerivation.ts"
import { failPendingIntents } from "./IntentQueue.ts"
import type { MlsGroupState } from "./MlsCrypto.ts"

/** Most application messages written ahead in one transaction and sent in one call. */
const MAX_BATCH = 50

/** Every published payload goes out as one: its validator built once. */
export const makeGroupMessageInput = validatedMaker(GroupMessageInput)

/**
 * Every payload sent, in order, and the service's answers: how the round reads them back. With
 * them, the intents as stored by the write-ahead (a commit's with its staged state and welcomes),
 * so reading them back asks for none of them again.
 */
export interface SentSoFar {
  readonly payloads: Array<Uint8Array>
  readonly answer: Array<GroupMessageEnvelope>
  readonly intents: Array<StoredIntent>
  /** A conditional send was refused (the topic moved): nothing of it is stored, and the call ended there. */
  moved: boolean
}

/** One call's progress through the group's pending intents. */
interface Progress {
  readonly groupId: GroupId
  readonly sent: SentSoFar
  /** The state the next intent derives from. */
  state: MlsGroupState
  /** The row as stored: nothing here changes it but its state, and each state is written ahead. */
  row: StoredGroup
  /** Payloads to send next, in order; those derived in this round still to be written ahead. */
  batch: Array<Uint8Array>
  writeAhead: Array<Effect.Effect<void, StorageError>>
  /** The application messages of `batch` to mark Published: one statement for them all. */
  marks: Array<{ id: number; payloadHash: string; payload: Uint8Array; publishedEpoch: bigint }>
  stateToSave: MlsGroupState | undefined
  /**
   * Send only if the topic still ends here (`sendGroupMessagesIf`); each batch that lands moves
   * it to the furthest entry the answer names.
   */
  ifTopicEndsAt: bigint | undefined
}

/** What publishing needs besides the progress record. */
interface Deps {
  readonly ctx: EngineContext
  readonly derive: ReturnType<typeof IntentDerivation.make>["derive"]
  readonly failIntent: (intent: StoredIntent, cause: string) => Effect.Effect<void, StorageError>
}

const done = (p: Progress) => ({ ...p.sent, held: { group: p.row, state: p.state } })

/** Writes the batch ahead (payloads, marks and the state after them, in one transaction), then sends it. */
const flush = (ctx: EngineContext, p: Progress) =>
  Effect.gen(function*() {
    const { crypto, storage } = ctx
    const { groupId, sent } = p
    if (p.batch.length === 0) return
    if (p.marks.length > 0) p.writeAhead.push(storage.intents.markPublishedMany(p.marks))
    if (p.writeAhead.length > 0) {
      yield* ctx.options.crashPoint("publish.beforeWriteAhead")
      const writes = p.writeAhead
      const saved = p.stateToSave
      // Write ahead: after this, a crash resends exactly these bytes.
      yield* storage.transaction(Effect.gen(function*() {
        if (saved !== undefined) {
          const stored = { epoch: crypto.view(saved).epoch, mlsState: ctx.encodeState(groupId, saved) }
          yield* storage.groups.saveState(groupId, stored)
          p.row = { ...p.row, ...stored }
        }
        for (const write of writes) yield* write
      }))
      yield* ctx.options.crashPoint("publish.afterWriteAheadBeforeSend")
    }
    // Nothing leaves ahead of its record, even on a power loss (Storage.flush). After the held
    // round's flush during its read, this one usually finds nothing to sync (one statement); it
    // still syncs what other fibers wrote meanwhile, so every write so far is on disk.
    yield* storage.flush
    const payloads = p.batch
    for (let i = 0; i < payloads.length && !sent.moved; i += MAX_BATCH) {
      const chunk = payloads.slice(i, i + MAX_BATCH)
      const answer = yield* sendChunk(ctx, p, chunk.map((payload) => makeGroupMessageInput({ groupId, payload })))
      if (answer === undefined) sent.moved = true
      else {
        sent.payloads.push(...chunk)
        sent.answer.push(...answer)
      }
    }
    yield* ctx.options.crashPoint("publish.afterSendBeforeSync")
    p.batch = []
    p.writeAhead = []
    p.marks = []
    p.stateToSave = undefined
  })

/**
 * One call's worth of the batch. After the round's read it goes only right after what was read (or
 * after the batch before it): `undefined` when the topic moved and nothing of it was stored. So a
 * commit that would lose its epoch's race is refused by the service instead of stored for every
 * member to download and skip.
 */
const sendChunk = (ctx: EngineContext, p: Progress, messages: ReadonlyArray<GroupMessageInput>) =>
  Effect.gen(function*() {
    if (p.ifTopicEndsAt === undefined) return yield* ctx.ds.sendGroupMessages(messages)
    const envelopes = yield* sendIfTopicEndsAt(ctx, messages, p.ifTopicEndsAt)
    // The furthest it reached: a resend's copies come back where they are, in any order.
    if (envelopes !== undefined) {
      p.ifTopicEndsAt = envelopes.reduce((end, e) => (e.sequenceId > end ? e.sequenceId : end), p.ifTopicEndsAt)
    }
    return envelopes
  })

/**
 * Messages sent only if the group's topic still ends at `ifTopicEndsAt`: where they landed, or
 * `undefined` when it moved and nothing was stored (counted: how often publishes meet a moved topic).
 */
export const sendIfTopicEndsAt = (ctx: EngineContext, messages: ReadonlyArray<GroupMessageInput>, ifTopicEndsAt: bigint) =>
  Effect.gen(function*() {
    const outcome = yield* ctx.ds.sendGroupMessagesIf(messages, ifTopicEndsAt)
    if (outcome._tag === "Stored") return outcome.envelopes
    yield* Metric.increment(EngineMetrics.publishRefusals)
    return undefined
  })

/** The intent's payload, or `undefined` once a refusal has failed it (stored typed where the action needs it). */
const deriveOrFail = ({ derive, failIntent }: Deps, intent: StoredIntent, state: MlsGroupState) =>
  derive(state, intent.data).pipe(
    Effect.catchTags({
      CryptoError: (e) => failIntent(intent, e.message).pipe(Effect.as(undefined)),
      KeyPackageUnavailable: (e) => failIntent(intent, e.message).pipe(Effect.as(undefined)),
      InboxNotFound: (e) => failIntent(intent, e.message).pipe(Effect.as(undefined)),
      InvalidInput: (e) => failIntent(intent, e.message).pipe(Effect.as(undefined)),
      // Stored typed, so the action that queued the intent fails with the same error.
      PermissionDenied: (e) => failIntent(intent, encodeGovernanceError(e)).pipe(Effect.as(undefined)),
      MetadataConflict: (e) => failIntent(intent, encodeGovernanceError(e)).pipe(Effect.as(undefined)),
      ProtocolVersionTooOld: (e) => failIntent(intent, encodeGovernanceError(e)).pipe(Effect.as(undefined))
    })
  )

/** Adds a freshly derived payload to the batch, with the write-ahead that goes with it. */
const stage = (
  ctx: EngineContext,
  p: Progress,
  intent: StoredIntent,
  derived: IntentDerivation.Derived & { _tag: "Payload" },
  epoch: bigint
) => {
  const { storage } = ctx
  const published = { payloadHash: sha256Hex(derived.payload), payload: derived.payload, publishedEpoch: epoch }
  if (derived.staged === undefined && derived.postCommit === undefined) {
    p.marks.push({ id: intent.id, ...published })
    // The row as `markPublishedMany` leaves it (it was ToPublish, read under this lock).
    p.sent.intents.push(publishedIntent(intent, published))
  } else {
    const written = {
      stagedState: derived.staged === undefined ? null : ctx.encodeStaged(p.groupId, derived.staged, p.state),
      postCommit: derived.postCommit ?? null
    }
    p.writeAhead.push(storage.intents.markPublished(intent.id, { ...published, ...written }))
    // The row as `markPublished` leaves it: reading the commit back asks for none of its 60 KB again.
    p.sent.intents.push({ ...publishedIntent(intent, published), ...written })
  }
  p.batch.push(derived.payload)
  if (derived.state !== undefined) {
    p.state = derived.state
    p.stateToSave = derived.state
  }
}

/** After a payload joined the batch: a commit is sent at once and ends the call; a full batch is sent. */
const afterStaged = (ctx: EngineContext, p: Progress, commit: boolean) =>
  Effect.gen(function*() {
    if (commit) {
      yield* flush(ctx, p)
      return true
    }
    if (p.batch.length >= MAX_BATCH) yield* flush(ctx, p)
    return p.sent.moved
  })

/** One pending intent into the batch (or failed, or a no-op); whether the call ends here. */
const publishOne = (deps: Deps, p: Progress, intent: StoredIntent) =>
  Effect.gen(function*() {
    const { ctx } = deps
    const { crypto, storage } = ctx
    const commit = isCommitKind(intent.kind)
    // A commit goes alone, after everything before it (and not after a message the topic refused).
    if (commit) yield* flush(ctx, p)
    if (p.sent.moved) return true
    const epoch = crypto.view(p.state).epoch
    if (intent.state === "Published") {
      if (intent.publishedEpoch === epoch && intent.payload !== null) {
        p.batch.push(intent.payload)
        p.sent.intents.push(intent)
        return yield* afterStaged(ctx, p, commit)
      }
      // Never seen on the topic and its epoch is gone. A message is derived afresh below, at once.
      // A commit lost its epoch's race (refused where its round read to, or written ahead before a
      // restart): a conflict, derived again in a later round, after the conflict schedule's pause,
      // since a busy group would have it derived (identities, key packages, a path) at every refusal.
      yield* storage.intents.resetToPublish(intent.id, { conflict: commit })
      if (commit) return true
    }
    const derived = yield* deriveOrFail(deps, intent, p.state)
    if (derived === undefined) return false
    if (derived._tag === "NoOp") {
      yield* storage.intents.markProcessed(intent.id)
      return false
    }
    stage(ctx, p, intent, derived, epoch)
    return yield* afterStaged(ctx, p, commit)
  })

export const make = (
  ctx: EngineContext,
  { derive }: Pick<ReturnType<typeof IntentDerivation.make>, "derive">,
  failIntent: (intent: StoredIntent, cause: string) => Effect.Effect<void, StorageError>
) => {
  const { storage } = ctx
  const deps: Deps = { ctx, derive, failIntent }

  /**
   * Publishes the group's pending intents in order, stopping after a commit: at most one
   * commit is in flight per group, and what follows it is derived once it has landed.
   * Application messages go in batches: derived one after the other, written ahead in one
   * transaction (their payloads and the group state after the last), then sent in one call.
   * Runs under the group lock. `ifTopicEndsAt`: everything goes only if the topic still ends there
   * (where the round read to); refused, the call ends with `moved`, nothing of that batch sent.
   */
  const publishPending = Effect.fn("Publisher.publishPending")(function*(groupId: GroupId, ifTopicEndsAt?: bigint) {
    const group = yield* loadGroupRow(ctx, groupId)
    const pending = yield* storage.intents.byGroup(groupId, ["Published", "ToPublish"])
    const sent: SentSoFar = { payloads: [], answer: [], intents: [], moved: false }
    if (pending.length === 0) return sent
    if (group.membershipState === "inactive") {
      yield* storage.transaction(failPendingIntents(ctx, groupId))
      return sent
    }
    const p: Progress = {
      groupId,
      sent,
      state: yield* ctx.loadState(group),
      row: group,
      batch: [],
      writeAhead: [],
      marks: [],
      stateToSave: undefined,
      ifTopicEndsAt
    }
    for (const intent of pending) {
      if (yield* publishOne(deps, p, intent)) return done(p)
    }
    yield* flush(ctx, p)
    return done(p)
  })

  return { publishPending }
}
