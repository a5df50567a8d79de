/** The decoded-state cache: reused while the stored bytes match, bounded in bytes, least recently used out first. */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Option } from "effect"
import { StorageError } from "../src/domain/Errors.ts"
import type { GroupId } from "../src/domain/Ids.ts"
import type { StoredRoster } from "../src/domain/Roster.ts"
import type { StoredGroup } from "../src/domain/Stored.ts"
import type { RosterRepository } from "../src/services/RosterStorage.ts"
import * as GroupStateCache from "../src/services/GroupStateCache.ts"
import type { MlsCrypto, MlsGroupState } from "../src/services/MlsCrypto.ts"

/** A stand-in crypto that counts decodes; a "state" is an object holding its bytes. */
const countingCrypto = () => {
  const decoded: Array<number> = []
  const crypto = {
    deserialize: (bytes: Uint8Array) =>
      Effect.sync(() => {
        decoded.push(bytes[0]!)
        return { bytes } as unknown as MlsGroupState
      }),
    serialize: (state: MlsGroupState) => (state as unknown as { bytes: Uint8Array }).bytes,
    // A staged state's bytes: 255, then the state's (what it changed from a base, in the real one).
    serializeStaged: (state: MlsGroupState) => Uint8Array.of(255, ...(state as unknown as { bytes: Uint8Array }).bytes),
    deserializeStaged: (bytes: Uint8Array, base: MlsGroupState) =>
      Effect.sync(() => {
        decoded.push(bytes[1]!)
        return { bytes: bytes.subarray(1), base } as unknown as MlsGroupState
      }),
    // The real one takes what the staged state shares with its base from the newer base.
    rebaseStaged: (state: MlsGroupState) => state,
    // One member, whose leaf index is the state's tag; the tag is its epoch and its settings bytes too.
    view: (state: MlsGroupState) => ({
      epoch: BigInt((state as unknown as { bytes: Uint8Array }).bytes[0]!),
      metadata: Uint8Array.of((state as unknown as { bytes: Uint8Array }).bytes[0]!),
      ownLeafIndex: 0,
      members: [{ inboxId: "a".repeat(64), installationId: "b".repeat(64), leafIndex: (state as unknown as { bytes: Uint8Array }).bytes[0] }]
    })
  } as unknown as MlsCrypto["Type"]
  return { crypto, decoded }
}

/** A group row whose state is `size` bytes, all `tag` (a fresh array each time, as a database read gives). */
const row = (tag: number, size = 40) =>
  ({ id: `g${tag}` as GroupId, mlsState: new Uint8Array(size).fill(tag) }) as unknown as StoredGroup

describe("GroupStateCache", () => {
  it.effect("gives a summary's settings from the kept state only when that state is at the summary's epoch", () =>
    Effect.gen(function*() {
      const { crypto, decoded } = countingCrypto()
      const cache = GroupStateCache.make(crypto, 1000)
      const groupId = "g1" as GroupId
      // Nothing kept: the caller reads the row.
      expect(cache.keptMetadataAt(groupId, 1n)).toEqual(Option.none())
      yield* cache.loadState(row(1))
      expect(cache.keptMetadataAt(groupId, 1n)).toEqual(Option.some(Uint8Array.of(1)))
      // The row is at another epoch than the state kept (a commit came since): not its settings.
      expect(cache.keptMetadataAt(groupId, 2n)).toEqual(Option.none())
      expect(cache.keptMetadataAt("g2" as GroupId, 1n)).toEqual(Option.none())
      expect(decoded).toEqual([1])
    }))

  it.effect("decodes a group once while its stored bytes stay the same, and again when they change", () =>
    Effect.gen(function*() {
      const { crypto, decoded } = countingCrypto()
      const cache = GroupStateCache.make(crypto, 1000)
      const first = yield* cache.loadState(row(1))
      expect(yield* cache.loadState(row(1))).toBe(first)
      yield* cache.loadState({ ...row(1), mlsState: new Uint8Array(40).fill(9) })
      expect(decoded).toEqual([1, 9])
    }))

  it.effect("keeps at most its byte budget decoded, dropping the least recently used group first", () =>
    Effect.gen(function*() {
      const { crypto, decoded } = countingCrypto()
      const cache = GroupStateCache.make(crypto, 100)
      yield* cache.loadState(row(1))
      yield* cache.loadState(row(2))
      yield* cache.loadState(row(1)) // group 1 is now the most recent
      yield* cache.loadState(row(3)) // over 100 bytes: group 2 goes
      expect(cache.size()).toEqual({ states: 2, bytes: 80 })
      yield* cache.loadState(row(1))
      yield* cache.loadState(row(3))
      expect(decoded).toEqual([1, 2, 3])
      yield* cache.loadState(row(2))
      expect(decoded).toEqual([1, 2, 3, 2])
    }))

  it.effect("a state bigger than the whole budget is still kept, alone, for the group using it", () =>
    Effect.gen(function*() {
      const { crypto, decoded } = countingCrypto()
      const cache = GroupStateCache.make(crypto, 100)
      yield* cache.loadState(row(1))
      yield* cache.loadState(row(2, 500))
      expect(cache.size()).toEqual({ states: 1, bytes: 500 })
      yield* cache.loadState(row(2, 500))
      expect(decoded).toEqual([1, 2])
    }))

  it.effect("an own commit's staged state is adopted without a decode, then stored whole", () =>
    Effect.gen(function*() {
      const { crypto, decoded } = countingCrypto()
      const cache = GroupStateCache.make(crypto, 1000)
      const group = "g1" as GroupId
      const base = { bytes: new Uint8Array(40).fill(4) } as unknown as MlsGroupState
      const state = { bytes: new Uint8Array(40).fill(5) } as unknown as MlsGroupState
      const written = cache.encodeStaged(group, state, base)
      expect(written[0]).toBe(255)
      // The row read back holds a copy of the bytes written ahead.
      expect(yield* cache.loadStaged(group, Uint8Array.from(written), base)).toBe(state)
      // The written-ahead bytes name only what changed: the group row gets the whole state.
      expect(cache.encodeState(group, state)).toEqual(new Uint8Array(40).fill(5))
      // Other bytes (another commit, or after a restart) are decoded against the group's state.
      const other = yield* cache.loadStaged(group, Uint8Array.of(255, 6, 6), base)
      expect((other as unknown as { base: MlsGroupState }).base).toBe(base)
      expect(decoded).toEqual([6])
    }))

  it.effect("rosters: each group's state is decoded once for its roster, even when fewer states fit the budget than there are groups", () =>
    Effect.gen(function*() {
      const { crypto, decoded } = countingCrypto()
      const cache = GroupStateCache.make(crypto, 100) // two states of 40 bytes fit, not five
      // A sync's three passes (member inboxes, the check against known logs, the periodic check).
      for (let pass = 0; pass < 3; pass++) {
        for (let tag = 1; tag <= 5; tag++) expect((yield* cache.loadRoster(row(tag))).members[0]!.leafIndex).toBe(tag)
      }
      expect(decoded).toEqual([1, 2, 3, 4, 5])
      expect(cache.stats()).toMatchObject({ decodes: 5, rosters: 5 })
    }))

  it.effect("rosters kept on disk spare a restarted client the decodes, but only for the exact bytes they were read from", () =>
    Effect.gen(function*() {
      const disk = new Map<string, StoredRoster>()
      const stored: RosterRepository = {
        get: (groupId) => Effect.succeed(Option.fromNullable(disk.get(groupId))),
        put: (roster) => Effect.sync(() => void disk.set(roster.groupId, roster))
      }
      const before = countingCrypto()
      const first = GroupStateCache.make(before.crypto, 100, { stored })
      for (let tag = 1; tag <= 3; tag++) yield* first.loadRoster(row(tag))
      expect(before.decoded).toEqual([1, 2, 3])

      const after = countingCrypto()
      const restarted = GroupStateCache.make(after.crypto, 100, { stored })
      for (let tag = 1; tag <= 3; tag++) expect((yield* restarted.loadRoster(row(tag))).members[0]!.leafIndex).toBe(tag)
      expect(after.decoded).toEqual([])
      // Group 2's state moved on: its kept roster is not trusted for the new bytes.
      const moved = { ...row(2), mlsState: new Uint8Array(40).fill(7) }
      expect((yield* restarted.loadRoster(moved)).members[0]!.leafIndex).toBe(7)
      expect(after.decoded).toEqual([7])
    }))

  it.effect("a roster hint names who was last seen in a group, from memory or disk, without the group's row", () =>
    Effect.gen(function*() {
      const disk = new Map<string, StoredRoster>()
      const stored: RosterRepository = {
        get: (groupId) => Effect.succeed(Option.fromNullable(disk.get(groupId))),
        put: (roster) => Effect.sync(() => void disk.set(roster.groupId, roster))
      }
      const leafOf = (hint: Option.Option<GroupStateCache.Roster>) => Option.map(hint, (roster) => roster.members[0]!.leafIndex)
      const { crypto } = countingCrypto()
      const cache = GroupStateCache.make(crypto, 100, { stored })
      expect(yield* cache.rosterHint("g1" as GroupId)).toEqual(Option.none())
      yield* cache.loadRoster(row(1))
      expect(leafOf(yield* cache.rosterHint("g1" as GroupId))).toEqual(Option.some(1))
      // After a restart, the one kept on disk, whatever bytes the group holds now.
      const restarted = GroupStateCache.make(countingCrypto().crypto, 100, { stored })
      expect(leafOf(yield* restarted.rosterHint("g1" as GroupId))).toEqual(Option.some(1))
      // A damaged or unreadable store is only a missing hint.
      const failing = GroupStateCache.make(crypto, 100, {
        stored: { get: () => Effect.fail(new StorageError({ operation: "rosters.get", detail: "disk I/O error" })), put: () => Effect.void }
      })
      expect(yield* failing.rosterHint("g1" as GroupId)).toEqual(Option.none())
    }))

  it.effect("a roster outlives received application messages: same epoch authenticator, no read, write or decode; a commit, or our removal, makes it read again", () =>
    Effect.gen(function*() {
      const reads: Array<string> = []
      const writes: Array<string> = []
      const stored: RosterRepository = {
        get: (groupId) => Effect.sync(() => (reads.push(groupId), Option.none())),
        put: (roster) => Effect.sync(() => void writes.push(roster.groupId))
      }
      const { crypto, decoded } = countingCrypto()
      // Byte 0 is the epoch (and the leaf, the settings); byte 1 moves with every received message.
      const withAuthenticator = {
        ...crypto,
        view: (state: MlsGroupState) => ({
          ...crypto.view(state),
          epochAuthenticator: `epoch ${(state as unknown as { bytes: Uint8Array }).bytes[0]}`,
          // Byte 2 set: a commit removed us (ts-mls keeps the key schedule, so the same authenticator).
          active: (state as unknown as { bytes: Uint8Array }).bytes[2] === 0
        })
      } as unknown as MlsCrypto["Type"]
      const cache = GroupStateCache.make(withAuthenticator, 1000, { stored })
      const stateOf = (epoch: number, received: number) => ({ bytes: Uint8Array.of(epoch, received, 0, 0) }) as unknown as MlsGroupState
      const stored1 = { id: "g1" as GroupId, mlsState: cache.encodeState("g1" as GroupId, stateOf(4, 0)) } as unknown as StoredGroup
      expect((yield* cache.loadRoster(stored1)).members[0]!.leafIndex).toBe(4)
      expect([reads.length, writes.length]).toEqual([1, 1])

      // A page of application messages: new bytes, same epoch. Its state is kept as it is stored.
      const afterMessages = { ...stored1, mlsState: cache.encodeState("g1" as GroupId, stateOf(4, 9)) } as StoredGroup
      expect((yield* cache.loadRoster(afterMessages)).members[0]!.leafIndex).toBe(4)
      expect([reads.length, writes.length]).toEqual([1, 1])

      // A commit: a new epoch, so a new authenticator: read from the state again, and kept.
      const afterCommit = { ...stored1, mlsState: cache.encodeState("g1" as GroupId, stateOf(5, 0)) } as StoredGroup
      expect((yield* cache.loadRoster(afterCommit)).members[0]!.leafIndex).toBe(5)
      expect([reads.length, writes.length]).toEqual([2, 2])

      // A commit that removed us: the same authenticator, but not carried over (read again, and kept).
      const removed = { ...stored1, mlsState: cache.encodeState("g1" as GroupId, { bytes: Uint8Array.of(5, 0, 1, 0) } as unknown as MlsGroupState) } as StoredGroup
      yield* cache.loadRoster(removed)
      expect([reads.length, writes.length]).toEqual([3, 3])
      expect(decoded).toEqual([])
    }))
})
