/**
 * Applies the receive decisions (`domain/ReceiveDecision`) of one page of a group topic. It
 * gathers each envelope's facts (MLS header, own intent), asks the table what the envelope is,
 * runs MLS where the answer says so, and accumulates the page's writes: MLS state, stored
 * messages, intent transitions, membership, the fork flag and the removals to queue. `commit`
 * writes them all with the cursor in one transaction, so a crash replays the whole page.
 */
import { Data, Effect, Either, Option, Schema } from "effect"
import { bytesEqual, sha256Hex } from "../domain/Bytes.ts"
import {
  MembershipChange,
  MembershipChangeJson,
  membershipChangeIdOf,
  messageIdOf,
  MetadataChange,
  MetadataChangeJson,
  metadataChangeIdOf
} from "../domain/Content.ts"
import { changedSettings, commitRefusal, leaveBlocked } from "../domain/GroupSettings.ts"
import { encodeGovernanceError, PermissionDenied, type StorageError } from "../domain/Errors.ts"
import type { ConversationId, GroupId, InboxId, MessageId } from "../domain/Ids.ts"
import {
  addSkipCounts,
  ApplicationDecision,
  applicationSkipReason,
  classifyApplication,
  classifyEnvelope,
  commitChanges,
  type CommitChanges,
  EnvelopeDecision,
  type GroupSnapshot,
  type MembershipDiff,
  newLeaves,
  ownCommitChanges,
  type SkipReason,
  skipReasonOf
} from "../domain/ReceiveDecision.ts"
import { type StoredGroup, type StoredIntent, type MembershipState, StoredMessage } from "../domain/Stored.ts"
import { isCommitKind } from "../domain/Intent.ts"
import { groupTopic } from "../domain/Topics.ts"
import type { GroupMessageEnvelope } from "../domain/Wire.ts"
import type { EngineContext } from "./EngineContext.ts"
import {
  failIntent,
  failPendingIntents,
  leavingInboxes,
  settleLeaveRemovals,
  queueInstallationUpdate,
  queueLeaveAgain,
  queueRemoval,
  voidLeaveRequests
} from "./IntentQueue.ts"
import * as LeafAuthentication from "./LeafAuthentication.ts"
import * as MessagingReceive from "./MessagingReceive.ts"
import { expiresAt } from "../domain/Messaging.ts"
import type { LeafMember, MlsGroupState, Processed, ProcessedApplication } from "./MlsCrypto.ts"

export interface PageOutcome {
  readonly received: number
  readonly messages: number
  readonly commits: number
  /** Every envelope skipped; `skippedBy` says why, per reason. */
  readonly skipped: number
  readonly skippedBy: Readonly<Partial<Record<SkipReason, number>>>
}

export const emptyOutcome: PageOutcome = { received: 0, messages: 0, commits: 0, skipped: 0, skippedBy: {} }

export const addOutcomes = (a: PageOutcome, b: PageOutcome): PageOutcome => ({
  received: a.received + b.received,
  messages: a.messages + b.messages,
  commits: a.commits + b.commits,
  skipped: a.skipped + b.skipped,
  skippedBy: addSkipCounts(a.skippedBy, b.skippedBy)
})

/**
 * A page whose runs were read before their signature checks were done, and one check failed: its
 * transaction is rolled back, and the page must be read again with every check waited for
 * (`strict`), which refuses the forged message exactly as reading one at a time does.
 */
export class UnconfirmedSignatures extends Data.TaggedError("UnconfirmedSignatures") {}

/**
 * Starts a page read from `cursor` of a group held at `initial`. Unless `strict`, runs of
 * someone's application messages are read while their signatures are still being checked beside
 * (on the thread pool); `commit` waits for those checks last, just before the transaction ends,
 * and fails with `UnconfirmedSignatures` (writing nothing) if one failed.
 */
export const start = (
  ctx: EngineContext,
  group: StoredGroup,
  initial: MlsGroupState,
  cursor: bigint,
  now: bigint,
  strict = false
) => {
  const { crypto, identity, storage } = ctx
  const groupId = group.id
  let state = initial
  let membership: MembershipState = group.membershipState
  let forked: string | undefined
  /**
   * Whether a commit was applied after the last future-epoch commit of this page. A commit for
   * an epoch we never reached cannot be authenticated (its keys are in an epoch we do not
   * have): anyone who may post could forge its header. A fork is real only if nothing we can
   * process follows it, so the next commit we apply clears the flag again.
   */
  let progressedSinceFork = false
  const writes: Array<Effect.Effect<unknown, StorageError>> = []
  const newMessages: Array<StoredMessage> = []
  /** Deletions read in this page (ours included), applied after the page's messages are stored. */
  const deletions: Array<MessagingReceive.Deletion> = []
  const handledIntents = new Set<number>()
  /** Inboxes that asked to leave: the remaining members commit their removal. */
  const leaving = new Set<InboxId>()
  /**
   * Inboxes a commit of this page removed: a leave request is settled by the first removal, so an
   * older removal intent must not strike again at a re-added member (nor excuse anyone's commit).
   */
  const removedHere = new Set<InboxId>()
  /**
   * Inboxes whose leave request this page voided: they became the group's last super admin,
   * whom nobody may remove. Decided per epoch, so every member voids at the same commit.
   */
  const voidedHere = new Set<InboxId>()
  /** Whether a commit of this page brought in installations (that never saw our leave request). */
  let joined = false
  /** Whether a commit of this page brought in a revoked installation: its removal is queued. */
  let revokedEntered = false
  let outcome: PageOutcome = emptyOutcome
  /** The signature checks of the runs read without waiting for them: all must answer true before commit. */
  const confirmations: Array<Effect.Effect<boolean>> = []

  const snapshot = (): GroupSnapshot => {
    const view = crypto.view(state)
    return { groupId, kind: group.kind, membership, epoch: view.epoch, ownLeafIndex: view.ownLeafIndex, members: view.members }
  }

  const skip = (envelope: GroupMessageEnvelope, reason: SkipReason, detail?: string) =>
    Effect.logDebug("skipping envelope", detail ?? reason).pipe(
      Effect.annotateLogs({ sequenceId: envelope.sequenceId.toString(), reason }),
      Effect.tap(() => {
        outcome = {
          ...outcome,
          skipped: outcome.skipped + 1,
          skippedBy: addSkipCounts(outcome.skippedBy, { [reason]: 1 })
        }
      })
    )

  const conversationOf = (): ConversationId => group.dmId ?? (group.id as unknown as ConversationId)

  /** The transcript entry of a commit: the same id and text on every member. */
  const recordTranscript = (diff: MembershipDiff | undefined, committer: LeafMember, envelope: GroupMessageEnvelope) => {
    if (diff === undefined) return
    const change = MembershipChange.make({
      epoch: diff.epoch,
      addedInboxes: diff.added,
      removedInboxes: diff.removed,
      committedBy: committer.inboxId
    })
    newMessages.push(StoredMessage.make({
      id: membershipChangeIdOf(groupId, diff.epoch),
      groupId: groupId,
      conversationId: conversationOf(),
      senderInboxId: committer.inboxId,
      senderInstallationId: committer.installationId,
      sentAtNs: envelope.serverTimeNs,
      sequenceId: envelope.sequenceId,
      kind: "membershipChange",
      content: Schema.encodeSync(MembershipChangeJson)(change),
      membershipChange: change,
      deliveryStatus: "published",
      insertedAtNs: now
    }))
  }

  /** The transcript entry of a commit that changed the group's settings: the same on every member. */
  const recordSettingsChange = (next: MlsGroupState, committer: LeafMember, envelope: GroupMessageEnvelope) => {
    const changed = changedSettings(crypto.view(state).metadata, crypto.view(next).metadata)
    if (changed.length === 0) return
    const epoch = crypto.view(state).epoch + 1n
    const change = MetadataChange.make({ epoch, changed, committedBy: committer.inboxId })
    newMessages.push(StoredMessage.make({
      id: metadataChangeIdOf(groupId, epoch),
      groupId,
      conversationId: conversationOf(),
      senderInboxId: committer.inboxId,
      senderInstallationId: committer.installationId,
      sentAtNs: envelope.serverTimeNs,
      sequenceId: envelope.sequenceId,
      kind: "metadataChange",
      content: Schema.encodeSync(MetadataChangeJson)(change),
      membershipChange: null,
      deliveryStatus: "published",
      insertedAtNs: now
    }))
  }

  /**
   * Why the group's policy refuses someone's commit, judged on the epoch it was built for: every
   * member runs this on the same settings, members and leave requests, so all skip it alike.
   */
  const policyRefusal = (
    before: GroupSnapshot,
    processed: Pick<Extract<Processed, { kind: "commit" }>, "committer" | "state" | "metadataBefore" | "metadataAfter">
  ) =>
    Effect.gen(function*() {
      const stored = (yield* storedLeavers)
        .filter((inboxId) => !removedHere.has(inboxId) && !voidedHere.has(inboxId))
      // The leaver holds no removal intent for itself, yet it asked too: it judges like the others.
      const own = membership === "pendingRemove" ? [identity.inboxId] : []
      const after = crypto.view(processed.state).members
      return commitRefusal({
        committer: processed.committer.inboxId,
        membersBefore: before.members.map((m) => m.inboxId),
        membersAfter: after.map((m) => m.inboxId),
        newLeafVersions: newLeaves(before.members, after).map((leaf) => leaf.protocolVersion ?? 1),
        leaving: [...leaving, ...stored, ...own],
        settingsBefore: processed.metadataBefore,
        settingsAfter: processed.metadataAfter
      })
    })

  /**
   * The leave requests this installation holds (its pending removals for them), read once a page:
   * the page's writes wait for its commit, so they are the same for every commit of the page, and
   * each read decodes every pending intent (an own commit's staged state among them).
   */
  let leavers: ReadonlyArray<InboxId> | undefined
  const storedLeavers = Effect.suspend(() =>
    leavers !== undefined ? Effect.succeed(leavers) : Effect.tap(leavingInboxes(ctx, groupId), (read) => {
      leavers = read
    })
  )

  const adopt = (next: MlsGroupState, changes: CommitChanges, committer: LeafMember, envelope: GroupMessageEnvelope) => {
    recordTranscript(changes.transcript, committer, envelope)
    for (const inboxId of changes.transcript?.removed ?? []) {
      removedHere.add(inboxId)
      leaving.delete(inboxId)
    }
    if (!changes.leftGroup) recordSettingsChange(next, committer, envelope)
    joined ||= changes.broughtNewcomers
    state = next
    progressedSinceFork = true
    if (changes.leftGroup) membership = "inactive"
    outcome = { ...outcome, commits: outcome.commits + 1 }
  }

  /** Whether, in the epoch held now, a leave request of this inbox can no longer be carried out. */
  const blockedLeaver = (inboxId: InboxId) => {
    const view = crypto.view(state)
    return leaveBlocked(view.metadata, view.members.map((m) => m.inboxId), inboxId)
  }

  /** After a commit: voids the leave requests it made impossible (ours included: we are active again). */
  const voidBlockedLeaves = Effect.gen(function*() {
    if (membership === "inactive") return
    const stored = yield* storedLeavers
    const own = membership === "pendingRemove" ? [identity.inboxId] : []
    for (const inboxId of new Set([...leaving, ...stored, ...own])) {
      if (removedHere.has(inboxId) || voidedHere.has(inboxId) || !blockedLeaver(inboxId)) continue
      leaving.delete(inboxId)
      voidedHere.add(inboxId)
      if (inboxId === identity.inboxId) membership = "active"
      yield* Effect.logInfo("leave request voided: the leaver is the group's last super admin").pipe(
        Effect.annotateLogs({ inboxId })
      )
    }
  })

  /** Own messages that landed on this page: written together at commit (an intent is handled once a page). */
  const delivered = {
    messages: [] as Array<{ readonly id: MessageId; readonly sentAtNs: bigint; readonly sequenceId: bigint; readonly expiresAtNs: bigint | null }>,
    intents: [] as Array<{ readonly id: number; readonly sequenceId: bigint }>
  }

  /** Our text or leave request landed: it is published where the DS put it. */
  const ownMessage = (intent: StoredIntent, envelope: GroupMessageEnvelope) => {
    const data = intent.data
    if (data._tag === "SendMessage") {
      delivered.messages.push({
        id: data.messageId,
        sentAtNs: envelope.serverTimeNs,
        sequenceId: envelope.sequenceId,
        expiresAtNs: disappearsAt(envelope)
      })
    }
    if (data._tag === "DeleteMessage") {
      // Judged like anyone's deletion, once the page's messages are stored; the intent ends there.
      deletions.push({ ...deletionBy(identity.inboxId, data.target), own: { intent, sequenceId: envelope.sequenceId } })
      return
    }
    delivered.intents.push({ id: intent.id, sequenceId: envelope.sequenceId })
    outcome = { ...outcome, messages: outcome.messages + 1 }
  }

  /** The page's own messages: published (which moves the group up: a trigger), their intents done. */
  const writeDelivered = Effect.gen(function*() {
    if (delivered.messages.length > 0) yield* storage.messages.markPublishedMany(delivered.messages)
    if (delivered.intents.length > 0) yield* storage.intents.markDelivered(delivered.intents)
  })

  /** When a text landing here disappears: the group's setting in force at this point of the topic. */
  const disappearsAt = (envelope: GroupMessageEnvelope) =>
    group.kind === "group"
      ? expiresAt(envelope.serverTimeNs, MessagingReceive.settingsIn(ctx, state).disappearAfterNs)
      : null

  /** A deletion judged on the settings every member holds at this point of the topic. */
  const deletionBy = (deleter: InboxId, target: MessageId): MessagingReceive.Deletion => ({
    target,
    deleter,
    conversationId: conversationOf(),
    conversationKind: group.kind,
    deleterIsSuperAdmin: MessagingReceive.settingsIn(ctx, state).superAdmins.includes(deleter)
  })

  /**
   * Someone's text (maybe typed content, maybe a direct message): stored unless already gone.
   * An effect only when a direct message's group must be judged; otherwise done on the spot.
   */
  const textMessage = (
    text: Extract<ApplicationDecision, { _tag: "Text" }>,
    sender: LeafMember,
    envelope: GroupMessageEnvelope
  ): Effect.Effect<void, StorageError> | undefined => {
    outcome = { ...outcome, messages: outcome.messages + 1 }
    const expiresAtNs = disappearsAt(envelope)
    // Read after its deadline (a member that was offline): it disappeared before it was stored.
    if (expiresAtNs !== null && expiresAtNs <= now) return undefined
    const store = (groupContext: GroupId | null) => {
      // Built from values decoded at the boundary (envelope, content, the sender's credential)
      // or derived from them: typed, not validated a second time (a schema pass per message).
      const row: StoredMessage = {
        id: messageIdOf(groupId, sender.installationId, text.nonce),
        groupId: groupId,
        conversationId: conversationOf(),
        senderInboxId: sender.inboxId,
        senderInstallationId: sender.installationId,
        sentAtNs: envelope.serverTimeNs,
        sequenceId: envelope.sequenceId,
        kind: "text",
        content: text.text,
        membershipChange: null,
        deliveryStatus: "published",
        insertedAtNs: now,
        groupContext,
        contentType: text.content?.type ?? null,
        contentBytes: text.content?.bytes ?? null,
        deleted: false,
        expiresAtNs
      }
      newMessages.push(row)
    }
    if (text.groupContext === undefined) {
      store(null)
      return undefined
    }
    return Effect.map(
      MessagingReceive.judgeGroupContext(ctx, { claimed: text.groupContext, arrivedIn: group.kind, sender: sender.inboxId }),
      store
    )
  }

  /** Our commit is first for its epoch: its staged state becomes the group's. */
  const ownCommitWon = (intent: StoredIntent, envelope: GroupMessageEnvelope, before: GroupSnapshot) =>
    Effect.gen(function*() {
      const staged = yield* ctx.loadStaged(groupId, intent.stagedState!, state)
      const after = crypto.view(staged)
      const current = crypto.view(state)
      const me = current.members.find((m) => m.leafIndex === before.ownLeafIndex)!
      // Built from what the delivery service handed us: checked as the other members check it.
      const refused = yield* LeafAuthentication.commitLeavesProblem(identity, current, after, me)
      if (refused !== undefined) {
        writes.push(failIntent(ctx, intent, `own commit refused: ${refused}`))
        return yield* skip(envelope, "unauthenticatedCommit", refused)
      }
      // Judged like anyone's: if the others skip it, so do we, or the group would fork.
      const refusal = yield* policyRefusal(before, {
        committer: me,
        state: staged,
        metadataBefore: current.metadata,
        metadataAfter: after.metadata
      })
      if (refusal !== undefined) {
        const denied = new PermissionDenied({ action: "commit", required: refusal })
        writes.push(failIntent(ctx, intent, encodeGovernanceError(denied)))
        return yield* skip(envelope, "policyViolation", refusal)
      }
      adopt(staged, ownCommitChanges(before, after), me, envelope)
      writes.push(storage.intents.markCommitted(intent.id, envelope.sequenceId))
      yield* voidBlockedLeaves
    })

  /** Someone's commit for our epoch: processed, then every leaf of its result checked. */
  const commit = (envelope: GroupMessageEnvelope, before: GroupSnapshot) =>
    Effect.gen(function*() {
      const current = crypto.view(state)
      const processed = yield* crypto.process(state, envelope.payload).pipe(Effect.either)
      if (processed._tag === "Left" || processed.right.kind !== "commit") {
        return yield* skip(envelope, "unprocessable", processed._tag === "Left" ? processed.left.message : "not a commit")
      }
      const after = crypto.view(processed.right.state)
      const refused = yield* LeafAuthentication.commitLeavesProblem(identity, current, after, processed.right.committer)
      if (refused !== undefined) return yield* skip(envelope, "unauthenticatedCommit", refused)
      const refusal = yield* policyRefusal(before, processed.right)
      if (refusal !== undefined) return yield* skip(envelope, "policyViolation", refusal)
      // A device revoked since it was added is let in (members read revocations at different
      // times) and removed at once.
      if (after.active && (yield* LeafAuthentication.enteringRevoked(identity, current, after))) revokedEntered = true
      adopt(processed.right.state, commitChanges(before, after, identity.inboxId), processed.right.committer, envelope)
      yield* voidBlockedLeaves
    })

  /** Someone's application message: decrypt it, then do what it asks. */
  const applicationMessage = (envelope: GroupMessageEnvelope, epoch: bigint, before: GroupSnapshot) =>
    Effect.gen(function*() {
      const processed = yield* crypto.process(state, envelope.payload).pipe(Effect.either)
      if (processed._tag === "Left" || processed.right.kind !== "application") {
        return yield* skip(envelope, "unprocessable", processed._tag === "Left" ? processed.left.message : "not an application message")
      }
      const next = decrypted(envelope, epoch, before, processed.right)
      if (next !== undefined) yield* next
    })

  /** What a decrypted application message asks for; an effect only where one is needed. */
  const decrypted = (
    envelope: GroupMessageEnvelope,
    epoch: bigint,
    before: GroupSnapshot,
    processed: ProcessedApplication
  ): Effect.Effect<void, StorageError> | undefined => {
    const { plaintext, sender } = processed
    // Decrypting advances the receive ratchet, whatever the content turns out to be.
    state = processed.state
    const decision = classifyApplication({ epoch, sender, plaintext, group: before, ownInboxId: identity.inboxId })
    const reason = applicationSkipReason(decision)
    if (reason !== undefined) return skip(envelope, reason)
    if (decision._tag === "Text") return textMessage(decision, sender, envelope)
    if (decision._tag === "Delete") {
      deletions.push(deletionBy(sender.inboxId, decision.target))
      return undefined
    }
    ApplicationDecision.$match(decision, {
      // A request the group cannot honour in this epoch is void for every member alike.
      OwnInboxLeaving: () => {
        if (blockedLeaver(identity.inboxId)) {
          voidedHere.add(identity.inboxId)
        } else {
          voidedHere.delete(identity.inboxId)
          if (membership === "active") membership = "pendingRemove"
        }
      },
      MemberLeaving: ({ inboxId }) => {
        if (blockedLeaver(inboxId)) {
          voidedHere.add(inboxId)
        } else {
          voidedHere.delete(inboxId)
          leaving.add(inboxId)
        }
      },
      Text: () => {},
      Delete: () => {},
      SenderRemoved: () => {},
      UndecodableContent: () => {},
      LeaveRequestInDm: () => {}
    })
    return undefined
  }

  /** Own intents by payload hash, read for the whole page at once (`prefetch`); page writes come at commit. */
  let published: Map<string, StoredIntent> | undefined

  /** Payload hashes, computed once per envelope. */
  const hashes = new Map<GroupMessageEnvelope, string>()
  const hashOf = (envelope: GroupMessageEnvelope): string => {
    const known = hashes.get(envelope)
    if (known !== undefined) return known
    const hash = sha256Hex(envelope.payload)
    hashes.set(envelope, hash)
    return hash
  }

  /**
   * Reads, in one query, the own intents any envelope of the page may be; none when `known` (the
   * intents the caller just stored, under the group lock still held) has one for every envelope.
   */
  const prefetch = (envelopes: ReadonlyArray<GroupMessageEnvelope>, known?: ReadonlyArray<StoredIntent>) => {
    const byHash = (intents: ReadonlyArray<StoredIntent>) =>
      new Map(intents.flatMap((i) => (i.payloadHash === null ? [] : [[i.payloadHash, i] as const])))
    const kept = known === undefined ? undefined : byHash(known)
    if (kept !== undefined && envelopes.every((envelope) => kept.has(hashOf(envelope)))) {
      published = kept
      return Effect.void
    }
    return storage.intents.byPayloadHashes(envelopes.map(hashOf)).pipe(
      Effect.map((intents) => {
        published = byHash(intents)
      })
    )
  }

  /** The own intent that published this payload, if any. */
  const ownIntentOf = (envelope: GroupMessageEnvelope) =>
    (published === undefined
      ? storage.intents.byPayloadHash(hashOf(envelope))
      : Effect.succeed(Option.fromNullable(published.get(hashOf(envelope))))).pipe(
      // A hash match must also be a byte match: the hash is ours, the bytes are the DS's.
      Effect.map(Option.filter((intent) => intent.payload === null || bytesEqual(intent.payload, envelope.payload)))
    )

  /**
   * Our own payload, byte for byte (prefetched with the page): its header is what it was written
   * with (this group, the epoch it was derived at, a commit or not), so it needs no decoding.
   */
  const ownHeaderOf = (envelope: GroupMessageEnvelope) =>
    Option.flatMap(Option.fromNullable(published?.get(hashOf(envelope))), (intent) =>
      intent.groupId === groupId && intent.publishedEpoch !== null && intent.payload !== null &&
        bytesEqual(intent.payload, envelope.payload)
        ? Option.some({
          own: intent,
          header: { kind: isCommitKind(intent.kind) ? "commit" : "application", groupId, epoch: intent.publishedEpoch } as const
        })
        : Option.none())

  /** Reads what the table needs; envelopes already read or of a group we left need nothing. */
  const factsOf = (envelope: GroupMessageEnvelope, before: GroupSnapshot) =>
    Effect.gen(function*() {
      const settled = envelope.sequenceId <= cursor || before.membership === "inactive"
      const mine = settled ? Option.none() : ownHeaderOf(envelope)
      if (Option.isSome(mine)) return { header: Option.some(mine.value.header), own: Option.some(mine.value.own) }
      const header = settled ? Option.none() : yield* crypto.inspect(envelope.payload).pipe(Effect.option)
      const own = Option.isSome(header) && header.value.groupId === groupId
        ? yield* ownIntentOf(envelope)
        : Option.none<StoredIntent>()
      return { header, own }
    })

  const apply = (envelope: GroupMessageEnvelope) =>
    Effect.gen(function*() {
      outcome = { ...outcome, received: outcome.received + 1 }
      const before = snapshot()
      const { header, own } = yield* factsOf(envelope, before)
      const decision = classifyEnvelope({
        sequenceId: envelope.sequenceId,
        cursor,
        header,
        ownIntent: Option.map(own, (i) => ({ id: i.id, kind: i.kind, state: i.state, hasStagedState: i.stagedState !== null })),
        handledIntents,
        group: before,
        maxPastEpochs: ctx.options.maxPastEpochs
      })
      if (Option.isSome(own) && decision._tag !== "Duplicate") handledIntents.add(own.value.id)
      switch (decision._tag) {
        case "OwnMessage":
          return ownMessage(Option.getOrThrow(own), envelope)
        case "OwnCommitWon":
          return yield* ownCommitWon(Option.getOrThrow(own), envelope, before)
        case "OwnCommitLost":
          yield* Effect.logDebug(`own commit for epoch ${decision.epoch} lost; group is at ${decision.currentEpoch}`).pipe(
            Effect.annotateLogs({ intentId: decision.intentId })
          )
          writes.push(storage.intents.resetToPublish(decision.intentId, { conflict: true }))
          break
        case "FutureEpochCommit":
          forked = `commit for epoch ${decision.epoch} at sequence ${envelope.sequenceId}; group at ${decision.currentEpoch}`
          progressedSinceFork = false
          yield* Effect.logWarning("group may be forked", forked)
          break
        case "Commit":
          return yield* commit(envelope, before)
        case "ApplicationMessage":
          return yield* applicationMessage(envelope, decision.epoch, before)
      }
      const reason = skipReasonOf(decision)
      if (reason !== undefined) yield* skip(envelope, reason, describe(decision))
    })

  /**
   * Someone's application message within reach, decided as `apply` decides it (the same table,
   * no own intent with this payload, the header read once); undefined for anything else.
   */
  const plainApplication = (envelope: GroupMessageEnvelope, before: GroupSnapshot): bigint | undefined => {
    if (envelope.sequenceId <= cursor || before.membership === "inactive") return undefined
    if (published === undefined || published.has(hashOf(envelope))) return undefined
    const header = crypto.header(envelope.payload)
    if (header === undefined || header.kind !== "application") return undefined
    const decision = classifyEnvelope({
      sequenceId: envelope.sequenceId,
      cursor,
      header: Option.some(header),
      ownIntent: Option.none(),
      handledIntents,
      group: before,
      maxPastEpochs: ctx.options.maxPastEpochs
    })
    return decision._tag === "ApplicationMessage" ? decision.epoch : undefined
  }

  /**
   * Someone's application messages in a row, decrypted in one call and applied in a plain loop:
   * the same steps as `apply` for each, without an effect per message. Application messages
   * change neither the epoch nor the members, so one snapshot serves the whole run.
   */
  const applyApplications = (run: ReadonlyArray<PlainApplication>, before: GroupSnapshot) =>
    Effect.gen(function*() {
      const payloads = run.map((r) => r.envelope.payload)
      const { results } = strict
        ? yield* crypto.processApplications(state, payloads)
        : yield* Effect.tap(crypto.processApplicationsUnconfirmed(state, payloads), (read) => {
          confirmations.push(read.confirmed)
        })
      for (const [i, { envelope, epoch }] of run.entries()) {
        outcome = { ...outcome, received: outcome.received + 1 }
        const processed = results[i]!
        const next = Either.isLeft(processed)
          ? skip(envelope, "unprocessable", processed.left.message)
          : decrypted(envelope, epoch, before, processed.right)
        if (next !== undefined) yield* next
      }
    })

  /**
   * Our own application message (what a publish reads back), decided as `apply` decides it (the
   * same table, the header it was written with): its intent if it is `OwnMessage`, else undefined.
   */
  const ownApplication = (envelope: GroupMessageEnvelope, before: GroupSnapshot): StoredIntent | undefined => {
    if (envelope.sequenceId <= cursor || before.membership === "inactive") return undefined
    const mine = Option.getOrUndefined(ownHeaderOf(envelope))
    if (mine === undefined || mine.header.kind !== "application") return undefined
    const { own } = mine
    const decision = classifyEnvelope({
      sequenceId: envelope.sequenceId,
      cursor,
      header: Option.some(mine.header),
      ownIntent: Option.some({ id: own.id, kind: own.kind, state: own.state, hasStagedState: own.stagedState !== null }),
      handledIntents,
      group: before,
      maxPastEpochs: ctx.options.maxPastEpochs
    })
    return decision._tag === "OwnMessage" ? own : undefined
  }

  /** Applies a page's envelopes in order: runs of someone's application messages together, the rest one by one. */
  const applyAll = (envelopes: ReadonlyArray<GroupMessageEnvelope>) =>
    Effect.gen(function*() {
      let before = snapshot()
      let run: Array<PlainApplication> = []
      for (const envelope of envelopes) {
        // Our own message changes neither state nor members: `apply`'s steps, without an effect each.
        const own = ownApplication(envelope, before)
        if (own !== undefined) {
          if (run.length > 0) yield* applyApplications(run, before)
          run = []
          outcome = { ...outcome, received: outcome.received + 1 }
          handledIntents.add(own.id)
          ownMessage(own, envelope)
          continue
        }
        const epoch = plainApplication(envelope, before)
        if (epoch !== undefined) {
          run.push({ envelope, epoch })
          continue
        }
        if (run.length > 0) yield* applyApplications(run, before)
        run = []
        yield* apply(envelope)
        before = snapshot()
      }
      if (run.length > 0) yield* applyApplications(run, before)
    })

  /** A DM's groups each record the same membership changes: the conversation shows them once. */
  const repeatsInDm = (row: StoredMessage) =>
    Effect.gen(function*() {
      const key = (c: MembershipChange | null) => JSON.stringify([c?.addedInboxes, c?.removedInboxes])
      const earlier = yield* storage.messages.membershipChanges(row.conversationId)
      return earlier.some((m) => m.groupId !== row.groupId && key(m.membershipChange) === key(row.membershipChange))
    })

  /** Stores the page's new messages; returns those stored for the first time. */
  const insertMessages = Effect.gen(function*() {
    const rows: Array<StoredMessage> = []
    for (const row of newMessages) {
      if (row.kind === "membershipChange" && group.kind === "dm" && (yield* repeatsInDm(row))) continue
      rows.push(row)
    }
    // One statement for the page's rows, one touch for its latest text.
    const inserted = new Set(yield* storage.messages.insertMany(rows))
    // A deletion that arrived before its message (and may take it) erases it at once.
    const erased = yield* MessagingReceive.settleDeletionsOf(ctx, rows.filter((row) => inserted.has(row.id)))
    const fresh = rows.filter((row) => inserted.delete(row.id) && !erased.has(row.id))
    const lastText = rows.reduce<bigint | undefined>(
      (last, row) => row.kind === "text" && (last === undefined || row.sentAtNs > last) ? row.sentAtNs : last,
      undefined
    )
    if (lastText !== undefined) yield* storage.groups.touch(groupId, lastText)
    return fresh
  })

  /** Writes the page and moves the cursor to `last`, in one transaction; returns the messages stored. */
  const commitPage = (last: bigint) =>
    storage.transaction(Effect.gen(function*() {
      for (const write of writes) yield* write
      yield* writeDelivered
      // A crash here rolls the whole page back: it is replayed from the old cursor and state.
      yield* ctx.options.crashPoint("sync.midPage")
      const fresh = yield* insertMessages
      for (const deletion of deletions) yield* MessagingReceive.applyDeletion(ctx, deletion)
      // A page of only our own messages leaves the state as it was: nothing to write.
      if (state !== initial) {
        yield* storage.groups.saveState(groupId, { epoch: crypto.view(state).epoch, mlsState: ctx.encodeState(groupId, state) })
      }
      if (membership !== group.membershipState) yield* storage.groups.setMembership(groupId, membership)
      if (membership === "inactive" && group.membershipState !== "inactive") yield* failPendingIntents(ctx, groupId)
      if (forked !== undefined && !progressedSinceFork) yield* storage.groups.markForked(groupId, forked)
      else if (progressedSinceFork && group.maybeForked) yield* storage.groups.clearForked(groupId)
      yield* settleLeaveRemovals(ctx, groupId, removedHere)
      yield* voidLeaveRequests(ctx, groupId, voidedHere, voidedCause)
      // Out of the group, we queue nothing for it (failPendingIntents above would miss it).
      if (membership !== "inactive") for (const inboxId of leaving) yield* queueRemoval(ctx, groupId, inboxId, now)
      if (joined && membership === "pendingRemove") yield* queueLeaveAgain(ctx, groupId, now)
      if (revokedEntered && membership === "active") yield* queueInstallationUpdate(ctx, groupId, now)
      yield* storage.cursors.advance(groupTopic(groupId), last)
      // Last, so the checks finish while the page is written: one failed, nothing of the page stays.
      for (const confirmed of confirmations) if (!(yield* confirmed)) return yield* new UnconfirmedSignatures()
      return fresh
    }))

  /** Whether the page stores a message with a deadline (the disappearing-message sweeper must hear of it). */
  const storesDeadline = () =>
    delivered.messages.some((m) => m.expiresAtNs !== null) || newMessages.some((row) => row.expiresAtNs !== null)

  return {
    prefetch,
    apply,
    applyAll,
    commit: commitPage,
    outcome: () => outcome,
    membership: () => membership,
    storesDeadline,
    /** Own intents this page settles as Processed (its own messages that landed), once committed. */
    delivered: () => delivered.intents.map((i) => i.id)
  }
}

const voidedCause = encodeGovernanceError(
  new PermissionDenied({ action: "leave", required: "another super admin (setRole first)" })
)

/** A skip's detail for the debug log. */
const describe = (decision: EnvelopeDecision): string =>
  EnvelopeDecision.$match(decision, {
    AlreadyRead: () => "already read",
    NotAMemberAnymore: () => "this installation is no longer a member",
    Malformed: () => "malformed",
    ForeignGroup: ({ groupId }) => `belongs to group ${groupId ?? "?"}`,
    Duplicate: ({ intentId }) => `duplicate of own intent ${intentId}`,
    OwnMessage: () => "own message",
    OwnCommitWon: () => "own commit",
    OwnCommitLost: ({ epoch }) => `own commit for epoch ${epoch} lost`,
    PastEpochCommit: ({ epoch }) => `commit for past epoch ${epoch} lost the race`,
    FutureEpochCommit: ({ epoch }) => `commit for future epoch ${epoch}`,
    Commit: () => "commit",
    Unexpected: ({ kind }) => `unexpected ${kind}`,
    TooOldApplication: ({ epoch }) => `application message from epoch ${epoch} is older than maxPastEpochs`,
    ApplicationMessage: () => "application message"
  })

/** Someone's application message within reach, and the epoch its header names. */
interface PlainApplication {
  readonly envelope: GroupMessageEnvelope
  readonly epoch: bigint
}
