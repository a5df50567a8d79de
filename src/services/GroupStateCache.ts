/**
 * Decoded MLS states, one per group, keyed by the exact stored bytes. Deserializing a ts-mls
 * state is the costliest step of a sync; states are immutable values, so the last decode is
 * reused while the stored bytes are the same.
 *
 * Bounded in bytes (the stored size of each state stands for its decoded size): least recently
 * used states go first, so a client in thousands of groups keeps only its busy ones decoded.
 *
 * Beside it, each group's roster (who holds which leaf: `domain/Roster.ts`), kept in memory and
 * on disk for the exact bytes it was read from: the installation checks of every sync and the
 * member list read it, so a restarted client in 1,000 large groups decodes no state to catch up.
 */
import { Effect, Metric, Option } from "effect"
import { bytesEqual, fromHex } from "../domain/Bytes.ts"
import type { GroupId } from "../domain/Ids.ts"
import { type Roster, rosterOf, stateDigest } from "../domain/Roster.ts"
import type { StoredGroup } from "../domain/Stored.ts"
import * as EngineMetrics from "./EngineMetrics.ts"
import type { MlsCrypto, MlsGroupState } from "./MlsCrypto.ts"
import type { RosterRepository } from "./RosterStorage.ts"

export type { Roster } from "../domain/Roster.ts"

/**
 * Rosters kept per group (a 100-member roster is about 20 KB of heap, a decoded state 0.44 MiB):
 * enough for every group of a client in thousands, so the checks of a sync decode no state twice.
 */
export const DEFAULT_MAX_ROSTERS = 4096

/**
 * Stored bytes of the states kept decoded: 8 MiB. A decoded state takes about 8 to 10 times its
 * bytes (a 100-member state: 45 KiB stored, 56 KiB before the compact format, 0.44 MiB of heap),
 * so this is about 64 to 80 MiB of heap: 150 to 180 states of 100-member groups, thousands of
 * small ones. At 32 MiB a client in 1,000 groups of 100 members went past 512 MiB resident.
 */
export const DEFAULT_MAX_BYTES = 8 * 1024 * 1024

export const make = (
  crypto: MlsCrypto["Type"],
  maxBytes: number = DEFAULT_MAX_BYTES,
  options: {
    readonly maxRosters?: number
    /** Where rosters are kept across restarts (none: each process decodes each state once). */
    readonly stored?: RosterRepository | undefined
  } = {}
) => {
  const { maxRosters = DEFAULT_MAX_ROSTERS, stored } = options
  /** In use order, least recent first (a Map keeps insertion order). */
  const cache = new Map<GroupId, { readonly bytes: Uint8Array; readonly state: MlsGroupState }>()
  let total = 0

  const remember = (groupId: GroupId, bytes: Uint8Array, state: MlsGroupState) => {
    forget(groupId)
    cache.set(groupId, { bytes, state })
    total += bytes.length
    for (const [oldest, entry] of cache) {
      if (total <= maxBytes || oldest === groupId) break
      cache.delete(oldest)
      total -= entry.bytes.length
    }
  }
  const forget = (groupId: GroupId) => {
    const hit = cache.get(groupId)
    if (hit === undefined) return
    cache.delete(groupId)
    total -= hit.bytes.length
  }

  /** The decoded state kept for exactly the group's stored bytes, if any. */
  const keptState = (group: StoredGroup) => {
    const hit = cache.get(group.id)
    return hit !== undefined && (hit.bytes === group.mlsState || bytesEqual(hit.bytes, group.mlsState)) ? hit : undefined
  }

  const loadState = (group: StoredGroup) => {
    const hit = keptState(group)
    if (hit !== undefined) {
      remember(group.id, hit.bytes, hit.state)
      return Effect.succeed(hit.state)
    }
    return decode(group.mlsState).pipe(
      Effect.tap((state) => Effect.sync(() => remember(group.id, group.mlsState, state)))
    )
  }
  let decodes = 0
  const decode = (bytes: Uint8Array) =>
    Effect.suspend(() => {
      decodes++
      return Effect.zipLeft(crypto.deserialize(bytes), Metric.increment(EngineMetrics.stateDecodes))
    })

  /**
   * Rosters by group, keyed by the digest of the stored state they were read from, with the epoch
   * authenticator of that state when it was read from a decoded one; least recent first.
   */
  const rosters = new Map<GroupId, { readonly digest: string; readonly roster: Roster; readonly authenticator?: string }>()
  const keepRoster = (groupId: GroupId, digest: string, roster: Roster, authenticator?: string) => {
    rosters.delete(groupId)
    rosters.set(groupId, authenticator === undefined ? { digest, roster } : { digest, roster, authenticator })
    if (rosters.size > maxRosters) rosters.delete(rosters.keys().next().value!)
  }
  /**
   * One copy of each inbox and installation id across the rosters kept: the same people are in
   * many groups (1,000 rosters of the same 100 members held 200,000 copies, about 16 MB).
   */
  const ids = new Map<string, string>()
  const intern = <S extends string>(id: S): S => {
    const hit = ids.get(id)
    if (hit !== undefined) return hit as S
    if (ids.size >= 4 * maxRosters) ids.clear()
    ids.set(id, id)
    return id
  }
  const compact = (roster: Roster): Roster => ({
    ownLeafIndex: roster.ownLeafIndex,
    members: roster.members.map((m) => ({ inboxId: intern(m.inboxId), installationId: intern(m.installationId), leafIndex: m.leafIndex })),
    ...(roster.metadata === undefined ? {} : { metadata: roster.metadata })
  })
  /** The roster kept on disk for these exact bytes, if any (a failed read is only a miss). */
  const storedRoster = (groupId: GroupId, digest: string) =>
    stored === undefined
      ? Effect.succeed(Option.none<Roster>())
      : stored.get(groupId).pipe(
        Effect.map(Option.flatMap((row) => (row.stateDigest === digest ? Option.some(row.roster) : Option.none()))),
        Effect.orElseSucceed(() => Option.none<Roster>())
      )
  const storeRoster = (groupId: GroupId, digest: string, roster: Roster) =>
    stored === undefined
      ? Effect.void
      : stored.put({ groupId, stateDigest: digest, roster }).pipe(
        Effect.catchAll((e) => Effect.logDebug("roster not kept; read from the state next time", e.message))
      )

  /**
   * What a roster may be carried over on: the epoch authenticator of an active state. A commit that
   * removes us leaves ts-mls's key schedule (and so the authenticator) as it was but takes the new
   * tree, so an inactive state's roster is always read from its own bytes.
   */
  const carryKey = (view: { readonly epochAuthenticator: string; readonly active: boolean }) =>
    view.active ? view.epochAuthenticator : undefined

  /**
   * The group's roster at its stored state: the one kept for these exact bytes, or for the same
   * epoch of the kept decoded state (in memory), else the one on disk for these bytes, else read
   * from the state (decoded once and cached as usual) and kept.
   */
  const loadRoster = (group: StoredGroup) =>
    Effect.gen(function*() {
      const digest = stateDigest(group.mlsState)
      const memo = rosters.get(group.id)
      if (memo !== undefined && memo.digest === digest) {
        keepRoster(group.id, digest, memo.roster, memo.authenticator)
        return memo.roster
      }
      // Received application messages change the stored bytes but not the epoch: a kept state with
      // the same epoch authenticator (which commits to the tree and the group context) has the same
      // roster, so it is carried over without a read or a write of the stored one.
      const kept = keptState(group)
      const authenticator = kept === undefined ? undefined : carryKey(crypto.view(kept.state))
      if (memo?.authenticator !== undefined && memo.authenticator === authenticator) {
        keepRoster(group.id, digest, memo.roster, authenticator)
        return memo.roster
      }
      const onDisk = yield* storedRoster(group.id, digest)
      if (Option.isSome(onDisk)) {
        const roster = compact(onDisk.value)
        keepRoster(group.id, digest, roster, authenticator)
        return roster
      }
      const view = crypto.view(yield* loadState(group))
      const roster = compact(rosterOf(view))
      keepRoster(group.id, digest, roster, carryKey(view))
      yield* storeRoster(group.id, digest, roster)
      return roster
    })

  /**
   * The roster last kept for the group, in memory or on disk, whatever state it was read from:
   * who was in the group recently, without reading its row (tens of kilobytes with the state).
   * Only a hint: whoever judges the group loads its roster at its stored state.
   */
  const rosterHint = (groupId: GroupId) => {
    const memo = rosters.get(groupId)
    if (memo !== undefined) return Effect.succeed(Option.some(memo.roster))
    return stored === undefined
      ? Effect.succeed(Option.none<Roster>())
      : stored.get(groupId).pipe(
        Effect.map(Option.map((row) => row.roster)),
        Effect.orElseSucceed(() => Option.none<Roster>())
      )
  }

  /**
   * The group context's settings bytes at the group's stored state: from the decoded state when
   * it is kept, else from its roster (so listing many groups' names after a restart decodes no
   * state), else from the state decoded.
   */
  const loadMetadata = (group: StoredGroup) =>
    Effect.gen(function*() {
      const hit = keptState(group)
      if (hit !== undefined) return crypto.view(hit.state).metadata
      const roster = yield* loadRoster(group)
      if (roster.metadata === null) return undefined
      if (roster.metadata !== undefined) return fromHex(roster.metadata)
      return crypto.view(yield* loadState(group)).metadata
    })

  /**
   * The settings bytes of the group's kept state when that state is at `epoch`, without the stored
   * bytes to compare: a group's context (its settings among it) changes only with its epoch, so any
   * state of the group at that epoch has the same. `Option.none()` when no state at that epoch is kept.
   */
  const keptMetadataAt = (groupId: GroupId, epoch: bigint): Option.Option<Uint8Array | undefined> => {
    const hit = cache.get(groupId)
    if (hit === undefined) return Option.none()
    const view = crypto.view(hit.state)
    return view.epoch === epoch ? Option.some(view.metadata) : Option.none()
  }

  /**
   * The staged state of each group's last own commit: written ahead as bytes (what the commit
   * changed, against the state it was created from), adopted when the commit lands. Kept decoded
   * so adopting it costs no decode (a 100-member state takes tens of ms); a few groups at most
   * have a commit in flight.
   */
  const staged = new Map<GroupId, { readonly bytes: Uint8Array; readonly state: MlsGroupState; readonly base: MlsGroupState }>()
  const MAX_STAGED = 64

  const encodeState = (groupId: GroupId, state: MlsGroupState) => {
    const hit = cache.get(groupId)
    if (hit !== undefined && hit.state === state) return hit.bytes
    // An adopted staged state is stored whole (its written-ahead bytes only name what changed).
    if (staged.get(groupId)?.state === state) staged.delete(groupId)
    const bytes = crypto.serialize(state)
    remember(groupId, bytes, state)
    return bytes
  }
  const encodeStaged = (groupId: GroupId, state: MlsGroupState, base: MlsGroupState) => {
    const bytes = crypto.serializeStaged(state, base)
    staged.delete(groupId)
    staged.set(groupId, { bytes, state, base })
    if (staged.size > MAX_STAGED) staged.delete(staged.keys().next().value!)
    return bytes
  }
  const loadStaged = (groupId: GroupId, bytes: Uint8Array, base: MlsGroupState) => {
    const hit = staged.get(groupId)
    if (hit !== undefined && (hit.bytes === bytes || bytesEqual(hit.bytes, bytes))) {
      // Read as the bytes would be against `base`: keys used since the commit was made stay used.
      const rebased = crypto.rebaseStaged(hit.state, hit.base, base)
      if (rebased !== hit.state) staged.set(groupId, { ...hit, state: rebased, base })
      return Effect.succeed(rebased)
    }
    decodes++
    return Effect.zipLeft(crypto.deserializeStaged(bytes, base), Metric.increment(EngineMetrics.stateDecodes))
  }
  return {
    loadState,
    loadRoster,
    rosterHint,
    loadMetadata,
    keptMetadataAt,
    encodeState,
    encodeStaged,
    loadStaged,
    size: () => ({ states: cache.size, bytes: total }),
    /** States decoded since the client started, and rosters kept. */
    stats: () => ({ decodes, states: cache.size, bytes: total, rosters: rosters.size })
  }
}
