/**
 * What the checks of one group (GroupChecks, GroupMessageChecks) share: its members' views, the
 * topic's truth and who was expected where.
 */
import type { GroupId } from "../domain/Ids.ts"
import type { DmGroup, Held, Join } from "./CheckContext.ts"

/** What the checks of one group share: its members' views and the topic's truth. */
export interface GroupFacts {
  readonly groupId: GroupId
  readonly label: string
  readonly creator: number | undefined
  readonly dm: DmGroup | undefined
  readonly held: ReadonlyMap<number, Held>
  readonly claimed: ReadonlyMap<bigint, { readonly kind: string; readonly epoch: bigint }>
  readonly inForce: ReadonlyMap<bigint, bigint>
  readonly finalEpoch: bigint
  /** Whether the inbox was a member at every epoch from `from` to `to`. */
  readonly memberThroughout: (inbox: string, from: bigint, to: bigint) => boolean
  readonly expectedMembers: ReadonlyArray<string>
  readonly expectedInstallations: ReadonlyArray<string>
  /**
   * Those of `expectedInstallations` below the group's final minimum version (devices of an
   * earlier build): in if they joined before a bump raised it, else left out. Either is right.
   */
  readonly optionalInstallations: ReadonlyArray<string>
  /** Joins backed by a real welcome (or creation): where an installation surely was a member. */
  readonly joins: ReadonlyMap<number, ReadonlyArray<Join>>
  /** Joins including forged welcomes: where an installation might conceivably have got in. */
  readonly mayHaveJoined: ReadonlyMap<number, ReadonlyArray<Join>>
}

/** The last join at or before `epoch`. */
export const joinedBy = (list: ReadonlyArray<Join> | undefined, epoch: bigint) =>
  (list ?? []).filter((j) => j.epoch <= epoch).at(-1)

/** Whether any member's view of the group lists the installation among its leaves. */
export const listedByMembers = (held: ReadonlyMap<number, Held>, installation: string): boolean =>
  [...held.values()].some((v) => v.info?.installations.includes(installation) === true)
