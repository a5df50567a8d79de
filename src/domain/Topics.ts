/**
 * What a delivery store deals in: named, totally ordered topics of opaque payloads. Shared by
 * the `DeliveryStore` port and its implementations (which import the port itself only as a
 * type, since the port imports them as values).
 */
import { Data } from "effect"

/**
 * A topic's name: `g/<group id>` for a group, `w/<installation id>` for an installation's
 * welcomes. A store treats it as opaque.
 */
export type Topic = string & { readonly _Topic: unique symbol }

export const groupTopic = (groupId: string): Topic => `g/${groupId}` as Topic
export const welcomeTopic = (installationId: string): Topic => `w/${installationId}` as Topic

/**
 * "Every topic may have grown": announced when changes may have been missed (e.g. a store's
 * notification connection was re-established). Subscribers re-read.
 */
export const ANY_TOPIC = "*" as Topic

/** One entry of a topic as stored. */
export interface StoredEntry {
  readonly topic: Topic
  readonly sequenceId: bigint
  readonly serverTimeNs: bigint
  readonly payload: Uint8Array
}

/** A topic grew: its entries up to `sequenceId` are committed and readable. */
export interface TopicChange {
  readonly topic: Topic
  readonly sequenceId: bigint
}

/**
 * The store could not be reached or failed: the operation may or may not have happened.
 * Server-side only; a delivery service reports it to callers as a retryable `Unavailable`.
 */
export class DeliveryStoreError extends Data.TaggedError("DeliveryStoreError")<{
  readonly operation: string
  readonly cause: unknown
}> {
  override get message() {
    return `delivery store failed in ${this.operation}: ${String(this.cause)}`
  }
}
