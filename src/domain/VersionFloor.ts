/**
 * Which installations an add may take in, by the protocol version their key packages advertise:
 * every receiver refuses an added leaf below the group's minimum, so the committer leaves such
 * installations out and adds the inbox's others. An inbox the user asked to add with none new
 * enough is refused as a whole: adding it would add nobody who can read the group.
 */
import { Either } from "effect"
import { ProtocolVersionTooOld } from "./Errors.ts"
import type { InboxId, InstallationId } from "./Ids.ts"

export interface OfferedInstallation {
  readonly inboxId: InboxId
  readonly installationId: InstallationId
  /** What its key package advertises. */
  readonly protocolVersion: number
}

export interface VersionSplit {
  /** At or above the minimum: these go in. */
  readonly admitted: ReadonlyArray<OfferedInstallation>
  /** Below it: left out, tried again later (an upgrade hands out a new key package). */
  readonly tooOld: ReadonlyArray<OfferedInstallation>
}

/**
 * Splits `offered` at `required`. An inbox of `asked` with installations on offer but none at or
 * above `required` fails the whole split, naming the newest version it offers.
 */
export const splitByVersion = (
  required: number,
  offered: ReadonlyArray<OfferedInstallation>,
  asked: ReadonlySet<InboxId> = new Set()
): Either.Either<VersionSplit, ProtocolVersionTooOld> => {
  const admitted = offered.filter((o) => o.protocolVersion >= required)
  const tooOld = offered.filter((o) => o.protocolVersion < required)
  for (const inboxId of asked) {
    const theirs = offered.filter((o) => o.inboxId === inboxId)
    if (theirs.length > 0 && !theirs.some((o) => o.protocolVersion >= required)) {
      const current = Math.max(...theirs.map((o) => o.protocolVersion))
      return Either.left(new ProtocolVersionTooOld({ required, current }))
    }
  }
  return Either.right({ admitted, tooOld })
}
