/**
 * Group sync: read a group topic from the stored cursor, in the delivery service's order,
 * one page at a time, and apply each envelope. The page's MLS state, stored messages,
 * intent states and cursor are written in one transaction, so a crash replays the page from
 * the old cursor with the old state and nothing is applied twice.
 */
import { Clock, Effect, Option, PubSub, Schema } from "effect"
import { bytesEqual, sha256Hex } from "../domain/Bytes.ts"
import {
  ApplicationContentJson,
  MembershipChange,
  MembershipChangeJson,
  membershipChangeIdOf,
  messageIdOf
} from "../domain/Content.ts"
import type { StorageError } from "../domain/Errors.ts"
import type { ConversationId, GroupId, InboxId } from "../domain/Ids.ts"
import {
  IntentDataJson,
  isCommitKind,
  PostCommitDataJson,
  RemoveMembersData,
  UpdateInstallationsData
} from "../domain/Intent.ts"
import { type GroupRow, type IntentRow, type MembershipState, MessageRow } from "../domain/Rows.ts"
import { WelcomeMessageInput, WelcomePayload, WelcomePayloadJson } from "../domain/Wire.ts"
import type { GroupMessageEnvelope } from "../domain/Wire.ts"
import {
  type EngineEnv,
  failIntent,
  failPendingIntents,
  groupTopic,
  loadGroupRow,
  newLeaveRequest,
  queueIntent
} from "./Engine.ts"
import * as LeafAuthentication from "./LeafAuthentication.ts"
import type { GroupView, LeafMember, MlsGroupState } from "./MlsCrypto.ts"

export interface PageOutcome {
  readonly received: number
  readonly messages: number
  readonly commits: number
  readonly skipped: number
}

const zero: PageOutcome = { received: 0, messages: 0, commits: 0, skipped: 0 }
const add = (a: PageOutcome, b: PageOutcome): PageOutcome => ({
  received: a.received + b.received,
  messages: a.messages + b.messages,
  commits: a.commits + b.commits,
  skipped: a.skipped + b.skipped
})

/** Inboxes with at least one installation in the group, and which installations. */
export const membersByInbox = (view: GroupView): Map<InboxId, Array<LeafMember>> => {
  const byInbox = new Map<InboxId, Array<LeafMember>>()
  for (const leaf of view.members) {
    const list = byInbox.get(leaf.inboxId) ?? []
    list.push(leaf)
    byInbox.set(leaf.inboxId, list)
  }
  return byInbox
}

export const make = (env: EngineEnv) => {
  const { crypto, ds, identity, storage } = env

  const conversationOf = (group: GroupRow): ConversationId => group.dm_id ?? (group.id as unknown as ConversationId)

  /** The transcript entry of a commit: the same id and text on every member. */
  const changeRow = (
    group: GroupRow,
    change: { readonly epoch: bigint; readonly added: ReadonlyArray<string>; readonly removed: ReadonlyArray<string> },
    committer: LeafMember,
    envelope: GroupMessageEnvelope,
    now: bigint
  ) =>
    MessageRow.make({
      id: membershipChangeIdOf(group.id, change.epoch),
      group_id: group.id,
      conversation_id: conversationOf(group),
      sender_inbox_id: committer.inboxId,
      sender_installation_id: committer.installationId,
      sent_at_ns: envelope.serverTimeNs,
      sequence_id: envelope.sequenceId,
      kind: "membershipChange",
      content: Schema.encodeSync(MembershipChangeJson)(
        MembershipChange.make({
          epoch: change.epoch,
          addedInboxes: change.added,
          removedInboxes: change.removed,
          committedBy: committer.inboxId
        })
      ),
      delivery_status: "published",
      inserted_at_ns: now
    })

  /** The inboxes a commit added and removed, if any. */
  const membershipChangeRow = (
    group: GroupRow,
    before: GroupView,
    after: GroupView,
    committer: LeafMember,
    envelope: GroupMessageEnvelope,
    now: bigint
  ): MessageRow | undefined => {
    const was = new Set(before.members.map((m) => m.inboxId))
    const is = new Set(after.members.map((m) => m.inboxId))
    const added = [...is].filter((i) => !was.has(i)).sort()
    const removed = [...was].filter((i) => !is.has(i)).sort()
    if (added.length === 0 && removed.length === 0) return undefined
    return changeRow(group, { epoch: after.epoch, added, removed }, committer, envelope, now)
  }

  /** This installation's record of its own removal (its state stays at the old epoch). */
  const removedRow = (group: GroupRow, epoch: bigint, committer: LeafMember, envelope: GroupMessageEnvelope, now: bigint) =>
    changeRow(group, { epoch, added: [], removed: [identity.inboxId] }, committer, envelope, now)

  /** A DM's groups each record the same membership changes: the conversation shows them once. */
  const repeatsInDm = (row: MessageRow) =>
    Effect.gen(function*() {
      const change = Schema.decodeSync(MembershipChangeJson)(row.content)
      const key = (c: MembershipChange) => JSON.stringify([c.addedInboxes, c.removedInboxes])
      const earlier = yield* storage.messages.membershipChanges(row.conversation_id)
      return earlier.some((m) => m.group_id !== row.group_id && key(Schema.decodeSync(MembershipChangeJson)(m.content)) === key(change))
    })

  /** Queues bringing the group's leaves in line with the identity logs, unless already pending. */
  const queueInstallationUpdate = (groupId: GroupId, now: bigint) =>
    Effect.gen(function*() {
      const pending = yield* storage.intents.byGroup(groupId, ["ToPublish", "Published"])
      if (pending.some((intent) => intent.kind === "UpdateInstallations")) return
      yield* queueIntent(env, groupId, UpdateInstallationsData.make({}), now)
    })

  /** Queues the removal of an inbox that asked to leave, unless one is already pending. */
  const queueRemoval = (groupId: GroupId, inboxId: InboxId, now: bigint) =>
    Effect.gen(function*() {
      const pending = yield* storage.intents.byGroup(groupId, ["ToPublish", "Published"])
      const already = pending.some((intent) => {
        const data = Schema.decodeUnknownOption(IntentDataJson)(intent.data)
        return Option.isSome(data) && data.value._tag === "RemoveMembers" && data.value.inboxIds.includes(inboxId)
      })
      if (already) return
      yield* queueIntent(env, groupId, RemoveMembersData.make({ inboxIds: [inboxId] }), now)
    })

  const hasNewcomers = (before: GroupView, after: GroupView) => {
    const known = new Set(before.members.map((m) => m.installationId))
    return after.members.some((m) => !known.has(m.installationId))
  }

  /**
   * Asks to leave again. A leave request is an application message of its epoch: members added
   * after it never read it, and if none of those who did is left, nobody would ever commit the
   * removal. So a pendingRemove installation repeats the request when a page it reads brings in
   * installations.
   */
  const queueLeaveAgain = (groupId: GroupId, now: bigint) =>
    Effect.gen(function*() {
      // An unsent request is derived at the epoch it goes out in: the newcomers will read it.
      const pending = yield* storage.intents.byGroup(groupId, ["ToPublish"])
      if (pending.some((intent) => intent.kind === "Leave")) return
      yield* queueIntent(env, groupId, newLeaveRequest(), now)
    })

  /**
   * Every leaf of a commit's result, others' and our own, against the identity log
   * (`LeafAuthentication.commitLeavesProblem`): the reason to refuse the commit, or undefined.
   */
  const unauthenticatedLeaves = (before: GroupView, after: GroupView, committer: LeafMember) =>
    LeafAuthentication.commitLeavesProblem(identity, before, after, committer)

  /**
   * Reads one page and applies it. Returns the outcome and whether the topic may have more.
   * Runs under the group lock.
   */
  const receivePage = (groupId: GroupId) =>
    Effect.gen(function*() {
      const topic = groupTopic(groupId)
      const cursor = yield* storage.cursors.get(topic)
      const page = yield* ds.queryGroupMessages({ groupId, afterSequenceId: cursor, limit: env.options.pageSize })
      if (page.items.length === 0) return { outcome: zero, more: false }

      const group = yield* loadGroupRow(env, groupId)
      const initial = yield* env.loadState(group)
      let state: MlsGroupState = initial
      let membership: MembershipState = group.membership_state
      let forked: string | undefined
      const writes: Array<Effect.Effect<unknown, StorageError>> = []
      const newMessages: Array<MessageRow> = []
      const intentsHandled = new Set<number>()
      /** Inboxes that asked to leave: the remaining members commit their removal. */
      const leaving = new Set<InboxId>()
      /** Whether a commit of this page brought in installations (that never saw our leave request). */
      let joined = false
      /** Whether a commit of this page brought in a revoked installation: its removal is queued. */
      let revokedEntered = false
      let outcome: PageOutcome = { ...zero, received: page.items.length }
      const now = yield* Clock.currentTimeNanos
      const skip = (envelope: GroupMessageEnvelope, why: string) =>
        Effect.logDebug(`skipping envelope ${envelope.sequenceId} of group ${groupId}: ${why}`).pipe(
          Effect.tap(() => {
            outcome = { ...outcome, skipped: outcome.skipped + 1 }
          })
        )

      for (const envelope of page.items) {
        if (envelope.sequenceId <= cursor) continue
        if (membership === "inactive") {
          yield* skip(envelope, "this installation is no longer a member")
          continue
        }
        const header = yield* crypto.inspect(envelope.payload).pipe(Effect.option)
        if (Option.isNone(header)) {
          yield* skip(envelope, "malformed")
          continue
        }
        if (header.value.groupId !== groupId) {
          yield* skip(envelope, `belongs to group ${header.value.groupId ?? "?"}`)
          continue
        }
        const current = crypto.view(state)
        const own = yield* ownIntent(envelope)

        if (Option.isSome(own)) {
          const intent = own.value
          if (intentsHandled.has(intent.id) || intent.state !== "Published") {
            yield* skip(envelope, `duplicate of own intent ${intent.id}`)
            continue
          }
          intentsHandled.add(intent.id)
          if (!isCommitKind(intent.kind)) {
            const data = Schema.decodeSync(IntentDataJson)(intent.data)
            if (data._tag === "SendMessage") {
              writes.push(
                storage.messages.markPublished(data.messageId, {
                  sentAtNs: envelope.serverTimeNs,
                  sequenceId: envelope.sequenceId
                }),
                storage.groups.touch(groupId, envelope.serverTimeNs)
              )
            }
            writes.push(storage.intents.markCommitted(intent.id, envelope.sequenceId))
            writes.push(storage.intents.markProcessed(intent.id))
            outcome = { ...outcome, messages: outcome.messages + 1 }
            continue
          }
          // An own commit: it wins only if it was built for the epoch the group is in now.
          if (header.value.epoch === current.epoch && intent.staged_state !== null) {
            const staged = yield* crypto.deserialize(intent.staged_state)
            const after = crypto.view(staged)
            const me = current.members.find((m) => m.leafIndex === current.ownLeafIndex)!
            const refused = yield* unauthenticatedLeaves(current, after, me)
            if (refused !== undefined) {
              // Built from what the delivery service handed us: the other members refuse it too.
              writes.push(failIntent(env, intent, `own commit refused: ${refused}`))
              yield* skip(envelope, `own commit of intent ${intent.id} refused: ${refused}`)
              continue
            }
            const change = membershipChangeRow(group, current, after, me, envelope, now)
            if (change !== undefined) newMessages.push(change)
            joined ||= hasNewcomers(current, after)
            state = staged
            writes.push(storage.intents.markCommitted(intent.id, envelope.sequenceId))
            outcome = { ...outcome, commits: outcome.commits + 1 }
          } else {
            yield* Effect.logDebug(
              `own commit of intent ${intent.id} for epoch ${header.value.epoch} lost; group is at ${current.epoch}`
            )
            writes.push(storage.intents.resetToPublish(intent.id, { conflict: true }))
            outcome = { ...outcome, skipped: outcome.skipped + 1 }
          }
          continue
        }

        if (header.value.kind === "commit") {
          if (header.value.epoch < current.epoch) {
            yield* skip(envelope, `commit for past epoch ${header.value.epoch} lost the race`)
            continue
          }
          if (header.value.epoch > current.epoch) {
            forked = `commit for epoch ${header.value.epoch} at sequence ${envelope.sequenceId}; group at ${current.epoch}`
            yield* Effect.logWarning(`group ${groupId} may be forked: ${forked}`)
            yield* skip(envelope, "future epoch")
            continue
          }
          const processed = yield* crypto.process(state, envelope.payload).pipe(Effect.either)
          if (processed._tag === "Left" || processed.right.kind !== "commit") {
            yield* skip(envelope, processed._tag === "Left" ? processed.left.message : "not a commit")
            continue
          }
          const after = crypto.view(processed.right.state)
          const refused = yield* unauthenticatedLeaves(current, after, processed.right.committer)
          if (refused !== undefined) {
            yield* skip(envelope, `commit refused: ${refused}`)
            continue
          }
          // Our removal is our inbox's removal only if no other device of ours stays: a revoked
          // device's removal changes no inbox, and the other members record nothing for it.
          const inboxGoes = !after.active &&
            current.members.every((m) => m.inboxId !== identity.inboxId || m.leafIndex === current.ownLeafIndex ||
              membership === "pendingRemove")
          const change = after.active
            ? membershipChangeRow(group, current, after, processed.right.committer, envelope, now)
            : inboxGoes
            ? removedRow(group, header.value.epoch + 1n, processed.right.committer, envelope, now)
            : undefined
          if (change !== undefined) newMessages.push(change)
          joined ||= after.active && hasNewcomers(current, after)
          if (after.active && (yield* LeafAuthentication.enteringRevoked(identity, current, after))) revokedEntered = true
          state = processed.right.state
          if (!after.active) membership = "inactive"
          outcome = { ...outcome, commits: outcome.commits + 1 }
          continue
        }

        if (header.value.kind !== "application") {
          yield* skip(envelope, `unexpected ${header.value.kind}`)
          continue
        }
        if (header.value.epoch + BigInt(env.options.maxPastEpochs) < current.epoch) {
          yield* skip(envelope, `application message from epoch ${header.value.epoch} is older than maxPastEpochs`)
          continue
        }
        const processed = yield* crypto.process(state, envelope.payload).pipe(Effect.either)
        if (processed._tag === "Left" || processed.right.kind !== "application") {
          yield* skip(envelope, processed._tag === "Left" ? processed.left.message : "not an application message")
          continue
        }
        const { plaintext, sender } = processed.right
        state = processed.right.state
        if (header.value.epoch < current.epoch && !current.members.some((m) => m.installationId === sender.installationId)) {
          // Sent from an old epoch by someone removed since: after its removal, the group does
          // not take its word (and the sender, inactive, records its message as failed).
          yield* skip(envelope, `sender ${sender.installationId} was removed before this message landed`)
          continue
        }
        const content = Schema.decodeUnknownOption(ApplicationContentJson)(new TextDecoder().decode(plaintext))
        if (Option.isNone(content)) {
          yield* skip(envelope, "undecodable content")
          continue
        }
        if (content.value._tag === "LeaveRequest") {
          if (group.kind === "dm") {
            yield* skip(envelope, "a DM cannot be left")
          } else if (sender.inboxId === identity.inboxId) {
            // Another installation of ours is leaving: leaving is per inbox, so we are too.
            if (membership === "active") membership = "pendingRemove"
          } else {
            leaving.add(sender.inboxId)
          }
          continue
        }
        newMessages.push(MessageRow.make({
          id: messageIdOf(groupId, sender.installationId, content.value.nonce),
          group_id: groupId,
          conversation_id: conversationOf(group),
          sender_inbox_id: sender.inboxId,
          sender_installation_id: sender.installationId,
          sent_at_ns: envelope.serverTimeNs,
          sequence_id: envelope.sequenceId,
          kind: "text",
          content: content.value.text,
          delivery_status: "published",
          inserted_at_ns: now
        }))
        outcome = { ...outcome, messages: outcome.messages + 1 }
      }

      const last = page.items[page.items.length - 1]!.sequenceId
      const view = crypto.view(state)
      const inserted = yield* storage.transaction(Effect.gen(function*() {
        for (const write of writes) yield* write
        // A crash here rolls the whole page back: it is replayed from the old cursor and state.
        yield* env.options.crashPoint("sync.midPage")
        const fresh: Array<MessageRow> = []
        for (const row of newMessages) {
          if (row.kind === "membershipChange" && group.kind === "dm" && (yield* repeatsInDm(row))) continue
          if (yield* storage.messages.insert(row)) fresh.push(row)
          if (row.kind === "text") yield* storage.groups.touch(groupId, row.sent_at_ns)
        }
        // A page of only our own messages leaves the state as it was: nothing to write.
        if (state !== initial) yield* storage.groups.saveState(groupId, { epoch: view.epoch, mlsState: env.encodeState(groupId, state) })
        if (membership !== group.membership_state) yield* storage.groups.setMembership(groupId, membership)
        if (membership === "inactive" && group.membership_state !== "inactive") yield* failPendingIntents(env, groupId)
        if (forked !== undefined) yield* storage.groups.markForked(groupId, forked)
        // Out of the group, we queue nothing for it (failPendingIntents above would miss it).
        if (membership !== "inactive") for (const inboxId of leaving) yield* queueRemoval(groupId, inboxId, now)
        if (joined && membership === "pendingRemove") yield* queueLeaveAgain(groupId, now)
        if (revokedEntered && membership === "active") yield* queueInstallationUpdate(groupId, now)
        yield* storage.cursors.advance(topic, last)
        return fresh
      }))
      yield* PubSub.publishAll(env.stored, inserted)
      return { outcome, more: page.next !== undefined }
    }).pipe(Effect.withSpan("GroupSync.receivePage", { attributes: { groupId } }))

  const ownIntent = (envelope: GroupMessageEnvelope) =>
    storage.intents.byPayloadHash(sha256Hex(envelope.payload)).pipe(
      // A hash match must also be a byte match: the hash is ours, the bytes are the DS's.
      Effect.map(Option.filter((intent) => intent.payload === null || bytesEqual(intent.payload, envelope.payload)))
    )

  /**
   * Asked to leave, and nobody else is left to commit the removal: we are out, once our own
   * request is out too (our other devices must learn that the inbox left). Our other devices
   * still in the group are removed by commit first: one of them may not have read the request
   * yet, and what it sends meanwhile must either reach us or be refused by the group.
   */
  const settleLoneLeaver = (groupId: GroupId) =>
    Effect.gen(function*() {
      const group = yield* loadGroupRow(env, groupId)
      if (group.membership_state !== "pendingRemove") return
      const view = crypto.view(yield* env.loadState(group))
      if (!view.members.every((m) => m.inboxId === identity.inboxId)) return
      const pending = yield* storage.intents.byGroup(groupId, ["ToPublish", "Published"])
      if (pending.some((intent) => intent.kind === "Leave")) return
      if (view.members.some((m) => m.leafIndex !== view.ownLeafIndex)) {
        // Removing our own inbox removes our other devices (Publisher: never this one).
        yield* queueRemoval(groupId, identity.inboxId, yield* Clock.currentTimeNanos)
        return
      }
      yield* storage.transaction(Effect.gen(function*() {
        yield* storage.groups.setMembership(groupId, "inactive")
        yield* failPendingIntents(env, groupId)
      }))
    })

  /** Reads the topic to its end. */
  const receive = (groupId: GroupId) =>
    Effect.gen(function*() {
      let total = zero
      while (true) {
        const { more, outcome } = yield* receivePage(groupId)
        total = add(total, outcome)
        if (!more) break
      }
      yield* settleLoneLeaver(groupId)
      return total
    }).pipe(Effect.withSpan("GroupSync.receive", { attributes: { groupId } }))

  /** Sends the welcomes of own commits that are confirmed, then marks them Processed. */
  const postCommit = (groupId: GroupId) =>
    Effect.gen(function*() {
      const committed = yield* storage.intents.byGroup(groupId, ["Committed"])
      for (const intent of committed) {
        yield* env.options.crashPoint("postCommit.beforeWelcomes")
        yield* sendWelcomes(groupId, intent)
      }
    }).pipe(Effect.withSpan("GroupSync.postCommit", { attributes: { groupId } }))

  const sendWelcomes = (groupId: GroupId, intent: IntentRow) =>
    Effect.gen(function*() {
      const group = yield* loadGroupRow(env, groupId)
      if (intent.post_commit_data !== null && intent.sequence_id !== null) {
        const post = Schema.decodeSync(PostCommitDataJson)(intent.post_commit_data)
        const payload = new TextEncoder().encode(
          Schema.encodeSync(WelcomePayloadJson)(
            WelcomePayload.make({
              groupId,
              commitSequenceId: intent.sequence_id,
              welcome: post.welcome,
              ...(group.dm_id === null ? {} : { dmId: group.dm_id })
            })
          )
        )
        // Identical bytes per recipient: a resend after a crash is stored once by the DS.
        const messages = post.installationIds.map((installationId) => WelcomeMessageInput.make({ installationId, payload }))
        for (let i = 0; i < messages.length; i += 50) yield* ds.sendWelcomeMessages(messages.slice(i, i + 50))
      }
      yield* storage.intents.markProcessed(intent.id)
    })

  return { receive, postCommit, membersByInbox }
}
