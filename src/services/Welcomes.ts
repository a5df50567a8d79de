/**
 * Joining groups from welcomes. The welcome topic of this installation is read from its
 * cursor; each welcome is checked (every member a current installation of its inbox) and
 * joined with the group cursor at the commit that added us. A duplicate is ignored; a bad
 * welcome is logged and skipped without losing the others.
 */
import { Clock, Effect, Option, Schema } from "effect"
import { CryptoError } from "../domain/Errors.ts"
import { type ConversationId, dmPeer, type GroupId } from "../domain/Ids.ts"
import { isHistoryOnly } from "../domain/HistoryArchive.ts"
import { membershipIn } from "../domain/Leaving.ts"
import { GroupMetadata, GroupMetadataJson } from "../domain/Model.ts"
import { StoredGroup } from "../domain/Stored.ts"
import { type WelcomePayload, WelcomePayloadJson } from "../domain/Wire.ts"
import type { WelcomeMessageEnvelope } from "../domain/Wire.ts"
import { groupTopic, welcomeTopic } from "../domain/Topics.ts"
import { type EngineContext } from "./EngineContext.ts"
import { failPendingIntents, queueLeaverRemovals } from "./IntentQueue.ts"
import type * as GroupSync from "./GroupSync.ts"
import * as LeafAuthentication from "./LeafAuthentication.ts"
import type { GroupView, MlsGroupState } from "./MlsCrypto.ts"

export const make = (ctx: EngineContext, sync: ReturnType<typeof GroupSync.make>) => {
  const { crypto, ds, identity, storage } = ctx
  const topic = welcomeTopic(identity.installationId)
  // One reader of the welcome topic at a time: two would join the same welcome twice.
  const lock = Effect.unsafeMakeSemaphore(1)

  /**
   * A welcome to a group we still hold as a member: if its commit is past our cursor we may
   * have been removed (and re-added) meanwhile, so read the topic up to now before deciding.
   * Returns the row as it stands after that, or undefined if the welcome is not for us to take.
   */
  const settleExisting = (groupId: GroupId, commitSequenceId: bigint) =>
    Effect.gen(function*() {
      const existing = yield* storage.groups.get(groupId)
      if (Option.isNone(existing) || existing.value.membershipState === "inactive") return existing
      if (commitSequenceId <= (yield* storage.cursors.get(groupTopic(groupId)))) return undefined
      yield* ctx.withGroupLock(groupId)(sync.receive(groupId))
      const now = yield* storage.groups.get(groupId)
      return Option.isSome(now) && now.value.membershipState === "inactive" ? now : undefined
    })

  /**
   * The metadata in a group's context. Unreadable metadata does not keep a member out of a group
   * that is otherwise sound: it joins without a name, and says so.
   */
  const metadataOf = (bytes: Uint8Array | undefined) =>
    bytes === undefined
      ? Effect.succeed(GroupMetadata.none)
      : Schema.decodeUnknown(GroupMetadataJson)(new TextDecoder().decode(bytes)).pipe(
        Effect.catchTag("ParseError", (e) =>
          Effect.logWarning("group metadata does not decode; joining without it", e.message).pipe(
            Effect.as(GroupMetadata.none)
          ))
      )

  /** The inboxes this group's transcript shows added or removed while we were in it (not us). */
  const inboxesInTranscript = (group: StoredGroup) =>
    storage.messages.membershipChanges(group.dmId ?? (group.id as unknown as ConversationId)).pipe(
      Effect.map((rows) => {
        const inboxes = new Set<string>()
        for (const row of rows) {
          if (row.groupId !== group.id || row.membershipChange === null) continue
          for (const inbox of [...row.membershipChange.addedInboxes, ...row.membershipChange.removedInboxes]) {
            inboxes.add(inbox)
          }
        }
        inboxes.delete(identity.inboxId)
        return inboxes
      })
    )

  /** Opens a welcome sealed to one of our key packages and decodes what it carries. */
  const openWelcome = (envelope: WelcomeMessageEnvelope) =>
    Effect.gen(function*() {
      // Sealed to one of our key packages: nobody else could read where it leads.
      const opened = yield* crypto.openSealed(envelope.payload, yield* identity.keyPackages)
      const payload = yield* Schema.decodeUnknown(WelcomePayloadJson)(new TextDecoder().decode(opened.plaintext)).pipe(
        Effect.mapError(() => new CryptoError({ reason: "Malformed", detail: "welcome payload does not decode" }))
      )
      return { opened, payload }
    })

  /** The state the welcome joins: of the group its metadata names, newer than the one we hold. */
  const joinedState = (payload: WelcomePayload, existing: Option.Option<StoredGroup>) =>
    Effect.gen(function*() {
      const state = yield* crypto.joinFromWelcome(payload.welcome, yield* identity.keyPackages)
      const view = crypto.view(state)
      if (view.groupId !== payload.groupId) {
        return yield* new CryptoError({ reason: "Malformed", detail: "welcome names another group than its metadata" })
      }
      if (Option.isSome(existing) && view.epoch <= existing.value.epoch) {
        // An old welcome (replayed or re-sent) must not bring a removed member back.
        return yield* new CryptoError({
          reason: "WrongEpoch",
          detail: `welcome for epoch ${view.epoch} is not newer than the stored epoch ${existing.value.epoch}`
        })
      }
      return { state, view }
    })

  /**
   * A welcome to a group we were removed from must come from that group's history, not from an
   * unrelated group that took its id (see LeafAuthentication.reactivationProblem).
   */
  const checkSameHistory = (existing: StoredGroup, state: MlsGroupState, view: GroupView) =>
    Effect.gen(function*() {
      const storedState = yield* ctx.loadState(existing)
      const unrelated = LeafAuthentication.reactivationProblem(
        {
          view: crypto.view(storedState),
          leaves: crypto.leafDetails(storedState),
          formerInboxes: yield* inboxesInTranscript(existing)
        },
        { view, leaves: crypto.leafDetails(state) },
        crypto.inviterOf(state)
      )
      if (unrelated !== undefined) return yield* new CryptoError({ reason: "Unauthenticated", detail: unrelated })
    })

  /** Every member a current installation of its inbox; a DM holds its two inboxes and nobody else. */
  const checkMembers = (payload: WelcomePayload, view: GroupView) =>
    Effect.gen(function*() {
      if (payload.dmId !== undefined) {
        // A DM names both inboxes; nobody else may be in it.
        const peer = dmPeer(payload.dmId, identity.inboxId)
        const stranger = view.members.find((m) => m.inboxId !== identity.inboxId && m.inboxId !== peer)
        if (peer === undefined || stranger !== undefined) {
          return yield* new CryptoError({ reason: "Malformed", detail: `welcome to DM ${payload.dmId} has other members` })
        }
      }
      for (const leaf of view.members) {
        if (!(yield* identity.isValidLeaf(leaf))) {
          return yield* new CryptoError({
            reason: "Unauthenticated",
            detail: `member ${leaf.installationId} is not a current installation of inbox ${leaf.inboxId}`
          })
        }
      }
    })

  /**
   * Stores the joined group (new, or taken back) with its cursor at the commit that added us, and
   * the welcome as read, in one transaction.
   */
  const storeJoined = (
    envelope: WelcomeMessageEnvelope,
    payload: WelcomePayload,
    { existing, historyOnly, state, view }: {
      readonly existing: Option.Option<StoredGroup>
      readonly historyOnly: boolean
      readonly state: MlsGroupState
      readonly view: GroupView
    }
  ) =>
    Effect.gen(function*() {
      const metadata = payload.dmId === undefined ? yield* metadataOf(view.metadata) : GroupMetadata.none
      // A new device of an inbox the group lists as leaving joins on its way out.
      const membership = membershipIn(metadata, view.members.map((m) => m.inboxId), identity.inboxId, "active", false)
      const now = yield* Clock.currentTimeNanos
      // Through the state cache: the joined state (which knows its inviter) is what the next load returns.
      const mlsState = ctx.encodeState(payload.groupId, state)
      yield* storage.transaction(Effect.gen(function*() {
        if (Option.isSome(existing) || historyOnly) {
          // Taken back: nothing queued before the removal may go out now (a stale leave
          // or removal would undo the re-add).
          yield* failPendingIntents(ctx, payload.groupId)
          yield* storage.groups.saveState(payload.groupId, { epoch: view.epoch, mlsState })
          yield* storage.groups.setMembership(payload.groupId, membership)
        } else {
          yield* storage.groups.insert(StoredGroup.make({
            id: payload.groupId,
            kind: payload.dmId === undefined ? "group" : "dm",
            dmId: payload.dmId ?? null,
            membershipState: membership,
            epoch: view.epoch,
            mlsState,
            maybeForked: false,
            forkDetails: null,
            quarantine: null,
            name: metadata.name,
            description: metadata.description,
            addedByInboxId: null,
            createdAtNs: now,
            lastMessageNs: envelope.serverTimeNs
          }))
        }
        // A rejoin reads again from the commit that re-added us: while inactive, the cursor
        // moved past envelopes we could not read then and can now.
        yield* storage.cursors.set(groupTopic(payload.groupId), payload.commitSequenceId)
        yield* storage.cursors.advance(topic, envelope.sequenceId)
        // The leavers the group lists: a member added after they asked removes them like the others.
        if (payload.dmId === undefined) yield* queueLeaverRemovals(ctx, payload.groupId, state, now)
      }))
    })

  /**
   * A key package is for one welcome: the server hands out a fresh one from now on. The join
   * stands even if that fails; the old one stays usable as a last resort meanwhile.
   */
  const replaceKeyPackage = (keyPackageRef: string) =>
    identity.keyPackageUsed(keyPackageRef).pipe(
      Effect.catchAll((e) => Effect.logWarning("could not replace a used key package", e.message))
    )

  /** Joins one welcome; returns the group id if a group was joined (or re-joined). */
  const join = Effect.fn("Welcomes.join")(function*(envelope: WelcomeMessageEnvelope) {
    const { opened, payload } = yield* openWelcome(envelope)
    const settled = yield* settleExisting(payload.groupId, payload.commitSequenceId)
    if (settled === undefined) return undefined
    // A conversation known only from history (no MLS state here) is joined as a new one.
    const historyOnly = Option.isSome(settled) && isHistoryOnly(settled.value)
    const existing = historyOnly ? Option.none<StoredGroup>() : settled
    const { state, view } = yield* joinedState(payload, existing)
    if (Option.isSome(existing)) yield* checkSameHistory(existing.value, state, view)
    yield* checkMembers(payload, view)
    yield* storeJoined(envelope, payload, { existing, historyOnly, state, view })
    yield* replaceKeyPackage(opened.keyPackageRef)
    return payload.groupId
  })

  /** Reads the welcome topic to its end; returns the groups joined. */
  const syncWelcomes = lock.withPermits(1)(Effect.gen(function*() {
    const joined: Array<GroupId> = []
    let skipped = 0
    while (true) {
      const cursor = yield* storage.cursors.get(topic)
      const page = yield* ds.queryWelcomeMessages({
        installationId: identity.installationId,
        afterSequenceId: cursor,
        limit: ctx.options.pageSize
      })
      for (const envelope of page.items) {
        const skip = (e: { readonly message: string }) =>
          Effect.logWarning("skipping welcome", e.message).pipe(
            Effect.annotateLogs({ sequenceId: envelope.sequenceId.toString() }),
            Effect.tap(() => skipped++),
            Effect.as(undefined)
          )
        const result = yield* join(envelope).pipe(
          Effect.catchTags({ CryptoError: skip, InvalidIdentityUpdate: skip })
        )
        if (result !== undefined) joined.push(result)
        yield* storage.cursors.advance(topic, envelope.sequenceId)
      }
      if (page.next === undefined) {
        // Only once the topic is read to its end: a welcome already waiting is never cut off.
        yield* identity.pruneKeyPackages
        yield* identity.ensureKeyPackageVersion
        return { joined, skipped }
      }
      // A page that points on without moving the cursor would have this loop ask forever (a
      // hostile or broken service): the next sync asks again.
      if ((yield* storage.cursors.get(topic)) <= cursor) {
        yield* Effect.logWarning("the delivery service points on without a new welcome; asking again at the next sync")
        return { joined, skipped }
      }
    }
  })).pipe(Effect.withSpan("Welcomes.sync"))

  return { syncWelcomes }
}
