/**
 * Installations a membership commit left out, so the installation checks leave them alone for
 * a while instead of asking for their key packages at every check of every group.
 *
 * - **Too old**: a key package below the group's minimum protocol version. Receivers refuse such
 *   an add, so the committer adds the inbox's other devices and leaves these out. Tried again
 *   after a minute (an upgraded installation hands out a new key package, and nothing else tells
 *   the members); a group with a lower minimum (a DM, an older group) adds it meanwhile.
 * - **Unusable**: no key package, or one that does not verify. Often a moment's fault (an upload
 *   lost, a service answering wrongly), so the first wait is one check interval; each failure in
 *   a row doubles it, up to a minute. A device that never comes back (a phone thrown away before
 *   its key package went out) then costs one key-package request a minute for all the groups it
 *   is missing from, not one per group at every check (every 5 s).
 */
import { Duration } from "effect"
import type { InstallationId } from "../domain/Ids.ts"
import { LruCache } from "../domain/LruCache.ts"

/** How long a left-out installation waits at most before a check tries to add it again. */
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
  /** Remembers that these were left out at `nowNs` for being below a group's minimum. */
  readonly skip: (installations: ReadonlyArray<SkippedInstallation>, nowNs: bigint) => void
  /** Remembers that these had no usable key package at `nowNs`: the wait grows with each failure in a row. */
  readonly unusable: (installationIds: ReadonlyArray<InstallationId>, nowNs: bigint) => void
  /** Forgets these: they went into a group. */
  readonly admitted: (installationIds: ReadonlyArray<InstallationId>) => void
  /**
   * Whether a group of minimum `required` should wait before it tries the installation again:
   * its key package was unusable and its wait has not run out, or it was left out less than a
   * minute before `nowNs` with a version below `required`.
   */
  readonly waiting: (installationId: InstallationId, required: number, nowNs: bigint) => boolean
}

type Entry =
  | { readonly _tag: "TooOld"; readonly atNs: bigint; readonly protocolVersion: number }
  | { readonly _tag: "Unusable"; readonly untilNs: bigint; readonly failures: number }

/** The wait after the `failures`-th unusable answer in a row: the check interval, doubled each time, at most a minute. */
export const unusableWaitNs = (checkIntervalNs: bigint, failures: number): bigint => {
  const doubled = checkIntervalNs * 2n ** BigInt(Math.min(failures - 1, 32))
  return doubled < RETRY_NS ? doubled : RETRY_NS
}

/** `checkIntervalNs`: the engine's installation check interval, the first wait of an unusable installation. */
export const make = (checkIntervalNs: bigint = 0n): SkippedInstallations => {
  const skipped = new LruCache<Entry>(CAPACITY)
  return {
    skip: (installations, nowNs) => {
      for (const { installationId, protocolVersion } of installations) {
        skipped.set(installationId, { _tag: "TooOld", atNs: nowNs, protocolVersion })
      }
    },
    unusable: (installationIds, nowNs) => {
      for (const installationId of installationIds) {
        const before = skipped.get(installationId)
        const failures = before?._tag === "Unusable" ? before.failures + 1 : 1
        skipped.set(installationId, { _tag: "Unusable", untilNs: nowNs + unusableWaitNs(checkIntervalNs, failures), failures })
      }
    },
    admitted: (installationIds) => {
      for (const installationId of installationIds) skipped.delete(installationId)
    },
    waiting: (installationId, required, nowNs) => {
      const entry = skipped.get(installationId)
      if (entry === undefined) return false
      return entry._tag === "Unusable"
        ? nowNs < entry.untilNs
        : entry.protocolVersion < required && nowNs - entry.atNs < RETRY_NS
    }
  }
}
