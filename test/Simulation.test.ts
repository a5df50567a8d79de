/**
 * The deterministic simulation inside `npm test`: a fixed set of seeds must show no violation,
 * plus the histories the simulation found bugs with, kept as regression tests (both as the
 * seed that found them and as a minimal scenario).
 */
import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Either, Exit, Option, Schema } from "effect"
import * as IdentityLog from "../src/domain/IdentityLog.ts"
import type { ConversationId, InstallationId } from "../src/domain/Ids.ts"
import { WelcomeMessageInput, WelcomePayloadJson } from "../src/domain/Wire.ts"
import * as Simulation from "../src/simulation/Simulation.ts"
import { simulatedCrashOf, type TestClient, TestNetwork } from "../src/testing.ts"

/**
 * Fixed parameters of the seed set: 5 inboxes (some with a second installation), 30 operations
 * of the full generator (DMs, leaving, devices coming and going), about 0.8 s a seed.
 */
const FIXED = { clients: 5, ops: 30 }
const SEEDS = Array.from({ length: 50 }, (_, i) => i + 1)
/** The generator the first regression seeds were found with: they replay with it. */
const CLASSIC = { profile: "classic" } as const

const runSeed = (params: Simulation.Plan.Params) =>
  Simulation.run(params).pipe(
    Effect.tap((report) =>
      Effect.sync(() => {
        // On failure the message carries the violations and the whole trace.
        expect(report.violations, Simulation.Report.format(report)).toEqual([])
        // The adversaries (a lying delivery service, a malicious member) come on top of the planned operations.
        expect(report.figures.operations).toBeGreaterThanOrEqual(params.ops)
      })
    )
  )

const fast = { installationCheckInterval: "0 millis" } as const

/** Publishes a RevokeInstallation of `device`, signed with its inbox's root key. */
const revoke = (net: TestNetwork, device: TestClient) =>
  Effect.gen(function*() {
    const [log] = yield* net.delivery.getIdentityUpdates([{ inboxId: device.inboxId, afterSequence: 0 }])
    const state = Option.getOrThrow(Either.getOrThrow(IdentityLog.replay(log!.updates.map((u) => u.update))))
    yield* net.delivery.publishIdentityUpdate(
      IdentityLog.signUpdate(device.rootSecretKey!, device.inboxId, state, {
        _tag: "RevokeInstallation",
        installationId: device.installationId as InstallationId
      })
    )
  })

const texts = (client: TestClient, id: ConversationId) =>
  client.conversation(id).pipe(
    Effect.flatMap((c) => c.messages()),
    Effect.map((ms) => ms.filter((m) => m.kind === "text").map((m) => m.text))
  )

describe("simulation: planning", () => {
  it("a seed plans the same history every time, and another seed another one", () => {
    for (const profile of ["classic", "full"] as const) {
      const a = Simulation.Plan.plan({ seed: 7, clients: 5, ops: 80, profile })
      expect(Simulation.Plan.plan({ seed: 7, clients: 5, ops: 80, profile })).toEqual(a)
      expect(Simulation.Plan.plan({ seed: 8, clients: 5, ops: 80, profile })).not.toEqual(a)
      // The adversaries (a lying delivery service, a malicious member) and the messaging operations
      // come on top of the planned operations.
      expect(a.filter((op) => op._tag !== "LieKeyPackages" && op._tag !== "ForgeCommit" && op._tag !== "Messaging")).toHaveLength(80)
      // Second installations from the start come first, then the first group.
      expect(a.find((op) => op._tag !== "AddDevice")?._tag).toBe("CreateGroup")
    }
  })

  it("the classic generator plans exactly what it planned when its regression seeds were found", () => {
    const ops = Simulation.Plan.plan({ seed: 2, clients: 5, ops: 60, ...CLASSIC })
    expect(ops.slice(0, 6).map((op) => Simulation.Plan.describe(op))).toEqual([
      "c0 createGroup g0 with [c1]",
      "c0 send g0 \"m0-c0\"",
      "c0 add [c3] to g0",
      "c3 syncAll",
      "crash: arm c2 at sync.midPage",
      "c1 syncAll"
    ])
  })

  it("installations: the first of each inbox, then each registered device, named after its inbox", () => {
    const params = { seed: 11, clients: 5, ops: 300 }
    const ops = Simulation.Plan.plan(params)
    const installs = Simulation.Plan.installations(params, ops)
    expect(installs.slice(0, 5).map((i) => i.name)).toEqual(["c0", "c1", "c2", "c3", "c4"])
    for (const op of ops) {
      if (op._tag === "AddDevice") expect(installs[op.d]?.inbox).toBe(op.inbox)
      if (op._tag === "RevokeDevice") expect(op.d).toBeGreaterThanOrEqual(5)
    }
    expect(installs.length).toBeGreaterThan(5)
    expect(installs.length).toBeLessThanOrEqual(10)
  })

  it("the PRNG is seeded and stable across runs and machines", () => {
    const rng = Simulation.Prng.make(42)
    const first = Array.from({ length: 5 }, () => rng.int(1000))
    const again = Simulation.Prng.make(42)
    expect(Array.from({ length: 5 }, () => again.int(1000))).toEqual(first)
    expect(Array.from(Simulation.Prng.make(1).bytes(6))).toEqual(Array.from(Simulation.Prng.make(1).bytes(6)))
  })

  it("plans mix actions, faults, crashes and hostile input", () => {
    const ops = SEEDS.flatMap((seed) => Simulation.Plan.plan({ seed, ...FIXED }))
    const kinds = new Set(ops.flatMap((op) => [op._tag, ...Simulation.Plan.actionsOf(op).map((a) => a._tag)]))
    for (const kind of ["Send", "SendOptimistic", "CreateGroup", "Add", "Remove", "UpdateKeys", "Sync", "SyncAll", "Restart", "Race", "Drop", "LoseResponse", "Partition", "Duplicate", "Crash", "InjectGarbage", "ForgeWelcome", "Leave", "Dm", "SendDm", "AddDevice", "RevokeDevice", "Messaging"]) {
      expect(kinds.has(kind as never), kind).toBe(true)
    }
    const messaging = new Set(ops.flatMap((op) => (op._tag === "Messaging" ? [op.op._tag] : [])))
    expect([...messaging].sort()).toEqual(["DeleteMessage", "SendContent", "SendDirect"])
    // Both sides of a DM creating it at once.
    expect(ops.some((op) => op._tag === "Race" && op.actions.every((a) => a._tag === "Dm"))).toBe(true)
  })
})

describe("test kit: crash points", () => {
  it.live("an armed crash point dies once with a SimulatedCrash; the client restarts from its database", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = [yield* net.client("alice"), yield* net.client("bob")]
      const group = yield* alice.createGroup([bob.inboxId])
      yield* net.crashAt(alice, "publish.afterWriteAheadBeforeSend")
      const crashed = yield* Effect.exit(group.send("survives the crash"))
      expect(Exit.isFailure(crashed) && simulatedCrashOf(crashed.cause)?.point).toBe("publish.afterWriteAheadBeforeSend")
      expect((yield* net.crashLog).map((c) => `${c.client}@${c.point}`)).toEqual(["alice@publish.afterWriteAheadBeforeSend"])
      yield* net.restart(alice)
      // Fired once: the same step now goes through, and the write-ahead is re-sent as it was.
      yield* (yield* alice.conversation(group.id)).publishPending
      yield* bob.syncAll
      expect(yield* texts(bob, group.id)).toEqual(["survives the crash"])
      const storage = yield* net.storage(alice)
      expect(yield* storage.intents.byState(["ToPublish", "Published", "Committed"])).toEqual([])
      expect(yield* net.disarmCrashes).toBe(0)
    })))

  it.live("a crash in the middle of a page rolls the page back; after a restart it is applied once", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = [yield* net.client("alice"), yield* net.client("bob")]
      const group = yield* alice.createGroup([bob.inboxId])
      yield* group.send("one")
      yield* group.send("two")
      yield* net.crashAt(bob, "sync.midPage")
      const crashed = yield* Effect.exit(bob.syncAll)
      expect(Exit.isFailure(crashed) && Cause.isDie(crashed.cause)).toBe(true)
      yield* net.restart(bob)
      yield* bob.syncAll
      expect(yield* texts(bob, group.id)).toEqual(["one", "two"])
    })))
})

describe("simulation: fixed seeds", () => {
  for (const seed of SEEDS) {
    it.live(`seed ${seed} (${FIXED.clients} inboxes, ${FIXED.ops} operations) converges`, () => runSeed({ seed, ...FIXED }))
  }
})

/**
 * Governance in seeded histories: renames, role and policy changes and forged role grabs among
 * the classic operations and faults. Every member must read one settings per epoch, and no
 * super admin may appear that nobody made one.
 */
describe("simulation: governance", () => {
  for (const seed of [1, 2, 3, 4, 6, 7, 8, 9]) {
    it.live(`seed ${seed} (5 inboxes, 40 operations, governance) converges`, () =>
      Simulation.run({ seed, clients: 5, ops: 40, profile: "classic", governance: true }).pipe(
        Effect.tap((report) =>
          Effect.sync(() => {
            expect(report.violations, Simulation.Report.format(report)).toEqual([])
            const governed = report.trace.filter((t) => /renames|makes inbox|sets g|role grab|super admin of/.test(t.label))
            expect(governed.length).toBeGreaterThan(0)
          })
        )
      ))
  }
})

/**
 * Governance seeds that found bugs (`npm run simulate -- --governance`, 5 inboxes, 60 operations):
 * 5003, a re-add refused because the group was renamed while the member was out; 5010, a leaver
 * judging a plain member's removal of it as a policy violation; 6350, an old leave-request removal
 * striking again at a member re-added since; 6394, a revoked device stuck on a group only it knew
 * (and later a new phone left without history: its groupless sibling never read its own log);
 * 6613, a super admin whose leave became impossible when the other super admin went first (it
 * stayed pendingRemove forever; now every member voids the request at that epoch); 6664 and 6934,
 * a DM created by a device that crashed before publishing it and was then revoked.
 */
describe("simulation: governance regressions", () => {
  for (const seed of [5003, 5010, 6350, 6394, 6613, 6664, 6934]) {
    it.live(`seed ${seed} (5 inboxes, 60 operations, governance) converges`, () =>
      // Without the messaging operations and version bumps planned since: the histories that found these bugs.
      Simulation.run({ seed, clients: 5, ops: 60, governance: true, messaging: false, versionBumps: false }).pipe(
        Effect.tap((report) => Effect.sync(() => expect(report.violations, Simulation.Report.format(report)).toEqual([])))
      ))
  }
})

/**
 * Histories in which the simulation found bugs. Each is kept as the seed that found it and as
 * a minimal scenario of the same history.
 */
describe("simulation: regressions", () => {
  // The seeds below were found with the classic generator (one installation per inbox, groups
  // only) and replay with it.
  //
  // Seed 2 (5 clients, 60 ops): c1 removes c4 and adds it back before c4 has synced; c4 reads
  // the re-add welcome while its copy of the group is still active, ignores it, then processes
  // its removal and stays inactive for good.
  it.live("seed 2 (5 clients, 60 operations, classic)", () => runSeed({ seed: 2, clients: 5, ops: 60, ...CLASSIC }))

  // Seed 3 (5 clients, 60 ops): c0 is removed, re-added, and reads the topic (skipping what
  // follows its removal) before its welcome; the rejoin keeps the cursor past the messages
  // sent after the re-add, so it never stores them.
  it.live("seed 3 (5 clients, 60 operations, classic)", () => runSeed({ seed: 3, clients: 5, ops: 60, ...CLASSIC }))

  // Seed 52 (5 clients, 60 ops): two syncAll of c1 at once both join the same welcome; the
  // second insert of the group row fails and a StorageError reaches the caller.
  it.live("seed 52 (5 clients, 60 operations, classic)", () => runSeed({ seed: 52, clients: 5, ops: 60, ...CLASSIC }))

  // Seed 73 (5 clients, 60 ops): c2 is removed from g0 and re-added before it syncs; it ends
  // active at an old epoch, not a member, with the group marked maybeForked.
  it.live("seed 73 (5 clients, 60 operations, classic)", () => runSeed({ seed: 73, clients: 5, ops: 60, ...CLASSIC }))

  // Seed 94 (5 clients, 60 ops): c4 is removed and re-added twice without syncing in between;
  // it ends active at epoch 4 with the group marked maybeForked while the others are at 11.
  it.live("seed 94 (5 clients, 60 operations, classic)", () => runSeed({ seed: 94, clients: 5, ops: 60, ...CLASSIC }))

  it.live("two syncAll at once on one client join a welcome once, without an error", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = [yield* net.client("alice"), yield* net.client("bob")]
      const group = yield* alice.createGroup([bob.inboxId])
      const results = yield* Effect.all([Effect.exit(bob.syncAll), Effect.exit(bob.syncAll)], { concurrency: 2 })
      for (const exit of results) expect(Exit.isSuccess(exit), String(exit)).toBe(true)
      expect(yield* (yield* bob.conversation(group.id)).state).toBe("active")
    })))

  // Seeds 853 and 876 (5 clients, 60 ops): c0's message and c0's removal race; the message
  // lands after the removal commit. c0 skips it (inactive) and fails it; the others store it.
  it.live("seed 876 (5 clients, 60 operations, classic)", () => runSeed({ seed: 876, clients: 5, ops: 60, ...CLASSIC }))

  // Seed 40114 (full generator, messaging): c3 reacts in g0, is removed while offline, c0 deletes
  // the reaction, and a welcome takes c3 back past both; c3 cannot read a deletion from epochs it
  // was out of. The invariant (not the engine) was wrong: it counted only removals c3 had read.
  it.live("seed 40114 (5 inboxes, 60 operations, messaging)", () => runSeed({ seed: 40114, clients: 5, ops: 60 }))

  it.live("a message that lands just after its sender's removal: sender and members agree on it", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = [yield* net.client("alice"), yield* net.client("bob")]
      // Carol's removal lands between her write-ahead and her send: the interleaving of a race.
      let interleave: Effect.Effect<void, unknown> | undefined
      const carol = yield* net.client("carol", {
        crashPoint: (point) =>
          Effect.suspend(() => {
            const step = interleave
            if (point !== "publish.afterWriteAheadBeforeSend" || step === undefined) return Effect.void
            interleave = undefined
            return Effect.orDie(step)
          })
      })
      const group = yield* alice.createGroup([bob.inboxId, carol.inboxId])
      yield* bob.syncAll
      yield* carol.syncAll
      interleave = group.removeMembers([carol.inboxId])
      const sent = yield* Effect.either((yield* carol.conversation(group.id)).send("sent as I was removed"))
      yield* bob.syncAll
      const atBob = (yield* texts(bob, group.id)).includes("sent as I was removed")
      const atCarol = (yield* (yield* carol.conversation(group.id)).messages()).find((m) => m.text === "sent as I was removed")
      // Either it is sent (Carol was told so, Bob has it) or it failed (and nobody has it).
      expect({ sendSucceeded: sent._tag === "Right", carolSees: atCarol?.deliveryStatus, bobHasIt: atBob }).toEqual(
        atBob
          ? { sendSucceeded: true, carolSees: "published", bobHasIt: true }
          : { sendSucceeded: false, carolSees: "failed", bobHasIt: false }
      )
    })))

  it.live("removed and re-added before syncing: the member rejoins and reads what follows", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = [yield* net.client("alice"), yield* net.client("bob")]
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      yield* group.removeMembers([bob.inboxId])
      yield* group.addMembers([bob.inboxId])
      yield* group.send("after the re-add")
      // Bob has seen neither change: his welcome arrives while his copy is still active.
      yield* bob.syncAll
      yield* bob.syncAll
      const atBob = yield* bob.conversation(group.id)
      expect(yield* atBob.state).toBe("active")
      expect((yield* atBob.debugInfo).epoch).toBe((yield* group.debugInfo).epoch)
      expect(yield* texts(bob, group.id)).toEqual(["after the re-add"])
    })))

  it.live("removed, re-added, and the topic read before the welcome: nothing after the re-add is lost", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = [yield* net.client("alice"), yield* net.client("bob")]
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      yield* group.removeMembers([bob.inboxId])
      yield* group.addMembers([bob.inboxId])
      yield* group.send("after the re-add")
      // Bob reads the group topic first: his removal, then (inactive) skips the rest.
      yield* (yield* bob.conversation(group.id)).sync
      yield* bob.syncAll
      const atBob = yield* bob.conversation(group.id)
      expect(yield* atBob.state).toBe("active")
      expect(yield* texts(bob, group.id)).toEqual(["after the re-add"])
    })))

  it.live("an old welcome re-sent to a removed member does not make it active again", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = [yield* net.client("alice"), yield* net.client("bob")]
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      yield* group.removeMembers([bob.inboxId])
      yield* bob.syncAll
      expect(yield* (yield* bob.conversation(group.id)).state).toBe("inactive")
      // The strongest replayer holds the plaintext of Bob's first welcome (his adder, say), and
      // seals it again to Bob's current key package, re-encoded.
      const [first] = yield* net.inspect.welcomes(bob.installationId)
      const bobKeys = (yield* (yield* net.storage(bob)).keyPackages.list).map((k) => ({
        ref: k.ref,
        publicPackage: k.publicPackage,
        privatePackage: k.privatePackage
      }))
      const plain = (yield* net.crypto.openSealed(first!.payload, bobKeys)).plaintext
      const payload = Schema.decodeSync(WelcomePayloadJson)(new TextDecoder().decode(plain))
      const [current] = yield* net.delivery.fetchKeyPackages([bob.installationId])
      const replay = yield* net.crypto.sealToKeyPackage(
        current!.keyPackage!,
        new TextEncoder().encode(` ${Schema.encodeSync(WelcomePayloadJson)(payload)}`)
      )
      const intruder = yield* net.intruder
      yield* intruder.sendWelcomeMessages([WelcomeMessageInput.make({ installationId: bob.installationId, payload: replay })])
      yield* bob.syncAll
      yield* group.send("after the removal")
      yield* bob.syncAll
      expect(yield* (yield* bob.conversation(group.id)).state).toBe("inactive")
      expect(yield* texts(bob, group.id)).toEqual([])
    })))
})

/**
 * Histories the full generator (second installations, revocations, leaving, DMs) found bugs
 * with. Each is kept as the seed that found it and as a minimal scenario; they fail until the
 * engine is fixed.
 */
describe("simulation: regressions with devices, leaving and DMs", () => {
  // Seed 71 (5 inboxes, 30 ops): c0 creates g0 with c1, c2 (both its installations) and c4;
  // c2b is revoked (op 21) before c4 reads its welcome. The welcome lists c2b, no longer a
  // current installation, and Welcomes.join refuses the whole welcome as Unauthenticated: c4
  // never joins, although the members remove c2b on their next sync. (26 of seeds 1..200 at
  // 30 ops, among them fixed seeds 5, 23, 36, 42, 47; with 60 ops seeds 3, 5, 9, 10, ...)
  it.live("seed 71 (5 inboxes, 30 operations)", () => runSeed({ seed: 71, clients: 5, ops: 30 }))

  it.live("a welcome listing a device revoked since is still joined (the members remove the device)", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast)])
      const bob2 = yield* net.client("bob2", { ...fast, sameInboxAs: bob })
      // Adds both of Bob's installations; neither has read its welcome yet.
      const group = yield* alice.createGroup([bob.inboxId])
      yield* revoke(net, bob2)
      yield* alice.syncAll // removes bob2
      yield* group.send("for bob's remaining device")
      yield* bob.syncAll
      const atBob = yield* bob.conversation(group.id)
      expect(yield* atBob.state).toBe("active")
      expect(yield* texts(bob, group.id)).toEqual(["for bob's remaining device"])
    })))

  // Seed 181 (5 inboxes, 30 ops): c0b registers (op 6) and a member commits its addition to
  // g0; c0b is revoked (op 27) before c0 reads that commit. GroupSync.receivePage then finds a
  // leaf that is not a current installation ("commit adds unregistered installation") and
  // skips the commit: c0 stays at epoch 1, marks g0 maybeForked, and misses everything after
  // while still listing itself a member. (7 of seeds 1..200 at 30 ops, among them fixed seeds
  // 11 and 19; with 60 ops seeds 8, 11, 17, ...)
  it.live("seed 181 (5 inboxes, 30 operations)", () => runSeed({ seed: 181, clients: 5, ops: 30 }))

  it.live("a commit that added a device revoked since is still processed by a member that reads it late", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast), net.client("carol", fast)])
      const group = yield* alice.createGroup([bob.inboxId, carol.inboxId])
      yield* Effect.all([bob.syncAll, carol.syncAll])
      const bob2 = yield* net.client("bob2", { ...fast, sameInboxAs: bob })
      yield* alice.syncAll // commits the addition of bob2
      yield* revoke(net, bob2)
      yield* alice.syncAll // commits its removal
      yield* group.send("after both changes")
      // Carol reads both commits only now.
      yield* carol.syncAll
      const atCarol = yield* carol.conversation(group.id)
      const [mine, hers] = yield* Effect.all([group.debugInfo, atCarol.debugInfo])
      expect({ epoch: hers.epoch, forked: hers.maybeForked }).toEqual({ epoch: mine.epoch, forked: false })
      expect(yield* texts(carol, group.id)).toEqual(["after both changes"])
    })))

  // Seeds 27 and 78 (5 inboxes, 60 ops): a group of 5 leaves loses its first leaf, a device is
  // added into that blank leaf, then another installation is added. ts-mls 1.6.4's joinGroup
  // refused its welcome ("non-blank intermediate node must list leaf node in its
  // unmerged_leaves"): its join-time tree check compares whole unmerged_leaves lists along the
  // leaf's direct path, which trees ts-mls builds itself fail (RFC 9420 7.9.1 asks less). The
  // newcomer never joined. Fixed by joining through TsMlsWelcome, which checks the RFC's rule.
  it.live("seed 27 (5 inboxes, 60 operations)", () => runSeed({ seed: 27, clients: 5, ops: 60 }))

  it.live("remove the first of 5 leaves, add into its place, add one more: the last one joins and reads", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const cs: Array<TestClient> = []
      for (const name of ["x0", "x1", "x2", "x3", "x4", "x5", "x6"]) cs.push(yield* net.client(name))
      const [x0, x1, x2, x3, x4, x5, x6] = cs as [TestClient, TestClient, TestClient, TestClient, TestClient, TestClient, TestClient]
      const group = yield* x0.createGroup([x1.inboxId, x2.inboxId, x3.inboxId, x4.inboxId])
      // x0 names another super admin, or nobody could remove it (it is the group's last one).
      yield* group.setRole(x1.inboxId, "superAdmin")
      for (const x of [x1, x2, x3, x4]) yield* x.syncAll
      const at = (x: TestClient) => x.conversation(group.id)
      yield* (yield* at(x1)).removeMembers([x0.inboxId])
      for (const x of [x2, x3, x4]) yield* x.syncAll
      yield* (yield* at(x1)).addMembers([x5.inboxId])
      yield* x5.syncAll
      expect(yield* (yield* at(x5)).state).toBe("active")
      yield* x2.syncAll
      yield* (yield* at(x2)).addMembers([x6.inboxId])
      yield* x6.syncAll
      const atX6 = yield* at(x6)
      expect(yield* atX6.state).toBe("active")
      yield* (yield* at(x2)).send("welcome, x6")
      yield* x6.syncAll
      expect(yield* texts(x6, group.id)).toEqual(["welcome, x6"])
    })))

  // Seed 20060 (6 inboxes, 150 ops): c4 and c4b asked to leave g0; c4b then added c1 and c3 and
  // removed c0, the last member that had seen the request. c4 stayed pendingRemove forever.
  it.live("seed 20060 (6 inboxes, 150 operations)", () => runSeed({ seed: 20060, clients: 6, ops: 150 }))

  // Seed 20069 (6 inboxes, 150 ops): c0 and c0b, devices of one inbox that left, were the last
  // members of g0. c0b went inactive on its own; c0, cut off with its own leave request and a
  // message still to send, published both later, and c0b never stored the message.
  it.live("seed 20069 (6 inboxes, 150 operations)", () => runSeed({ seed: 20069, clients: 6, ops: 150 }))

  // Seed 67 (5 inboxes, 30 ops): c0, c4 and c3 all leave g0. c3's leave was accepted while
  // c0 was still a member; c3 then commits c0's removal itself and is the last member, with
  // nobody left to commit its own: g0 stays pendingRemove at c3 forever (with 60 ops, c3's
  // device registered later is never added either: checkInstallations only runs on active
  // groups). The same happens when two members of a group of two leave at once.
  it.live("seed 67 (5 inboxes, 30 operations)", () => runSeed({ seed: 67, clients: 5, ops: 30 }))

  it.live("both members of a group of two leave at once: neither stays pendingRemove", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast)])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      const atBob = yield* bob.conversation(group.id)
      // Both ask before seeing the other's request.
      yield* Effect.all([Effect.either(group.leave), Effect.either(atBob.leave)])
      for (let i = 0; i < 3; i++) yield* Effect.all([Effect.either(alice.syncAll), Effect.either(bob.syncAll)])
      expect([yield* group.state, yield* atBob.state]).not.toContain("pendingRemove")
    })))

  // Found by the simulation when it took a DM's MLS group for a group it had created:
  // `conversation(id)` decides the kind from the id's form, so a DM's underlying group id
  // (which the app sees in debugInfo.groupIds and Message.groupId) opens a "group" handle
  // whose leave, addMembers and removeMembers work: a third inbox can be added to a DM.
  it.live("a DM cannot be changed through the id of one of its groups", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast), net.client("carol", fast)])
      const dm = yield* alice.findOrCreateDm(bob.inboxId)
      const [groupId] = (yield* dm.debugInfo).groupIds
      const byGroupId = yield* Effect.either(alice.conversation(groupId as unknown as ConversationId))
      if (Either.isRight(byGroupId)) {
        const handle = byGroupId.right
        const tried = yield* Effect.all([
          Effect.flip(handle.addMembers([carol.inboxId])).pipe(Effect.map((e) => e._tag), Effect.orElseSucceed(() => "succeeded")),
          Effect.flip(handle.leave).pipe(Effect.map((e) => e._tag), Effect.orElseSucceed(() => "succeeded"))
        ])
        expect(tried).toEqual(["InvalidInput", "InvalidInput"])
      }
      yield* carol.syncAll
      expect(yield* carol.conversations({ includeInactive: true })).toEqual([])
      expect((yield* dm.members).map((m) => m.inboxId).sort()).toEqual([alice.inboxId, bob.inboxId].sort())
    })))

  // Found while checking transcripts: a revoked device that processes its own removal records
  // "inbox removed" (GroupSync.removedRow names the installation's inbox), although only the
  // device went and its inbox is still a member; the other members record no change for that
  // epoch, so the entry with id membershipChangeIdOf(group, epoch) is not the same everywhere.
  it.live("a revoked device's transcript does not say its inbox was removed", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast)])
      const bob2 = yield* net.client("bob2", { ...fast, sameInboxAs: bob })
      const group = yield* alice.createGroup([bob.inboxId])
      yield* Effect.all([bob.syncAll, bob2.syncAll])
      yield* revoke(net, bob2)
      yield* alice.syncAll
      yield* bob2.syncAll
      expect(yield* (yield* bob2.conversation(group.id)).state).toBe("inactive")
      const changes = (yield* (yield* bob2.conversation(group.id)).messages()).filter((m) => m.kind === "membershipChange")
      expect(changes.filter((m) => m.text.includes(`"removedInboxes":["${bob.inboxId}"]`))).toEqual([])
    })))

  // Found once the above were fixed (seeds 37, 76, 105, 212, 262 with 60 ops: a revoked device
  // stays active; 23, 86, 93: it also marks the group maybeForked). A member's installation
  // check removes the revoked device and adds a newly registered one in one commit; the new
  // leaf takes the freed slot. The removed device cannot process that commit: ts-mls 1.6.4
  // throws "InternalError: No overlap between provided private keys and update path" (it does
  // not see that the commit removed it, since its leaf is occupied again, and tries to decrypt
  // the update path), GroupSync skips the commit, and the device stays active at the old epoch
  // for good: it believes it is a member, its later sends land where nobody reads them, and
  // commits for later epochs mark the group maybeForked. Reached through
  // TsMlsCrypto.process on UpdateInstallations commits (Publisher.deriveInstallationUpdate is
  // the only intent that removes and adds in one commit).
  it.live("seed 37 (5 inboxes, 60 operations)", () => runSeed({ seed: 37, clients: 5, ops: 60 }))

  it.live("a device removed by a commit that also adds a device into its slot sees its removal", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast)])
      const alice2 = yield* net.client("alice2", { ...fast, sameInboxAs: alice })
      // alice2 holds leaf 0 (it created the group), then bob, then alice.
      const group = yield* alice2.createGroup([bob.inboxId])
      yield* Effect.all([alice.syncAll, bob.syncAll])
      yield* revoke(net, alice2)
      yield* net.client("bob2", { ...fast, sameInboxAs: bob })
      yield* bob.syncAll // one commit: remove alice2, add bob2 (into leaf 0)
      yield* alice2.syncAll
      expect(yield* (yield* alice2.conversation(group.id)).state).toBe("inactive")
    })))

  // Seed 181 (5 inboxes, 60 ops), since the fix "a lone pending-remove member goes inactive":
  // c4b asks to leave g0 while partitioned (the request stays queued); c2 leaves and c4, the
  // other device of c4b's inbox, commits c2's removal. When c4b syncs, it finds only its own
  // inbox left and goes inactive at once (GroupSync.receivePage), and publishPending then
  // fails its still unpublished leave request (inactive group): c4 never learns that its
  // inbox left and stays active, its new devices are added, while c4b is out. Leaving is per
  // inbox: both devices must end in the same state.
  it.live("seed 181 (5 inboxes, 60 operations)", () => runSeed({ seed: 181, clients: 5, ops: 60 }))

  it.live("a device goes inactive as the last one left only once its inbox's leave request is out", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice", fast), net.client("bob", fast)])
      const alice2 = yield* net.client("alice2", { ...fast, sameInboxAs: alice })
      const group = yield* bob.createGroup([alice.inboxId])
      yield* group.setRole(alice.inboxId, "superAdmin") // so that Bob, the creator, may leave
      yield* Effect.all([alice.syncAll, alice2.syncAll])
      // Alice asks to leave while offline: her request waits in her queue.
      yield* net.faults.partition(alice.installationId)
      yield* Effect.either((yield* alice.conversation(group.id)).leave)
      yield* group.leave // Bob leaves too; alice2 commits his removal.
      yield* alice2.syncAll
      yield* net.faults.heal(alice.installationId)
      for (let i = 0; i < 3; i++) for (const c of [alice, alice2, bob]) yield* Effect.either(c.syncAll)
      const states = yield* Effect.all([alice, alice2].map((c) => c.conversation(group.id).pipe(Effect.flatMap((cv) => cv.state))))
      expect(states).toEqual(["inactive", "inactive"])
    })))
})
