/**
 * Our own envelopes on a page: recognized by payload hash and bytes against the own intents
 * (read for the whole page at once), their header known from the intent that wrote them, and
 * our messages that landed recorded as delivered (published where the DS put them).
 */
import { Effect, Option } from "effect"
import { bytesEqual, sha256Hex } from "../domain/Bytes.ts"
import { classifyEnvelope, type GroupSnapshot } from "../domain/ReceiveDecision.ts"
import type { StoredIntent } from "../domain/Stored.ts"
import { isCommitKind } from "../domain/Intent.ts"
import type { GroupMessageEnvelope } from "../domain/Wire.ts"
import type { PageLedger } from "./PageLedger.ts"
import type * as PageMessages from "./PageMessages.ts"

export const make = (
  page: PageLedger,
  { deletionBy, disappearsAt }: Pick<ReturnType<typeof PageMessages.make>, "deletionBy" | "disappearsAt">
) => {
  const { ctx, cursor, delivered, deletions, handledIntents } = page
  const { identity, storage } = ctx
  const groupId = page.group.id

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

  /** Whether this payload may be ours: the page's own intents are not read yet, or one has its hash. */
  const mayBeOwn = (envelope: GroupMessageEnvelope) => published === undefined || published.has(hashOf(envelope))

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

  /** Our text or deletion landed: it is published where the DS put it. */
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
    page.outcome = { ...page.outcome, messages: page.outcome.messages + 1 }
  }

  return { prefetch, mayBeOwn, ownIntentOf, ownHeaderOf, ownApplication, ownMessage }
}
