/**
 * One publish round of a group, under its lock: read, publish, read what we published, send
 * welcomes. `send`'s own message skips the first read: it goes on the condition that the topic
 * still ends where the group was last read. Everything else the round publishes (a retry, queued
 * messages, a commit) goes on that condition after each read it makes, until it lands.
 */
import { Effect, Exit, Fiber } from "effect"
import type { GroupId } from "../domain/Ids.ts"
import type { StoredGroup, StoredIntent } from "../domain/Stored.ts"
import type { EngineContext } from "./EngineContext.ts"
import type * as GroupSync from "./GroupSync.ts"
import type * as InstallationChecks from "./InstallationChecks.ts"
import type { MlsGroupState } from "./MlsCrypto.ts"
import * as PageApplier from "./PageApplier.ts"
import * as PublishPending from "./PublishPending.ts"

/**
 * `send`'s message as the caller just wrote it ahead (intent Published with its payload, the row
 * and state after it, the topic's cursor as stored) under the group lock it still holds.
 */
export interface HeldSend {
  readonly group: StoredGroup
  readonly state: MlsGroupState
  readonly intent: StoredIntent
  readonly payload: Uint8Array
  readonly cursor: bigint
}

/** How many times a round publishes only right after a read before it publishes without the condition. */
const MAX_CONDITIONAL_TRIES = 8

export const make = (
  ctx: EngineContext,
  sync: ReturnType<typeof GroupSync.make>,
  { checkDue, checkInstallationsLocked: checkInstallations }: Pick<
    ReturnType<typeof InstallationChecks.make>,
    "checkInstallationsLocked" | "checkDue"
  >,
  { publishPending }: ReturnType<typeof PublishPending.make>
) => {
  /**
   * One round, the caller holding the group lock. `held`: `send`'s message, which goes at once on
   * the condition that the topic still ends where the group was last read (unless an installation
   * check is due, which may queue a commit to go first). Otherwise, or if the topic moved: read,
   * publish, read what was published, send welcomes; what it publishes goes on the same
   * condition after each read, up to `MAX_CONDITIONAL_TRIES` times.
   * `confirmed`: the own intents the read-back settled as Processed (so `resolve` need not ask).
   */
  const roundLocked = Effect.fn("Publisher.round")(function*(groupId: GroupId, held?: HeldSend) {
    if (held !== undefined && !(yield* checkDue(groupId))) {
      const direct = yield* publishHeldDirectly(groupId, held)
      if (direct !== undefined) return direct
    }
    let before = PageApplier.emptyOutcome
    for (let tries = 1;; tries++) {
      // A held write-ahead not yet flushed reaches the disk while the topic is read (a read sends
      // nothing), so the flush before the send finds nothing left to sync.
      const read = tries === 1 && held !== undefined ? yield* receiveFlushing(groupId, held) : yield* sync.receiveTo(groupId)
      before = PageApplier.addOutcomes(before, read.total)
      yield* checkInstallations(groupId)
      // Published only right after this read (a commit that would lose its epoch's race is refused,
      // not stored); a topic that outgrows every read and send gets it without the condition,
      // most likely right after.
      const sent = yield* publishPending(groupId, tries <= MAX_CONDITIONAL_TRIES ? read.cursor : undefined)
      // Refused: nothing of that batch is stored. What came is read next, and it goes again.
      if (sent.moved) continue
      const published = sent.payloads.length
      // What we sent is read back from the send's answer when it continues our cursor.
      const readBack = published > 0 ? yield* sync.receiveSent(groupId, sent) : undefined
      yield* sync.postCommit(groupId)
      return { before, published, after: readBack?.total, confirmed: readBack?.confirmed ?? new Set<number>() }
    }
  }, (effect, groupId) => Effect.annotateLogs(effect, { groupId }))

  /**
   * `send`'s one message, written ahead at the epoch the topic's cursor leaves the group in, sent
   * on the condition that the topic still ends at that cursor: then nothing (no commit, no add of
   * someone who must read it) came between, and no read is needed first. The answer is the
   * topic's next entry, read back as a page. `undefined` when the topic moved on (nothing
   * stored): the usual round follows, which reads first.
   */
  const publishHeldDirectly = (groupId: GroupId, { cursor, group, intent, payload, state }: HeldSend) =>
    Effect.gen(function*() {
      // Nothing leaves ahead of its record, even on a power loss.
      yield* ctx.storage.flush
      const message = PublishPending.makeGroupMessageInput({ groupId, payload })
      const envelopes = yield* PublishPending.sendIfTopicEndsAt(ctx, [message], cursor)
      if (envelopes === undefined) return undefined
      yield* ctx.options.crashPoint("publish.afterSendBeforeSync")
      const sent = { payloads: [payload], answer: [...envelopes], intents: [intent], held: { group, state } }
      const readBack = yield* sync.receiveSent(groupId, sent, cursor)
      return { before: PageApplier.emptyOutcome, published: 1, after: readBack.total, confirmed: readBack.confirmed }
    })

  /**
   * The held group's topic read while its write-ahead is flushed: the read forks and yields first,
   * so its request can leave before the disk sync starts (on a quick disk it holds the thread:
   * `SqliteDurability`). However the round ends (a failed sync, an interruption while it waits
   * for the read), the read is over before it returns: the read writes the group's state and
   * cursor, and must not outlive the group's lock.
   */
  const receiveFlushing = (groupId: GroupId, held: HeldSend) =>
    Effect.uninterruptibleMask((restore) =>
      Effect.gen(function*() {
        const reading = yield* Effect.fork(restore(sync.receiveTo(groupId, held.group.membershipState, held.cursor)))
        return yield* restore(Effect.yieldNow().pipe(Effect.zipRight(ctx.storage.flush), Effect.zipRight(Fiber.join(reading)))).pipe(
          Effect.onExit((exit) => Exit.isSuccess(exit) ? Effect.void : Fiber.interrupt(reading))
        )
      })
    )

  /** One round: read, publish, read what we published, send welcomes. Under the group lock. */
  const round = (groupId: GroupId) => ctx.withGroupLock(groupId)(roundLocked(groupId))

  return { round, roundLocked }
}
