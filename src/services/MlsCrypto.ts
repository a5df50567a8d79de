/**
 * The MLS port. Everything the engine needs from RFC 9420, in terms of bytes and an opaque
 * group state. ts-mls lives behind the adapter `layers/TsMlsCrypto.ts` (`MlsCrypto.layer` in the
 * package root); no other module imports it.
 *
 * Group states are immutable values: `createCommit` returns the staged post-commit state and
 * leaves the pre-commit state usable, so a commit that loses its epoch can be dropped and the
 * winning commit processed from the old state.
 */
import { Context, type Effect, type Either } from "effect"
import type { CryptoError } from "../domain/Errors.ts"
import type { GroupId, InboxId, InstallationId } from "../domain/Ids.ts"

/** A group's MLS state. Opaque: only `MlsCrypto` can look inside. */
export interface MlsGroupState {
  readonly _MlsGroupState: unique symbol
}

/** The identity an MLS leaf credential names. */
export interface LeafIdentity {
  readonly inboxId: InboxId
  readonly installationId: InstallationId
}

export interface LeafMember extends LeafIdentity {
  readonly leafIndex: number
  readonly signaturePublicKey: Uint8Array
  /** The protocol version the leaf advertises; absent for leaves that advertise none (version 1). */
  readonly protocolVersion?: number
}

export interface LeafDetails extends LeafMember {
  readonly encryptionKey: Uint8Array
  /**
   * Signed for this group by a commit or an update (RFC 9420 §7.2: bound to the group id and the
   * leaf index), not only published in a key package: only who saw this group's tree can copy it.
   */
  readonly groupSigned: boolean
}

export interface GroupView {
  readonly groupId: GroupId
  readonly epoch: bigint
  /** Hex; equal on every member that holds the same epoch of the same group. */
  readonly epochAuthenticator: string
  readonly members: ReadonlyArray<LeafMember>
  /** False once this installation has been removed. */
  readonly active: boolean
  readonly ownLeafIndex: number
  /** The bytes the group was created with (`createGroup`), authenticated as part of its context. */
  readonly metadata: Uint8Array | undefined
}

export interface SignatureKeyPair {
  readonly publicKey: Uint8Array
  readonly privateKey: Uint8Array
}

export interface KeyPackageBundle {
  /** Hex hash reference of the public key package. */
  readonly ref: string
  readonly publicPackage: Uint8Array
  readonly privatePackage: Uint8Array
}

export interface KeyPackageInfo extends LeafIdentity {
  readonly ref: string
  readonly signaturePublicKey: Uint8Array
  /** The protocol version its leaf advertises; absent if none (version 1). */
  readonly protocolVersion?: number
}

export interface CommitChanges {
  /** Public key packages of installations to add. */
  readonly add?: ReadonlyArray<Uint8Array>
  /** Installations to remove (every leaf of each). */
  readonly remove?: ReadonlyArray<InstallationId>
  /**
   * New bytes for the group's metadata (a GroupContextExtensions proposal that replaces only the
   * metadata extension). Never together with `remove`: ts-mls 1.6.4 receivers fail on it (#742).
   */
  readonly metadata?: Uint8Array
}

export interface CommitResult {
  readonly commit: Uint8Array
  /** Present when the commit adds members. */
  readonly welcome: Uint8Array | undefined
  /** The post-commit state; adopt it only once the commit is seen on the topic. */
  readonly staged: MlsGroupState
}

/** What can be read from a message without any group state. */
export interface MessageHeader {
  readonly kind: "application" | "commit" | "proposal" | "welcome" | "other"
  readonly groupId: GroupId | undefined
  readonly epoch: bigint
}

export type Processed =
  | {
    readonly kind: "application"
    readonly plaintext: Uint8Array
    readonly sender: LeafMember
    readonly epoch: bigint
    readonly state: MlsGroupState
  }
  | {
    readonly kind: "commit"
    readonly committer: LeafMember
    /** The epoch after the commit. */
    readonly epoch: bigint
    readonly state: MlsGroupState
    /** The metadata bytes of the epoch the commit was built for, and of the epoch it makes. */
    readonly metadataBefore: Uint8Array | undefined
    readonly metadataAfter: Uint8Array | undefined
  }

/**
 * Decides whether a leaf credential may be in a group: the hook for identity checks, called by
 * ts-mls on every leaf it validates. `newLeaf` is true for a leaf this installation adds, which must
 * be a current installation; false for any other (an Add we receive, a commit's path leaf, a
 * welcome's tree), which may also be one revoked since, awaiting its removal.
 */
export type Authenticate = (
  identity: LeafIdentity,
  signaturePublicKey: Uint8Array,
  newLeaf: boolean
) => Promise<boolean>

/**
 * Called once with every leaf of a tree before its leaves are authenticated one by one (a
 * welcome's tree), so the hook can fetch what it needs for all of them in one round. A warm-up
 * only: every leaf still goes through `Authenticate`, and a failure here decides nothing.
 */
export type PrepareAuthentication = (
  leaves: ReadonlyArray<LeafIdentity & { readonly signaturePublicKey: Uint8Array }>
) => Promise<void>

export type ProcessedApplication = Extract<Processed, { readonly kind: "application" }>

export interface MlsCryptoOptions {
  /** How many past epochs' application messages stay decryptable (default 3, at most 64). */
  readonly maxPastEpochs?: number
  /** Extra credential check; the structural check (installation id = hash of key) always runs. */
  readonly authenticate?: Authenticate
  /** Warms `authenticate` up for a whole tree at once (see `PrepareAuthentication`). */
  readonly prepareAuthentication?: PrepareAuthentication
  /**
   * The primitives under ts-mls: "native" (default) is node:crypto (layers/NodeCiphersuite),
   * "default" is ts-mls's own WebCrypto provider. Both read and write the same keys and states.
   */
  readonly provider?: "native" | "default"
}

/** A run of someone's application messages read in one call: each result in order, and the state after them. */
export interface ApplicationRun {
  readonly results: ReadonlyArray<Either.Either<ProcessedApplication, CryptoError>>
  readonly state: MlsGroupState
}

export interface MlsCryptoShape {
  /**
   * Past epochs whose application-message keys this service keeps: an engine judging messages
   * further back as readable would count as delivered what no member can decrypt.
   */
  readonly maxPastEpochs: number
  /** The same service, with `authenticate` deciding every leaf credential (RFC 9420 §5.3.1). */
  readonly authenticatedBy: (authenticate: Authenticate, prepare?: PrepareAuthentication) => MlsCryptoShape
  readonly generateSignatureKeyPair: Effect.Effect<SignatureKeyPair, CryptoError>
  /** `protocolVersion` is advertised in the leaf (a leaf node extension), for groups' minimum version. */
  readonly generateKeyPackage: (
    identity: LeafIdentity,
    keys: SignatureKeyPair,
    options?: { readonly protocolVersion?: number }
  ) => Effect.Effect<KeyPackageBundle, CryptoError>
  /** Decodes and verifies a public key package (signature, lifetime, credential). */
  readonly keyPackageInfo: (publicPackage: Uint8Array) => Effect.Effect<KeyPackageInfo, CryptoError>
  /** `metadata` reaches every member through the group context (changed later by a commit's `metadata`). */
  readonly createGroup: (
    groupId: GroupId,
    keyPackage: KeyPackageBundle,
    metadata?: Uint8Array
  ) => Effect.Effect<MlsGroupState, CryptoError>
  readonly createCommit: (state: MlsGroupState, changes: CommitChanges) => Effect.Effect<CommitResult, CryptoError>
  /** Joins with whichever of the given key packages the welcome was encrypted to. */
  readonly joinFromWelcome: (
    welcome: Uint8Array,
    keyPackages: ReadonlyArray<KeyPackageBundle>
  ) => Effect.Effect<MlsGroupState, CryptoError>
  readonly encrypt: (
    state: MlsGroupState,
    plaintext: Uint8Array
  ) => Effect.Effect<{ readonly message: Uint8Array; readonly state: MlsGroupState }, CryptoError>
  readonly inspect: (message: Uint8Array) => Effect.Effect<MessageHeader, CryptoError>
  /** `inspect` of each message, in one step (a delivery service checks every message of a request). */
  readonly inspectAll: (messages: ReadonlyArray<Uint8Array>) => Effect.Effect<ReadonlyArray<MessageHeader | CryptoError>>
  /** `inspect` as a plain call (a page's envelopes are read in one loop); undefined when it is not an MLS message. */
  readonly header: (message: Uint8Array) => MessageHeader | undefined
  /** Processes someone else's message. Never feed an own commit here: adopt its staged state. */
  readonly process: (state: MlsGroupState, message: Uint8Array) => Effect.Effect<Processed, CryptoError>
  /**
   * Someone else's application messages of a page, in order, in one call: each gets `process`'s
   * checks and result (or its error), from the state the previous success left.
   */
  readonly processApplications: (state: MlsGroupState, messages: ReadonlyArray<Uint8Array>) => Effect.Effect<ApplicationRun>
  /**
   * `processApplications` answering before the run's signature checks are done (they go on
   * beside, on the thread pool): `results` and `state` count only once `confirmed` answers true.
   * On false, throw them away and call `processApplications`, which refuses exactly what it
   * always refuses. The caller does its own work (a page's rows) while the checks finish.
   */
  readonly processApplicationsUnconfirmed: (
    state: MlsGroupState,
    messages: ReadonlyArray<Uint8Array>
  ) => Effect.Effect<ApplicationRun & { readonly confirmed: Effect.Effect<boolean> }>
  readonly view: (state: MlsGroupState) => GroupView
  /** For a state `joinFromWelcome` just returned: the member whose signature the welcome carries. */
  readonly inviterOf: (state: MlsGroupState) => LeafMember | undefined
  /** Every member with its leaf's encryption key and whether the leaf is signed for this group. */
  readonly leafDetails: (state: MlsGroupState) => ReadonlyArray<LeafDetails>
  readonly serialize: (state: MlsGroupState) => Uint8Array
  /** Seals bytes to an installation's public key package (HPKE to its init key): only it can open them. */
  readonly sealToKeyPackage: (keyPackage: Uint8Array, plaintext: Uint8Array) => Effect.Effect<Uint8Array, CryptoError>
  /** Opens bytes sealed to one of these (own) key packages; says which one (its ref). */
  readonly openSealed: (
    sealed: Uint8Array,
    keyPackages: ReadonlyArray<KeyPackageBundle>
  ) => Effect.Effect<{ readonly plaintext: Uint8Array; readonly keyPackageRef: string }, CryptoError>
  readonly deserialize: (bytes: Uint8Array) => Effect.Effect<MlsGroupState, CryptoError>
  /**
   * An own commit's staged state as bytes to write ahead, given the state its commit was created
   * from: only what the commit changed (the rest is the base's).
   */
  readonly serializeStaged: (staged: MlsGroupState, base: MlsGroupState) => Uint8Array
  /**
   * A staged state from `serializeStaged`'s bytes (or `serialize`'s) and the group's state at the
   * epoch the commit was created in; fails when the base is at another epoch.
   */
  readonly deserializeStaged: (bytes: Uint8Array, base: MlsGroupState) => Effect.Effect<MlsGroupState, CryptoError>
  /**
   * The staged state `staged` (created from `was`) as `deserializeStaged` would read it against
   * `now`: what it shares with `was` taken from `now`, so keys used since are not brought back.
   */
  readonly rebaseStaged: (staged: MlsGroupState, was: MlsGroupState, now: MlsGroupState) => MlsGroupState
}

export class MlsCrypto extends Context.Tag("converge/MlsCrypto")<MlsCrypto, MlsCryptoShape>() {}
