/**
 * What a user action does with one MLS group: read its settings and members at the epoch held,
 * refuse writes below its minimum protocol version, queue an intent, and wait for it with a
 * governance refusal returned typed.
 */
import { Clock, Effect, Option } from "effect"
import { decodeGovernanceError, type GovernanceError, type IntentFailed, ProtocolVersionTooOld } from "../domain/Errors.ts"
import { isPaused } from "../domain/Governance.ts"
import { settingsOrDefaults } from "../domain/GroupSettings.ts"
import type { GroupId } from "../domain/Ids.ts"
import type { IntentData } from "../domain/Intent.ts"
import { GroupMetadata } from "../domain/Model.ts"
import type { StoredGroup } from "../domain/Stored.ts"
import type { ClientContext } from "./ClientContext.ts"
import { loadGroupRow } from "./EngineContext.ts"
import * as GroupSync from "./GroupSync.ts"
import type { GroupSummary } from "./Storage.ts"
import { queueIntent as queueIntentIn } from "./IntentQueue.ts"

export const make = ({ env, publisher }: ClientContext) => {
  const queueIntent = (groupId: GroupId, data: IntentData) =>
    Clock.currentTimeNanos.pipe(Effect.flatMap((now) => queueIntentIn(env, groupId, data, now)))

  /** The settings in the group's context at the epoch held (defaults if they do not decode). */
  const settingsOf = (group: StoredGroup) =>
    env.loadMetadata(group).pipe(
      Effect.map(settingsOrDefaults)
    )

  /** Below the group's minimum protocol version this installation reads and syncs, but writes nothing. */
  const refuseIfPaused = (settings: GroupMetadata): Effect.Effect<void, ProtocolVersionTooOld> => {
    const current = env.options.protocolVersion
    return isPaused(settings, current)
      ? Effect.fail(new ProtocolVersionTooOld({ required: settings.minProtocolVersion, current }))
      : Effect.void
  }
  const checkNotPaused = (group: StoredGroup) => Effect.flatMap(settingsOf(group), refuseIfPaused)

  /**
   * `checkNotPaused` from the group's summary row: against the kept state's settings when it is at
   * the summary's epoch, else against the stored row (the one given, or read; its state decoded if
   * need be).
   */
  const checkSummaryNotPaused = (group: GroupSummary | StoredGroup) =>
    Option.match(env.keptMetadataAt(group.id, group.epoch), {
      onSome: (metadata) => refuseIfPaused(settingsOrDefaults(metadata)),
      onNone: () => "mlsState" in group ? checkNotPaused(group) : Effect.flatMap(loadGroupRow(env, group.id), checkNotPaused)
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

  return { queueIntent, settingsOf, checkNotPaused, checkSummaryNotPaused, resolveTyped, groupMembers }
}
