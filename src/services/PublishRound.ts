/**
 * One publish round of a group, under its lock: read, publish, read what we published, send
 * welcomes. `send`'s own message skips the first read: it goes on the condition that the topic
 * still ends where the group was last read. A lone application message (`send`'s, a retry's, a
 * single queued one) goes on that condition after each read the round makes, until it lands.
 */
import { Effect, Exit, Fiber } from "effect"
import type { GroupId } from "../domain/Ids.ts"
import type { EngineContext } from "./EngineContext.ts"
import type * as GroupSync from "./GroupSync.ts"
import type * as InstallationChecks from "./InstallationChecks.ts"
import * as PageApplier from "./PageApplier.ts"
import * as PublishPending from "./PublishPending.ts"

/** How many times a lone message goes only right after a read before it goes as a batch would. */
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
   * One round, the caller holding the group lock. `held`: the row, state and pending intents the
   * caller just wrote under that lock (`send`'s); its message goes at once on the condition that
   * the topic still ends where the group was last read. If the topic moved, the usual round runs:
   * read, publish (held values used when nothing changed them since: no page read, no installation
   * check due, which may queue an intent), read what was published, send welcomes; and a lone
   * application message goes on the same condition after each read, up to `MAX_CONDITIONAL_TRIES` times.
   * `confirmed`: the own intents the read-back settled as Processed (so `resolve` need not ask).
   */
  const roundLocked = Effect.fn("Publisher.round")(function*(groupId: GroupId, held?: PublishPending.HeldPending) {
    const dueAtStart = held === undefined ? undefined : yield* checkDue(groupId)
    if (held !== undefined && dueAtStart === false) {
      const direct = yield* publishHeldDirectly(groupId, held)
      if (direct !== undefined) return direct
    }
    let before = PageApplier.emptyOutcome
    for (let tries = 1;; tries++) {
      const first = tries === 1
      // A held write-ahead reaches the disk while the topic is read (a read sends nothing), so the
      // flush before the send finds nothing left to sync: the sync hides behind the read's round trip.
      const read = first && held !== undefined ? yield* receiveFlushing(groupId, held) : yield* sync.receiveTo(groupId)
      before = PageApplier.addOutcomes(before, read.total)
      const unchanged = first && held !== undefined && read.total.received === 0 && dueAtStart === false
      // Unchanged, the check was just found not due: it would only ask again.
      if (!unchanged) yield* checkInstallations(groupId)
      // A lone application message (a `send`'s, or its retry's) goes only right after this read; a
      // topic that outgrows every read and send gets it as a batch would, most likely right after.
      const condition = tries <= MAX_CONDITIONAL_TRIES ? read.cursor : undefined
      const sent = yield* publishPending(groupId, unchanged ? held : undefined, condition)
      // Refused: nothing of it is stored. What came is read next, and it goes again.
      if (sent.moved) continue
      const published = sent.payloads.length
      // What we sent is read back from the send's answer when it continues our cursor (as read
      // above when the group was held throughout: only a page, under this lock, moves it then).
      const readBack = published > 0 ? yield* sync.receiveSent(groupId, sent, unchanged ? read.cursor : undefined) : undefined
      // Unchanged, nothing was Committed before (the held group had no other intent) and only
      // application messages went out: no welcomes are waiting.
      if (!unchanged) yield* sync.postCommit(groupId)
      return { before, published, after: readBack?.total, confirmed: readBack?.confirmed ?? new Set<number>() }
    }
  }, (effect, groupId) => Effect.annotateLogs(effect, { groupId }))

  /**
   * `send`'s one message, written ahead at the epoch the topic's cursor leaves the group in, sent
   * on the condition that the topic still ends at that cursor: then nothing (no commit, no add of
   * someone who must read it) came between, and no read is needed first. The answer is the
   * topic's next entry, read back as a page. `undefined` when this cannot be done or the topic
   * moved on (nothing stored): the usual round follows, which reads first.
   */
  const publishHeldDirectly = (groupId: GroupId, held: PublishPending.HeldPending) =>
    Effect.gen(function*() {
      const intent = held.pending.length === 1 ? held.pending[0]! : undefined
      if (intent?.state !== "Published" || intent.payload === null || intent.kind !== "SendMessage") return undefined
      // Nothing leaves ahead of its record, even on a power loss.
      yield* ctx.storage.flush
      const payload = intent.payload
      const outcome = yield* ctx.ds.sendGroupMessageIf(PublishPending.makeGroupMessageInput({ groupId, payload }), held.cursor)
      if (outcome._tag === "TopicMoved") return undefined
      yield* ctx.options.crashPoint("publish.afterSendBeforeSync")
      const sent = { payloads: [payload], answer: [outcome.envelope], intents: [intent], held: { group: held.group, state: held.state } }
      const readBack = yield* sync.receiveSent(groupId, sent, held.cursor)
      return { before: PageApplier.emptyOutcome, published: 1, after: readBack.total, confirmed: readBack.confirmed }
    })

  /**
   * The held group's topic read while its write-ahead is flushed: the read forks and yields first,
   * so its request can leave before the disk sync starts (on a quick disk it holds the thread:
   * `SqliteDurability`). However the round ends (a failed sync, an interruption while it waits
   * for the read), the read is over before it returns: the read writes the group's state and
   * cursor, and must not outlive the group's lock.
   */
  const receiveFlushing = (groupId: GroupId, held: PublishPending.HeldPending) =>
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
