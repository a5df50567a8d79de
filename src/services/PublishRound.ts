/** One publish round of a group, under its lock: read, publish, read what we published, send welcomes. */
import { Effect } from "effect"
import type { GroupId } from "../domain/Ids.ts"
import type { EngineContext } from "./EngineContext.ts"
import type * as GroupSync from "./GroupSync.ts"
import type * as InstallationChecks from "./InstallationChecks.ts"
import type * as PublishPending from "./PublishPending.ts"

export const make = (
  ctx: EngineContext,
  sync: ReturnType<typeof GroupSync.make>,
  { checkInstallationsLocked: checkInstallations }: Pick<ReturnType<typeof InstallationChecks.make>, "checkInstallationsLocked">,
  { publishPending }: ReturnType<typeof PublishPending.make>
) => {
  /**
   * One round: read, publish, read what we published, send welcomes. Under the group lock.
   * `confirmed`: the own intents the read-back settled as Processed (so `resolve` need not ask).
   */
  const round = Effect.fn("Publisher.round")(function*(groupId: GroupId) {
    return yield* ctx.withGroupLock(groupId)(Effect.gen(function*() {
      const before = yield* sync.receive(groupId)
      yield* checkInstallations(groupId)
      const sent = yield* publishPending(groupId)
      const published = sent.payloads.length
      const confirmed = new Set<number>()
      // What we sent is read back from the send's answer when it continues our cursor.
      const after = published > 0 ? yield* sync.receiveSent(groupId, sent, confirmed) : undefined
      yield* sync.postCommit(groupId)
      return { before, published, after, confirmed: confirmed as ReadonlySet<number> }
    }))
  }, (effect, groupId) => Effect.annotateLogs(effect, { groupId }))

  return { round }
}
