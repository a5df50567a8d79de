/**
 * The checks on inboxes a user names before anything is queued: well-formed ids, and for
 * inboxes to add, that they exist, and that at least one current installation has a usable key
 * package new enough for the group (the others are left out of the add, and tried again later).
 */
import { Effect, Either, Schema } from "effect"
import { InboxNotFound, InvalidInput, KeyPackageUnavailable } from "../domain/Errors.ts"
import { FIRST_PROTOCOL_VERSION } from "../domain/Model.ts"
import { type OfferedInstallation, splitByVersion } from "../domain/VersionFloor.ts"
import { currentInstallations } from "../domain/IdentityLog.ts"
import { InboxId, type InstallationId } from "../domain/Ids.ts"
import type { ClientContext } from "./ClientContext.ts"
import { fetchKeyPackagesInChunks } from "./DeliveryService.ts"
import * as LeafAuthentication from "./LeafAuthentication.ts"

const decodeInbox = Schema.decodeUnknown(InboxId)

export const validInboxes = (inboxIds: ReadonlyArray<unknown>) =>
  Effect.forEach(inboxIds, (id) =>
    decodeInbox(id).pipe(Effect.mapError(() => new InvalidInput({ reason: `not an inbox id: ${String(id)}` }))))

export const make = ({ env, self }: ClientContext) => {
  const { crypto, ds, identity } = env

  /**
   * Every inbox must exist and have a usable key package for at least one of its current
   * installations; those installations, with the versions their key packages advertise.
   */
  const offeredInstallations = (inboxIds: ReadonlyArray<InboxId>) =>
    Effect.gen(function*() {
      if (inboxIds.length === 0) return []
      const states = yield* identity.refreshMany(inboxIds)
      const installationsOf = new Map<InboxId, ReadonlyArray<InstallationId>>()
      for (const inboxId of inboxIds) {
        const inbox = states.get(inboxId)
        if (inbox === undefined) return yield* new InboxNotFound({ inboxId })
        installationsOf.set(inboxId, currentInstallations(inbox))
      }
      const all = [...installationsOf.values()].flat()
      const fetched = all.length === 0 ? [] : yield* fetchKeyPackagesInChunks(ds, all)
      const missing = new Set<InstallationId>()
      const offered: Array<OfferedInstallation> = []
      for (const [inboxId, installations] of installationsOf) {
        for (const installationId of installations) {
          const keyPackage = fetched.find((f) => f.installationId === installationId)?.keyPackage
          const problem = keyPackage === undefined
            ? "no key package"
            : yield* LeafAuthentication.fetchedKeyPackageProblem(crypto, identity, { installationId, inboxId }, keyPackage)
          if (problem !== undefined) missing.add(installationId)
          else {
            const { protocolVersion } = yield* crypto.keyPackageInfo(keyPackage!)
            offered.push({ inboxId, installationId, protocolVersion: protocolVersion ?? FIRST_PROTOCOL_VERSION })
          }
        }
      }
      for (const [inboxId, installations] of installationsOf) {
        const lacking = installations.filter((i) => missing.has(i))
        if (lacking.length === installations.length) {
          return yield* new KeyPackageUnavailable({ inboxId, installationIds: lacking })
        }
      }
      return offered
    })

  /** Every inbox must exist and have a usable key package for one of its current installations at least. */
  const checkAddable = (inboxIds: ReadonlyArray<InboxId>) => Effect.asVoid(offeredInstallations(inboxIds))

  const checkNewMembers = (
    inboxIds: ReadonlyArray<InboxId>,
    present: ReadonlySet<InboxId>,
    minProtocolVersion: number
  ) =>
    Effect.gen(function*() {
      if (inboxIds.includes(self)) return yield* new InvalidInput({ reason: "cannot add yourself" })
      const seen = new Set<string>()
      for (const id of inboxIds) {
        if (seen.has(id)) return yield* new InvalidInput({ reason: `inbox ${id} is listed twice` })
        if (present.has(id)) return yield* new InvalidInput({ reason: `inbox ${id} is already a member` })
        seen.add(id)
      }
      // One installation new enough per inbox: the group's minimum, or the one a new group will have.
      const split = splitByVersion(minProtocolVersion, yield* offeredInstallations(inboxIds), new Set(inboxIds))
      if (Either.isLeft(split)) return yield* split.left
    })

  return { validInboxes, checkAddable, checkNewMembers }
}
