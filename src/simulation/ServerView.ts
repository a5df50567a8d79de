/**
 * What the delivery service holds, read as the truth the checks judge by: whole topics, the
 * welcomes each installation can open, the epochs along a group topic, and the identity logs.
 */
import { Effect, Either, Option } from "effect"
import { sha256Hex } from "../domain/Bytes.ts"
import * as IdentityLog from "../domain/IdentityLog.ts"
import type { GroupId, InstallationId } from "../domain/Ids.ts"
import type { GroupMessageEnvelope } from "../domain/Wire.ts"
import type { TestClient } from "../testing.ts"
import type { World } from "./World.ts"

export const short = (hex: string) => hex.slice(0, 8)

/** A whole group topic as the server holds it. */
export const readTopic = (world: World, groupId: GroupId) => world.net.inspect.groupMessages(groupId)

/** A whole welcome topic as the server holds it. */
export const readWelcomes = (world: World, installationId: InstallationId) => world.net.inspect.welcomes(installationId)

/**
 * A client's welcomes as only it can read them: opened with its own key packages (what it
 * cannot open, it could never act on).
 */
export const openWelcomes = (world: World, client: TestClient) =>
  Effect.gen(function*() {
    const storage = yield* world.net.storage(client)
    const bundles = (yield* storage.keyPackages.list.pipe(Effect.orDie)).map((k) => ({
      ref: k.ref,
      publicPackage: k.publicPackage,
      privatePackage: k.privatePackage
    }))
    const opened = yield* Effect.forEach(yield* readWelcomes(world, client.installationId), (envelope) =>
      world.net.crypto.openSealed(envelope.payload, bundles).pipe(
        Effect.map((o) => Option.some({ envelope, plaintext: o.plaintext })),
        Effect.orElseSucceed(() => Option.none())
      ))
    return opened.flatMap((o) => Option.isSome(o) ? [o.value] : [])
  })

/** Epochs along the topic: the epoch each envelope claims, the one in force where it lies, the winning commits. */
export const walkTopic = (world: World, groupId: GroupId, envelopes: ReadonlyArray<GroupMessageEnvelope>) =>
  Effect.gen(function*() {
    let epoch = 0n
    const claimed = new Map<bigint, { readonly kind: string; readonly epoch: bigint }>()
    const inForce = new Map<bigint, bigint>()
    /** Sequence of each winning commit -> the epoch it started. */
    const winners = new Map<bigint, bigint>()
    for (const envelope of envelopes) {
      inForce.set(envelope.sequenceId, epoch)
      const header = yield* world.net.crypto.inspect(envelope.payload).pipe(Effect.option)
      if (Option.isNone(header) || header.value.groupId !== groupId) continue
      claimed.set(envelope.sequenceId, { kind: header.value.kind, epoch: header.value.epoch })
      // The first commit for the current epoch wins; later ones for it lost the race. A forged
      // commit the policy forbids is skipped by every member, as if it were not there.
      const forged = world.forgedCommits.has(sha256Hex(envelope.payload))
      if (header.value.kind === "commit" && header.value.epoch === epoch && !forged) {
        epoch++
        winners.set(envelope.sequenceId, epoch)
      }
    }
    return { finalEpoch: epoch, claimed, inForce, winners }
  })

/** What the identity logs say: each inbox's current installations, and when devices came and went. */
export const identityTruth = (world: World) =>
  Effect.gen(function*() {
    const current = new Map<string, ReadonlySet<string>>()
    const registeredAt = new Map<string, bigint>()
    const revokedAt = new Map<string, bigint>()
    const problems: Array<string> = []
    for (const inboxId of world.inboxIds) {
      const [log] = yield* world.net.delivery.getIdentityUpdates([{ inboxId, afterSequence: 0 }])
      let state: IdentityLog.InboxState | undefined
      for (const envelope of log?.updates ?? []) {
        const next = IdentityLog.applyUpdate(state, envelope.update)
        if (Either.isLeft(next)) {
          problems.push(`identity log of inbox ${short(inboxId)}: ${next.left.message}`)
          break
        }
        state = next.right
        const action = envelope.update.action
        if (action._tag === "AddInstallation") registeredAt.set(action.installationId, envelope.serverTimeNs)
        if (action._tag === "RevokeInstallation") revokedAt.set(action.installationId, envelope.serverTimeNs)
      }
      current.set(inboxId, new Set(state === undefined ? [] : IdentityLog.currentInstallations(state)))
    }
    return { current, registeredAt, revokedAt, problems }
  })

export type IdentityTruth = Effect.Effect.Success<ReturnType<typeof identityTruth>>
