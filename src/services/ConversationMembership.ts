/**
 * The membership operations of a conversation handle: adding and removing members, leaving,
 * and rotating this installation's leaf key. A DM's membership never changes.
 */
import { Effect, Either } from "effect"
import { InvalidInput, NotAMember } from "../domain/Errors.ts"
import { lastSuperAdminLeaving, membershipVerdict } from "../domain/GroupSettings.ts"
import type { GroupId, InboxId } from "../domain/Ids.ts"
import { AddMembersData, type IntentData, KeyUpdateData, RemoveMembersData } from "../domain/Intent.ts"
import { isLastSuperAdmin } from "../domain/Leaving.ts"
import type { GroupMetadata } from "../domain/Model.ts"
import type { Conversation } from "./Conversation.ts"
import type { HandleParts, HandleScope } from "./ConversationScope.ts"
import { newLeave } from "./IntentQueue.ts"

type MembershipOperations = Pick<Conversation, "addMembers" | "removeMembers" | "updateKeys" | "leave">

export const make = (
  { checks, ctx, groups, intents }: HandleParts,
  { annotated, id, kind, span, traced }: HandleScope
): MembershipOperations => {
  const { publisher, self } = ctx
  const { storage } = ctx.env
  const { activePrimary, primaryOf } = groups
  const { checkNotPaused, groupMembers, queueIntent, resolveTyped, settingsOf } = intents

  const changeMembers = <E>(
    name: string,
    check: (
      ids: ReadonlyArray<InboxId>,
      present: ReadonlySet<InboxId>,
      group: { readonly id: GroupId; readonly settings: GroupMetadata }
    ) => Effect.Effect<void, E>,
    data: (ids: ReadonlyArray<InboxId>) => IntentData
  ) =>
    Effect.fn(`Conversation.${name}`, traced)(function*(inboxIds: ReadonlyArray<InboxId>) {
      if (kind === "dm") return yield* new InvalidInput({ reason: "a DM's membership cannot change" })
      const ids = yield* checks.validInboxes(inboxIds)
      if (ids.length === 0) return yield* new InvalidInput({ reason: "the member list is empty" })
      const group = yield* activePrimary(id, kind)
      if (group.membershipState === "pendingRemove") {
        // An inbox on its way out does not shape the group it leaves.
        return yield* new InvalidInput({ reason: "this inbox has asked to leave the group: it can no longer change its members" })
      }
      yield* checkNotPaused(group)
      const present = new Set((yield* groupMembers(group)).keys())
      const settings = yield* settingsOf(group)
      yield* check(ids, present, { id: group.id, settings })
      // Fail fast on the policy; the publisher checks again at the epoch the commit is built for.
      const change = name === "addMembers" ? { add: ids } : { remove: ids }
      const verdict = membershipVerdict({ settings, committer: self, members: [...present], ...change })
      if (Either.isLeft(verdict)) return yield* verdict.left
      const intentId = yield* queueIntent(group.id, data(ids))
      yield* resolveTyped(group.id, intentId)
    }, annotated)

  return {
    addMembers: changeMembers(
      "addMembers",
      (ids, present, group) => checks.checkNewMembers(ids, present, group.settings.minProtocolVersion),
      (ids) => AddMembersData.make({ inboxIds: ids })
    ),
    removeMembers: changeMembers("removeMembers", (ids, present, { id: groupId }) =>
      Effect.gen(function*() {
        if (ids.includes(self)) return yield* new InvalidInput({ reason: "to remove yourself, leave the group" })
        const absent = ids.find((i) => !present.has(i))
        if (absent !== undefined) return yield* new NotAMember({ groupId, inboxId: absent })
      }), (ids) => RemoveMembersData.make({ inboxIds: ids })),
    updateKeys: Effect.gen(function*() {
      const group = yield* activePrimary(id, kind)
      const intentId = yield* queueIntent(group.id, KeyUpdateData.make({}))
      yield* publisher.resolve(group.id, intentId)
    }).pipe(span("updateKeys")),
    leave: Effect.gen(function*() {
      if (kind === "dm") return yield* new InvalidInput({ reason: "a DM cannot be left" })
      const group = yield* primaryOf(id, kind)
      if (group.membershipState === "inactive") return yield* new NotAMember({ groupId: group.id, inboxId: self })
      const members = yield* groupMembers(group)
      if (members.size < 2) return yield* new InvalidInput({ reason: "you are the only member; nobody would remove you" })
      // Every receiver refuses the removal of the last super admin: name another one first.
      if (isLastSuperAdmin(yield* settingsOf(group), [...members.keys()], self)) return yield* lastSuperAdminLeaving
      if (group.membershipState === "pendingRemove") {
        // Already asked (here or on another of our devices): just make sure it is out.
        const pending = yield* storage.intents.byGroup(group.id, ["ToPublish", "Published"])
        for (const intent of pending) yield* publisher.resolve(group.id, intent.id)
        return
      }
      // Pending-remove from now on, and the request queued, in one transaction.
      const intentId = yield* storage.transaction(Effect.gen(function*() {
        yield* storage.groups.setMembership(group.id, "pendingRemove")
        return yield* queueIntent(group.id, newLeave())
      }))
      yield* publisher.resolve(group.id, intentId)
    }).pipe(span("leave"))
  }
}
