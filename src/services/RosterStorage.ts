/**
 * The rosters kept beside group states (`domain/Roster.ts`): a repository of the `Storage` port
 * (`storage.rosters`). A roster is derived data, trusted only for the state digest it names.
 */
import type { Effect, Option } from "effect"
import type { StorageError } from "../domain/Errors.ts"
import type { GroupId } from "../domain/Ids.ts"
import type { StoredRoster } from "../domain/Roster.ts"

export interface RosterRepository {
  /** The roster last kept for the group, whatever state it was read from. */
  readonly get: (groupId: GroupId) => Effect.Effect<Option.Option<StoredRoster>, StorageError>
  /** Keeps the group's roster (one per group: the newest replaces the last). */
  readonly put: (roster: StoredRoster) => Effect.Effect<void, StorageError>
}
