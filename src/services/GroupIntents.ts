/**
 * What a user action does with one MLS group: read its settings and members at the epoch held,
 * refuse writes below its minimum protocol version, queue an intent, and wait for it with a
 * governance refusal returned typed.
 */
import { Clock, Effect, Option } from "effect"
import { decodeGovernanceError, type GovernanceError, type IntentFailed, ProtocolVersionTooOld } from "../domain/Errors.ts"
import { isPaused } from "../domain/Governance.ts"
import { decodeSettings } from "../domain/GroupSettings.ts"
import type { GroupId } from "../domain/Ids.ts"
import type { IntentData } from "../domain/Intent.ts"
import { GroupMetadata } from "../domain/Model.ts"
import type { StoredGroup } from "../domain/Stored.ts"
import type { ClientContext } from "./ClientContext.ts"
import * as GroupSync from "./GroupSync.ts"
import { queueIntent as queueIntentIn } from "./IntentQueue.ts"

export const make = ({ env, publisher }: ClientContext) => {
  const queueIntent = (groupId: GroupId, data: IntentData) =>
    Clock.currentTimeNanos.pipe(Effect.flatMap((now) => queueIntentIn(env, groupId, data, now)))

  /** The settings in the group's context at the epoch held (defaults if they do not decode). */
  const settingsOf = (group: StoredGroup) =>
    env.loadMetadata(group).pipe(
      Effect.map((metadata) => Option.getOrElse(decodeSettings(metadata), () => GroupMetadata.none))
    )

  /** Below the group's minimum protocol version this installation reads and syncs, but writes nothing. */
  const checkNotPaused = (group: StoredGroup) =>
    Effect.gen(function*() {
      const settings = yield* settingsOf(group)
      const current = env.options.protocolVersion
      if (isPaused(settings, current)) {
        return yield* new ProtocolVersionTooOld({ required: settings.minProtocolVersion, current })
      }
    })

  /** Waits for an intent; a governance refusal it ended with comes back as its typed error. */
  const resolveTyped = (groupId: GroupId, intentId: number) =>
    publisher.resolve(groupId, intentId).pipe(
      Effect.catchTag("IntentFailed", (failed) =>
        Option.match(decodeGovernanceError(failed.cause), {
          onNone: (): Effect.Effect<never, IntentFailed | GovernanceError> => Effect.fail(failed),
          onSome: (refusal) => Effect.fail(refusal)
        }))
    )

  const groupMembers = (group: StoredGroup) =>
    env.loadState(group).pipe(Effect.map((state) => GroupSync.membersByInbox(env.crypto.view(state))))

  return { queueIntent, settingsOf, checkNotPaused, resolveTyped, groupMembers }
}
