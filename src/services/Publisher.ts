/**
 * Publishing intents. Per group, under that group's lock: derive each pending intent's
 * payload at the current epoch, write ahead (intent `Published` with the payload, its hash,
 * the epoch, the staged state and the welcomes), then send. A payload whose send failed or
 * whose outcome is unknown is re-sent byte for byte while its epoch is current, and
 * re-derived only once the epoch has moved on: never re-encrypted in the same epoch.
 *
 * `resolve` is the typed program behind every user action: sync, publish, sync, post-commit,
 * until the intent is Processed. A lost epoch race is an `EpochConflict` in its error channel,
 * retried under the conflict schedule; transport failures retry under their own schedule.
 *
 * This module wires the parts: `IntentDerivation` (payloads), `PublishPending` (write ahead, send),
 * `WrittenAhead` (`send`'s one-transaction path), `InstallationChecks`, `PublishRound` and
 * `IntentResolution` (`resolve`).
 */
import type { StoredIntent } from "../domain/Stored.ts"
import type { EngineContext } from "./EngineContext.ts"
import type * as GroupSync from "./GroupSync.ts"
import * as InstallationChecks from "./InstallationChecks.ts"
import * as IntentDerivation from "./IntentDerivation.ts"
import * as IntentResolution from "./IntentResolution.ts"
import { failPublishing } from "./IntentQueue.ts"
import * as PublishPending from "./PublishPending.ts"
import * as PublishRound from "./PublishRound.ts"
import * as WrittenAhead from "./WrittenAhead.ts"

export type { KnownIntent } from "./IntentResolution.ts"

export const make = (ctx: EngineContext, sync: ReturnType<typeof GroupSync.make>) => {
  const { storage } = ctx

  const failIntent = (intent: StoredIntent, cause: string) => storage.transaction(failPublishing(ctx, intent, cause))

  const derivation = IntentDerivation.make(ctx)
  const checks = InstallationChecks.make(ctx, derivation)
  const pending = PublishPending.make(ctx, derivation, failIntent)
  const rounds = PublishRound.make(ctx, sync, checks, pending)
  const { queueWrittenAhead } = WrittenAhead.make(ctx, derivation, rounds)
  const { resolve, resolveSettling } = IntentResolution.make(ctx, rounds, failIntent)

  return {
    queueWrittenAhead,
    round: rounds.round,
    resolve,
    resolveSettling,
    checkInstallations: checks.checkInstallations,
    checkInstallationsKnown: checks.checkInstallationsKnown,
    checkInstallationsMany: checks.checkInstallationsMany
  }
}
