/**
 * Attacks on the identity face of `converge serve` (XMTP V3, gRPC): a publish to a long inbox
 * log must not cost the server a replay of the whole log each time, nor hold its event loop;
 * and an update whose protobuf oneofs name two members must not be verified as one thing and
 * served to libxmtp and node-go (which read the last member) as another.
 */
import { SqliteClient } from "@effect/sql-sqlite-node"
import { describe, expect, it, layer } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { monitorEventLoopDelay } from "node:perf_hooks"
import { layerSqlite } from "../src/layers/SqlDeliveryStore.ts"
import { inboxIdOf, replay } from "../src/xmtp/Associations.ts"
import { prefixDigests, VerifiedStates } from "../src/xmtp/XmtpIdentityApi.ts"
import { codecs } from "../src/xmtp/Proto.ts"
import * as XmtpStore from "../src/xmtp/XmtpStore.ts"
import type { Installation, Wallet } from "./support/XmtpHarness.ts"
import * as XmtpHarness from "./support/XmtpHarness.ts"
import { call, newInstallation, newWallet, nowNs, refusal, registration, signUpdate, Xmtp } from "./support/XmtpHarness.ts"

const INVALID_ARGUMENT = 3

// ---- two servers on one SQLite store, and the store itself ----

class Servers extends Context.Tag("test/XmtpIdentityServers")<Servers, {
  readonly a: XmtpHarness.Xmtp
  readonly b: XmtpHarness.Xmtp
  readonly store: XmtpStore.XmtpStore["Type"]
}>() {}

/** Two servers (each with its own verified-state cache) on one store, as two `converge serve` on one database. */
const servers = Layer.scoped(
  Servers,
  Effect.gen(function*() {
    const dir = yield* Effect.acquireRelease(
      Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "converge-xmtp-identity-"))),
      (d) => Effect.sync(() => fs.rmSync(d, { recursive: true, force: true }))
    )
    const storeLayer = XmtpStore.layer.pipe(
      Layer.provideMerge(layerSqlite),
      Layer.provide(SqliteClient.layer({ filename: path.join(dir, "ds.sqlite") }))
    )
    const context = yield* Layer.build(storeLayer).pipe(Effect.orDie)
    const a = yield* XmtpHarness.serverOn(Layer.succeedContext(context))
    const b = yield* XmtpHarness.serverOn(Layer.succeedContext(context))
    return { a, b, store: Context.get(context, XmtpStore.XmtpStore) }
  })
)

// ---- long logs, written straight to the store ----

const erc191 = (wallet: Wallet, text: string) => ({ erc191: { bytes: wallet.sign(text) } })

/** An update of `inboxId` at `atNs` adding each of `wallets` (the same one repeated, or distinct ones), signed by `owner`. */
const linking = (inboxId: string, atNs: bigint, owner: Wallet, wallets: ReadonlyArray<Wallet>) =>
  signUpdate(
    {
      inboxId,
      clientTimestampNs: String(atNs),
      actions: wallets.map((w) => ({ add: { newMemberIdentifier: { ethereumAddress: w.address } } }))
    },
    (text) => {
      const existingMemberSignature = erc191(owner, text)
      return wallets.map((w) => ({
        add: { newMemberIdentifier: { ethereumAddress: w.address }, existingMemberSignature, newMemberSignature: erc191(w, text) }
      }))
    }
  )

/**
 * An inbox whose log is `entries` long (node-go's limit is 256): a CreateInbox, then updates of
 * 16 actions each (the most one update may have) made by `members(i)`. Written straight to the
 * store: the server would take each of them, but a test need not wait for it.
 */
const longInbox = (store: XmtpStore.XmtpStore["Type"], entries: number, members: (owner: Wallet) => ReadonlyArray<Wallet>) =>
  Effect.gen(function*() {
    const owner = newWallet()
    const inboxId = inboxIdOf(owner.address, 0n)
    const base = BigInt(Date.now() - 3_600_000) * 1_000_000n
    const create = { initialIdentifier: owner.address, nonce: "0", initialIdentifierKind: 1 }
    const first = signUpdate({ inboxId, clientTimestampNs: String(base), actions: [{ createInbox: create }] }, (text) => [
      { createInbox: { ...create, initialIdentifierSignature: erc191(owner, text) } }
    ])
    const wallets = members(owner)
    const updates = [first, ...Array.from({ length: entries - 1 }, (_, i) => linking(inboxId, base + BigInt(i + 1) * 1_000_000_000n, owner, wallets))]
    const decoded = updates.map((u) => codecs.identityUpdate.fromPartial(u))
    for (const [i, update] of decoded.entries()) {
      const done = yield* store.appendIdentity(inboxId, BigInt(i), codecs.identityUpdate.encode(update).finish(), 256, { added: [], revoked: [] })
      expect(done._tag).toBe("Appended")
    }
    return { inboxId, owner, decoded }
  }).pipe(Effect.orDie)

/** The tester's log: every update links the same second wallet 16 times with the same two signatures (valid before this fix). */
const repetitiveInbox = (store: XmtpStore.XmtpStore["Type"], entries: number) => {
  const other = newWallet()
  return longInbox(store, entries, () => Array(16).fill(other))
}

/** Every update links 16 distinct wallets: 17 distinct signatures to recover an entry, whatever is shared. */
const costlyInbox = (store: XmtpStore.XmtpStore["Type"], entries: number) => {
  const wallets = Array.from({ length: 16 }, newWallet)
  return longInbox(store, entries, () => wallets)
}

/** The longest the event loop was held while `effect` ran, and how long it took. */
const timed = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const histogram = monitorEventLoopDelay({ resolution: 10 })
    histogram.enable()
    const started = performance.now()
    const result = yield* effect
    const millis = performance.now() - started
    histogram.disable()
    return { result, millis, stallMillis: histogram.max / 1e6 }
  })

/** `newcomer` asks to join `inboxId`, vouched for by `voucher` (an installation or a wallet), who may not be a member. */
const vouchedAddition = (inboxId: string, newcomer: Wallet, voucher: { readonly installation: Installation } | { readonly wallet: Wallet }) => {
  const member = { ethereumAddress: newcomer.address }
  return signUpdate({ inboxId, clientTimestampNs: nowNs(), actions: [{ add: { newMemberIdentifier: member } }] }, (text) => [{
    add: {
      newMemberIdentifier: member,
      existingMemberSignature: "installation" in voucher
        ? { installationKey: { bytes: voucher.installation.sign(text), publicKey: voucher.installation.publicKey } }
        : erc191(voucher.wallet, text),
      newMemberSignature: erc191(newcomer, text)
    }
  }])
}

const publish = (server: XmtpHarness.Xmtp, update: unknown) => call(server.identity, "PublishIdentityUpdate", { identityUpdate: update })
const refusedPublish = (server: XmtpHarness.Xmtp, update: unknown) => refusal(server.identity, "PublishIdentityUpdate", { identityUpdate: update })

layer(servers, { excludeTestServices: true })("XMTP identity attack: a publish to a long log", (it) => {
  it.effect("a 100-byte PublishIdentityUpdate to a long inbox log does not hold the event loop for seconds", () =>
    Effect.gen(function*() {
      const { a, store } = yield* Servers
      const { inboxId, decoded } = yield* repetitiveInbox(store, 255)
      // Each entry applies on the one before: the server itself would have taken them.
      expect((yield* replay(decoded))?.inboxId).toBe(inboxId)
      // The attacker's request: no actions, no signature. Nothing the log holds could make it valid.
      const junk = { inboxId, clientTimestampNs: "1", actions: [] }
      const { result, stallMillis } = yield* timed(refusedPublish(a, junk))
      expect(result).toEqual({ code: INVALID_ARGUMENT, details: "invalid identity update: an update with no actions" })
      expect(stallMillis).toBeLessThan(1000)
    }), { timeout: 240_000 })

  it.effect("an update only the log refutes is answered after a replay that leaves the event loop free, and the next at once", () =>
    Effect.gen(function*() {
      const { a, store } = yield* Servers
      // 120 entries of 17 distinct signatures each: seconds of recoveries, on a cold cache.
      const { inboxId, owner } = yield* costlyInbox(store, 120)
      const notAMember = "invalid identity update: add: not signed by a member of the inbox or its recovery address"
      const cold = yield* timed(refusedPublish(a, vouchedAddition(inboxId, newWallet(), { wallet: newWallet() })))
      expect(cold.result).toEqual({ code: INVALID_ARGUMENT, details: notAMember })
      expect(cold.stallMillis).toBeLessThan(1000)
      // The server kept the state it verified: the log is not replayed again.
      const warm = yield* timed(refusedPublish(a, vouchedAddition(inboxId, newWallet(), { wallet: newWallet() })))
      expect(warm.result).toEqual({ code: INVALID_ARGUMENT, details: notAMember })
      expect(warm.millis).toBeLessThan(Math.min(500, cold.millis / 5))
      // And a valid update on top of it is taken.
      yield* publish(a, vouchedAddition(inboxId, newWallet(), { wallet: owner }))
      const log = yield* call(a.identity, "GetIdentityUpdates", { requests: [{ inboxId, sequenceId: 120 }] })
      expect(log.responses[0].updates.map((u: any) => u.sequenceId.toString())).toEqual(["121"])
    }), { timeout: 240_000 })

  it.effect("a state one server verified is not used once the other server extended the log", () =>
    Effect.gen(function*() {
      const { a, b } = yield* Servers
      const alice = newWallet()
      const { inboxId, update } = registration(alice, newInstallation())
      yield* publish(a, update)
      // Server a knows the log of one entry. Through b, alice adds a tablet ...
      const tablet = newInstallation()
      const member = { installationPublicKey: tablet.publicKey }
      yield* publish(
        b,
        signUpdate({ inboxId, clientTimestampNs: nowNs(), actions: [{ add: { newMemberIdentifier: member } }] }, (text) => [{
          add: {
            newMemberIdentifier: member,
            existingMemberSignature: erc191(alice, text),
            newMemberSignature: { installationKey: { bytes: tablet.sign(text), publicKey: tablet.publicKey } }
          }
        }])
      )
      // ... so a takes the tablet as a member, which its state of one entry would refuse.
      yield* publish(a, vouchedAddition(inboxId, newWallet(), { installation: tablet }))
      // Through b, alice revokes the tablet: a must no longer take it, as its state of three entries would.
      yield* publish(
        b,
        signUpdate({ inboxId, clientTimestampNs: nowNs(), actions: [{ revoke: { memberToRevoke: member } }] }, (text) => [{
          revoke: { memberToRevoke: member, recoveryIdentifierSignature: erc191(alice, text) }
        }])
      )
      const answer = yield* refusedPublish(a, vouchedAddition(inboxId, newWallet(), { installation: tablet }))
      expect(answer).toEqual({
        code: INVALID_ARGUMENT,
        details: "invalid identity update: add: not signed by a member of the inbox or its recovery address"
      })
    }))
})

describe("XMTP identity attack: the verified states a server keeps", () => {
  const state = (members: number) => ({
    inboxId: "a".repeat(64),
    members: new Map(Array.from({ length: members }, (_, i) => [`eth:${i}`, { key: `eth:${i}`, kind: "ethereum" as const, addedBy: undefined }])),
    recovery: "0x",
    seen: new Set<string>()
  })
  const digestsOf = (...bodies: ReadonlyArray<number>) => prefixDigests(bodies.map((b) => new Uint8Array([b])))

  it("a state serves only the log it was verified on, and a longer log from where it stops", () => {
    const log = digestsOf(1, 2)
    const otherLog = digestsOf(1, 3)
    const cache = new VerifiedStates()
    const kept = { length: 2, digest: log[2]!, state: state(1) }
    cache.keep("inbox", kept)
    expect(cache.from("inbox", log)).toBe(kept)
    expect(cache.from("inbox", [...log, "longer"])).toBe(kept)
    // Another log of the same length, a shorter one, another inbox: replayed from the start.
    for (const [inbox, digests] of [["inbox", otherLog], ["inbox", log.slice(0, 2)], ["other", log]] as const) {
      expect(cache.from(inbox, digests)).toEqual({ length: 0, digest: "", state: undefined })
    }
  })

  it("it keeps at most its capacity of inboxes and its budget of members, the least recently used going first", () => {
    const log = digestsOf(1, 2)
    const cache = new VerifiedStates(2, 100)
    const entry = (members: number) => ({ length: 2, digest: log[2]!, state: state(members) })
    cache.keep("one", entry(1))
    cache.keep("two", entry(1))
    cache.from("one", log)
    cache.keep("three", entry(1))
    expect([cache.size, cache.from("two", log).length, cache.from("one", log).length]).toEqual([2, 0, 2])
    // 60 + 60 members are over the budget of 100: the older goes; a state over the budget alone is not kept.
    cache.keep("four", entry(60))
    cache.keep("five", entry(60))
    cache.keep("six", entry(200))
    expect(["one", "three", "four", "five", "six"].map((inbox) => cache.from(inbox, log).length)).toEqual([0, 0, 0, 2, 0])
  })
})

// ---- oneofs: the server read the first member set, protobuf readers (prost, Go) the last ----

layer(XmtpHarness.layer())("XMTP identity attack: updates with two members of one oneof", (it) => {
  /** An inbox of `owner` with one installation, and a check that nothing was added to its log. */
  const inbox = (owner: Wallet) =>
    Effect.gen(function*() {
      const server = yield* Xmtp
      const { inboxId, update } = registration(owner, newInstallation())
      yield* publish(server, update)
      const storedAfterwards = call(server.identity, "GetIdentityUpdates", { requests: [{ inboxId, sequenceId: 1 }] }).pipe(
        Effect.map((log) => log.responses[0].updates.length as number)
      )
      return { server, inboxId, storedAfterwards }
    })

  /** `owner` links `second` to the inbox; `forge` rewrites the signed action before it is sent. */
  const forgedLink = (inboxId: string, owner: Wallet, second: Wallet, forge: (add: Record<string, unknown>) => Record<string, unknown>) => {
    const member = { ethereumAddress: second.address }
    return signUpdate({ inboxId, clientTimestampNs: nowNs(), actions: [{ add: { newMemberIdentifier: member } }] }, (text) => [
      forge({ newMemberIdentifier: member, existingMemberSignature: erc191(owner, text), newMemberSignature: erc191(second, text) })
    ])
  }

  it.effect("an add whose new member names both an address and an installation key is refused, not stored", () =>
    Effect.gen(function*() {
      const owner = newWallet()
      const { server, inboxId, storedAfterwards } = yield* inbox(owner)
      // Verified as "link address <second>", but field 2 (installation_public_key) comes last on the wire:
      // libxmtp and node-go would read "grant messaging access to app <stranger>".
      const stranger = newInstallation()
      const forged = forgedLink(inboxId, owner, newWallet(), (add) => ({
        add: { ...add, newMemberIdentifier: { ...(add.newMemberIdentifier as object), installationPublicKey: stranger.publicKey } }
      }))
      const answer = yield* refusedPublish(server, forged)
      expect({ ...answer, stored: yield* storedAfterwards }).toEqual({
        code: INVALID_ARGUMENT,
        details: "invalid identity update: actions[0].add.new_member_identifier sets ethereum_address and installation_public_key, " +
          "members of one oneof: at most one may be set",
        stored: 0
      })
    }))

  it.effect("an action that is both an add and a revoke is refused, not stored", () =>
    Effect.gen(function*() {
      const owner = newWallet()
      const { server, inboxId, storedAfterwards } = yield* inbox(owner)
      // Verified as the add; a Go reader sees the revoke (field 3, after the add's field 2) of the owner.
      const forged = forgedLink(inboxId, owner, newWallet(), (add) => ({
        add,
        revoke: { memberToRevoke: { ethereumAddress: owner.address }, recoveryIdentifierSignature: add.existingMemberSignature }
      }))
      const answer = yield* refusedPublish(server, forged)
      expect({ code: answer.code, details: answer.details, stored: yield* storedAfterwards }).toEqual({
        code: INVALID_ARGUMENT,
        details: expect.stringContaining("actions[0] sets add and revoke, members of one oneof"),
        stored: 0
      })
    }))

  it.effect("a signature that is both an ERC-191 and an installation key signature is refused, not stored", () =>
    Effect.gen(function*() {
      const owner = newWallet()
      const { server, inboxId, storedAfterwards } = yield* inbox(owner)
      // Verified as the owner's ERC-191 signature; a Go reader sees an installation key signature (field 3) of anyone's.
      const stranger = newInstallation()
      const forged = forgedLink(inboxId, owner, newWallet(), (add) => ({
        add: {
          ...add,
          existingMemberSignature: {
            ...(add.existingMemberSignature as object),
            installationKey: { bytes: stranger.sign("anything"), publicKey: stranger.publicKey }
          }
        }
      }))
      const answer = yield* refusedPublish(server, forged)
      expect({ code: answer.code, details: answer.details, stored: yield* storedAfterwards }).toEqual({
        code: INVALID_ARGUMENT,
        details: expect.stringContaining("actions[0].add.existing_member_signature sets erc_191 and installation_key"),
        stored: 0
      })
    }))

  it.effect("an update naming one action twice is refused, not stored: it only multiplies the signature checks", () =>
    Effect.gen(function*() {
      const owner = newWallet()
      const { server, inboxId, storedAfterwards } = yield* inbox(owner)
      const twice = linking(inboxId, BigInt(nowNs()), owner, Array(2).fill(newWallet()))
      const answer = yield* refusedPublish(server, twice)
      expect({ ...answer, stored: yield* storedAfterwards }).toEqual({
        code: INVALID_ARGUMENT,
        details: "invalid identity update: actions[0] and actions[1] are the same action",
        stored: 0
      })
    }))
})
