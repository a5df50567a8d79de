/**
 * Who may hold a leaf: the rules binding every MLS leaf, and every key package we add, to the
 * identity log (RFC 9420 §5.3: the Authentication Service is the application's). Each rule is
 * named and returns the reason it refuses, or undefined.
 *
 * The MLS adapter applies them as a leaf enters (ts-mls's credential hook, `authenticateWith`);
 * the engine applies them again to the whole result of every commit, others' and its own
 * (`commitLeavesProblem`), with identity-log errors in its error channel, so a delivery service
 * that fails an identity query delays a commit instead of getting it refused or accepted.
 */
import { Effect, Runtime } from "effect"
import type { InboxId, InstallationId } from "../domain/Ids.ts"
import { FIRST_PROTOCOL_VERSION } from "../domain/Model.ts"
import type { Identity, IdentityError } from "./Identity.ts"
import type { Authenticate, GroupView, PrepareAuthentication, LeafDetails, LeafMember, MlsCrypto } from "./MlsCrypto.ts"

type IdentityShape = Identity["Type"]

const sameKey = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((byte, i) => byte === b[i])

/**
 * RFC 9420 §5.3.3 and Converge's identity: a leaf that stays in the group keeps its identity. The
 * same installation at the same leaf keeps its inbox and signature key, the committer's leaf stays
 * the committer's, and no installation holds two leaves. (A leaf can only refresh its encryption
 * key; the adapter's `pathLeafChangesIdentity` refuses the rest before ts-mls applies it.)
 */
export const leafIdentityChange = (
  before: Pick<GroupView, "members">,
  after: Pick<GroupView, "members">,
  committer: LeafMember | undefined
): string | undefined => {
  const prior = new Map(before.members.map((m) => [m.leafIndex, m]))
  const leavesOf = new Map<InstallationId, number>()
  for (const leaf of after.members) leavesOf.set(leaf.installationId, (leavesOf.get(leaf.installationId) ?? 0) + 1)
  for (const leaf of after.members) {
    const was = prior.get(leaf.leafIndex)
    // The same member object: the same leaf, untouched (the adapter keeps one per leaf it decoded).
    if (was === leaf) continue
    // Judged on what the commit brings in, so a group that already holds a duplicate is not stuck.
    const entering = was === undefined || was.installationId !== leaf.installationId
    if (entering && leavesOf.get(leaf.installationId)! > 1) return `installation ${leaf.installationId} holds two leaves`
    if (entering) continue
    if (was.inboxId !== leaf.inboxId) return `leaf ${leaf.leafIndex} moved from inbox ${was.inboxId} to ${leaf.inboxId}`
    if (!sameKey(was.signaturePublicKey, leaf.signaturePublicKey)) return `leaf ${leaf.leafIndex} changed its signature key`
  }
  if (committer !== undefined) {
    const now = after.members.find((m) => m.leafIndex === committer.leafIndex)
    if (now !== undefined && (now.installationId !== committer.installationId || now.inboxId !== committer.inboxId)) {
      return `the committer's leaf ${committer.leafIndex} became installation ${now.installationId} of ${now.inboxId}`
    }
  }
  return undefined
}

/** The leaves a commit brought in: not at their index, as the same installation, before it. */
export const enteringLeaves = (
  before: Pick<GroupView, "members">,
  after: Pick<GroupView, "members">
): ReadonlyArray<LeafMember> => {
  const known = new Set(before.members.map((m) => `${m.installationId}:${m.leafIndex}`))
  return after.members.filter((m) => !known.has(`${m.installationId}:${m.leafIndex}`))
}

/**
 * Every leaf of a commit's result, others' commits and our own: identities unchanged
 * (`leafIdentityChange`), and every entering leaf an installation the inbox it names registered
 * with that key. A leaf revoked since is let in here and removed at once (`enteringRevoked`):
 * whether a revocation came before or after a commit depends on when each member reads the log,
 * so refusing it would split the group. What we add ourselves must be current
 * (`fetchedKeyPackageProblem`, and the adapter's check of our own Adds).
 */
export const commitLeavesProblem = (
  identity: IdentityShape,
  before: Pick<GroupView, "members">,
  after: Pick<GroupView, "members">,
  committer: LeafMember | undefined
): Effect.Effect<string | undefined, IdentityError> =>
  Effect.gen(function*() {
    const changed = leafIdentityChange(before, after, committer)
    if (changed !== undefined) return changed
    for (const leaf of enteringLeaves(before, after)) {
      if (!(yield* identity.isValidLeaf(leaf))) {
        return `installation ${leaf.installationId} was never an installation of inbox ${leaf.inboxId} with this key`
      }
    }
    return undefined
  })

/** Whether a commit brought in an installation revoked since: its removal is queued at once. */
export const enteringRevoked = (
  identity: IdentityShape,
  before: Pick<GroupView, "members">,
  after: Pick<GroupView, "members">
): Effect.Effect<boolean, IdentityError> =>
  Effect.gen(function*() {
    for (const leaf of enteringLeaves(before, after)) {
      if (!(yield* identity.isCurrentLeaf(leaf))) return true
    }
    return false
  })

/** Why a fetched key package cannot go into a commit. */
export interface KeyPackageProblem {
  readonly reason: string
  /** It is another installation's or inbox's package: the service lied or is broken (asking again may help). */
  readonly answeredWrongly: boolean
}

/**
 * A key package the delivery service handed us for an installation we asked for: it must be that
 * installation's (the service could answer with anyone's), of the inbox we are adding, with the
 * signature key the inbox's log holds for it. Otherwise a lying service puts its own device in
 * our group in place of the one we meant. It must also verify now (an installation offline for
 * its package's lifetime holds an expired one) and advertise a protocol version (they start at 1:
 * every receiver refuses a leaf below it).
 */
export const fetchedKeyPackageProblem = (
  crypto: MlsCrypto["Type"],
  identity: IdentityShape,
  asked: { readonly installationId: InstallationId; readonly inboxId: InboxId },
  keyPackage: Uint8Array
): Effect.Effect<KeyPackageProblem | undefined, IdentityError> =>
  Effect.gen(function*() {
    const info = yield* crypto.keyPackageInfo(keyPackage).pipe(Effect.either)
    if (info._tag === "Left") {
      return { reason: `the key package for ${asked.installationId} is invalid: ${info.left.message}`, answeredWrongly: false }
    }
    if (info.right.installationId !== asked.installationId) {
      return { reason: `asked for installation ${asked.installationId}, got a key package of ${info.right.installationId}`, answeredWrongly: true }
    }
    if (info.right.inboxId !== asked.inboxId) {
      return { reason: `the key package of ${asked.installationId} names inbox ${info.right.inboxId}, not ${asked.inboxId}`, answeredWrongly: true }
    }
    const version = info.right.protocolVersion ?? FIRST_PROTOCOL_VERSION
    if (version < FIRST_PROTOCOL_VERSION) {
      return { reason: `the key package of ${asked.installationId} advertises protocol version ${version}; versions start at ${FIRST_PROTOCOL_VERSION}`, answeredWrongly: false }
    }
    if (!(yield* identity.isCurrentLeaf(info.right))) {
      return { reason: `installation ${asked.installationId} is not a current installation of inbox ${asked.inboxId}`, answeredWrongly: false }
    }
    return undefined
  })

/**
 * ts-mls's credential hook, answered from the identity log. A leaf we add must be a current
 * installation; any other (an Add by someone else, a path leaf, a welcome's tree) may also be one
 * revoked since (see `commitLeavesProblem`). When the log cannot be read, the hook lets the leaf through: the engine's own
 * check after processing (`commitLeavesProblem`, the welcome's member check) then fails with the
 * error and the envelope is read again later, rather than a valid commit being refused for good.
 */
export const authenticateWith = (identity: IdentityShape, runtime: Runtime.Runtime<never>): Authenticate =>
(leaf, signaturePublicKey, newLeaf) =>
  Runtime.runPromise(runtime)(
    (newLeaf
      ? identity.isCurrentLeaf({ ...leaf, signaturePublicKey })
      : identity.isValidLeaf({ ...leaf, signaturePublicKey, leafIndex: -1 })).pipe(
        Effect.orElseSucceed(() => true)
      )
  )

/**
 * Before ts-mls authenticates a whole tree leaf by leaf (a welcome's), the identity logs those
 * leaves need are fetched in one round instead of one request per inbox. Only a warm-up: each
 * leaf is still judged by `authenticateWith`, and a failure here is left for that to meet.
 */
export const prepareWith = (identity: IdentityShape, runtime: Runtime.Runtime<never>): PrepareAuthentication => (leaves) =>
  Runtime.runPromise(runtime)(identity.prefetchLeaves(leaves).pipe(Effect.orElse(() => Effect.void)))

/**
 * A welcome for a group we were removed from takes us back only into the same group's history.
 * The group id alone proves nothing (anyone can create a group with any id), and a removed member
 * cannot follow the epochs it missed. What it can check: the welcome is for the same kind of
 * conversation (a group carries a settings extension, a DM none; the settings themselves change
 * by governed commits we did not see, so their bytes prove nothing); and someone who was in
 * the group with us vouches for it: by signing the welcome (an installation we knew there, or one
 * of an inbox that our transcript shows in the group, `formerInboxes`), by a leaf signed for this
 * group (bound to the group id and its index), or by the very leaf we knew (the same encryption
 * key: a key package used once, rotated since). A stranger has none of these; a former co-member,
 * or a delivery service that kept the key packages it served, could still forge such a welcome.
 */
export const reactivationProblem = (
  stored: {
    readonly view: GroupView
    readonly leaves: ReadonlyArray<LeafDetails>
    readonly formerInboxes: ReadonlySet<string>
  },
  joined: { readonly view: GroupView; readonly leaves: ReadonlyArray<LeafDetails> },
  inviter: LeafMember | undefined
): string | undefined => {
  if ((stored.view.metadata === undefined) !== (joined.view.metadata === undefined)) {
    return "the welcome is for a DM where we were in a group, or the reverse"
  }
  const knownAs = (leaf: LeafMember) =>
    stored.leaves.find((m) =>
      m.leafIndex !== stored.view.ownLeafIndex && m.installationId === leaf.installationId &&
      m.inboxId === leaf.inboxId && sameKey(m.signaturePublicKey, leaf.signaturePublicKey)
    )
  if (inviter !== undefined && (knownAs(inviter) !== undefined || stored.formerInboxes.has(inviter.inboxId))) {
    return undefined
  }
  const vouching = joined.leaves.some((leaf) => {
    const known = leaf.leafIndex === joined.view.ownLeafIndex ? undefined : knownAs(leaf)
    return known !== undefined && (leaf.groupSigned || sameKey(known.encryptionKey, leaf.encryptionKey))
  })
  return vouching ? undefined : "nobody in the welcome's group was in the group with us"
}
