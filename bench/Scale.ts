/**
 * The scale goals of issue 16, through the public API of real clients (TestNetwork):
 * `syncAll` over many idle groups (in memory and over RPC on loopback), `conversations()` over
 * them, the latest 50 of a conversation of 100,000 stored messages, and adding one member to a
 * 100-member group and that member's welcome join. Sizes shrink with `BENCH_SCALE`.
 */
import { ed25519 } from "@noble/curves/ed25519.js"
import { Clock, Effect, Either, Option } from "effect"
import { spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import * as path from "node:path"
import { toHex } from "../src/domain/Bytes.ts"
import { messageIdOf } from "../src/domain/Content.ts"
import { encodeSettings } from "../src/domain/GroupSettings.ts"
import * as IdentityLog from "../src/domain/IdentityLog.ts"
import { GroupMetadata } from "../src/domain/Model.ts"
import type { ConversationId, GroupId, InboxId, InstallationId } from "../src/domain/Ids.ts"
import { serve as serveDelivery } from "../src/layers/DeliveryServer.ts"
import { DeliveryService } from "../src/services/DeliveryService.ts"
import type { Storage } from "../src/services/Storage.ts"
import { StoredGroup, StoredMessage } from "../src/domain/Stored.ts"
import { registerBareInbox, TestNetwork, type TestDelivery } from "../src/testing.ts"
import { progress } from "./Watchdog.ts"
import { rawGroup } from "./RawTsMls.ts"
import { verifyStrictAsync } from "../src/domain/Ed25519.ts"

const median = (samples: ReadonlyArray<number>) => {
  const sorted = [...samples].sort((a, b) => a - b)
  return sorted[Math.floor((sorted.length - 1) / 2)] ?? NaN
}

const time = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const start = performance.now()
    const value = yield* effect
    return [performance.now() - start, value] as const
  })

const samples = <A, E, R>(count: number, effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    yield* effect
    const out: Array<number> = []
    for (let i = 0; i < count; i++) out.push((yield* time(effect))[0])
    return median(out)
  })

const rssMiB = () => process.memoryUsage().rss / (1024 * 1024)

/**
 * Bob is in `groups` groups that Alice created (joined from welcomes in one syncAll). Then:
 * bob's idle syncAll, alice's conversations() sorted by last activity, and the process RSS
 * (both clients and the delivery service).
 */
export const manyGroups = (groups: number, delivery: TestDelivery) =>
  Effect.scoped(Effect.gen(function*() {
    const net = yield* TestNetwork.makeWith({ delivery })
    const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
    const rssBefore = rssMiB()
    yield* progress("clients up")
    const [setupMs] = yield* time(Effect.forEach(Array.from({ length: groups }), (_, i) =>
      alice.createGroup([bob.inboxId]).pipe(Effect.tap(() => i % 50 === 49 ? progress(`${i + 1} groups created`) : Effect.void)), {
      discard: true
    }))
    const joined = yield* bob.syncAll
    yield* progress(`joined ${joined.joined}`)
    // Idle from here; the periodic member-installation check is not due within the samples.
    yield* bob.syncAll
    const idleSyncAll = yield* samples(9, bob.syncAll)
    yield* progress("idle syncAll sampled")
    const conversations = yield* samples(9, alice.conversations())
    const listed = yield* alice.conversations()
    return {
      groups,
      joined: joined.joined,
      setupMs,
      idleSyncAll,
      conversations,
      listed: listed.length,
      rssMiB: rssMiB(),
      rssGrowthMiB: rssMiB() - rssBefore
    }
  }))

/**
 * `count` published texts of one conversation written straight into a client's database, in
 * transactions of 5,000, round-robin over its groups (one, or a stitched DM's several), 1 ms
 * apart from `base`: as a long history would lie there.
 */
const storeHistory = (
  storage: Storage["Type"],
  history: {
    readonly count: number
    readonly conversationId: ConversationId
    readonly groupIds: ReadonlyArray<GroupId>
    readonly senderInboxId: InboxId
    readonly base: bigint
  }
) =>
  Effect.gen(function*() {
    const { base, conversationId, count, groupIds, senderInboxId } = history
    const sender = "a".repeat(64) as InstallationId
    for (let from = 0; from < count; from += 5000) {
      const rows = Array.from({ length: Math.min(5000, count - from) }, (_, k) => {
        const i = from + k
        const groupId = groupIds[i % groupIds.length]!
        return StoredMessage.make({
          id: messageIdOf(groupId, sender, `n${i}`),
          groupId,
          conversationId,
          senderInboxId,
          senderInstallationId: sender,
          sentAtNs: base + BigInt(i) * 1_000_000n,
          sequenceId: BigInt(Math.floor(i / groupIds.length) + 10),
          kind: "text",
          content: `message ${i} ${"x".repeat(60)}`,
          membershipChange: null,
          deliveryStatus: "published",
          insertedAtNs: base
        })
      })
      yield* storage.transaction(storage.messages.insertMany(rows))
      yield* progress(`${from + rows.length} messages stored`)
    }
  })

/** Catch-ups of `batch` new messages timed into a store: alice queues and publishes, bob's syncAll is timed. */
const CATCH_UP_BATCH = 500
const CATCH_UP_ROUNDS = 3

/**
 * A conversation with `count` stored messages (written to Bob's database directly, as a long
 * history would be), then the latest 50 read through the API, then catch-ups of 500 new
 * messages into that store (ms a message, median of 3): what a store's size costs a received
 * page (each message enters the message-id index of `count` entries).
 */
export const latestOfMany = (count: number) =>
  Effect.scoped(Effect.gen(function*() {
    const net = yield* TestNetwork.make
    const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
    const conversation = yield* alice.createGroup([bob.inboxId])
    yield* bob.syncAll
    yield* progress("group joined")
    const storage = yield* net.storage(bob)
    const groupId = conversation.id as unknown as GroupId
    yield* storeHistory(storage, {
      count,
      conversationId: conversation.id as ConversationId,
      groupIds: [groupId],
      senderInboxId: alice.inboxId,
      base: 1_700_000_000_000_000_000n
    })
    const handle = yield* bob.conversation(conversation.id)
    const latest = yield* handle.messages({ limit: 50, direction: "desc" })
    if (latest.length !== 50 || latest[0]?.text.startsWith(`message ${count - 1} `) !== true) {
      console.log(`   (warning: the latest 50 are not the newest stored: ${latest[0]?.text.slice(0, 20)})`)
    }
    const latest50 = yield* samples(20, handle.messages({ limit: 50, direction: "desc" }))
    const catchUps: Array<number> = []
    for (let round = 0; round < CATCH_UP_ROUNDS; round++) {
      for (let i = 0; i < CATCH_UP_BATCH; i++) yield* conversation.sendOptimistic(`new ${round}.${i} ${"x".repeat(60)}`)
      yield* conversation.publishPending
      catchUps.push((yield* time(bob.syncAll))[0] / CATCH_UP_BATCH)
    }
    return { count, latest50, catchUpPerMessage: median(catchUps) }
  }))

/**
 * Alice's 100-member group (99 other inboxes, one installation each); she adds one more inbox
 * (create + confirm through the API), and the newcomer joins from the welcome in its syncAll.
 * Each round is paired with a raw ts-mls add round in a raw group of the same size, run right
 * before or after it (alternating), and the ratios are taken per pair: like with like, at the same
 * moment of the machine.
 */
export const largeGroup = (size: number, rounds: number) =>
  Effect.scoped(Effect.gen(function*() {
    const raw = yield* Effect.promise(() => rawGroup("native", size))
    const rawRound = Effect.promise(() => raw.addRound())
    const net = yield* TestNetwork.make
    const alice = yield* net.client("alice")
    const others = yield* Effect.forEach(Array.from({ length: size - 1 }), (_, i) => net.client(`member-${i}`), {
      concurrency: 4
    })
    yield* progress(`${size - 1} members up`)
    const conversation = yield* alice.createGroup(others.map((o) => o.inboxId))
    yield* progress("large group created")
    const adds: Array<number> = []
    const joins: Array<number> = []
    const addRatios: Array<number> = []
    const joinRatios: Array<number> = []
    const rawAdds: Array<number> = []
    const rawJoins: Array<number> = []
    for (let r = 0; r < rounds + 1; r++) {
      const newcomer = yield* net.client(`newcomer-${r}`)
      yield* progress(`round ${r}: newcomer up`)
      const rawBefore = r % 2 === 0 ? yield* rawRound : undefined
      const [add] = yield* time(conversation.addMembers([newcomer.inboxId]))
      yield* progress(`round ${r}: added`)
      const [join, joined] = yield* time(newcomer.syncAll)
      yield* progress(`round ${r}: joined`)
      const rawPair = rawBefore ?? (yield* rawRound)
      if (joined.joined !== 1) console.log(`   (warning: the newcomer joined ${joined.joined})`)
      // The first round warms up; the newcomer is removed again, so the group keeps its size.
      if (r > 0) {
        adds.push(add)
        joins.push(join)
        addRatios.push(add / (rawPair.commit + rawPair.commitProcess))
        joinRatios.push(join / rawPair.join)
        rawAdds.push(rawPair.commit + rawPair.commitProcess)
        rawJoins.push(rawPair.join)
      }
      yield* conversation.removeMembers([newcomer.inboxId])
      yield* progress(`round ${r}: removed`)
    }
    return { size, add: median(adds), join: median(joins), addRatio: median(addRatios), joinRatio: median(joinRatios),
      rawAdd: median(rawAdds), rawJoin: median(rawJoins) }
  }))

/** A member that never syncs (see `registerBareInbox`): its key package. */
const registerMember = (net: TestNetwork) =>
  registerBareInbox(net).pipe(Effect.map((inbox) => inbox.keyPackage))

/**
 * The measured client (Bob) in `groups` groups of `size` members, the other `size - 1` inboxes
 * (one installation each, `registerMember`) shared by all groups. Creating thousands of 100-member groups through
 * the API would seal and store a welcome per member per group (about 1 s a group here), so Bob's
 * groups are made directly with his keys: a real MLS group per id, his commit adding the others'
 * key packages (fetched from the delivery service), stored as the engine stores a group it
 * created. Nobody else holds these states; nothing is sent in them.
 *
 * Bob then runs one `syncAll` here (a client that has been running; it keeps each group's
 * roster), and his database is opened by a separate process (`ResidentClient.mjs`, the package
 * compiled to JavaScript) that talks to this process's delivery service over RPC on loopback:
 * Bob's restart. That process alone is measured: its first `syncAll`; reading every group (latest
 * 50 messages, members from the kept rosters, and settings, which decode each state through the
 * LRU bounded in bytes); its RSS and heap after a full GC; and its peak RSS. Building the groups
 * costs about 0.2-0.4 s of CPU per group (ts-mls verifies 99 key packages and seals 99 path
 * secrets and welcome secrets per commit): minutes at 1,000.
 */
export const manyLargeGroups = (groups: number, size: number) =>
  Effect.scoped(Effect.gen(function*() {
    const net = yield* TestNetwork.make
    const bob = yield* net.client("bob")
    const keyPackages = yield* Effect.forEach(Array.from({ length: size - 1 }), () => registerMember(net))
    yield* progress(`${size - 1} bare members registered`)
    const storage = yield* net.storage(bob)
    const crypto = net.crypto
    const me = Option.getOrThrow(yield* storage.identity.get)
    let stateBytes = 0
    const [setupMs] = yield* time(Effect.forEach(Array.from({ length: groups }), (_, i) =>
      Effect.gen(function*() {
        if (i % 5 === 0) yield* progress(`building group ${i + 1}`)
        const groupId = toHex(randomBytes(16)) as GroupId
        const own = yield* crypto.generateKeyPackage(
          { inboxId: me.inboxId, installationId: me.installationId },
          { publicKey: me.signaturePublicKey, privateKey: me.signaturePrivateKey }
        )
        const metadata = GroupMetadata.make({ ...GroupMetadata.none, superAdmins: [me.inboxId] })
        const created = yield* crypto.createGroup(groupId, own, encodeSettings(metadata))
        const { staged } = yield* crypto.createCommit(created, { add: keyPackages })
        const now = yield* Clock.currentTimeNanos
        const mlsState = crypto.serialize(staged)
        stateBytes = mlsState.length
        yield* storage.transaction(storage.groups.insert(StoredGroup.make({
          id: groupId,
          kind: "group",
          dmId: null,
          membershipState: "active",
          epoch: crypto.view(staged).epoch,
          mlsState,
          maybeForked: false,
          forkDetails: null,
          quarantine: null,
          name: null,
          description: null,
          addedByInboxId: me.inboxId,
          createdAtNs: now,
          lastMessageNs: now
        })))
      }), { discard: true }))
    // The running client's round before its restart (it keeps each group's roster).
    const [runningSyncMs] = yield* time(bob.syncAll)
    yield* progress("the running client synced")
    const address = yield* serveDelivery({ port: 0, host: "127.0.0.1" }).pipe(
      Effect.provideService(DeliveryService, net.delivery),
      Effect.orDie
    )
    yield* progress("serving over RPC")
    const entry = yield* compiledEntry
    yield* progress("package compiled")
    const child = yield* Effect.promise(() => runResidentClient(entry, bob.filename, address.url, []))
    yield* progress("resident client measured")
    // The same restart with V8's old space capped: what the peak is made of (garbage of decodes
    // not yet collected, or live data).
    const capped = yield* Effect.promise(() =>
      runResidentClient(entry, bob.filename, address.url, [`--max-old-space-size=${CAPPED_OLD_SPACE_MIB}`]))
    if (child.groups !== groups || child.members !== groups * size) {
      console.log(`   (warning: ${child.members} members over ${child.groups} groups, expected ${groups} x ${size})`)
    }
    return { size, stateBytes, setupMs, runningSyncMs, ...child, capped }
  }))

export interface ResidentClientRun {
  readonly groups: number
  readonly members: number
  readonly sync: { readonly wallMs: number; readonly cpuMs: number; readonly decodes: number }
  readonly read: { readonly wallMs: number; readonly cpuMs: number; readonly decodes: number }
  /** After loading the compiled package, before opening the client. */
  readonly loaded: { readonly rss: number; readonly heap: number }
  readonly opened: { readonly rss: number; readonly heap: number }
  readonly afterSync: { readonly rss: number; readonly heap: number }
  readonly afterRead: { readonly rss: number; readonly heap: number }
  readonly peakRss: number
}

const repo = path.resolve(import.meta.dirname, "..")

/**
 * The package compiled to JavaScript (`tsconfig.build.json` into `.tmp/`): a client process
 * measured under tsx would carry the loader's ~100 MiB of transpiled sources and source maps.
 */
const compiledEntry = Effect.promise(() =>
  new Promise<string>((resolve, reject) => {
    const outDir = path.join(repo, ".tmp", "resident-build")
    const tsc = spawn(process.execPath, [
      path.join(repo, "node_modules", "typescript", "bin", "tsc"),
      "-p", path.join(repo, "tsconfig.build.json"), "--outDir", outDir, "--declaration", "false"
    ], { stdio: ["ignore", "pipe", "pipe"] })
    let output = ""
    tsc.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()))
    tsc.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()))
    tsc.on("exit", (code) =>
      code === 0 ? resolve(path.join(outDir, "index.js")) : reject(new Error(`tsc exited with ${code}: ${output.slice(-2000)}`)))
  })
)

/** The old-space cap (MiB) of the second resident-client run. */
export const CAPPED_OLD_SPACE_MIB = 256

/** `ResidentClient.mjs` in its own Node process (with these V8 flags); its JSON report. */
const runResidentClient = (entry: string, filename: string, url: string, flags: ReadonlyArray<string>) =>
  new Promise<ResidentClientRun>((resolve, reject) => {
    const script = path.join(import.meta.dirname, "ResidentClient.mjs")
    const child = spawn(process.execPath, ["--expose-gc", ...flags, script, entry, filename, url], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, CONVERGE_LOG_LEVEL: "Error" }
    })
    let out = ""
    let err = ""
    child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (err += chunk.toString()))
    child.on("exit", (code) => {
      const line = out.trim().split("\n").at(-1) ?? ""
      if (code === 0 && line.startsWith("{")) resolve(JSON.parse(line) as ResidentClientRun)
      else reject(new Error(`ResidentClient exited with ${code}: ${err.slice(-2000)}`))
    })
  })

/**
 * A DM between Alice and Bob stitched over three groups (Alice, her second device and Bob start it
 * at once), with `count` messages spread over the three groups in Bob's database (written
 * directly, as a long history would be); then its latest 50 through the API.
 */
export const latestOfStitchedDm = (count: number) =>
  Effect.scoped(Effect.gen(function*() {
    const net = yield* TestNetwork.make
    const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
    const alice2 = yield* net.client("alice2", { sameInboxAs: alice })
    const [dm] = yield* Effect.all([
      alice.findOrCreateDm(bob.inboxId),
      alice2.findOrCreateDm(bob.inboxId),
      bob.findOrCreateDm(alice.inboxId)
    ], { concurrency: 3 })
    yield* progress("DM started at once by three")
    yield* bob.syncAll
    yield* progress("bob synced the DM")
    const handle = yield* bob.conversation(dm.id)
    const groupIds = (yield* handle.debugInfo).groupIds as unknown as ReadonlyArray<GroupId>
    if (groupIds.length !== 3) console.log(`   (warning: the DM has ${groupIds.length} groups at Bob, expected 3)`)
    const storage = yield* net.storage(bob)
    // After the DM's own first messages (who joined), so the newest 50 are these.
    yield* storeHistory(storage, {
      count,
      conversationId: dm.id as ConversationId,
      groupIds,
      senderInboxId: alice.inboxId,
      base: (yield* Clock.currentTimeNanos) + 1_000_000_000n
    })
    const latest = yield* handle.messages({ limit: 50, direction: "desc" })
    const groupsSeen = new Set(latest.map((m) => m.groupId)).size
    if (latest.length !== 50 || latest[0]?.text.startsWith(`message ${count - 1} `) !== true || groupsSeen !== groupIds.length) {
      console.log(`   (warning: the latest 50 of the DM are not the newest stored: ${latest[0]?.text.slice(0, 20)}, ${groupsSeen} groups)`)
    }
    return {
      count,
      groups: groupIds.length,
      latest50: yield* samples(20, handle.messages({ limit: 50, direction: "desc" }))
    }
  }))

/**
 * What a newcomer to a group of `inboxes` other inboxes must verify before trusting its tree, and
 * raw ts-mls's joinGroup does not: each inbox's log (create, add installation) with its three
 * Ed25519 signatures. The medians of `rounds` replays of all the logs, in ms: one by one, and with every
 * signature checked at once on the thread pool first (as the client's Identity does).
 */
export const identityLogVerification = async (inboxes: number, rounds: number) => {
  const logs = Array.from({ length: inboxes }, () => {
    const root = ed25519.utils.randomSecretKey()
    const installation = ed25519.utils.randomSecretKey()
    const inboxId = IdentityLog.inboxIdOf(ed25519.getPublicKey(root))
    const created = IdentityLog.signUpdate(root, inboxId, undefined, {
      _tag: "CreateInbox",
      rootPublicKey: toHex(ed25519.getPublicKey(root))
    })
    const head = Either.getOrThrow(IdentityLog.applyUpdate(undefined, created))
    const publicKey = ed25519.getPublicKey(installation)
    const added = IdentityLog.signUpdate(root, inboxId, head, {
      _tag: "AddInstallation",
      installationId: IdentityLog.installationIdOf(publicKey),
      signaturePublicKey: toHex(publicKey)
    }, installation)
    return [created, added]
  })
  const oneByOne: Array<number> = []
  const atOnce: Array<number> = []
  for (let r = 0; r < rounds + 1; r++) {
    let start = performance.now()
    for (const log of logs) Either.getOrThrow(IdentityLog.replay(log))
    if (r > 0) oneByOne.push(performance.now() - start)
    // As the client's Identity does it: every signature on the thread pool first, then the replay.
    start = performance.now()
    const checks = logs.flatMap((log) => IdentityLog.signatureChecksOf(undefined, log))
    const valid = await Promise.all(checks.map((c) => verifyStrictAsync(c.publicKey, c.message, c.signature)))
    const verify = IdentityLog.preverified(checks, valid)
    for (const log of logs) {
      let state: IdentityLog.InboxState | undefined
      for (const u of log) state = Either.getOrThrow(IdentityLog.applyUpdate(state, u, verify))
    }
    if (r > 0) atOnce.push(performance.now() - start)
  }
  return { oneByOne: median(oneByOne), atOnce: median(atOnce) }
}
