/**
 * What every invariant check reads: the booted clients and their stores, names for traces, the
 * identity logs' truth, the welcomes each installation can open, and the list violations go to.
 */
import { Effect, Option, Schema } from "effect"
import { sha256Hex } from "../domain/Bytes.ts"
import type { ConversationId, GroupId, InboxId } from "../domain/Ids.ts"
import type { StoredGroup, StoredMessage } from "../domain/Stored.ts"
import { WelcomePayloadJson } from "../domain/Wire.ts"
import type { TestClient } from "../testing.ts"
import * as HistoryInvariants from "./HistoryInvariants.ts"
import type { Violation } from "./Report.ts"
import { identityTruth, type IdentityTruth, openWelcomes, short } from "./ServerView.ts"
import { booted, clientName, type World } from "./World.ts"

/** One installation's view of one group. */
export interface Held {
  readonly row: StoredGroup
  readonly messages: ReadonlyArray<StoredMessage>
  readonly info?: {
    readonly epoch: bigint
    readonly authenticator: string
    /** Member inboxes, sorted. */
    readonly inboxes: ReadonlyArray<string>
    /** Member installations, sorted. */
    readonly installations: ReadonlyArray<string>
    /** The group's name as this member reads it (groups only; the simulation names each by its label). */
    readonly name?: string | null
    /** All the group's governed settings (metadata, roles, policies, minimum version) as JSON. */
    readonly settings?: string
  }
}

/** An MLS group beneath a DM, as found in the clients' stores. */
export interface DmGroup {
  readonly groupId: GroupId
  readonly dmId: ConversationId
  /**
   * `dm(c0,c3)@c3`: the DM's inboxes and the installation that created the group (`@c3#2` for
   * its second one). Not a rank by creation time: both sides of a race create at once.
   */
  readonly label: string
  /** The installation that created it (the one whose row names its own inbox as adder). */
  readonly creator: number | undefined
  /** The two inboxes, by index. */
  readonly pair: readonly [number, number]
}

/** A welcome on an installation's topic: which group, and the commit that added it. */
export interface WelcomeSeen {
  readonly c: number
  readonly commitSequenceId: bigint
  readonly serverTimeNs: bigint
  /** Put there by the simulation's hostile input, not by a member. */
  readonly forged: boolean
}

/** A point where an installation joined a group: the epoch it started at, and that commit's place. */
export interface Join {
  readonly epoch: bigint
  readonly sequence: bigint
}

export type ClientStorage = Effect.Effect.Success<ReturnType<World["net"]["storage"]>>

export interface CheckContext {
  readonly world: World
  readonly violations: Array<Violation>
  readonly violate: (invariant: string, detail: string) => void
  /** Booted clients, by installation index. */
  readonly all: ReadonlyArray<readonly [number, TestClient]>
  readonly clients: ReadonlyMap<number, TestClient>
  readonly storages: ReadonlyMap<number, ClientStorage>
  readonly byInstallation: ReadonlyMap<string, number>
  readonly name: (c: number) => string
  readonly inboxName: (inbox: string) => string
  readonly installationName: (id: string) => string
  readonly inboxOf: (c: number) => InboxId
  readonly truth: IdentityTruth
  readonly currentOf: (inbox: string) => ReadonlySet<string>
  readonly revokedAt: (c: number) => bigint | undefined
  /** Whether another installation of the same inbox holds the message (history it could share). */
  readonly heldBySibling: (messageId: string, installationId: string) => boolean
  /** Welcomes each installation can open, by the group they invite to. */
  readonly welcomes: ReadonlyMap<GroupId, ReadonlyArray<WelcomeSeen>>
}

const decodeWelcome = Schema.decodeUnknownOption(WelcomePayloadJson)

/** Where each installation was invited: the welcomes it can open, forged ones marked. */
const welcomesOf = (world: World, all: ReadonlyArray<readonly [number, TestClient]>) =>
  Effect.gen(function*() {
    const welcomes = new Map<GroupId, Array<WelcomeSeen>>()
    for (const [c, client] of all) {
      const forged = world.forgedWelcomes.get(c) ?? new Set<string>()
      for (const { envelope, plaintext } of yield* openWelcomes(world, client)) {
        const payload = decodeWelcome(new TextDecoder().decode(plaintext))
        if (Option.isNone(payload)) continue
        const seen: WelcomeSeen = {
          c,
          commitSequenceId: payload.value.commitSequenceId,
          serverTimeNs: envelope.serverTimeNs,
          forged: forged.has(sha256Hex(envelope.payload))
        }
        welcomes.set(payload.value.groupId, [...(welcomes.get(payload.value.groupId) ?? []), seen])
      }
    }
    return welcomes
  })

export const makeCheckContext = (world: World) =>
  Effect.gen(function*() {
    const violations: Array<Violation> = []
    const violate = (invariant: string, detail: string) => {
      violations.push({ invariant, detail })
    }
    const all = booted(world)
    const clients = new Map(all)
    const name = (c: number) => clientName(c, world)
    const byInstallation = new Map<string, number>(all.map(([c, client]) => [client.installationId, c]))
    const inboxIndex = new Map<string, number>(world.inboxIds.map((id, i) => [id, i]))
    const inboxName = (inbox: string) => {
      const i = inboxIndex.get(inbox)
      return i === undefined ? `inbox ${short(inbox)}` : name(i)
    }
    const installationName = (id: string) => {
      const c = byInstallation.get(id)
      return c === undefined ? `installation ${short(id)}` : name(c)
    }
    const truth = yield* identityTruth(world)
    for (const problem of truth.problems) violate("identity-log", problem)
    const storages = new Map<number, ClientStorage>()
    for (const [c, client] of all) storages.set(c, yield* world.net.storage(client))
    const context: CheckContext = {
      world,
      violations,
      violate,
      all,
      clients,
      storages,
      byInstallation,
      name,
      inboxName,
      installationName,
      inboxOf: (c) => world.inboxIds[world.installs[c]!.inbox]!,
      truth,
      currentOf: (inbox) => truth.current.get(inbox) ?? new Set<string>(),
      revokedAt: (c) => truth.revokedAt.get(clients.get(c)!.installationId),
      heldBySibling: yield* HistoryInvariants.holders(world),
      welcomes: yield* welcomesOf(world, all)
    }
    return context
  })
