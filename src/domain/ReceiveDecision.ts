/**
 * The receive protocol as a table: what one envelope of a group topic means for this
 * installation, decided from plain data (the envelope's MLS header, the group as we hold it,
 * the own intent whose payload it is, what this page already handled). No I/O and no MLS
 * state: `services/GroupSync` gathers the facts, asks here, and applies the answer.
 *
 * Three steps, each a pure function returning a tagged decision:
 * - `classifyEnvelope`: before any decryption (libxmtp's own-message / external split);
 * - `commitChanges`: what a processed commit did to the membership;
 * - `classifyApplication`: what a decrypted application payload asks for.
 */
import { Data, Option, Schema } from "effect"
import { ApplicationContentJson, type IdOrder } from "./Content.ts"
import type { GroupId, InboxId, InstallationId, MessageId } from "./Ids.ts"
import type { IntentKind, IntentState } from "./Intent.ts"
import { isCommitKind } from "./Intent.ts"
import type { ConversationKind, MembershipState } from "./Stored.ts"

/** What can be read from an envelope without any group state (`MlsCrypto.inspect`). */
export interface EnvelopeHeader {
  readonly kind: "application" | "commit" | "proposal" | "welcome" | "other"
  readonly groupId: string | undefined
  readonly epoch: bigint
}

/** One leaf of the group, as far as the rules care. */
export interface Leaf {
  readonly inboxId: InboxId
  readonly installationId: InstallationId
  readonly leafIndex: number
}

/** The group as this installation holds it before the envelope. */
export interface GroupSnapshot {
  readonly groupId: string
  readonly kind: ConversationKind
  readonly membership: MembershipState
  readonly epoch: bigint
  readonly ownLeafIndex: number
  readonly members: ReadonlyArray<Leaf>
}

/** The own intent whose published payload is this envelope's payload. */
export interface OwnIntent {
  readonly id: number
  readonly kind: IntentKind
  readonly state: IntentState
  /** A commit's post-commit state, written ahead: present until adopted or dropped. */
  readonly hasStagedState: boolean
}

export interface EnvelopeFacts {
  readonly sequenceId: bigint
  /** The group cursor the page was read from. */
  readonly cursor: bigint
  /** None when the envelope is not an MLS message at all. */
  readonly header: Option.Option<EnvelopeHeader>
  readonly ownIntent: Option.Option<OwnIntent>
  /** Own intents already matched earlier in this page (the DS may deliver a payload twice). */
  readonly handledIntents: ReadonlySet<number>
  readonly group: GroupSnapshot
  /** Past epochs whose application messages still decrypt. */
  readonly maxPastEpochs: number
}

export type EnvelopeDecision = Data.TaggedEnum<{
  /** At or before the cursor: read by an earlier page. Not counted. */
  AlreadyRead: {}
  /** This installation was removed: nothing on the topic concerns it any more. */
  NotAMemberAnymore: {}
  Malformed: {}
  /** An MLS message of another group, published on this group's topic. */
  ForeignGroup: { readonly groupId: string | undefined }
  /** Our own payload again: matched earlier in the page, or its intent has moved on. */
  Duplicate: { readonly intentId: number }
  /** Our application message (a text or a deletion) landed: it is published. */
  OwnMessage: { readonly intentId: number }
  /**
   * Our application message landed further back than `maxPastEpochs`: every member skips it as
   * too old (`TooOldApplication`), so we send it again at the current epoch.
   */
  OwnMessageTooOld: { readonly intentId: number; readonly epoch: bigint; readonly currentEpoch: bigint }
  /** Our commit is the first for its epoch: adopt its staged state. */
  OwnCommitWon: { readonly intentId: number }
  /** Our commit was built for an epoch the group has left: re-derive the intent. */
  OwnCommitLost: { readonly intentId: number; readonly epoch: bigint; readonly currentEpoch: bigint }
  /** Someone's commit that lost the race for an epoch we have passed. */
  PastEpochCommit: { readonly epoch: bigint }
  /** A commit for an epoch we never reached: we may be forked. Recorded, never guessed at. */
  FutureEpochCommit: { readonly epoch: bigint; readonly currentEpoch: bigint }
  /** Someone's commit for the current epoch: process it. */
  Commit: {}
  /** A proposal, welcome or other message kind the engine never sends on a group topic. */
  Unexpected: { readonly kind: string }
  /** An application message from further back than `maxPastEpochs`: its keys are gone. */
  TooOldApplication: { readonly epoch: bigint }
  /** Someone's application message within reach: decrypt it. */
  ApplicationMessage: { readonly epoch: bigint }
}>
export const EnvelopeDecision = Data.taggedEnum<EnvelopeDecision>()

/** Classifies one envelope. The order of the rules is the protocol: earlier rules win. */
export const classifyEnvelope = (facts: EnvelopeFacts): EnvelopeDecision => {
  const { group, header, ownIntent } = facts
  if (facts.sequenceId <= facts.cursor) return EnvelopeDecision.AlreadyRead()
  if (group.membership === "inactive") return EnvelopeDecision.NotAMemberAnymore()
  if (Option.isNone(header)) return EnvelopeDecision.Malformed()
  if (header.value.groupId !== group.groupId) return EnvelopeDecision.ForeignGroup({ groupId: header.value.groupId })
  if (Option.isSome(ownIntent)) return classifyOwn(ownIntent.value, header.value, facts)
  return classifyExternal(header.value, facts)
}

/** An application message from further back than `maxPastEpochs`: its keys are gone. */
const tooOld = (epoch: bigint, facts: EnvelopeFacts) => epoch + BigInt(facts.maxPastEpochs) < facts.group.epoch

const classifyOwn = (intent: OwnIntent, header: EnvelopeHeader, facts: EnvelopeFacts): EnvelopeDecision => {
  if (facts.handledIntents.has(intent.id) || intent.state !== "Published") {
    return EnvelopeDecision.Duplicate({ intentId: intent.id })
  }
  if (!isCommitKind(intent.kind)) {
    // The receivers' rule for anyone's application message (`classifyExternal`), so we never
    // count as delivered what every member skipped.
    return tooOld(header.epoch, facts)
      ? EnvelopeDecision.OwnMessageTooOld({ intentId: intent.id, epoch: header.epoch, currentEpoch: facts.group.epoch })
      : EnvelopeDecision.OwnMessage({ intentId: intent.id })
  }
  // An own commit wins only if it was built for the epoch the group is in now.
  return header.epoch === facts.group.epoch && intent.hasStagedState
    ? EnvelopeDecision.OwnCommitWon({ intentId: intent.id })
    : EnvelopeDecision.OwnCommitLost({ intentId: intent.id, epoch: header.epoch, currentEpoch: facts.group.epoch })
}

const classifyExternal = (header: EnvelopeHeader, facts: EnvelopeFacts): EnvelopeDecision => {
  const current = facts.group.epoch
  switch (header.kind) {
    case "commit":
      if (header.epoch < current) return EnvelopeDecision.PastEpochCommit({ epoch: header.epoch })
      if (header.epoch > current) return EnvelopeDecision.FutureEpochCommit({ epoch: header.epoch, currentEpoch: current })
      return EnvelopeDecision.Commit()
    case "application":
      return tooOld(header.epoch, facts)
        ? EnvelopeDecision.TooOldApplication({ epoch: header.epoch })
        : EnvelopeDecision.ApplicationMessage({ epoch: header.epoch })
    default:
      return EnvelopeDecision.Unexpected({ kind: header.kind })
  }
}

// ---- why an envelope was skipped, for `SyncSummary.skippedBy` ----

export const SkipReason = Schema.Literal(
  "notAMember",
  "malformed",
  "foreignGroup",
  "duplicate",
  "ownCommitLost",
  "pastEpochCommit",
  "futureEpochCommit",
  "unexpected",
  "tooOldApplication",
  /** MLS refused it (cannot decrypt, bad signature, wrong kind inside). */
  "unprocessable",
  /** A commit bringing in a leaf that is not a current installation of its inbox. */
  "unauthenticatedCommit",
  /** An old-epoch application message from someone removed since. */
  "senderRemoved",
  "undecodableContent",
  /** A welcome that does not decode, verify or join. */
  "badWelcome",
  /** A commit its committer was not allowed to make (Governance.checkCommit, judged on its epoch). */
  "policyViolation"
)
export type SkipReason = typeof SkipReason.Type

/** Counts of skips by reason, summed; reasons that did not occur stay absent. */
export const addSkipCounts = <K extends string>(
  a: Readonly<Partial<Record<K, number>>>,
  b: Readonly<Partial<Record<K, number>>>
): Partial<Record<K, number>> => {
  const sum: Partial<Record<K, number>> = { ...a }
  for (const [reason, n] of Object.entries(b) as Array<[K, number]>) sum[reason] = (sum[reason] ?? 0) + n
  return sum
}

/** The skip an envelope decision stands for; undefined when the envelope is applied (or already read). */
export const skipReasonOf = (decision: EnvelopeDecision): SkipReason | undefined =>
  EnvelopeDecision.$match(decision, {
    AlreadyRead: () => undefined,
    NotAMemberAnymore: () => "notAMember" as const,
    Malformed: () => "malformed" as const,
    ForeignGroup: () => "foreignGroup" as const,
    Duplicate: () => "duplicate" as const,
    OwnMessage: () => undefined,
    OwnMessageTooOld: () => "tooOldApplication" as const,
    OwnCommitWon: () => undefined,
    OwnCommitLost: () => "ownCommitLost" as const,
    PastEpochCommit: () => "pastEpochCommit" as const,
    FutureEpochCommit: () => "futureEpochCommit" as const,
    Commit: () => undefined,
    Unexpected: () => "unexpected" as const,
    TooOldApplication: () => "tooOldApplication" as const,
    ApplicationMessage: () => undefined
  })

// ---- what a commit did ----

/** A transcript entry: the inboxes a commit added and removed, as of the epoch it starts. */
export interface MembershipDiff {
  readonly epoch: bigint
  readonly added: ReadonlyArray<InboxId>
  readonly removed: ReadonlyArray<InboxId>
}

/** The group after a commit, as far as the rules care. */
export interface GroupAfter {
  readonly epoch: bigint
  /** False when the commit removed this installation. */
  readonly active: boolean
  readonly members: ReadonlyArray<Leaf>
}

export interface CommitChanges {
  /** The transcript entry to record, if the commit changed which inboxes are in. */
  readonly transcript: MembershipDiff | undefined
  /** Whether this installation is out of the group from now on. */
  readonly leftGroup: boolean
}

/** The inboxes that came in and went out between two member lists, sorted. */
export const membershipDiff = (before: ReadonlyArray<Leaf>, after: GroupAfter): MembershipDiff | undefined => {
  const was = new Set(before.map((m) => m.inboxId))
  const is = new Set(after.members.map((m) => m.inboxId))
  const added = [...is].filter((i) => !was.has(i)).sort()
  const removed = [...was].filter((i) => !is.has(i)).sort()
  return added.length === 0 && removed.length === 0 ? undefined : { epoch: after.epoch, added, removed }
}

/** Leaves that were not in the group before (each must be a current installation of its inbox). */
export const newLeaves = <L extends Leaf>(before: ReadonlyArray<Leaf>, after: ReadonlyArray<L>): ReadonlyArray<L> => {
  const known = new Set(before.map((m) => `${m.installationId}:${m.leafIndex}`))
  return after.filter((leaf) => !known.has(`${leaf.installationId}:${leaf.leafIndex}`))
}

/** What someone else's commit for the current epoch, processed from `group`, did for this installation. */
export const commitChanges = (group: GroupSnapshot, after: GroupAfter, ownInboxId: InboxId): CommitChanges => {
  if (after.active) {
    return { transcript: membershipDiff(group.members, after), leftGroup: false }
  }
  // Our removal is our inbox's removal only if no other device of ours stays: a revoked
  // device's removal changes no inbox, and the other members record nothing for it.
  const inboxGoes = group.membership === "pendingRemove" ||
    group.members.every((m) => m.inboxId !== ownInboxId || m.leafIndex === group.ownLeafIndex)
  return {
    // Our state stays at the old epoch: the entry is dated by the epoch the commit starts.
    transcript: inboxGoes ? { epoch: group.epoch + 1n, added: [], removed: [ownInboxId] } : undefined,
    leftGroup: true
  }
}

/** What our own winning commit did: the same transcript the other members record. */
export const ownCommitChanges = (group: GroupSnapshot, after: GroupAfter): CommitChanges => ({
  transcript: membershipDiff(group.members, after),
  leftGroup: false
})

// ---- what a decrypted application message asks for ----

export interface ApplicationFacts {
  /** The epoch the message was sent in. */
  readonly epoch: bigint
  readonly sender: { readonly inboxId: InboxId; readonly installationId: InstallationId }
  readonly plaintext: Uint8Array
  readonly group: GroupSnapshot
  readonly ownInboxId: InboxId
}

export type ApplicationDecision = Data.TaggedEnum<{
  /** Sent from an old epoch by someone removed since: the group does not take its word. */
  SenderRemoved: { readonly installationId: InstallationId }
  /** Not content this version reads (an old leave request among it: leaving is a commit now). */
  UndecodableContent: {}
  Text: {
    readonly nonce: string
    readonly text: string
    /** How the sender laid out the text's id (`Content.messageIdOf`). */
    readonly idOrder: IdOrder | undefined
    /** The group a direct message claims (the receiver judges the claim). */
    readonly groupContext: GroupId | undefined
    readonly content: { readonly type: string; readonly bytes: Uint8Array } | undefined
  }
  /** A member asks to delete a message for everyone (the receiver judges who may). */
  Delete: { readonly nonce: string; readonly target: MessageId }
}>
export const ApplicationDecision = Data.taggedEnum<ApplicationDecision>()

const decodeContent = Schema.decodeUnknownOption(ApplicationContentJson)
/** Not fatal: invalid UTF-8 becomes U+FFFD, and the content schema then refuses it. */
const plaintextDecoder = new TextDecoder()

export const classifyApplication = (facts: ApplicationFacts): ApplicationDecision => {
  const { group, sender } = facts
  if (facts.epoch < group.epoch && !group.members.some((m) => m.installationId === sender.installationId)) {
    // (and the sender, inactive, records its message as failed)
    return ApplicationDecision.SenderRemoved({ installationId: sender.installationId })
  }
  const content = decodeContent(plaintextDecoder.decode(facts.plaintext))
  if (Option.isNone(content)) return ApplicationDecision.UndecodableContent()
  const value = content.value
  if (value._tag === "Text") {
    return ApplicationDecision.Text({
      nonce: value.nonce,
      text: value.text,
      idOrder: value.idOrder,
      groupContext: value.groupContext,
      content: value.content
    })
  }
  return ApplicationDecision.Delete({ nonce: value.nonce, target: value.target })
}

export const applicationSkipReason = (decision: ApplicationDecision): SkipReason | undefined =>
  ApplicationDecision.$match(decision, {
    SenderRemoved: () => "senderRemoved" as const,
    UndecodableContent: () => "undecodableContent" as const,
    Text: () => undefined,
    Delete: () => undefined
  })
