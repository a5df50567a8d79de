/**
 * XMTP identity updates, verified the way node-go's validation service does it (libxmtp's
 * association state): an update is applied on top of the state its inbox's log replays to,
 * every signature is checked against the update's signature text, and a signature seen
 * before in the log is a replay.
 *
 * Signatures are read and verified in `AssociationSignatures`. Smart-contract wallets
 * (ERC-1271/6492) would need a chain to ask, and passkeys and legacy V2 keys are not supported
 * here: such updates are refused by name.
 */
import { sha256 } from "@noble/hashes/sha2.js"
import { Effect, Either } from "effect"
import {
  ethKey,
  fail,
  hex,
  installationKey,
  InvalidIdentityUpdate,
  type Parsed,
  parseSignature,
  signatureChecker,
  type SignatureKind,
  utf8,
  type Verified
} from "./AssociationSignatures.ts"
import type { IdentityAction, IdentityUpdate, MemberIdentifier, Signature } from "./Proto.ts"
import { IdentifierKind, int64 } from "./Proto.ts"
import { takeTurns, type Verification } from "./SignatureTurns.ts"

export { InvalidIdentityUpdate } from "./AssociationSignatures.ts"

/** node-go refuses to grow an inbox's log past this many entries. */
export const MAX_LOG_ENTRIES = 256
/** libxmtp's limit on an inbox's installations. */
export const MAX_INSTALLATIONS_PER_INBOX = 10
/** Most actions in one update: a client sends at most a handful. */
export const MAX_ACTIONS_PER_UPDATE = 16

export type MemberKind = "ethereum" | "installation"

export interface Member {
  readonly key: string
  readonly kind: MemberKind
  /** The member that added it (its key); none for the inbox's creator. */
  readonly addedBy: string | undefined
}

export interface AssociationState {
  readonly inboxId: string
  readonly members: ReadonlyMap<string, Member>
  /** An Ethereum address, lowercase. */
  readonly recovery: string
  readonly seen: ReadonlySet<string>
}

/** The Ethereum address in an identifier, lowercase, or undefined if it is not one. */
export const ethereumAddress = (identifier: string): string | undefined =>
  /^0x[0-9a-fA-F]{40}$/.test(identifier) ? identifier.toLowerCase() : undefined

/** libxmtp's inbox id: sha256 hex of the lowercase address followed by the nonce in decimal. */
export const inboxIdOf = (address: string, nonce: bigint) => hex(sha256(utf8(`${address}${nonce}`)))

// ---- signature text ----

interface Identified {
  readonly key: string
  readonly kind: MemberKind
  /** How the signature text names it. */
  readonly text: string
}

const member = (identifier: MemberIdentifier | undefined): Either.Either<Identified, InvalidIdentityUpdate> => {
  if (identifier?.ethereumAddress !== undefined) {
    const address = ethereumAddress(identifier.ethereumAddress)
    return address === undefined
      ? Either.left(new InvalidIdentityUpdate({ reason: `not an Ethereum address: ${identifier.ethereumAddress.slice(0, 64)}` }))
      : Either.right({ key: ethKey(address), kind: "ethereum", text: address })
  }
  if (identifier?.installationPublicKey !== undefined) {
    const publicKey = identifier.installationPublicKey
    return publicKey.length === 32
      ? Either.right({ key: installationKey(publicKey), kind: "installation", text: hex(publicKey) })
      : Either.left(new InvalidIdentityUpdate({ reason: "an installation key is not 32 bytes" }))
  }
  if (identifier?.passkey !== undefined) {
    return Either.left(new InvalidIdentityUpdate({ reason: "passkey members are not supported by this server" }))
  }
  return Either.left(new InvalidIdentityUpdate({ reason: "a member identifier is missing" }))
}

const actionLine = (kind: MemberKind, verbs: { readonly installation: string; readonly ethereum: string }, text: string) =>
  kind === "installation" ? `- ${verbs.installation}\n  (ID: ${text})` : `- ${verbs.ethereum}\n  (Address: ${text})`

const actionText = (action: IdentityAction): Either.Either<string, InvalidIdentityUpdate> => {
  if (action.createInbox !== undefined) {
    const address = ethereumAddress(action.createInbox.initialIdentifier)
    if (action.createInbox.initialIdentifierKind === IdentifierKind.Passkey) {
      return Either.left(new InvalidIdentityUpdate({ reason: "passkey inboxes are not supported by this server" }))
    }
    return address === undefined
      ? Either.left(new InvalidIdentityUpdate({ reason: "create inbox: the initial identifier is not an Ethereum address" }))
      : Either.right(`- Create inbox\n  (Owner: ${address})`)
  }
  if (action.add !== undefined) {
    return Either.map(member(action.add.newMemberIdentifier), (m) =>
      actionLine(m.kind, { installation: "Grant messaging access to app", ethereum: "Link address to inbox" }, m.text))
  }
  if (action.revoke !== undefined) {
    return Either.map(member(action.revoke.memberToRevoke), (m) =>
      actionLine(m.kind, { installation: "Revoke messaging access from app", ethereum: "Unlink address from inbox" }, m.text))
  }
  if (action.changeRecoveryAddress !== undefined) {
    const address = ethereumAddress(action.changeRecoveryAddress.newRecoveryIdentifier)
    return address === undefined
      ? Either.left(new InvalidIdentityUpdate({ reason: "change recovery address: not an Ethereum address" }))
      : Either.right(`- Change inbox recovery address\n  (Address: ${address})`)
  }
  return Either.left(new InvalidIdentityUpdate({ reason: "an action of no known kind" }))
}

/** RFC 3339 in whole seconds, UTC, as chrono's `to_rfc3339_opts(Secs, true)` writes it. */
const prettyTimestamp = (ns: bigint) => new Date(Number(ns / 1_000_000_000n) * 1000).toISOString().replace(/\.\d{3}Z$/, "Z")

/** Latest client timestamp accepted: year 9999 (beyond it the text's date has no RFC 3339 form). */
const MAX_TIMESTAMP_NS = 253_402_300_799n * 1_000_000_000n

/** The signature text's lines, one per action, after checking the client timestamp. */
const actionLines = (update: IdentityUpdate): Either.Either<ReadonlyArray<string>, InvalidIdentityUpdate> =>
  Either.gen(function*() {
    const ns = int64(update.clientTimestampNs)
    if (ns < 0n || ns > MAX_TIMESTAMP_NS) return yield* Either.left(new InvalidIdentityUpdate({ reason: "client timestamp out of range" }))
    const lines: Array<string> = []
    for (const action of update.actions) lines.push(yield* actionText(action))
    return lines
  })

/** The text every signature of `update` signs (libxmtp `UnsignedIdentityUpdate::signature_text`). */
export const signatureText = (update: IdentityUpdate): Either.Either<string, InvalidIdentityUpdate> =>
  Either.map(actionLines(update), (lines) =>
    `XMTP : Authenticate to inbox\n\nInbox ID: ${update.inboxId}\nCurrent time: ${prettyTimestamp(int64(update.clientTimestampNs))}\n\n` +
    `${lines.join("\n")}\n\nFor more info: https://xmtp.org/signatures`)

// ---- shape: what can be refused before the inbox's log is read ----

const actionCount = (update: IdentityUpdate): Either.Either<void, InvalidIdentityUpdate> =>
  update.actions.length === 0
    ? fail("an update with no actions")
    : update.actions.length > MAX_ACTIONS_PER_UPDATE
    ? fail(`more than ${MAX_ACTIONS_PER_UPDATE} actions in one update`)
    : Either.void

/** A oneof's members: the name ts-proto gives each, and the one the proto file gives it. */
type OneofMembers = ReadonlyArray<readonly [string, string]>

const ACTION_KINDS: OneofMembers = [
  ["createInbox", "create_inbox"],
  ["add", "add"],
  ["revoke", "revoke"],
  ["changeRecoveryAddress", "change_recovery_address"]
]
const IDENTIFIER_KINDS: OneofMembers = [
  ["ethereumAddress", "ethereum_address"],
  ["installationPublicKey", "installation_public_key"],
  ["passkey", "passkey"]
]
const SIGNATURE_KINDS: OneofMembers = [
  ["erc191", "erc_191"],
  ["erc6492", "erc_6492"],
  ["installationKey", "installation_key"],
  ["delegatedErc191", "delegated_erc_191"],
  ["passkey", "passkey"]
]

/**
 * At most one member of a oneof set. The decoder keeps every member it reads and this server
 * reads the first, while prost and Go keep the last on the wire: an update with two would be
 * verified as one thing and served (re-encoded with both) as another.
 */
const oneMember = (field: string, message: object | undefined, members: OneofMembers): Either.Either<void, InvalidIdentityUpdate> => {
  if (message === undefined) return Either.void
  const set = members.filter(([name]) => (message as Record<string, unknown>)[name] !== undefined).map(([, proto]) => proto)
  return set.length > 1 ? fail(`${field} sets ${set.join(" and ")}, members of one oneof: at most one may be set`) : Either.void
}

/** Every oneof of one action, and of the identifiers and signatures inside it. */
const actionOneofs = (action: IdentityAction, at: string): Either.Either<void, InvalidIdentityUpdate> =>
  Either.gen(function*() {
    yield* oneMember(at, action, ACTION_KINDS)
    const { createInbox, add, revoke, changeRecoveryAddress } = action
    yield* oneMember(`${at}.create_inbox.initial_identifier_signature`, createInbox?.initialIdentifierSignature, SIGNATURE_KINDS)
    yield* oneMember(`${at}.add.new_member_identifier`, add?.newMemberIdentifier, IDENTIFIER_KINDS)
    yield* oneMember(`${at}.add.existing_member_signature`, add?.existingMemberSignature, SIGNATURE_KINDS)
    yield* oneMember(`${at}.add.new_member_signature`, add?.newMemberSignature, SIGNATURE_KINDS)
    yield* oneMember(`${at}.revoke.member_to_revoke`, revoke?.memberToRevoke, IDENTIFIER_KINDS)
    yield* oneMember(`${at}.revoke.recovery_identifier_signature`, revoke?.recoveryIdentifierSignature, SIGNATURE_KINDS)
    yield* oneMember(
      `${at}.change_recovery_address.existing_recovery_identifier_signature`,
      changeRecoveryAddress?.existingRecoveryIdentifierSignature,
      SIGNATURE_KINDS
    )
  })

/**
 * What a new update must satisfy whatever its inbox's log holds, checked before the log is
 * read (replaying a long log costs seconds of signature checks): its number of actions, the
 * inbox id a CreateInbox makes, one member per oneof, fields the signature text needs, and no
 * action twice (the text would say it twice: no client means that, and a repeated action only
 * multiplies the checks). Stored logs are not held to the last two: entries accepted before
 * them still replay.
 */
export const checkShape = (update: IdentityUpdate): Either.Either<void, InvalidIdentityUpdate> =>
  Either.gen(function*() {
    yield* actionCount(update)
    yield* createsNamedInbox(update)
    for (const [i, action] of update.actions.entries()) yield* actionOneofs(action, `actions[${i}]`)
    const lines = yield* actionLines(update)
    const first = lines.findIndex((line, i) => lines.indexOf(line) !== i)
    if (first !== -1) return yield* fail(`actions[${lines.indexOf(lines[first]!)}] and actions[${first}] are the same action`)
  })

const allowedFor = (kind: MemberKind, signature: { readonly kind: SignatureKind }) =>
  kind === "ethereum" ? signature.kind === "erc191" : signature.kind === "installationKey"

// ---- what is checked before any signature is verified ----

/** The inbox id a CreateInbox makes must be the one the update names. */
const createsNamedInbox = (update: IdentityUpdate): Either.Either<void, InvalidIdentityUpdate> => {
  const create = update.actions[0]?.createInbox
  const address = create === undefined ? undefined : ethereumAddress(create.initialIdentifier)
  return create === undefined || address === undefined || inboxIdOf(address, int64(create.nonce)) === update.inboxId
    ? Either.void
    : fail("the update names another inbox id")
}

/** An action's signatures, parsed, each with the kind its signer must be (any: `undefined`). */
const actionSignatures = (action: IdentityAction) =>
  Either.gen(function*() {
    const signed: Array<readonly [Parsed, SignatureKind | undefined, string]> = []
    if (action.createInbox !== undefined) {
      signed.push([yield* parseSignature(action.createInbox.initialIdentifierSignature), "erc191", "create inbox: not signed by the initial identifier"])
    } else if (action.add !== undefined) {
      const added = yield* member(action.add.newMemberIdentifier)
      const kind: SignatureKind = added.kind === "ethereum" ? "erc191" : "installationKey"
      const parsed = yield* parseSignature(action.add.newMemberSignature)
      signed.push([parsed, kind, `add: a ${parsed.kind} signature cannot sign for a ${added.kind} member`])
      signed.push([yield* parseSignature(action.add.existingMemberSignature), undefined, ""])
    } else if (action.revoke !== undefined) {
      signed.push([yield* parseSignature(action.revoke.recoveryIdentifierSignature), "erc191", "revoke: not signed by the recovery address"])
    } else if (action.changeRecoveryAddress !== undefined) {
      const signature = action.changeRecoveryAddress.existingRecoveryIdentifierSignature
      signed.push([yield* parseSignature(signature), "erc191", "change recovery address: not signed by the recovery address"])
    }
    return signed
  })

/**
 * Everything about `update` on `state` that needs no signature verified, checked before any is:
 * the inbox it names and creates, where a CreateInbox may be, every signature's form and kind,
 * and replays (a signature's replay bytes are known without verifying it). An update refused for
 * any of these costs no signature check.
 */
const checkWithoutVerifying = (state: AssociationState | undefined, update: IdentityUpdate): Either.Either<void, InvalidIdentityUpdate> =>
  Either.gen(function*() {
    if (state !== undefined && state.inboxId !== update.inboxId) return yield* fail("the update names another inbox id")
    yield* createsNamedInbox(update)
    for (const [i, action] of update.actions.entries()) {
      if (action.createInbox !== undefined && (state !== undefined || i > 0)) return yield* fail("the inbox was already created")
      if (action.createInbox === undefined && state === undefined && i === 0) return yield* fail("the inbox was not created yet")
      for (const [parsed, kind, wrongKind] of yield* actionSignatures(action)) {
        if (kind !== undefined && parsed.kind !== kind) return yield* fail(wrongKind)
        if (state?.seen.has(parsed.raw)) return yield* fail("replay: a signature was already used in this inbox's log")
      }
    }
  })

// ---- applying ----

const withMember = (state: AssociationState, m: Member): AssociationState => ({
  ...state,
  members: new Map(state.members).set(m.key, m)
})

type Verify = (signature: Signature | undefined) => Effect.Effect<Verified, InvalidIdentityUpdate>

const createInbox = (create: NonNullable<IdentityAction["createInbox"]>, verify: Verify, used: Array<string>) =>
  Effect.gen(function*() {
    const address = ethereumAddress(create.initialIdentifier)!
    const signature = yield* verify(create.initialIdentifierSignature)
    if (signature.signer !== ethKey(address)) return yield* fail("create inbox: not signed by the initial identifier")
    const inboxId = inboxIdOf(address, int64(create.nonce))
    const creator: Member = { key: ethKey(address), kind: "ethereum", addedBy: undefined }
    used.push(signature.raw)
    return { inboxId, members: new Map([[creator.key, creator]]), recovery: address, seen: new Set<string>() }
  })

const addMember = (state: AssociationState, add: NonNullable<IdentityAction["add"]>, verify: Verify, used: Array<string>) =>
  Effect.gen(function*() {
    const added = yield* member(add.newMemberIdentifier)
    const newSignature = yield* verify(add.newMemberSignature)
    if (newSignature.signer !== added.key) return yield* fail("add: the new member's signature is not the new member's")
    const existingSignature = yield* verify(add.existingMemberSignature)
    if (newSignature.signer === existingSignature.signer) return yield* fail("add: a member cannot add itself")
    if (!allowedFor(added.kind, newSignature)) return yield* fail(`add: a ${newSignature.kind} signature cannot sign for a ${added.kind} member`)
    const existing = state.members.get(existingSignature.signer)
    const existingKind: MemberKind | undefined = existing?.kind ??
      (existingSignature.signer === ethKey(state.recovery) ? "ethereum" : undefined)
    if (existingKind === undefined) return yield* fail("add: not signed by a member of the inbox or its recovery address")
    if (!allowedFor(existingKind, existingSignature)) return yield* fail("add: the existing member's signature is of the wrong kind")
    if (existingKind === "installation" && added.kind === "installation") return yield* fail("add: an installation cannot add an installation")
    used.push(newSignature.raw, existingSignature.raw)
    return withMember(state, { key: added.key, kind: added.kind, addedBy: existingSignature.signer })
  })

/**
 * One action on the state so far. Its signatures are added to `used`: libxmtp records them as
 * seen only once the whole update applied (one wallet signature may serve several actions).
 * Replays were refused before (`checkWithoutVerifying`): `seen` does not change within an update.
 */
const applyAction = (state: AssociationState | undefined, action: IdentityAction, verify: Verify, used: Array<string>) =>
  Effect.gen(function*() {
    if (action.createInbox !== undefined) {
      if (state !== undefined) return yield* fail("the inbox was already created")
      return yield* createInbox(action.createInbox, verify, used)
    }
    if (state === undefined) return yield* fail("the inbox was not created yet")
    if (action.add !== undefined) return yield* addMember(state, action.add, verify, used)
    if (action.revoke !== undefined) {
      const revoked = yield* member(action.revoke.memberToRevoke)
      const signature = yield* verify(action.revoke.recoveryIdentifierSignature)
      if (signature.signer !== ethKey(state.recovery)) return yield* fail("revoke: not signed by the recovery address")
      const members = new Map(state.members)
      members.delete(revoked.key)
      for (const [key, m] of state.members) if (m.addedBy === revoked.key && m.kind === "installation") members.delete(key)
      used.push(signature.raw)
      return { ...state, members }
    }
    const change = action.changeRecoveryAddress!
    const signature = yield* verify(change.existingRecoveryIdentifierSignature)
    if (signature.signer !== ethKey(state.recovery)) return yield* fail("change recovery address: not signed by the recovery address")
    used.push(signature.raw)
    return { ...state, recovery: ethereumAddress(change.newRecoveryIdentifier)! }
  })

const installations = (state: AssociationState) => Array.from(state.members.values()).filter((m) => m.kind === "installation").length

/**
 * The state after `update`, applied on `state` (undefined before the inbox's first update).
 * Whatever needs no signature is checked first; each signature is then verified through
 * `verification`, so the event loop gets turns between them.
 */
export const applyUpdate = (
  state: AssociationState | undefined,
  update: IdentityUpdate,
  verification: Verification = takeTurns
): Effect.Effect<AssociationState, InvalidIdentityUpdate> =>
  Effect.gen(function*() {
    yield* actionCount(update)
    const text = yield* signatureText(update)
    yield* checkWithoutVerifying(state, update)
    const verify = signatureChecker(text, verification)
    let next = state
    const used: Array<string> = []
    for (const action of update.actions) next = yield* applyAction(next, action, verify, used)
    if (next === undefined || next.inboxId !== update.inboxId) return yield* fail("the update names another inbox id")
    if (installations(next) > MAX_INSTALLATIONS_PER_INBOX) {
      return yield* fail(`an inbox may have at most ${MAX_INSTALLATIONS_PER_INBOX} installations`)
    }
    return { ...next, seen: new Set([...next.seen, ...used]) }
  })

/**
 * Applies `updates` on `from` (the state of the entries before them; undefined for a whole log).
 * An entry may take 32 signature checks, each through `verification` (a turn of the event loop
 * before each), so a long log delays other requests without stopping them, and a request
 * timeout interrupts it. `applied` hears of the state after each entry, so a cache keeps what an
 * interrupted replay did.
 */
export const replay = Effect.fn("Associations.replay")(function*(
  updates: ReadonlyArray<IdentityUpdate>,
  from: AssociationState | undefined = undefined,
  applied: (state: AssociationState, count: number) => void = () => {},
  verification: Verification = takeTurns
) {
  let state = from
  for (const [i, update] of updates.entries()) {
    state = yield* applyUpdate(state, update, verification)
    applied(state, i + 1)
  }
  return state
})

/** The Ethereum addresses `identifierOf` names in an update's actions, normalized. */
const addressesIn = (update: IdentityUpdate, identifierOf: (action: IdentityAction) => string | undefined) =>
  update.actions.flatMap((a) => {
    const address = identifierOf(a)
    const normalized = address === undefined ? undefined : ethereumAddress(address)
    return normalized === undefined ? [] : [normalized]
  })

/** The Ethereum addresses an update associates with its inbox (created with or linked). */
export const addressesAdded = (update: IdentityUpdate): ReadonlyArray<string> =>
  addressesIn(update, (a) => a.createInbox?.initialIdentifier ?? a.add?.newMemberIdentifier?.ethereumAddress)

/** The Ethereum addresses an update unlinks from its inbox. */
export const addressesRevoked = (update: IdentityUpdate): ReadonlyArray<string> =>
  addressesIn(update, (a) => a.revoke?.memberToRevoke?.ethereumAddress)
