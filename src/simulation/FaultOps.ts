/**
 * Faults and hostile input carried out: delivery faults armed on the network, crash points,
 * an outsider injecting bytes into topics, forged welcomes and commits, a lying key-package
 * directory, and governance through the API next to a role grab built outside it.
 */
import { Effect, Option, Schema } from "effect"
import { sha256Hex, utf8 } from "../domain/Bytes.ts"
import { encodeSettings, settingsOrDefaults } from "../domain/GroupSettings.ts"
import type { GroupId, InstallationId } from "../domain/Ids.ts"
import { GroupMetadata } from "../domain/Model.ts"
import { GroupMessageInput, WelcomeMessageInput, WelcomePayload, WelcomePayloadJson } from "../domain/Wire.ts"
import type { Conversation } from "../services/Client.ts"
import type { TestClient } from "../testing.ts"
import * as Adversary from "./Adversary.ts"
import * as Invariants from "./Invariants.ts"
import type * as Plan from "./Plan.ts"
import * as Prng from "./Prng.ts"
import { Skipped } from "./Verdict.ts"
import { booted, type World } from "./World.ts"

/** What the fault operations need of the run: its world and how it finds clients and groups. */
export interface FaultEnv {
  readonly world: World
  /** The `full` profile (several installations per inbox). */
  readonly full: boolean
  readonly clientName: (c: number) => string
  readonly clientOf: (c: number) => Effect.Effect<TestClient, Skipped>
  readonly groupOrSkip: (g: number) => Effect.Effect<GroupId, Skipped>
  readonly conversationOf: (c: number, g: number) => Effect.Effect<Conversation, unknown>
}

export const make = ({ clientName, clientOf, conversationOf, full, groupOrSkip, world }: FaultEnv) => {
  const { net } = world
  // Hostile input comes from an outsider with an account: the server refuses what is not an
  // MLS message of the topic's own group; what it accepts, the members must cope with.
  const inject = (groupId: GroupId, payload: Uint8Array) =>
    net.intruder.pipe(
      Effect.flatMap((intruder) => intruder.sendGroupMessages([GroupMessageInput.make({ groupId, payload })])),
      Effect.map(([e]) => `stored as sequence ${e?.sequenceId}`)
    )

  const envelopeOf = (g: number, pick: number) =>
    Effect.gen(function*() {
      const groupId = yield* groupOrSkip(g)
      const envelopes = yield* Invariants.readTopic(world, groupId)
      if (envelopes.length === 0) return yield* new Skipped({ reason: `g${g} has no envelopes yet` })
      return { groupId, envelope: envelopes[pick % envelopes.length]! }
    })

  const welcomesOf = (c: number) =>
    clientOf(c).pipe(Effect.flatMap((client) => Invariants.readWelcomes(world, client.installationId)))

  /** Seals bytes to an installation's current (public) key package, as anyone can. */
  const sealTo = (installationId: InstallationId, plaintext: Uint8Array) =>
    Effect.gen(function*() {
      const [fetched] = yield* net.delivery.fetchKeyPackages([installationId])
      if (fetched?.keyPackage === undefined) return yield* new Skipped({ reason: "no key package to seal to" })
      return yield* net.crypto.sealToKeyPackage(fetched.keyPackage, plaintext)
    })

  const forgeWelcome = (op: Extract<Plan.Op, { _tag: "ForgeWelcome" }>) =>
    Effect.gen(function*() {
      const target = (yield* clientOf(op.c)).installationId
      const rng = Prng.make(op.salt)
      /** A forgery (not a re-sent welcome of its own) is remembered, so the checks ignore it. */
      const send = (payload: Uint8Array, forged = true) =>
        Effect.suspend(() => {
          if (forged) {
            const digests = world.forgedWelcomes.get(op.c) ?? new Set<string>()
            digests.add(sha256Hex(payload))
            world.forgedWelcomes.set(op.c, digests)
          }
          return Effect.flatMap(
            net.intruder,
            (intruder) => intruder.sendWelcomeMessages([WelcomeMessageInput.make({ installationId: target, payload })])
          )
        }).pipe(Effect.as("stored as a welcome"))
      switch (op.variant) {
        case "garbage":
          return yield* send(rng.bytes(rng.between(1, 200)))
        case "badWelcome": {
          // Well sealed to the target (key packages are public), with a group id it may
          // know but a welcome that is garbage: it must open it and refuse what is inside.
          const known = world.groups.filter((g): g is GroupId => g !== undefined)
          if (known.length === 0) return yield* new Skipped({ reason: "no group yet" })
          const payload = WelcomePayload.make({
            groupId: known[op.pick % known.length]!,
            commitSequenceId: 1n,
            welcome: rng.bytes(rng.between(16, 400))
          })
          return yield* send(yield* sealTo(target, utf8(Schema.encodeSync(WelcomePayloadJson)(payload))))
        }
        case "misaddressed": {
          const others = booted(world).map(([i]) => i).filter((i) => i !== op.c)
          let all = (yield* Effect.forEach(others, welcomesOf)).flat()
          if (full) {
            // Not one this installation got too (a commit sends the same bytes to everyone it adds).
            const own = new Set((yield* welcomesOf(op.c)).map((w) => sha256Hex(w.payload)))
            all = all.filter((w) => !own.has(sha256Hex(w.payload)))
          }
          if (all.length === 0) return yield* new Skipped({ reason: "no welcome sent to anyone else yet" })
          return yield* send(all[op.pick % all.length]!.payload)
        }
        case "stale": {
          // The strongest replayer: one who holds the plaintext of an old welcome of the
          // target (its old adder, say), and seals it again, its fields in another order.
          const client = yield* clientOf(op.c)
          const own = yield* net.storage(client).pipe(Effect.flatMap((s) => s.keyPackages.list), Effect.orDie)
          const bundles = own.map((k) => ({ ref: k.ref, publicPackage: k.publicPackage, privatePackage: k.privatePackage }))
          const opened = yield* Effect.forEach(yield* welcomesOf(op.c), (w) =>
            net.crypto.openSealed(w.payload, bundles).pipe(
              Effect.map((opened) => ({ w, plain: opened.plaintext })),
              Effect.option
            ))
          const real = opened.flatMap((o) =>
            Option.isSome(o) &&
              Option.isSome(Schema.decodeUnknownOption(WelcomePayloadJson)(new TextDecoder().decode(o.value.plain)))
              ? [o.value]
              : []
          )
          if (real.length === 0) return yield* new Skipped({ reason: `${clientName(op.c)} has no welcome yet` })
          const original = real[op.pick % real.length]!
          const fields = Object.entries(JSON.parse(new TextDecoder().decode(original.plain)) as object).reverse()
          const resealed = yield* sealTo(target, utf8(` ${JSON.stringify(Object.fromEntries(fields))}`))
          return `re-sent welcome ${original.w.sequenceId}: ${yield* send(resealed, false)}`
        }
      }
    })

  /** Governance through the API, and a role grab built outside it (`Params.governance`). */
  const governance = (
    op: Extract<Plan.Op, { readonly _tag: "Rename" | "SetRole" | "SetPolicy" | "ForgeRoleGrab" | "SetMinVersion" }>
  ): Effect.Effect<string, unknown> =>
    Effect.gen(function*() {
      switch (op._tag) {
        case "Rename": {
          const cv = yield* conversationOf(op.c, op.g)
          world.renamed.add(op.g)
          const { name } = yield* cv.metadata
          yield* cv.updateMetadata({ name: op.name }, { ifMatch: { name } })
          return "ok"
        }
        case "SetRole": {
          const cv = yield* conversationOf(op.c, op.g)
          const target = world.inboxIds[op.target]!
          // Recorded before it runs: whatever the outcome, this promotion was asked for.
          if (op.role === "superAdmin") {
            world.promoted.set(op.g, (world.promoted.get(op.g) ?? new Set()).add(target))
          }
          yield* cv.setRole(target, op.role)
          return "ok"
        }
        case "SetPolicy": {
          const cv = yield* conversationOf(op.c, op.g)
          const { policy } = op
          yield* cv.updatePermissions({ addMember: policy, removeMember: policy, updateMetadata: policy })
          return "ok"
        }
        case "ForgeRoleGrab":
          return yield* forgeRoleGrab(op.c, op.g)
        case "SetMinVersion": {
          const cv = yield* conversationOf(op.c, op.g)
          yield* cv.setMinProtocolVersion(op.version)
          return "ok"
        }
      }
    })

  /** `c` commits, from its own stored state and outside the API, settings naming itself super admin. */
  const forgeRoleGrab = (c: number, g: number) =>
    Effect.gen(function*() {
      const client = yield* clientOf(c)
      const groupId = yield* groupOrSkip(g)
      const row = yield* (yield* net.storage(client)).groups.get(groupId)
      if (Option.isNone(row) || row.value.membershipState === "inactive") {
        return yield* new Skipped({ reason: `${clientName(c)} is not in ${groupId}` })
      }
      const state = yield* net.crypto.deserialize(row.value.mlsState)
      const settings = settingsOrDefaults(net.crypto.view(state).metadata)
      if (settings.superAdmins.includes(client.inboxId)) {
        return yield* new Skipped({ reason: `${clientName(c)} is a super admin already` })
      }
      const grabbed = new GroupMetadata({ ...settings, superAdmins: [...settings.superAdmins, client.inboxId] })
      const { commit } = yield* net.crypto.createCommit(state, { metadata: encodeSettings(grabbed) })
      const ds = yield* net.deliveryAs(client)
      world.forgedCommits.add(sha256Hex(commit))
      yield* ds.sendGroupMessages([GroupMessageInput.make({ groupId, payload: commit })])
      return `sent a forged role grab at epoch ${net.crypto.view(state).epoch}`
    })

  const fault = (op: Plan.Op): Effect.Effect<string, unknown> => {
    const f = net.faults
    const withInstallation = <A, E>(c: number, f: (id: TestClient["installationId"]) => Effect.Effect<A, E>) =>
      clientOf(c).pipe(Effect.flatMap((client) => f(client.installationId)))
    switch (op._tag) {
      case "Drop":
        return f.dropNext(op.n, op.op).pipe(Effect.as("armed"))
      case "LoseResponse":
        return f.loseNextResponse(op.n, op.op).pipe(Effect.as("armed"))
      case "Partition":
        return withInstallation(op.c, f.partition).pipe(Effect.as("ok"))
      case "Heal":
        return withInstallation(op.c, f.heal).pipe(Effect.as("ok"))
      case "Duplicate":
        return f.duplicateNextDelivery(op.n).pipe(Effect.as("armed"))
      case "PauseSubscriber":
        return withInstallation(op.c, f.pauseSubscriber).pipe(Effect.as("ok"))
      case "ResumeSubscriber":
        return withInstallation(op.c, f.resumeSubscriber).pipe(Effect.as("ok"))
      case "HoldTopic":
        return groupOrSkip(op.g).pipe(Effect.flatMap(f.holdTopic), Effect.as("ok"))
      case "ReleaseTopic":
        return groupOrSkip(op.g).pipe(Effect.flatMap(f.releaseTopic), Effect.as("ok"))
      case "Crash":
        return clientOf(op.c).pipe(Effect.flatMap((client) => net.crashAt(client, op.point)), Effect.as("armed"))
      case "InjectGarbage":
        return groupOrSkip(op.g).pipe(Effect.flatMap((id) => inject(id, Prng.make(op.salt).bytes(op.size))))
      case "InjectTruncated":
        return envelopeOf(op.g, op.pick).pipe(
          Effect.flatMap(({ envelope, groupId }) => {
            const n = envelope.payload.length
            const keep = Math.max(1, Math.min(n - 1, Math.floor(n * op.keep)))
            return inject(groupId, envelope.payload.slice(0, keep)).pipe(
              Effect.map((r) => `first ${keep} of ${n} bytes of sequence ${envelope.sequenceId}: ${r}`)
            )
          })
        )
      case "InjectReplay":
        return envelopeOf(op.g, op.pick).pipe(
          Effect.flatMap(({ envelope, groupId }) =>
            inject(groupId, envelope.payload).pipe(Effect.map((r) => `sequence ${envelope.sequenceId} again: ${r}`))
          )
        )
      case "InjectForeign":
        return Effect.gen(function*() {
          if (op.from === op.g) return yield* new Skipped({ reason: "same group" })
          const target = yield* groupOrSkip(op.g)
          const { envelope } = yield* envelopeOf(op.from, op.pick)
          return `sequence ${envelope.sequenceId} of g${op.from}: ${yield* inject(target, envelope.payload)}`
        })
      case "ForgeWelcome":
        return forgeWelcome(op)
      case "LieKeyPackages":
        return f.substituteKeyPackages(op.n).pipe(Effect.as("armed"))
      case "ForgeCommit":
        return Effect.gen(function*() {
          const groupId = yield* groupOrSkip(op.g)
          const client = yield* clientOf(op.c)
          const row = yield* net.storage(client).pipe(Effect.flatMap((s) => s.groups.get(groupId)), Effect.orDie)
          if (Option.isNone(row) || row.value.membershipState === "inactive") {
            return yield* new Skipped({ reason: `${clientName(op.c)} is not in g${op.g}` })
          }
          const forged = yield* Adversary.forgeCommit(row.value.mlsState, op.variant)
          if (forged === undefined) return yield* new Skipped({ reason: "ts-mls would not build it" })
          world.forgedCommits.add(sha256Hex(forged))
          return yield* inject(groupId, forged)
        })
      default:
        return Effect.dieMessage(`not a fault: ${op._tag}`)
    }
  }

  return { fault, governance, welcomesOf }
}
