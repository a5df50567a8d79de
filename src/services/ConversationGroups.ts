/** The MLS groups behind a conversation, and the one its next write goes to. */
import { Effect, Option } from "effect"
import { ConversationNotFound, GroupInactive } from "../domain/Errors.ts"
import type { ConversationId, GroupId } from "../domain/Ids.ts"
import type { Storage } from "./Storage.ts"

export const make = (storage: Storage["Type"]) => {
  /** The MLS groups behind a conversation: one for a group, possibly several for a DM, most recent first. */
  const groupsOf = (id: ConversationId, kind: "group" | "dm") =>
    kind === "dm"
      ? storage.groups.byDmId(id)
      : storage.groups.get(id as unknown as GroupId).pipe(Effect.map(Option.toArray))

  /** The group the next send uses: the most recently used one this installation is active in. */
  const primaryOf = (id: ConversationId, kind: "group" | "dm") =>
    Effect.gen(function*() {
      const groups = yield* groupsOf(id, kind)
      const primary = groups.find((g) => g.membershipState !== "inactive") ?? groups[0]
      if (primary === undefined) return yield* new ConversationNotFound({ conversationId: id })
      return primary
    })

  const activePrimary = (id: ConversationId, kind: "group" | "dm") =>
    primaryOf(id, kind).pipe(
      Effect.filterOrFail((g) => g.membershipState !== "inactive", (g) => new GroupInactive({ groupId: g.id }))
    )

  /**
   * `activePrimary` without the MLS state where it is not needed: a group's summary row (its state
   * is read once, under the group lock, by whoever writes after it); a DM picks among its groups.
   */
  const activePrimarySummary = (id: ConversationId, kind: "group" | "dm") =>
    Effect.gen(function*() {
      if (kind === "dm") return yield* activePrimary(id, kind)
      const found = yield* storage.groups.summary(id as unknown as GroupId)
      if (Option.isNone(found)) return yield* new ConversationNotFound({ conversationId: id })
      if (found.value.membershipState === "inactive") return yield* new GroupInactive({ groupId: found.value.id })
      return found.value
    })

  return { groupsOf, primaryOf, activePrimary, activePrimarySummary }
}
