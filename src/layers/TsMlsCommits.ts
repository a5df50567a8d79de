/**
 * Commits: creating one (removals, adds, a metadata change), and every check a received commit
 * passes before ts-mls applies it (TsMlsCommitRules' structural rules, then its Adds one at a time).
 */
import { Effect } from "effect"
import {
  type ClientState,
  type Commit,
  encodeMlsMessage,
  type FramedContent,
  type KeyPackage,
  type MLSMessage,
  type Proposal
} from "ts-mls"
import { extensionsSupportedByCapabilities } from "ts-mls/extension.js"
import { verifyKeyPackage } from "ts-mls/keyPackage.js"
import { verifyLeafNodeSignatureKeyPackage } from "ts-mls/leafNode.js"
import { type UnprotectResult, unprotectPrivateMessage } from "ts-mls/messageProtection.js"
import * as MlsError from "ts-mls/mlsError.js"
import type { InstallationId } from "../domain/Ids.ts"
import type { CommitChanges, MlsCryptoShape } from "../services/MlsCrypto.ts"
import type { ClientSetup } from "./TsMlsClientConfig.ts"
import { createMemberCommit } from "./TsMlsCommitCreation.ts"
import * as Rules from "./TsMlsCommitRules.ts"
import { fail, tryMls } from "./TsMlsErrors.ts"
import { contextChangeProblem, withMetadata } from "./TsMlsExtensions.ts"
import { wrap } from "./TsMlsGroupState.ts"
import { type KeyPackageReader, withinLifetime } from "./TsMlsKeyPackages.ts"
import { membersOf } from "./TsMlsMembers.ts"

type Service = MlsCryptoShape

/** The leaf of each installation to remove; every one must be in the group. */
const removalsFor = (client: ClientState, installations: ReadonlyArray<InstallationId>) => {
  const members = membersOf(client.ratchetTree)
  const leaves: Array<number> = []
  for (const installationId of new Set(installations)) {
    const matching = members.filter((m) => m.installationId === installationId)
    if (matching.length === 0) return fail("NotAMember", `installation ${installationId} is not in the group`)
    if (matching.some((m) => m.leafIndex === client.privatePath.leafIndex)) {
      return fail("Internal", "an installation cannot remove itself with its own commit")
    }
    leaves.push(...matching.map((m) => m.leafIndex))
  }
  return Effect.succeed(leaves)
}

/** Checks the Adds of a commit, ours or received (see `checkAdds`). */
export const makeAddChecks = (
  { authenticateLeaf, cs }: ClientSetup,
  signaturesHeld: KeyPackageReader["signaturesHeld"]
) => {
  /**
   * ts-mls 1.6.4 validates Adds inside an async `reduce` that starts every check before
   * awaiting the previous one, so when an Add fails and a later one fails or is still
   * pending, the earlier rejection goes unobserved: an unhandled rejection, which ends a Node
   * process by default. The same checks, run here one at a time first, fail cleanly instead
   * and leave ts-mls's own copies nothing to reject (the rejection guard is the backstop).
   */
  const checkAdds = (client: ClientState, adds: ReadonlyArray<KeyPackage>, sentByClient: boolean) =>
    tryMls("validateKeyPackage", async () => {
      for (const kp of adds) {
        const problem = await keyPackageProblem(client, kp, sentByClient)
        if (problem !== undefined) throw problem
      }
    })

  const keyPackageProblem = async (client: ClientState, kp: KeyPackage, sentByClient: boolean) => {
    const { cipherSuite, version } = client.groupContext
    if (kp.cipherSuite !== cipherSuite || kp.version !== version) {
      return new MlsError.ValidationError("key package ciphersuite or version differs from the group's")
    }
    // ts-mls verifies both again as it applies the Add; a package verified before is not redone here.
    const signed = signaturesHeld.has(kp) || (await verifyLeafNodeSignatureKeyPackage(kp.leafNode, cs.signature) &&
      await verifyKeyPackage(kp, cs.signature))
    if (!signed) return new MlsError.CryptoVerificationError("Invalid keypackage signature")
    if (sentByClient && !withinLifetime(kp)) return new MlsError.ValidationError("Current time not within Lifetime")
    // What we add must be a current installation; what others added may have been revoked since.
    await authenticateLeaf(kp.leafNode.credential, kp.leafNode.signaturePublicKey, sentByClient)
    const lacking = Rules.lacksRequiredCapabilities(client.groupContext, kp.leafNode)
    if (lacking !== undefined) return new MlsError.ValidationError(lacking)
    if (!extensionsSupportedByCapabilities(kp.leafNode.extensions, kp.leafNode.capabilities)) {
      return new MlsError.ValidationError("LeafNode contains extension not listed in capabilities")
    }
    if (!extensionsSupportedByCapabilities(client.groupContext.extensions, kp.leafNode.capabilities)) {
      return new MlsError.ValidationError("key package does not support the group's context extensions")
    }
    if (!kp.leafNode.capabilities.credentials.includes("basic")) {
      return new MlsError.ValidationError("key package does not support basic credentials")
    }
    return undefined
  }

  return checkAdds
}

type CheckAdds = ReturnType<typeof makeAddChecks>

/** The structural rules of `TsMlsCommitRules`, in order; the first refusal wins. */
const commitProblem = (client: ClientState, committer: number, commit: Commit): string | undefined =>
  Rules.forbiddenProposal(commit) ??
    contextChangeProblem(
      client.groupContext.extensions,
      commit.proposals.flatMap((p) => (p.proposalOrRefType === "proposal" ? [p.proposal] : []))
    ) ??
    Rules.badRemoval(client.ratchetTree, committer, commit) ??
    Rules.pathLeafChangesIdentity(client.ratchetTree, committer, commit) ??
    Rules.duplicateLeafKeys(client.ratchetTree, committer, commit)

/** A received commit, read ahead of ts-mls and judged (`checkReceivedCommit`). */
export const makeReceivedCommitChecks = ({ cs }: ClientSetup, checkAdds: CheckAdds) => {
  /** A commit's content, read ahead of processMessage for the rules above. */
  const commitContent = (client: ClientState, message: MLSMessage) =>
    Effect.gen(function*() {
      let content: FramedContent
      let unprotected: UnprotectResult | undefined
      if (message.wireformat === "mls_public_message") {
        content = message.publicMessage.content
      } else if (message.wireformat === "mls_private_message") {
        // Pure: applying the commit goes on from it (`processMemberCommit`), nothing decrypted twice.
        unprotected = yield* tryMls("process", () =>
          unprotectPrivateMessage(
            client.keySchedule.senderDataSecret,
            message.privateMessage,
            client.secretTree,
            client.ratchetTree,
            client.groupContext,
            client.clientConfig.keyRetentionConfig,
            cs
          ))
        content = unprotected.content.content
      } else {
        return yield* fail("Malformed", `${message.wireformat} is not a commit`)
      }
      if (content.contentType !== "commit") return yield* fail("Malformed", "not a commit")
      // External commits (a new member's own) are never sent by Converge.
      if (content.sender.senderType !== "member") return yield* fail("Malformed", "commits from non-members are not accepted")
      return { commit: content.commit, committer: content.sender.leafIndex, unprotected }
    })

  /** Every rule a received commit must pass before it is applied; a private one comes back decrypted. */
  const checkReceivedCommit = (client: ClientState, message: MLSMessage) =>
    Effect.gen(function*() {
      const { commit, committer, unprotected } = yield* commitContent(client, message)
      const problem = commitProblem(client, committer, commit)
      if (problem !== undefined) return yield* fail("Malformed", problem)
      yield* checkAdds(client, Rules.addsOf(commit), false)
      return { commit, committer, unprotected }
    })

  return checkReceivedCommit
}

export type CheckReceivedCommit = ReturnType<typeof makeReceivedCommitChecks>

const metadataProposal = (client: ClientState, metadata: Uint8Array | undefined): Array<Proposal> =>
  metadata === undefined ? [] : [{
    proposalType: "group_context_extensions",
    groupContextExtensions: { extensions: withMetadata(client.groupContext.extensions, metadata) }
  }]

export const makeCommitCreation = (
  { cs, unwrap }: ClientSetup,
  keptOrDecoded: KeyPackageReader["keptOrDecoded"],
  checkAdds: CheckAdds
) => {
  const createCommit: Service["createCommit"] = Effect.fn("MlsCrypto.createCommit")(
    function*(state, changes: CommitChanges) {
      const client = unwrap(state)
      const adds = yield* Effect.forEach(changes.add ?? [], keptOrDecoded)
      const removed = yield* removalsFor(client, changes.remove ?? [])
      // A GroupContextExtensions proposal combined with a Remove breaks receivers (ts-mls #742).
      if (changes.metadata !== undefined && removed.length > 0) {
        return yield* fail("Internal", "a metadata change cannot share a commit with a removal (ts-mls #742)")
      }
      const proposals: Array<Proposal> = [
        ...removed.map((leaf): Proposal => ({ proposalType: "remove", remove: { removed: leaf } })),
        ...adds.map((keyPackage): Proposal => ({ proposalType: "add", add: { keyPackage } })),
        ...metadataProposal(client, changes.metadata)
      ]
      const problem = Rules.duplicateLeafKeys(client.ratchetTree, client.privatePath.leafIndex, {
        proposals: proposals.map((proposal) => ({ proposalOrRefType: "proposal", proposal })),
        path: undefined
      })
      if (problem !== undefined) return yield* fail("Malformed", problem)
      yield* checkAdds(client, adds, true)
      // An empty proposal list is a self-update: the commit then carries an UpdatePath.
      const result = yield* tryMls("createCommit", () => createMemberCommit(client, cs, proposals))
      // `result.consumed` is NOT zeroed: it holds the pre-commit init secret, which the
      // caller still needs if another commit wins this epoch (notes §3).
      return {
        commit: encodeMlsMessage(result.commit),
        welcome: result.welcome === undefined
          ? undefined
          : encodeMlsMessage({ version: "mls10", wireformat: "mls_welcome", welcome: result.welcome }),
        staged: wrap(result.newState)
      }
    }
  )

  return createCommit
}
