/**
 * The part of the local store that history sync and consent use: consent records, the import
 * progress of this installation, the answers it is sending to others, and keyset reads of the
 * archive. Repositories of the `Storage` port (`storage.consent`, `storage.history`).
 */
import type { Effect, Option } from "effect"
import type { ConsentKey, ConsentRecord } from "../domain/Consent.ts"
import type { StorageError } from "../domain/Errors.ts"
import type { AnswerPhase } from "../domain/HistoryArchive.ts"
import type { GroupId, InstallationId, MessageId } from "../domain/Ids.ts"
import type { StoredGroup, StoredMessage } from "../domain/Stored.ts"

type Io<A> = Effect.Effect<A, StorageError>

export interface ConsentRepository {
  readonly get: (key: ConsentKey) => Io<Option.Option<ConsentRecord>>
  /** Every record (one per subject), for filtering lists. */
  readonly all: Io<ReadonlyArray<ConsentRecord>>
  /** Records after a key, in key order (archive pages). */
  readonly page: (afterKey: string, limit: number) => Io<ReadonlyArray<ConsentRecord>>
  /** Stores the record if it wins over the stored one (`Consent.wins`); returns whether it did. */
  readonly put: (record: ConsentRecord, options: { readonly unsent: boolean }) => Io<boolean>
  /** Local decisions not yet sent to the other installations. */
  readonly unsent: (limit: number) => Io<ReadonlyArray<ConsentRecord>>
  readonly markSent: (keys: ReadonlyArray<ConsentKey>) => Io<void>
  /** The highest stamp of any record (0 when there is none). */
  readonly highestStamp: Io<bigint>
}

export type HistoryState = "idle" | "requesting" | "importing" | "done"

export interface HistoryProgress {
  readonly state: HistoryState
  readonly requestId: string | null
  /** The other installations the request went to (sorted, comma-separated): a newcomer is asked again. */
  readonly requestedFrom: string
  readonly pagesImported: number
  readonly messagesImported: number
}

/** An answer this installation is sending: where it stands, so a restart resumes it. */
export interface HistoryAnswer {
  readonly requestId: string
  readonly requester: InstallationId
  readonly groupId: GroupId
  readonly phase: AnswerPhase
  /** The last key sent in this phase ("" before the first; a feed sequence in `feed` and `live`). */
  readonly cursor: string
  /** How far the feed was sent: where `live` carries on after the consent records. */
  readonly feedCursor: string
  readonly pageIndex: number
}

export interface FeedEntry {
  readonly seq: number
  readonly group?: StoredGroup
  readonly message?: StoredMessage
}

export interface HistoryRepository {
  readonly progress: Io<Option.Option<HistoryProgress>>
  /** The index of the next page expected from a responder to a request (0 before the first). */
  readonly nextIndex: (requestId: string, responder: InstallationId) => Io<number>
  readonly saveNextIndex: (requestId: string, responder: InstallationId, next: number) => Io<void>
  readonly saveProgress: (progress: HistoryProgress) => Io<void>
  /** Answers not finished yet. */
  readonly openAnswers: Io<ReadonlyArray<HistoryAnswer>>
  readonly answer: (requestId: string) => Io<Option.Option<HistoryAnswer>>
  readonly saveAnswer: (answer: HistoryAnswer) => Io<void>
  /**
   * The next entries of this installation's feed after sequence `afterSeq`: groups as stored,
   * messages once published, in the order they came. An entry whose row is gone, unpublished
   * again, or of an own-devices group carries neither (it is only passed over).
   */
  readonly feedAfter: (afterSeq: number, limit: number) => Io<ReadonlyArray<FeedEntry>>
  /** Payloads read from own-devices groups and not handled yet, in topic order. */
  readonly inbound: (groupIds: ReadonlyArray<GroupId>, limit: number) => Io<ReadonlyArray<StoredMessage>>
  /** Drops a handled payload (in the transaction that applies it). */
  readonly dropMessage: (id: MessageId) => Io<void>
}
