/**
 * This installation's identity, and what it knows of everyone else's.
 *
 * An inbox has a root Ed25519 key and an append-only signed log (create inbox, add or revoke
 * installations). Each installation has its own MLS signature key; its id is the key's hash.
 * Other inboxes' logs are fetched from the delivery service, verified entry by entry, and
 * cached in the store; a leaf is valid only if its key is a current installation of its inbox.
 */
import { ed25519 } from "@noble/curves/ed25519.js"
import { Clock, Context, Duration, Effect, Either, HashMap, HashSet, Layer, Option, Ref } from "effect"
import { toHex } from "../domain/Bytes.ts"
import {
  type CryptoError,
  type DeliveryError,
  InboxNotFound,
  InvalidIdentityUpdate,
  type StorageError
} from "../domain/Errors.ts"
import type { InboxId, InstallationId } from "../domain/Ids.ts"
import * as IdentityLog from "../domain/IdentityLog.ts"
import { StoredIdentity, InboxLogEntry, StoredKeyPackage } from "../domain/Stored.ts"
import { IdentityUpdate, KeyPackageUpload } from "../domain/Wire.ts"
import { ed25519Seed } from "../domain/RequestAuth.ts"
import { signEd25519, verifyStrictAsync } from "../domain/Ed25519.ts"
import { authenticatedAs, installationSigner } from "./DeliveryAuth.ts"
import { DeliveryService, MAX_IDS_PER_LOOKUP } from "./DeliveryService.ts"
import { type KeyPackageBundle, type LeafIdentity, type LeafMember, MlsCrypto, type SignatureKeyPair } from "./MlsCrypto.ts"
import { Storage } from "./Storage.ts"
import { FIRST_PROTOCOL_VERSION, PROTOCOL_VERSION } from "../domain/Model.ts"

export type IdentityError = DeliveryError | InvalidIdentityUpdate | StorageError | CryptoError

/**
 * How long a replaced key package's private part is kept: welcomes sealed to it before the
 * replacement may still be on their way (an adder fetched it, its commit lands later).
 */
export const DEFAULT_KEY_PACKAGE_GRACE = Duration.hours(24)

export interface IdentityOptions {
  /** How long a replaced key package stays usable. Default 24 hours. */
  readonly keyPackageGrace?: Duration.DurationInput
  /**
   * Join an existing inbox as a new installation: its root secret key (another device of the
   * same user hands it over). Without it a new inbox is created.
   */
  readonly rootSecretKey?: Uint8Array
  /** The protocol version its key packages advertise (default the library's own). */
  readonly protocolVersion?: number
  /**
   * Join an existing inbox as a new installation without its root key: `approve` (an
   * installation holding the root key, `Identity.approveInstallation`) signs this
   * installation into the inbox's log. Only this installation's public key and a proof of
   * possession signer leave it; the root key never comes here.
   */
  readonly joinInbox?: {
    readonly inboxId: InboxId
    readonly approve: (candidate: InstallationCandidate) => Effect.Effect<void, IdentityError>
  }
}

/** A new installation asking to be added to an inbox: its key, and a signer for the proof of possession. */
export interface InstallationCandidate {
  readonly installationId: InstallationId
  /** Hex of its Ed25519 signature public key. */
  readonly signaturePublicKey: string
  readonly prove: IdentityLog.InstallationProver
}

/** A leaf as the identity log judges it: who it claims to be, and its signature key. */
export type LeafIdentityKey = LeafIdentity & { readonly signaturePublicKey: Uint8Array }

/** Most inboxes asked for in one identity request (the delivery service's lookup bound). */
const LOOKUP_CHUNK = MAX_IDS_PER_LOOKUP

/**
 * `isValidLeaf`'s rule: registered now with exactly this key, or once and revoked since (the
 * installation id is the hash of the leaf's key, which MlsCrypto checks, so the id binds the key).
 */
/**
 * Every signature of the fetched entries checked at once on the thread pool (a large group's join
 * meets hundreds), then handed to `applyUpdate` as known answers; it still decides each entry.
 */
const checkSignaturesAtOnce = (
  known: ReadonlyMap<InboxId, IdentityLog.InboxState | undefined>,
  fetched: ReadonlyArray<{ readonly inboxId: InboxId; readonly updates: ReadonlyArray<{ readonly update: IdentityUpdate }> }>
) => {
  const checks = fetched.flatMap(({ inboxId, updates }) =>
    IdentityLog.signatureChecksOf(known.get(inboxId)?.rootPublicKey, updates.map((envelope) => envelope.update)))
  return Effect.promise(() => Promise.all(checks.map((c) => verifyStrictAsync(c.publicKey, c.message, c.signature)))).pipe(
    Effect.map((valid) => IdentityLog.preverified(checks, valid))
  )
}

const registeredLeaf = (state: IdentityLog.InboxState | undefined, leaf: LeafIdentityKey): boolean =>
  state !== undefined &&
  (IdentityLog.isCurrentInstallation(state, leaf.installationId, leaf.signaturePublicKey) ||
    HashSet.has(state.revoked, leaf.installationId))

export class Identity extends Context.Tag("converge/Identity")<Identity, {
  readonly inboxId: InboxId
  readonly installationId: InstallationId
  readonly signatureKeys: SignatureKeyPair
  /** Root key of the inbox, if this installation holds it. */
  readonly rootSecretKey: Option.Option<Uint8Array>
  /** Private key packages still usable to join from a welcome. */
  readonly keyPackages: Effect.Effect<ReadonlyArray<KeyPackageBundle>, StorageError>
  /** Uploads a fresh key package, keeping the old private parts for welcomes in flight. */
  readonly rotateKeyPackage: Effect.Effect<void, IdentityError>
  /**
   * A welcome was joined with this key package: if it is the one the server hands out, a
   * fresh one replaces it there at once (until then it stays usable, as a last resort).
   */
  readonly keyPackageUsed: (ref: string) => Effect.Effect<void, IdentityError>
  /** Deletes the private parts of key packages replaced more than `keyPackageGrace` ago. */
  readonly pruneKeyPackages: Effect.Effect<number, StorageError>
  /**
   * Rotates the key package the server hands out if it advertises another protocol version than
   * this installation speaks (an upgrade, or a restart with another `protocolVersion`): groups
   * refuse key packages below their minimum. Checked once per process, on the first sync.
   */
  readonly ensureKeyPackageVersion: Effect.Effect<void, IdentityError>
  /** The verified current state of an inbox, refreshed from the delivery service. */
  readonly inboxState: (inboxId: InboxId) => Effect.Effect<IdentityLog.InboxState, InboxNotFound | IdentityError>
  /** Refreshes several inboxes in one request; returns what is now known of each. */
  readonly refreshMany: (
    inboxIds: ReadonlyArray<InboxId>
  ) => Effect.Effect<ReadonlyMap<InboxId, IdentityLog.InboxState | undefined>, IdentityError>
  /** What this installation holds of these inboxes, without asking the network. */
  readonly knownStates: (
    inboxIds: ReadonlyArray<InboxId>
  ) => Effect.Effect<ReadonlyMap<InboxId, IdentityLog.InboxState | undefined>, StorageError>
  /**
   * Verifies and keeps identity changes fetched with a sync; returns the inboxes that changed.
   * Entries that do not verify are logged and skipped (that inbox only).
   */
  readonly absorb: (
    fetched: ReadonlyArray<{ readonly inboxId: InboxId; readonly updates: ReadonlyArray<{ readonly update: IdentityUpdate }> }>
  ) => Effect.Effect<ReadonlySet<InboxId>, StorageError>
  /** Grows whenever a state this installation holds changes: cached conclusions drawn from them are stale. */
  readonly version: Effect.Effect<number>
  /**
   * Before many `isValidLeaf` calls (a welcome's tree): refreshes, in as few requests as the
   * service's lookup bound allows, every inbox whose cached state does not already pass this leaf.
   */
  readonly prefetchLeaves: (leaves: ReadonlyArray<LeafIdentityKey>) => Effect.Effect<void, IdentityError>
  /** Was this leaf ever registered to the inbox it names (current or revoked since)? Refreshes once if not. */
  readonly isValidLeaf: (leaf: LeafMember) => Effect.Effect<boolean, IdentityError>
  /**
   * Is this leaf a current installation of the inbox it names, with exactly the logged signature
   * key? The test for a leaf entering a group: a revoked installation never comes back.
   */
  readonly isCurrentLeaf: (leaf: LeafIdentity & { readonly signaturePublicKey: Uint8Array }) => Effect.Effect<boolean, IdentityError>
  /** Publishes a signed change to this inbox's log (needs the root key). */
  readonly revokeInstallation: (installationId: InstallationId) => Effect.Effect<void, IdentityError>
  /** Signs another device into this inbox's log (needs the root key): see `IdentityOptions.joinInbox`. */
  readonly approveInstallation: (candidate: InstallationCandidate) => Effect.Effect<void, IdentityError>
}>() {
  static readonly layer = (options: IdentityOptions = {}) => Layer.effect(this, make(options))
}

export const make = (options: IdentityOptions) =>
  Effect.gen(function*() {
    const storage = yield* Storage
    const crypto = yield* MlsCrypto

    const row = yield* loadOrCreate(options)
    const inboxId = row.inboxId
    const installationId = row.installationId
    const signatureKeys = { publicKey: row.signaturePublicKey, privateKey: row.signaturePrivateKey }
    // Everything this installation asks of the delivery service is signed by it.
    const ds = authenticatedAs(yield* DeliveryService, installationSigner(installationId, signatureKeys.privateKey))
    const rootSecretKey = Option.fromNullable(row.rootSecretKey)
    const cache = yield* Ref.make(HashMap.empty<InboxId, IdentityLog.InboxState>())
    let version = 0

    /**
     * Verifies fetched log entries onto what we hold, persists and caches them. Each inbox's
     * entries either all verify or none are taken; the inboxes whose entries did not verify
     * come back in `rejected` with the reason.
     */
    const verifyOnto = (
      known: Map<InboxId, IdentityLog.InboxState | undefined>,
      fetched: ReadonlyArray<{ readonly inboxId: InboxId; readonly updates: ReadonlyArray<{ readonly update: IdentityUpdate }> }>
    ) =>
      Effect.gen(function*() {
        const fresh: Array<InboxLogEntry> = []
        const rejected: Array<InvalidIdentityUpdate> = []
        const changed = new Set<InboxId>()
        for (const { inboxId } of fetched) if (!known.has(inboxId)) known.set(inboxId, yield* knownState(inboxId))
        const verify = yield* checkSignaturesAtOnce(known, fetched)
        for (const { inboxId, updates } of fetched) {
          let state = known.get(inboxId)
          const entries: Array<InboxLogEntry> = []
          let failure: InvalidIdentityUpdate | undefined
          for (const envelope of updates) {
            const next = envelope.update.inboxId === inboxId
              ? IdentityLog.applyUpdate(state, envelope.update, verify)
              : Either.left(new InvalidIdentityUpdate({ inboxId, reason: "an entry of another inbox" }))
            if (Either.isLeft(next)) {
              failure = next.left
              break
            }
            state = next.right
            entries.push(InboxLogEntry.make({ inboxId, sequence: envelope.update.sequence, update: envelope.update }))
          }
          if (failure !== undefined) {
            rejected.push(failure)
            continue
          }
          if (entries.length > 0) {
            changed.add(inboxId)
            version++
          }
          fresh.push(...entries)
          known.set(inboxId, state)
        }
        yield* storage.inboxLogs.append(fresh)
        const verified = [...known].filter((entry): entry is [InboxId, IdentityLog.InboxState] => entry[1] !== undefined)
        yield* Ref.update(cache, (c) => verified.reduce((acc, [id, state]) => HashMap.set(acc, id, state), c))
        return { changed, rejected }
      })

    /**
     * Fetches the entries newer than what we hold for several inboxes in one request, verifies
     * them onto our state and persists them.
     */
    const refreshMany = Effect.fn("Identity.refreshMany")(function*(targets: ReadonlyArray<InboxId>) {
      const known = new Map<InboxId, IdentityLog.InboxState | undefined>()
      for (const target of new Set(targets)) known.set(target, yield* knownState(target))
      const queries = [...known].map(([inboxId, state]) => ({ inboxId, afterSequence: state?.sequence ?? 0 }))
      // The service answers at most LOOKUP_CHUNK inboxes per request: a large group takes several.
      for (let from = 0; from < queries.length; from += LOOKUP_CHUNK) {
        const fetched = yield* ds.getIdentityUpdates(queries.slice(from, from + LOOKUP_CHUNK))
        const { rejected } = yield* verifyOnto(known, fetched)
        if (rejected[0] !== undefined) return yield* rejected[0]
      }
      return known
    })

    const prefetchLeaves = Effect.fn("Identity.prefetchLeaves")(function*(leaves: ReadonlyArray<LeafIdentityKey>) {
      const held = yield* Ref.get(cache)
      const stale = new Set<InboxId>()
      for (const leaf of leaves) {
        if (!registeredLeaf(Option.getOrUndefined(HashMap.get(held, leaf.inboxId)), leaf)) stale.add(leaf.inboxId)
      }
      if (stale.size > 0) yield* refreshMany([...stale])
    })

    /** What we hold of these inboxes, without asking the network (and now cached). */
    const knownStates = Effect.fn("Identity.knownStates")(function*(targets: ReadonlyArray<InboxId>) {
      const known = new Map<InboxId, IdentityLog.InboxState | undefined>()
      for (const target of new Set(targets)) known.set(target, yield* knownState(target))
      const verified = [...known].filter((entry): entry is [InboxId, IdentityLog.InboxState] => entry[1] !== undefined)
      yield* Ref.update(cache, (c) => verified.reduce((acc, [id, state]) => HashMap.set(acc, id, state), c))
      return known as ReadonlyMap<InboxId, IdentityLog.InboxState | undefined>
    })

    /**
     * Takes identity changes fetched elsewhere (with a sync's group pages). Entries that do not
     * verify are logged and skipped, inbox by inbox: a bad answer costs only that inbox's news.
     */
    const absorb = Effect.fn("Identity.absorb")(function*(
      fetched: ReadonlyArray<{ readonly inboxId: InboxId; readonly updates: ReadonlyArray<{ readonly update: IdentityUpdate }> }>
    ) {
      const { changed, rejected } = yield* verifyOnto(new Map(), fetched)
      for (const e of rejected) {
        yield* Effect.logWarning("identity changes that do not verify; skipped", e.reason).pipe(
          Effect.annotateLogs({ inboxId: e.inboxId })
        )
      }
      return changed as ReadonlySet<InboxId>
    })

    const refresh = (target: InboxId) =>
      refreshMany([target]).pipe(Effect.map((states) => Option.fromNullable(states.get(target))))

    /** What we hold of an inbox without asking the network: the cache, else the stored log. */
    const knownState = (target: InboxId) =>
      Effect.gen(function*() {
        const cached = HashMap.get(yield* Ref.get(cache), target)
        return Option.isSome(cached) ? cached.value : yield* fromStore(target)
      })

    const fromStore = (target: InboxId) =>
      Effect.gen(function*() {
        const rows = yield* storage.inboxLogs.entries(target)
        const replayed = IdentityLog.replay(rows.map((r) => r.update))
        // The cache was verified on the way in; a failure here means local corruption: start over.
        return Either.isRight(replayed) ? Option.getOrUndefined(replayed.right) : undefined
      })

    const inboxState = Effect.fn("Identity.inboxState")(function*(target: InboxId) {
      const state = yield* refresh(target)
      if (Option.isNone(state)) return yield* new InboxNotFound({ inboxId: target })
      return state.value
    })

    const isValidLeaf = Effect.fn("Identity.isValidLeaf")(function*(leaf: LeafMember) {
      // Registered now, or once and revoked since: a welcome or commit may be read after a
      // revocation it predates. Members remove revoked devices with their next installation
      // check; refusing the leaf instead would split the group.
      const cached = HashMap.get(yield* Ref.get(cache), leaf.inboxId)
      if (Option.isSome(cached) && registeredLeaf(cached.value, leaf)) return true
      const fresh = yield* refresh(leaf.inboxId)
      return registeredLeaf(Option.getOrUndefined(fresh), leaf)
    })

    const isCurrentLeaf = Effect.fn("Identity.isCurrentLeaf")(function*(
      leaf: LeafIdentity & { readonly signaturePublicKey: Uint8Array }
    ) {
      const check = (state: IdentityLog.InboxState | undefined) =>
        state !== undefined && IdentityLog.isCurrentInstallation(state, leaf.installationId, leaf.signaturePublicKey)
      const cached = HashMap.get(yield* Ref.get(cache), leaf.inboxId)
      if (Option.isSome(cached) && check(cached.value)) return true
      return check(Option.getOrUndefined(yield* refresh(leaf.inboxId)))
    })

    const publishOwn = (action: IdentityLog.UnsignedIdentityAction, prover?: IdentityLog.InstallationProver) =>
      Effect.gen(function*() {
        if (Option.isNone(rootSecretKey)) {
          return yield* new InvalidIdentityUpdate({ inboxId, reason: "this installation does not hold the root key" })
        }
        const head = yield* refresh(inboxId)
        const update = IdentityLog.signUpdate(
          rootSecretKey.value,
          inboxId,
          Option.getOrUndefined(head),
          action,
          prover ?? ed25519Seed(signatureKeys.privateKey)
        )
        yield* storage.flush
        yield* ds.publishIdentityUpdate(update)
        yield* refresh(inboxId)
      })

    const rotateKeyPackage = Effect.gen(function*() {
      const bundle = yield* crypto.generateKeyPackage({ inboxId, installationId }, signatureKeys, {
        protocolVersion: options.protocolVersion ?? PROTOCOL_VERSION
      })
      yield* storage.keyPackages.insert(StoredKeyPackage.make({
        ref: bundle.ref,
        publicPackage: bundle.publicPackage,
        privatePackage: bundle.privatePackage,
        createdAtNs: yield* Clock.currentTimeNanos
      }))
      // The newest stored key package must be the one the server hands out: if the upload
      // fails, the new one goes again (the old one stays the server's, and is not retired).
      // Its private half is on disk before the public half is out.
      yield* storage.flush
      yield* ds.uploadKeyPackage(KeyPackageUpload.make({ installationId, keyPackage: bundle.publicPackage })).pipe(
        Effect.tapError(() => storage.keyPackages.remove(bundle.ref))
      )
    }).pipe(Effect.withSpan("Identity.rotateKeyPackage"))

    let keyPackageVersionChecked = false
    const ensureKeyPackageVersion = Effect.gen(function*() {
      if (keyPackageVersionChecked) return
      const [newest] = yield* storage.keyPackages.list
      if (newest !== undefined) {
        // One that no longer decodes is replaced as well.
        const advertised = yield* crypto.keyPackageInfo(newest.publicPackage).pipe(
          Effect.map((info) => info.protocolVersion ?? FIRST_PROTOCOL_VERSION),
          Effect.orElseSucceed(() => undefined)
        )
        if (advertised !== (options.protocolVersion ?? PROTOCOL_VERSION)) yield* rotateKeyPackage
      }
      keyPackageVersionChecked = true
    }).pipe(Effect.withSpan("Identity.ensureKeyPackageVersion"))

    const keyPackageUsed = Effect.fn("Identity.keyPackageUsed")(function*(ref: string) {
      const [newest] = yield* storage.keyPackages.list
      if (newest?.ref === ref) yield* rotateKeyPackage
    })

    const grace = Duration.toNanos(Duration.decode(options.keyPackageGrace ?? DEFAULT_KEY_PACKAGE_GRACE)).pipe(
      Option.getOrElse(() => 0n)
    )

    /** A key package is retired when a newer one is made; its private part goes `grace` later. */
    const pruneKeyPackages = Effect.gen(function*() {
      const now = yield* Clock.currentTimeNanos
      const newestFirst = yield* storage.keyPackages.list
      let removed = 0
      for (let i = 1; i < newestFirst.length; i++) {
        const retiredAt = newestFirst[i - 1]!.createdAtNs
        if (now - retiredAt < grace) continue
        yield* storage.keyPackages.remove(newestFirst[i]!.ref)
        removed++
      }
      return removed
    }).pipe(Effect.withSpan("Identity.pruneKeyPackages"))

    /** Idempotent: publishes only the log entries that are missing, so a lost response is harmless. */
    const register = Effect.gen(function*() {
      const own = yield* refresh(inboxId)
      if (Option.isNone(own)) {
        if (Option.isNone(rootSecretKey)) {
          return yield* new InvalidIdentityUpdate({ inboxId, reason: "inbox does not exist and no root key is held" })
        }
        yield* publishOwn({ _tag: "CreateInbox", rootPublicKey: toHex(ed25519.getPublicKey(rootSecretKey.value)) })
      }
      const state = yield* inboxState(inboxId)
      if (!HashMap.has(state.installations, installationId) && Option.isNone(rootSecretKey) && options.joinInbox !== undefined) {
        // Another device signs us in; our key signs only the proof of possession. The key it
        // signs in is on our disk first (the other device flushes its storage, not ours).
        const seed = ed25519Seed(signatureKeys.privateKey)
        yield* storage.flush
        yield* options.joinInbox.approve({
          installationId,
          signaturePublicKey: toHex(signatureKeys.publicKey),
          prove: (bytes) => signEd25519(seed, bytes)
        })
        yield* refresh(inboxId)
      } else if (!HashMap.has(state.installations, installationId)) {
        yield* publishOwn({
          _tag: "AddInstallation",
          installationId,
          signaturePublicKey: toHex(signatureKeys.publicKey)
        })
      }
      yield* rotateKeyPackage
      yield* storage.identity.markRegistered
    }).pipe(Effect.withSpan("Identity.register"))

    if (!row.registered) yield* register

    return {
      inboxId,
      installationId,
      signatureKeys,
      rootSecretKey,
      keyPackages: storage.keyPackages.list.pipe(
        Effect.map((rows) =>
          rows.map((r) => ({ ref: r.ref, publicPackage: r.publicPackage, privatePackage: r.privatePackage }))
        )
      ),
      rotateKeyPackage,
      keyPackageUsed,
      pruneKeyPackages,
      ensureKeyPackageVersion,
      inboxState,
      refreshMany,
      knownStates,
      absorb,
      version: Effect.sync(() => version),
      prefetchLeaves,
      isValidLeaf,
      isCurrentLeaf,
      revokeInstallation: (target: InstallationId) =>
        publishOwn({ _tag: "RevokeInstallation", installationId: target }).pipe(
          Effect.withSpan("Identity.revokeInstallation")
        ),
      approveInstallation: (candidate: InstallationCandidate) =>
        publishOwn(
          { _tag: "AddInstallation", installationId: candidate.installationId, signaturePublicKey: candidate.signaturePublicKey },
          candidate.prove
        ).pipe(Effect.withSpan("Identity.approveInstallation"))
    }
  })


/** Loads this database's identity, or creates one (new keys; a new inbox unless one is joined). */
const loadOrCreate = (options: IdentityOptions) =>
  Effect.gen(function*() {
    const storage = yield* Storage
    const crypto = yield* MlsCrypto
    const existing = yield* storage.identity.get
    if (Option.isSome(existing)) return existing.value
    const joining = options.rootSecretKey === undefined ? options.joinInbox : undefined
    const rootSecretKey = joining !== undefined ? null : options.rootSecretKey ?? ed25519.utils.randomSecretKey()
    const keys = yield* crypto.generateSignatureKeyPair
    const row = StoredIdentity.make({
      inboxId: joining?.inboxId ?? IdentityLog.inboxIdOf(ed25519.getPublicKey(rootSecretKey!)),
      installationId: IdentityLog.installationIdOf(keys.publicKey),
      rootSecretKey,
      signaturePrivateKey: keys.privateKey,
      signaturePublicKey: keys.publicKey,
      registered: false,
      createdAtNs: yield* Clock.currentTimeNanos
    })
    yield* storage.identity.insert(row)
    return row
  })
