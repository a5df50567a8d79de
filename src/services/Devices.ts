/**
 * The installations of this client's inbox, as its identity log has them, and their revocation.
 *
 * Revoking needs the inbox's root key: only an installation holding it (the inbox's first, or
 * one it was handed to) can sign the log entry; others get `InvalidIdentityUpdate` saying so.
 * The current installation cannot revoke itself (`InvalidInput`): a device that signs itself
 * out of its inbox cannot sign anything after, so that is done from another installation.
 * Once the log says so, every remaining member removes the revoked installation from every
 * group in its next `syncAll` (`DeviceSync`), and the service refuses its writes at once.
 */
import { Effect, HashMap, HashSet, Schema } from "effect"
import { InstallationId } from "../domain/Ids.ts"
import { currentInstallations } from "../domain/IdentityLog.ts"
import { InstallationNotFound, InvalidInput } from "../domain/Errors.ts"
import type { Identity } from "./Identity.ts"

export interface InstallationInfo {
  readonly installationId: InstallationId
  readonly current: boolean
}

const decodeInstallation = Schema.decodeUnknown(InstallationId)

export const make = (identity: Identity["Type"]) => {
  /** The inbox's current installations from its log, refreshed from the service; this one first. */
  const installations = Effect.fn("Client.installations")(function*() {
    const state = yield* identity.inboxState(identity.inboxId)
    const ids = currentInstallations(state)
    return [
      ...ids.filter((id) => id === identity.installationId),
      ...ids.filter((id) => id !== identity.installationId)
    ].map((installationId): InstallationInfo => ({ installationId, current: installationId === identity.installationId }))
  })

  const revokeInstallation = Effect.fn("Client.revokeInstallation")(function*(id: InstallationId) {
    const target = yield* decodeInstallation(id).pipe(
      Effect.mapError(() => new InvalidInput({ reason: `not an installation id: ${String(id).slice(0, 80)}` }))
    )
    if (target === identity.installationId) {
      return yield* new InvalidInput({
        reason: "cannot revoke the installation in use: revoke it from another installation of this inbox"
      })
    }
    const state = yield* identity.inboxState(identity.inboxId)
    // Revoked already: done (a retry after a lost answer must not fail).
    if (HashSet.has(state.revoked, target)) return
    if (!HashMap.has(state.installations, target)) return yield* new InstallationNotFound({ installationId: target })
    yield* identity.revokeInstallation(target)
  })

  return { installations: installations(), revokeInstallation }
}
