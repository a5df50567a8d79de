/**
 * What a send's answer says about the topic. The delivery service answers `sendGroupMessages`
 * with the stored envelopes, ids included (over RPC, the ids and times of the envelopes the
 * client sent: the same claim), and ids on a topic are gap-free and increasing. So
 * when the answer carries, in order, exactly the bytes we sent at ids cursor + 1, cursor + 2, ...,
 * those envelopes are the topic's next entries after our cursor: reading them back by a query
 * would return the same page (trusting the service no more than a query does). Anything else
 * (a resend the service already held, someone's message in between, a short answer) says
 * nothing certain, and the topic is read as usual.
 */
import { bytesEqual } from "./Bytes.ts"

/** The fields of a stored envelope this rule looks at. */
export interface AnsweredEnvelope {
  readonly groupId: string
  readonly sequenceId: bigint
  readonly payload: Uint8Array
}

/** Whether `answer` is the topic's next entries after `cursor`, holding exactly `sent`, in order. */
export const continuesCursor = (
  groupId: string,
  cursor: bigint,
  sent: ReadonlyArray<Uint8Array>,
  answer: ReadonlyArray<AnsweredEnvelope>
): boolean =>
  sent.length > 0 && answer.length === sent.length &&
  answer.every((envelope, i) =>
    envelope.groupId === groupId &&
    envelope.sequenceId === cursor + BigInt(i + 1) &&
    bytesEqual(envelope.payload, sent[i]!)
  )
