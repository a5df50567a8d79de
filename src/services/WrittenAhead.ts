/**
 * `send`'s short path: with nothing queued ahead in the group, the message is derived at once
 * and stored with its intent already written ahead, in one transaction.
 */
import { Clock, Effect, Option } from "effect"
import { sha256Hex } from "../domain/Bytes.ts"
import { ConversationNotFound, type CryptoError, type ProtocolVersionTooOld, type StorageError } from "../domain/Errors.ts"
import type { GroupId } from "../domain/Ids.ts"
import type { SendMessageData } from "../domain/Intent.ts"
import { publishedIntent, type StoredGroup, type StoredIntent } from "../domain/Stored.ts"
import { groupTopic } from "../domain/Topics.ts"
import type { EngineContext } from "./EngineContext.ts"
import type * as IntentDerivation from "./IntentDerivation.ts"
import type { KnownIntent } from "./IntentResolution.ts"
import type * as PublishRound from "./PublishRound.ts"

export const make = (
  ctx: EngineContext,
  { derive }: Pick<ReturnType<typeof IntentDerivation.make>, "derive">,
  { roundLocked }: Pick<ReturnType<typeof PublishRound.make>, "roundLocked">
) => {
  const { crypto, storage } = ctx

  /**
   * `send` with nothing queued ahead in the group: the message is derived at once, under the
   * group lock, and stored together with its intent already written ahead (Published, with its
   * payload, hash and epoch) and the state after it: one transaction instead of two (queue, then
   * write-ahead), with the same crash points around it. The next round sends those bytes as it
   * sends any written-ahead payload (re-derived if the epoch has moved on by then). Returns the
   * intent's id and what `resolve` may take as known of it, or `undefined` when something is
   * queued ahead, the group is not active or the message cannot be derived here: then the caller
   * queues it as usual, and the usual publish path deals with it.
   *
   * The first publish round runs at once, under the same lock: it starts from the row, state and
   * intent just written (nothing else can have changed them), and its outcome comes back as an
   * `Exit` for `resolve` to take as its first round. `stored` runs once the transaction commits.
   * `allowed` (the group's protocol-version floor) is judged first, on the row read under the lock,
   * whatever the outcome: the caller reads no state before.
   */
  const queueWrittenAhead = Effect.fn("Publisher.queueWrittenAhead")(function*(
    groupId: GroupId,
    data: SendMessageData,
    createdAtNs: bigint,
    storeMessage: Effect.Effect<void, StorageError>,
    stored: Effect.Effect<void>,
    allowed: (group: StoredGroup) => Effect.Effect<void, CryptoError | ProtocolVersionTooOld>
  ) {
    return yield* ctx.withGroupLock(groupId)(Effect.gen(function*() {
      // The row, the topic's cursor and whether anything is queued ahead, in one read. A Committed
      // intent's welcomes are still to go: the usual round sends them.
      const found = yield* storage.groups.getForSend(groupId, groupTopic(groupId), ["ToPublish", "Published", "Committed"])
      if (Option.isNone(found)) return yield* new ConversationNotFound({ conversationId: groupId })
      const { cursor, group, pending } = found.value
      yield* allowed(group)
      if (group.membershipState !== "active") return undefined
      if (pending) return undefined
      const state = yield* ctx.loadState(group)
      const derived = yield* derive(state, data).pipe(Effect.orElseSucceed(() => undefined))
      if (derived?._tag !== "Payload" || derived.state === undefined) return undefined
      const after = derived.state
      const epoch = crypto.view(state).epoch
      const payloadHash = sha256Hex(derived.payload)
      const saved = { epoch: crypto.view(after).epoch, mlsState: ctx.encodeState(groupId, after) }
      yield* ctx.options.crashPoint("publish.beforeWriteAhead")
      const intentId = yield* storage.transaction(Effect.gen(function*() {
        yield* storeMessage
        const id = yield* storage.intents.insertPublished({ groupId, data, createdAtNs }, {
          payloadHash,
          payload: derived.payload,
          publishedEpoch: epoch
        })
        yield* storage.groups.saveState(groupId, saved)
        return id
      }))
      yield* stored
      yield* ctx.options.crashPoint("publish.afterWriteAheadBeforeSend")
      const known: KnownIntent = { conflicts: 0, publishedEpoch: epoch }
      // The intent as `insertPublished` stored it (a new one, written ahead at once): the only
      // pending one of the group.
      const queued: StoredIntent = {
        id: intentId,
        groupId,
        kind: data._tag,
        data,
        state: "ToPublish",
        payloadHash: null,
        payload: null,
        publishedEpoch: null,
        stagedState: null,
        postCommit: null,
        sequenceId: null,
        attempts: 0,
        conflicts: 0,
        error: null,
        createdAtNs
      }
      const intent = publishedIntent(queued, { payloadHash, payload: derived.payload, publishedEpoch: epoch })
      const firstStartedNs = yield* Clock.currentTimeNanos
      const first = yield* Effect.exit(
        roundLocked(groupId, { group: { ...group, ...saved }, state: after, intent, payload: derived.payload, cursor })
      )
      return { intentId, known: { ...known, firstStartedNs }, first }
    }))
  }, (effect, groupId) => Effect.annotateLogs(effect, { groupId }))

  return { queueWrittenAhead }
}
