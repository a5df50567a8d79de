/**
 * The identity log of an inbox, replayed purely: every entry's root signature is verified,
 * entries must chain by sequence and previous hash, and the result is the set of current
 * installations. A leaf credential is valid only if its installation is current.
 * Signatures are Ed25519 on node:crypto (about 10x faster than the pure-JS verifier it replaced),
 * held to one spelling: lowercase hex, canonical point encodings, no small-order points.
 */
import { Either, HashMap, HashSet, Option } from "effect"
import { fromHex, labelledHash, sha256Hex, toHex, utf8 } from "./Bytes.ts"
import { signEd25519, verifyStrict } from "./Ed25519.ts"
import { InvalidIdentityUpdate } from "./Errors.ts"
import type { InboxId, InstallationId } from "./Ids.ts"
import type { IdentityAction } from "./Wire.ts"
import { IdentityUpdate } from "./Wire.ts"

export const GENESIS_HASH = "0".repeat(64)

export interface InboxState {
  readonly inboxId: InboxId
  readonly rootPublicKey: string
  /** Current installations and their MLS signature public keys (hex). */
  readonly installations: HashMap.HashMap<InstallationId, string>
  /** Installations ever revoked: they can never come back. */
  readonly revoked: HashSet.HashSet<InstallationId>
  readonly sequence: number
  readonly headHash: string
}

/** The inbox id named by a root public key. */
export const inboxIdOf = (rootPublicKey: Uint8Array): InboxId => sha256Hex(rootPublicKey) as InboxId

/** The installation id named by an MLS signature public key. */
export const installationIdOf = (signaturePublicKey: Uint8Array): InstallationId =>
  sha256Hex(signaturePublicKey) as InstallationId

const signedBytes = (u: Omit<IdentityUpdate, "signature">): Uint8Array =>
  labelledHash(
    "identity-update",
    utf8(u.inboxId),
    utf8(String(u.sequence)),
    utf8(u.previousHash),
    utf8(JSON.stringify(actionFields(u.action)))
  )

// A fixed field order, so the signed bytes do not depend on object construction.
const actionFields = (a: IdentityAction): ReadonlyArray<string> => {
  switch (a._tag) {
    case "CreateInbox":
      return [a._tag, a.rootPublicKey]
    case "AddInstallation":
      return [a._tag, a.installationId, a.signaturePublicKey]
    case "RevokeInstallation":
      return [a._tag, a.installationId]
  }
}

export const hashOfUpdate = (u: IdentityUpdate): string =>
  toHex(labelledHash("identity-entry", signedBytes(u), utf8(u.signature)))

/** Builds and signs the next entry of a log whose state is `previous` (or the first entry). */
/** An action as its author writes it: an added installation's proof of possession comes from `signUpdate`. */
export type UnsignedIdentityAction =
  | Exclude<IdentityAction, { readonly _tag: "AddInstallation" }>
  | Omit<Extract<IdentityAction, { readonly _tag: "AddInstallation" }>, "installationSignature">

/**
 * What an added installation signs to show it holds its key (proof of possession): nobody can
 * add an installation key they do not hold, such as someone else's or a revoked device's.
 */
const possessionBytes = (u: Omit<IdentityUpdate, "signature">): Uint8Array =>
  labelledHash("installation-possession", signedBytes(u))

/**
 * Signs an added installation's proof of possession with its own key, where that key lives
 * (another device joining the inbox keeps its key and hands out only this signer).
 */
export type InstallationProver = (possession: Uint8Array) => Uint8Array

/**
 * Builds and signs the next entry of a log whose state is `previous` (or the first entry).
 * Adding an installation also needs that installation's own Ed25519 secret key (32-byte seed),
 * or a signer holding it.
 */
export const signUpdate = (
  rootSecretKey: Uint8Array,
  inboxId: InboxId,
  previous: Pick<InboxState, "sequence" | "headHash"> | undefined,
  action: UnsignedIdentityAction,
  installationSecretKey?: Uint8Array | InstallationProver
): IdentityUpdate => {
  const position = {
    inboxId,
    sequence: (previous?.sequence ?? 0) + 1,
    previousHash: previous?.headHash ?? GENESIS_HASH
  }
  let full: IdentityAction
  if (action._tag === "AddInstallation") {
    if (installationSecretKey === undefined) throw new Error("adding an installation needs its secret key")
    const proof = possessionBytes({ ...position, action: { ...action, installationSignature: "" } })
    const signature = typeof installationSecretKey === "function"
      ? installationSecretKey(proof)
      : signEd25519(installationSecretKey, proof)
    full = { ...action, installationSignature: toHex(signature) }
  } else {
    full = action
  }
  const unsigned = { ...position, action: full }
  const signature = toHex(signEd25519(rootSecretKey, signedBytes(unsigned)))
  return IdentityUpdate.make({ ...unsigned, signature })
}

const reject = (inboxId: string, reason: string) => Either.left(new InvalidIdentityUpdate({ inboxId, reason }))

/** One spelling per signature: lowercase hex of canonical encodings only (see Ed25519.verifyStrict). */
const verifyCanonical = (signature: string, message: Uint8Array, publicKey: string): boolean => {
  try {
    return verifyStrict(publicKey, message, signature)
  } catch {
    return false
  }
}

/** Answers whether `signature` (hex) is `publicKey`'s (hex) signature of `message`, as `verifyCanonical` does. */
export type SignatureVerifier = (signature: string, message: Uint8Array, publicKey: string) => boolean

/** A signature an entry carries: whose key must have signed which bytes. */
export interface SignatureCheck {
  readonly publicKey: string
  readonly message: Uint8Array
  readonly signature: string
}

/**
 * Every signature a run of one inbox's entries carries, given the root key of the state held
 * (none: the run's own CreateInbox names it). Lets a caller check them all at once, off the main
 * thread, before `applyUpdate` asks for them one by one (`preverified`).
 */
export const signatureChecksOf = (
  rootPublicKey: string | undefined,
  updates: Iterable<IdentityUpdate>
): ReadonlyArray<SignatureCheck> => {
  const checks: Array<SignatureCheck> = []
  let root = rootPublicKey
  for (const u of updates) {
    if (root === undefined && u.action._tag === "CreateInbox") root = u.action.rootPublicKey
    if (root !== undefined) checks.push({ publicKey: root, message: signedBytes(u), signature: u.signature })
    if (u.action._tag === "AddInstallation") {
      checks.push({ publicKey: u.action.signaturePublicKey, message: possessionBytes(u), signature: u.action.installationSignature })
    }
  }
  return checks
}

const checkKey = (signature: string, message: Uint8Array, publicKey: string) =>
  `${publicKey}:${signature}:${toHex(message)}`

/**
 * A verifier that knows the answers of checks already made (`valid[i]` for `checks[i]`): a check
 * found valid there answers true at once; anything else is verified as usual, so the answers are
 * exactly `verifyCanonical`'s whatever was checked before.
 */
export const preverified = (checks: ReadonlyArray<SignatureCheck>, valid: ReadonlyArray<boolean>): SignatureVerifier => {
  const known = new Set<string>()
  checks.forEach((c, i) => {
    if (valid[i] === true) known.add(checkKey(c.signature, c.message, c.publicKey))
  })
  return (signature, message, publicKey) =>
    known.has(checkKey(signature, message, publicKey)) || verifyCanonical(signature, message, publicKey)
}

/** Lower-case hex of exactly `bytes` bytes, nothing around it. */
const isHex = (value: string, bytes: number) => value.length === bytes * 2 && /^[0-9a-f]*$/.test(value)

/** Applies one entry to the state it claims to follow. */
export const applyUpdate = (
  state: InboxState | undefined,
  u: IdentityUpdate,
  verify: SignatureVerifier = verifyCanonical
): Either.Either<InboxState, InvalidIdentityUpdate> => {
  const verifySignature = (rootPublicKey: string) => verify(u.signature, signedBytes(u), rootPublicKey)
  const expectedSequence = (state?.sequence ?? 0) + 1
  if (u.sequence !== expectedSequence) {
    return reject(u.inboxId, `expected entry ${expectedSequence}, got ${u.sequence} (replayed or out of order)`)
  }
  if (u.previousHash !== (state?.headHash ?? GENESIS_HASH)) {
    return reject(u.inboxId, `entry ${u.sequence} does not chain onto the log head (replayed or forked)`)
  }
  const action = u.action
  if (state === undefined) {
    if (action._tag !== "CreateInbox") return reject(u.inboxId, "the first entry must create the inbox")
    if (!isHex(action.rootPublicKey, 32)) return reject(u.inboxId, "root public key is not 32 hex bytes")
    if (inboxIdOf(fromHex(action.rootPublicKey)) !== u.inboxId) {
      return reject(u.inboxId, "inbox id is not the hash of the root public key")
    }
    if (!verifySignature(action.rootPublicKey)) return reject(u.inboxId, "bad root signature on CreateInbox")
    return Either.right({
      inboxId: u.inboxId,
      rootPublicKey: action.rootPublicKey,
      installations: HashMap.empty(),
      revoked: HashSet.empty(),
      sequence: u.sequence,
      headHash: hashOfUpdate(u)
    })
  }
  if (u.inboxId !== state.inboxId) return reject(u.inboxId, "entry names another inbox")
  if (!verifySignature(state.rootPublicKey)) return reject(u.inboxId, `bad root signature on ${action._tag}`)
  const next = { sequence: u.sequence, headHash: hashOfUpdate(u) }
  switch (action._tag) {
    case "CreateInbox":
      return reject(u.inboxId, "the inbox already exists")
    case "AddInstallation": {
      if (!isHex(action.signaturePublicKey, 32)) return reject(u.inboxId, "signature public key is not 32 hex bytes")
      if (installationIdOf(fromHex(action.signaturePublicKey)) !== action.installationId) {
        return reject(u.inboxId, "installation id is not the hash of its signature key")
      }
      if (!verify(action.installationSignature, possessionBytes(u), action.signaturePublicKey)) {
        return reject(u.inboxId, `installation ${action.installationId} did not sign its addition (no proof of possession)`)
      }
      if (HashSet.has(state.revoked, action.installationId)) {
        return reject(u.inboxId, `installation ${action.installationId} was revoked and cannot return`)
      }
      if (HashMap.has(state.installations, action.installationId)) {
        return reject(u.inboxId, `installation ${action.installationId} is already registered`)
      }
      return Either.right({
        ...state,
        ...next,
        installations: HashMap.set(state.installations, action.installationId, action.signaturePublicKey)
      })
    }
    case "RevokeInstallation":
      if (!HashMap.has(state.installations, action.installationId)) {
        return reject(u.inboxId, `installation ${action.installationId} is not current`)
      }
      return Either.right({
        ...state,
        ...next,
        installations: HashMap.remove(state.installations, action.installationId),
        revoked: HashSet.add(state.revoked, action.installationId)
      })
  }
}

/** Replays a whole log from its first entry. */
export const replay = (
  updates: Iterable<IdentityUpdate>
): Either.Either<Option.Option<InboxState>, InvalidIdentityUpdate> => {
  let state: InboxState | undefined
  for (const u of updates) {
    const next = applyUpdate(state, u)
    if (Either.isLeft(next)) return Either.left(next.left)
    state = next.right
  }
  return Either.right(Option.fromNullable(state))
}

/** Is this installation, with this signature key, a current installation of the inbox? */
export const isCurrentInstallation = (
  state: InboxState,
  installationId: InstallationId,
  signaturePublicKey: Uint8Array
): boolean =>
  Option.match(HashMap.get(state.installations, installationId), {
    onNone: () => false,
    onSome: (key) => key === toHex(signaturePublicKey)
  })

export const currentInstallations = (state: InboxState): ReadonlyArray<InstallationId> =>
  Array.from(HashMap.keys(state.installations)).sort()
