/**
 * `process`: one received group message, screened, then read as an application message or as
 * someone else's commit (checked by TsMlsCommits before ts-mls applies it, and after).
 */
import { Effect } from "effect"
import { type CiphersuiteImpl, type ClientState, emptyPskIndex, processMessage } from "ts-mls"
import type { UnprotectResult } from "ts-mls/messageProtection.js"
import { CryptoError } from "../domain/Errors.ts"
import type { MlsCryptoShape, Processed } from "../services/MlsCrypto.ts"
import type { ApplicationReceiver } from "./TsMlsApplications.ts"
import type { ClientSetup } from "./TsMlsClientConfig.ts"
import * as Rules from "./TsMlsCommitRules.ts"
import { processMemberCommit } from "./TsMlsCommitProcessing.ts"
import type { CheckReceivedCommit } from "./TsMlsCommits.ts"
import { fail, tryMls } from "./TsMlsErrors.ts"
import { metadataIn } from "./TsMlsExtensions.ts"
import { wrap } from "./TsMlsGroupState.ts"
import { leafMemberAt } from "./TsMlsMembers.ts"
import { screen } from "./TsMlsMessages.ts"

type Service = MlsCryptoShape
type GroupMessage = Parameters<typeof processMessage>[0]

/**
 * A commit (or proposal) applied: a member's commit of the current epoch by `processMemberCommit`
 * (the same steps as ts-mls, less work), anything else by ts-mls's `processMessage`. `undefined`
 * for an application message.
 */
const applyCommit = async (client: ClientState, message: GroupMessage, cs: CiphersuiteImpl, decrypted?: UnprotectResult) => {
  if (message.wireformat === "mls_private_message") {
    const processed = await processMemberCommit(client, message.privateMessage, cs, decrypted)
    if (processed !== undefined) return processed
  }
  let committer: number | undefined
  const result = await processMessage(message, client, emptyPskIndex, (incoming) => {
    if (incoming.kind === "commit") committer = incoming.senderLeafIndex
    return "accept"
  }, cs)
  return result.kind === "applicationMessage" ? undefined : { newState: result.newState, committer }
}

export const makeProcess = (
  { cs, unwrap }: ClientSetup,
  applicationResult: ApplicationReceiver["applicationResult"],
  checkReceivedCommit: CheckReceivedCommit
): Service["process"] =>
  Effect.fn("MlsCrypto.process")(function*(state, bytes) {
    const client = unwrap(state)
    const screened = screen(client, bytes)
    if (screened instanceof CryptoError) return yield* Effect.fail(screened)
    const { header, message } = screened
    if (header.kind === "application" && message.wireformat === "mls_private_message") {
      const app = yield* tryMls("process", () => applicationResult(client, message.privateMessage, header.epoch))
      return app instanceof CryptoError ? yield* Effect.fail(app) : app
    }
    const received = header.kind === "commit" ? yield* checkReceivedCommit(client, message) : undefined

    const result = yield* tryMls("process", () => applyCommit(client, message, cs, received?.unprotected))
    if (result === undefined) return yield* fail("Malformed", "unexpected application message")
    const { committer } = result
    if (committer === undefined || received === undefined || committer !== received.committer) {
      return yield* fail("Malformed", "commits from non-members are not accepted")
    }
    const before = client
    yield* tryMls("process", () =>
      Rules.updatePathKeysMatchSecrets(before, result.newState, received.committer, received.commit, cs))
    // Who signed it: the committer's leaf as it was, not as its own UpdatePath renamed it.
    const member = leafMemberAt(client.ratchetTree, committer) ?? leafMemberAt(result.newState.ratchetTree, committer)
    if (member === undefined) return yield* fail("Internal", `cannot resolve committer leaf ${committer}`)
    // If this commit removed us, the state stays at the old epoch, marked removed.
    const next = wrap(result.newState)
    return {
      kind: "commit",
      committer: member,
      epoch: header.epoch + 1n,
      state: next,
      metadataBefore: metadataIn(client.groupContext.extensions),
      metadataAfter: metadataIn(result.newState.groupContext.extensions)
    } satisfies Processed
  })
