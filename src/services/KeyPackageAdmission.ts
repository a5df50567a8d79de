/**
 * Which installations an add takes in. Each key package the delivery service hands over must be
 * the one asked for (`LeafAuthentication.fetchedKeyPackageProblem`) and advertise a version the
 * group admits (`domain/VersionFloor`). An installation that fails either is left out and its
 * inbox's other devices go in: one device that never uploaded a key package, let it expire, or
 * runs an earlier build must not hold back every other device of the group's members (every
 * membership commit of the group would fail, again at every sync). The next installation check
 * asks for a left-out installation again; one below the group's minimum is remembered
 * (`SkippedInstallations`) so the checks wait a while first (only an upgrade changes that, and
 * nothing tells the members). A missing or unusable key package is often a moment's fault (an
 * upload lost, a service answering wrongly): it is asked for again after one check interval,
 * and after twice as long at each failure in a row, up to a minute.
 *
 * Only an inbox the user asked to add, with nobody of it left to add, fails the add.
 */
import { Clock, Effect, Either } from "effect"
import { DeliveryError, KeyPackageUnavailable } from "../domain/Errors.ts"
import { settingsOrDefaults } from "../domain/GroupSettings.ts"
import type { InboxId, InstallationId } from "../domain/Ids.ts"
import { FIRST_PROTOCOL_VERSION } from "../domain/Model.ts"
import { splitByVersion } from "../domain/VersionFloor.ts"
import { fetchKeyPackagesInChunks } from "./DeliveryService.ts"
import type { EngineContext } from "./EngineContext.ts"
import * as LeafAuthentication from "./LeafAuthentication.ts"
import type { MlsGroupState } from "./MlsCrypto.ts"

/** An installation to add, and the inbox it must belong to. */
export interface Wanted {
  readonly installationId: InstallationId
  readonly inboxId: InboxId
}

/** Installations to add with their key packages, in the same order. */
export interface Admitted {
  readonly wanted: ReadonlyArray<Wanted>
  readonly packages: ReadonlyArray<Uint8Array>
}

export const NOBODY: Admitted = { wanted: [], packages: [] }

/** An installation whose key package cannot go into a commit, and why. */
interface Unusable extends LeafAuthentication.KeyPackageProblem {
  readonly wanted: Wanted
}

/** The key packages of `add`, each checked to be the one asked for; the delivery service is not trusted with them. */
const fetchChecked = (ctx: EngineContext, add: ReadonlyArray<Wanted>) =>
  Effect.gen(function*() {
    const fetched = yield* fetchKeyPackagesInChunks(ctx.ds, add.map((w) => w.installationId))
    const byInstallation = new Map(fetched.map((f) => [f.installationId, f.keyPackage]))
    const usable: Array<{ readonly wanted: Wanted; readonly keyPackage: Uint8Array }> = []
    const unusable: Array<Unusable> = []
    for (const wanted of add) {
      const keyPackage = byInstallation.get(wanted.installationId)
      const problem = keyPackage === undefined
        ? { reason: "no key package", answeredWrongly: false }
        : yield* LeafAuthentication.fetchedKeyPackageProblem(ctx.crypto, ctx.identity, wanted, keyPackage)
      if (problem === undefined) usable.push({ wanted, keyPackage: keyPackage! })
      else unusable.push({ wanted, ...problem })
    }
    return { usable, unusable }
  })

/** An asked inbox with wanted installations and none usable: the add cannot take it in. */
const nobodyUsable = (asked: ReadonlySet<InboxId>, add: ReadonlyArray<Wanted>, usable: ReadonlyArray<{ readonly wanted: Wanted }>, unusable: ReadonlyArray<Unusable>) => {
  for (const inboxId of asked) {
    if (!add.some((w) => w.inboxId === inboxId) || usable.some((u) => u.wanted.inboxId === inboxId)) continue
    const lacking = unusable.filter((u) => u.wanted.inboxId === inboxId)
    // A wrong answer is asked again later: the intent waits rather than fails.
    const wrong = lacking.find((u) => u.answeredWrongly)
    return wrong !== undefined
      ? new DeliveryError({ reason: "InvalidKeyPackage", retryable: true, detail: `the delivery service answered wrongly: ${wrong.reason}` })
      : new KeyPackageUnavailable({ inboxId, installationIds: lacking.map((u) => u.wanted.installationId) })
  }
  return undefined
}

/**
 * The key packages of `add` that this state's group takes in. The others are left out and logged
 * (the old ones remembered); an inbox of `asked` with nobody left to add fails the add: `KeyPackageUnavailable`
 * (or a retryable `DeliveryError` when the service answered with someone else's package), or
 * `ProtocolVersionTooOld` when its devices all run builds below the group's minimum.
 */
export const admittedPackages = Effect.fn("KeyPackageAdmission.admittedPackages")(function*(
  ctx: EngineContext,
  state: MlsGroupState,
  add: ReadonlyArray<Wanted>,
  asked: ReadonlySet<InboxId> = new Set()
) {
  if (add.length === 0) return NOBODY
  const { usable, unusable } = yield* fetchChecked(ctx, add)
  const refused = nobodyUsable(asked, add, usable, unusable)
  if (refused !== undefined) return yield* refused
  const required = settingsOrDefaults(ctx.crypto.view(state).metadata).minProtocolVersion
  const offered = yield* Effect.forEach(usable, ({ keyPackage, wanted }) =>
    Effect.map(ctx.crypto.keyPackageInfo(keyPackage), (info) => ({
      ...wanted,
      protocolVersion: info.protocolVersion ?? FIRST_PROTOCOL_VERSION
    })))
  const split = splitByVersion(required, offered, asked)
  if (Either.isLeft(split)) return yield* split.left
  const { admitted, tooOld } = split.right
  const now = yield* Clock.currentTimeNanos
  if (tooOld.length > 0) ctx.skippedInstallations.skip(tooOld, now)
  if (unusable.length > 0) ctx.skippedInstallations.unusable(unusable.map((u) => u.wanted.installationId), now)
  if (tooOld.length > 0 || unusable.length > 0) {
    yield* Effect.logWarning("installations left out of the add").pipe(Effect.annotateLogs({
      required,
      installations: [
        ...tooOld.map((o) => `${o.installationId}: version ${o.protocolVersion}`),
        ...unusable.map((u) => `${u.wanted.installationId}: ${u.reason}`)
      ].join("; ")
    }))
  }
  const kept = new Set(admitted.map((o) => o.installationId))
  ctx.skippedInstallations.admitted([...kept])
  const taken = usable.filter((u) => kept.has(u.wanted.installationId))
  return { wanted: taken.map((u) => u.wanted), packages: taken.map((u) => u.keyPackage) } satisfies Admitted
})
