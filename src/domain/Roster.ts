/**
 * Who holds which leaf of a group at one stored state: all that the installation checks (is
 * every member's current device in the group, is a revoked one still there) need of the state.
 * Kept beside the state, keyed by the digest of its stored bytes, so those checks after a restart
 * do not decode states (tens of ms each in a 100-member group) only to list their leaves.
 */
import { Schema } from "effect"
import { labelledHash, toHex } from "./Bytes.ts"
import { GroupId, InboxId, InstallationId } from "./Ids.ts"

const LeafIndex = Schema.Int.pipe(Schema.nonNegative())

export const RosterMember = Schema.Struct({ inboxId: InboxId, installationId: InstallationId, leafIndex: LeafIndex })
export type RosterMember = typeof RosterMember.Type

export const Roster = Schema.Struct({
  ownLeafIndex: LeafIndex,
  members: Schema.Array(RosterMember),
  /**
   * The group context's settings bytes (hex; null: the group has none), so reading a group's
   * name and policies needs no decode either. Absent from rosters kept before it was added.
   */
  metadata: Schema.optional(Schema.NullOr(Schema.String))
})
export type Roster = typeof Roster.Type

/** A group's roster and the digest of the stored state it was read from. */
export const StoredRoster = Schema.Struct({ groupId: GroupId, stateDigest: Schema.String, roster: Roster })
export type StoredRoster = typeof StoredRoster.Type

/** The digest that ties a roster to the exact stored state bytes it was read from. */
export const stateDigest = (mlsState: Uint8Array): string => toHex(labelledHash("group-roster", mlsState))

/** The roster of a group view (leaves without their keys, and the settings bytes). */
export const rosterOf = (view: {
  readonly ownLeafIndex: number
  readonly members: ReadonlyArray<RosterMember>
  readonly metadata: Uint8Array | undefined
}): Roster => ({
  ownLeafIndex: view.ownLeafIndex,
  members: view.members.map((m) => ({ inboxId: m.inboxId, installationId: m.installationId, leafIndex: m.leafIndex })),
  metadata: view.metadata === undefined ? null : toHex(view.metadata)
})
