/**
 * Installations a membership commit left out because their key package is below the group's
 * minimum protocol version. Receivers refuse such an add, so the committer adds the inbox's
 * other devices and leaves these out; the installation checks then leave them alone for a while
 * instead of asking for their key packages on every sync, and try again after the wait (an
 * upgraded installation hands out a new key package, and nothing else tells the members).
 */
import { Duration } from "effect"
import type { InstallationId } from "../domain/Ids.ts"
import { LruCache } from "../domain/LruCache.ts"

/** How long a left-out installation waits before a check tries to add it again. */
export const SKIPPED_INSTALLATION_RETRY = Duration.minutes(1)
const RETRY_NS = Duration.unsafeToNanos(SKIPPED_INSTALLATION_RETRY)

/** Remembered at most; beyond it the oldest are forgotten (and merely tried again sooner). */
const CAPACITY = 10_000

export interface SkippedInstallation {
  readonly installationId: InstallationId
  /** The version its key package advertised. */
  readonly protocolVersion: number
}

export interface SkippedInstallations {
  /** Remembers that these were left out at `nowNs`. */
  readonly skip: (installations: ReadonlyArray<SkippedInstallation>, nowNs: bigint) => void
  /**
   * Whether a group of minimum `required` should wait before it tries the installation again: it
   * was left out less than the retry wait before `nowNs` with a version below `required`. Groups
   * with a lower minimum (a DM, an older group) add it meanwhile.
   */
  readonly waiting: (installationId: InstallationId, required: number, nowNs: bigint) => boolean
}

export const make = (): SkippedInstallations => {
  const skipped = new LruCache<{ readonly atNs: bigint; readonly protocolVersion: number }>(CAPACITY)
  return {
    skip: (installations, nowNs) => {
      for (const { installationId, protocolVersion } of installations) skipped.set(installationId, { atNs: nowNs, protocolVersion })
    },
    waiting: (installationId, required, nowNs) => {
      const entry = skipped.get(installationId)
      return entry !== undefined && entry.protocolVersion < required && nowNs - entry.atNs < RETRY_NS
    }
  }
}
