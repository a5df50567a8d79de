/**
 * `npm start`: a three-person story on embedded defaults, printed as a transcript and
 * checked step by step.
 *
 * It also shows how to compose the library as a user would:
 *
 *   a delivery server on a loopback port:  DeliveryServer.serve({ port: 0 })
 *     <- DeliveryService.layerStore()              verifies identities and key packages
 *     <- DeliveryStore.layerSqlite                 over its own SQLite file
 *   Client.layer()                                 needs  DeliveryService | MlsCrypto | SqlClient
 *     <- SqliteConnection.layer({ filename })      one database file per client (its SQLite store)
 *     <- DeliveryService.layerRpc({ url })         its own connection to the server
 *     <- MlsCrypto.layer()                         ts-mls, shared
 *
 * Everything is built in one scope: closing it closes the connections, the server and the
 * databases, and the temporary folder is removed after that.
 *
 * Exit code 0 only if every check held and nothing failed.
 */
import { Cause, Context, Duration, Effect, Exit, Layer, Logger, LogLevel, Option } from "effect"
import { deliveryLayer } from "../src/cli/Serve.ts"
import { DeliveryServer } from "../src/layers/DeliveryServer.ts"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
// Everything from the package root, as a user of `converge` would import it.
import {
  Client,
  type Conversation,
  DeliveryService,
  type Message,
  type MessageId,
  MlsCrypto,
  SqliteConnection,
  type SyncSummary
} from "../src/index.ts"

// ---------------------------------------------------------------------------------------------
// Transcript and checks
// ---------------------------------------------------------------------------------------------

const useColor = process.stdout.isTTY === true && !process.env["NO_COLOR"]
const paint = (code: string) => (s: string) => (useColor ? `\x1b[${code}m${s}\x1b[0m` : s)
const dim = paint("2")
const bold = paint("1")
const green = paint("32")
const red = paint("31")

const short = (hex: string, n = 6) => `${hex.slice(0, n)}…`

const failed: Array<string> = []
let passed = 0

const check = (label: string, ok: boolean, detail?: string) =>
  Effect.sync(() => {
    if (ok) {
      passed++
      console.log(`            ${green("✓")} ${label}`)
    } else {
      failed.push(label)
      console.log(`            ${red("✗")} ${label}${detail === undefined ? "" : dim(`  (${detail})`)}`)
    }
  })

/** Runs one step, then prints it on one line with how long it took. */
const step = <A, E, R>(effect: Effect.Effect<A, E, R>, describe: (a: A) => string) =>
  Effect.timed(effect).pipe(
    Effect.tap(([elapsed, a]) =>
      Effect.sync(() => {
        const ms = Duration.toMillis(elapsed).toFixed(1).padStart(7)
        console.log(`${dim(`[${ms} ms]`)} ${describe(a)}`)
      })
    ),
    Effect.map(([, a]) => a)
  )

const section = (title: string) => Effect.sync(() => console.log(`\n${bold(title)}`))

const summaryText = (s: SyncSummary) => {
  const parts = [
    s.joined > 0 ? `joined ${s.joined}` : undefined,
    `${s.received} envelope${s.received === 1 ? "" : "s"}`,
    s.messages > 0 ? `${s.messages} message${s.messages === 1 ? "" : "s"}` : undefined,
    s.commits > 0 ? `${s.commits} commit${s.commits === 1 ? "" : "s"}` : undefined,
    s.skipped > 0 ? `${s.skipped} skipped` : undefined,
    s.published > 0 ? `${s.published} published` : undefined
  ].filter((p) => p !== undefined)
  return dim(`(${parts.join(", ")})`)
}

// ---------------------------------------------------------------------------------------------
// Wiring: temporary folder, shared services, one client per database file
// ---------------------------------------------------------------------------------------------

/** A fresh temporary folder, removed when the scope closes (after the databases are closed). */
const tempDir = Effect.acquireRelease(
  Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "converge-demo-"))),
  (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
)

/** A delivery server over SQLite on a free loopback port; returns its RPC URL. */
const startServer = (dir: string) =>
  Effect.gen(function*() {
    const delivery = yield* Layer.build(deliveryLayer({ db: path.join(dir, "delivery.sqlite"), postgres: Option.none() }))
    const address = yield* DeliveryServer.serve({ port: 0, host: "127.0.0.1" }).pipe(Effect.provide(delivery))
    return address.url
  })

/** A client over its own SQLite file and its own connection to the server, alive for the scope. */
const openClient = (crypto: Context.Context<MlsCrypto>, url: string, filename: string) =>
  Client.layer().pipe(
    Layer.provide(SqliteConnection.layer({ filename })),
    Layer.provide(DeliveryService.layerRpc({ url })),
    Layer.provide(Layer.succeedContext(crypto)),
    Layer.build,
    Effect.map(Context.get(Client))
  )

// ---------------------------------------------------------------------------------------------
// The story
// ---------------------------------------------------------------------------------------------

const program = Effect.gen(function*() {
  const dir = yield* tempDir
  const crypto = yield* Layer.build(MlsCrypto.layer())
  const url = yield* startServer(dir)

  const names = new Map<string, string>()
  const nameOf = (inboxId: string) => names.get(inboxId) ?? short(inboxId)

  yield* section("Setup")
  yield* Effect.sync(() => console.log(dim(`            databases in ${dir}; delivery server on ${url}`)))
  const open = (name: string) =>
    step(openClient(crypto, url, path.join(dir, `${name}.sqlite`)), (c) => {
      names.set(c.inboxId, name)
      return `${name} opens ${name}.sqlite: inbox ${short(c.inboxId)}, installation ${short(c.installationId)}`
    })
  const alice = yield* open("alice")
  const bob = yield* open("bob")
  const carol = yield* open("carol")
  yield* check("three distinct inboxes", new Set([alice.inboxId, bob.inboxId, carol.inboxId]).size === 3)

  const textsOf = (conversation: Conversation) =>
    conversation.messages().pipe(Effect.map((ms) => ms.filter((m) => m.kind === "text")))
  const memberNames = (conversation: Conversation) =>
    conversation.members.pipe(Effect.map((ms) => ms.map((m) => nameOf(m.inboxId)).sort()))
  const sameList = (a: ReadonlyArray<string>, b: ReadonlyArray<string>) =>
    a.length === b.length && a.every((x, i) => x === b[i])
  /** id + sender + text of each message, for comparing what two clients see. */
  const fingerprint = (ms: ReadonlyArray<Message>) => ms.map((m) => `${m.id}|${m.senderInboxId}|${m.text}`)
  const showTexts = (ms: ReadonlyArray<Message>) => ms.map((m) => `${nameOf(m.senderInboxId)}: ${m.text}`).join(" / ")

  // ---- alice and bob ----
  yield* section("alice and bob")
  const aliceGroup = yield* step(
    alice.createGroup([bob.inboxId], { name: "demo" }),
    (c) => `alice creates group ${short(c.id)} with bob`
  )
  const groupId = aliceGroup.id
  yield* check("alice's group has members alice and bob", sameList(yield* memberNames(aliceGroup), ["alice", "bob"]))

  const bobJoin = yield* step(bob.syncAll, (s) => `bob syncs ${summaryText(s)}`)
  yield* check("bob joined one group from a welcome", bobJoin.joined === 1, `joined ${bobJoin.joined}`)
  const bobGroup = yield* bob.conversation(groupId)
  yield* check("bob's conversation is the same group and active", bobGroup.id === groupId && (yield* bobGroup.state) === "active")
  yield* check("bob sees members alice and bob", sameList(yield* memberNames(bobGroup), ["alice", "bob"]))
  yield* check("bob reads the group's name as alice set it", (yield* bobGroup.metadata).name === "demo")

  const aliceSent: Array<MessageId> = []
  for (const text of ["hi bob, welcome to the group", "this is end-to-end encrypted with MLS"]) {
    aliceSent.push(yield* step(aliceGroup.send(text), (id) => `alice sends "${text}" ${dim(`(${short(id)})`)}`))
  }
  yield* step(bobGroup.sync, (s) => `bob syncs the group ${summaryText(s)}`)
  {
    const aliceView = yield* textsOf(aliceGroup)
    const bobView = yield* textsOf(bobGroup)
    yield* check(
      "bob sees exactly the messages alice sent, same order, right sender",
      sameList(bobView.map((m) => m.id), aliceSent) && bobView.every((m) => m.senderInboxId === alice.inboxId),
      showTexts(bobView)
    )
    yield* check("bob's copies match alice's (id, sender, text)", sameList(fingerprint(bobView), fingerprint(aliceView)))
  }

  const bobReply = yield* step(bobGroup.send("hi alice, got both"), (id) => `bob sends "hi alice, got both" ${dim(`(${short(id)})`)}`)
  yield* step(aliceGroup.sync, (s) => `alice syncs the group ${summaryText(s)}`)
  {
    const aliceView = yield* textsOf(aliceGroup)
    const last = aliceView[aliceView.length - 1]
    yield* check(
      "alice received bob's reply, last, from bob",
      last !== undefined && last.id === bobReply && last.senderInboxId === bob.inboxId && last.text === "hi alice, got both"
    )
    yield* check(
      "alice and bob see the same three messages in the same order",
      sameList(fingerprint(aliceView), fingerprint(yield* textsOf(bobGroup))) && aliceView.length === 3
    )
    yield* check(
      "every message is published on both sides",
      [...aliceView, ...(yield* textsOf(bobGroup))].every((m) => m.deliveryStatus === "published")
    )
  }

  // ---- carol joins ----
  yield* section("carol joins")
  yield* step(aliceGroup.addMembers([carol.inboxId]), () => `alice adds carol`)
  yield* check("alice sees members alice, bob and carol", sameList(yield* memberNames(aliceGroup), ["alice", "bob", "carol"]))

  const carolJoin = yield* step(carol.syncAll, (s) => `carol syncs ${summaryText(s)}`)
  yield* check("carol joined one group from a welcome", carolJoin.joined === 1, `joined ${carolJoin.joined}`)
  const carolGroup = yield* carol.conversation(groupId)
  yield* check("carol sees no messages from before she joined", (yield* textsOf(carolGroup)).length === 0)
  yield* check("carol reads the group's name too", (yield* carolGroup.metadata).name === "demo")

  const carolHello = yield* step(carolGroup.send("hello both, carol here"), (id) => `carol sends "hello both, carol here" ${dim(`(${short(id)})`)}`)

  for (const [name, client] of [["alice", alice], ["bob", bob], ["carol", carol]] as const) {
    yield* step(client.syncAll, (s) => `${name} syncs ${summaryText(s)}`)
  }
  {
    const aliceView = yield* textsOf(aliceGroup)
    const bobView = yield* textsOf(bobGroup)
    const carolView = yield* textsOf(carolGroup)
    yield* check("alice and bob see the same four messages", aliceView.length === 4 && sameList(fingerprint(aliceView), fingerprint(bobView)))
    yield* check(
      "everyone's last message is carol's hello, from carol",
      [aliceView, bobView, carolView].every((v) => {
        const last = v[v.length - 1]
        return last !== undefined && last.id === carolHello && last.senderInboxId === carol.inboxId
      })
    )
    yield* check("carol sees only her own message", sameList(carolView.map((m) => m.id), [carolHello]))
    yield* check(
      "bob sees members alice, bob and carol",
      sameList(yield* memberNames(bobGroup), ["alice", "bob", "carol"])
    )
  }
  const infos3 = yield* Effect.all([aliceGroup.debugInfo, bobGroup.debugInfo, carolGroup.debugInfo])
  yield* check(
    "alice, bob and carol are in the same epoch with the same authenticator",
    infos3.every((i) => i.epoch === infos3[0]!.epoch && i.epochAuthenticator === infos3[0]!.epochAuthenticator),
    infos3.map((i) => `${i.epoch}/${short(i.epochAuthenticator, 8)}`).join(" ")
  )
  yield* check("nobody suspects a fork", infos3.every((i) => !i.maybeForked))

  // ---- bob is removed ----
  yield* section("bob is removed")
  yield* step(aliceGroup.removeMembers([bob.inboxId]), () => `alice removes bob`)
  yield* check("alice sees members alice and carol", sameList(yield* memberNames(aliceGroup), ["alice", "carol"]))

  const secret = "bob is gone: this one is for carol only"
  const afterRemoval = yield* step(aliceGroup.send(secret), (id) => `alice sends "${secret}" ${dim(`(${short(id)})`)}`)

  yield* step(bob.syncAll, (s) => `bob syncs ${summaryText(s)}`)
  {
    const state = yield* bobGroup.state
    yield* check("bob's conversation is inactive", state === "inactive", state)
    const bobView = yield* textsOf(bobGroup)
    yield* check("bob did not receive the message sent after his removal", !bobView.some((m) => m.id === afterRemoval || m.text === secret))
    yield* check("bob still has the four messages from before", bobView.length === 4)
    const listed = yield* bob.conversations()
    yield* check("bob's active conversations no longer list the group", !listed.some((c) => c.id === groupId))
    const listedAll = yield* bob.conversations({ includeInactive: true })
    yield* check("…but includeInactive still does", listedAll.some((c) => c.id === groupId))
    const attempt = yield* bobGroup.send("can I still post?").pipe(Effect.flip, Effect.either)
    yield* check(
      "bob cannot send to the group any more (GroupInactive)",
      attempt._tag === "Right" && attempt.right._tag === "GroupInactive",
      attempt._tag === "Right" ? attempt.right._tag : "the send succeeded"
    )
  }

  yield* step(carol.syncAll, (s) => `carol syncs ${summaryText(s)}`)
  {
    const carolView = yield* textsOf(carolGroup)
    const last = carolView[carolView.length - 1]
    yield* check(
      "carol received alice's post-removal message, from alice",
      last !== undefined && last.id === afterRemoval && last.senderInboxId === alice.inboxId && last.text === secret
    )
    yield* check("carol sees members alice and carol", sameList(yield* memberNames(carolGroup), ["alice", "carol"]))
    yield* check("alice and carol see the same messages since carol joined", sameList(
      fingerprint(carolView),
      fingerprint((yield* textsOf(aliceGroup)).filter((m) => carolView.some((c) => c.id === m.id)))
    ) && carolView.length === 2)
  }
  const [aliceInfo, bobInfo, carolInfo] = yield* Effect.all([aliceGroup.debugInfo, bobGroup.debugInfo, carolGroup.debugInfo])
  yield* check(
    "alice and carol (the active members) share epoch and authenticator",
    aliceInfo.epoch === carolInfo.epoch && aliceInfo.epochAuthenticator === carolInfo.epochAuthenticator
  )
  yield* check("the removal moved the group one epoch past bob's", bobInfo.epoch + 1n === aliceInfo.epoch, `bob ${bobInfo.epoch}, alice ${aliceInfo.epoch}`)

  // ---- what everyone sees ----
  yield* section(`Messages in group ${short(groupId)} as each client sees them`)
  const all = [["alice", alice, aliceGroup], ["bob", bob, bobGroup], ["carol", carol, carolGroup]] as const
  for (const [name, , conversation] of all) {
    const messages = yield* conversation.messages()
    const state = yield* conversation.state
    yield* Effect.sync(() => {
      console.log(`  ${bold(name)} ${dim(`(${state})`)}`)
      for (const m of messages) console.log(`    ${renderMessage(m, nameOf)}`)
    })
  }

  yield* section("Epochs")
  for (const [name, , conversation] of all) {
    const info = yield* conversation.debugInfo
    const state = yield* conversation.state
    yield* Effect.sync(() =>
      console.log(
        `  ${name.padEnd(6)} epoch ${String(info.epoch).padStart(2)}  authenticator ${short(info.epochAuthenticator, 16)}  ${dim(state)}`
      )
    )
  }
})

const renderMessage = (m: Message, nameOf: (inboxId: string) => string): string => {
  if (m.kind === "text") {
    const status = m.deliveryStatus === "published" ? "" : dim(` [${m.deliveryStatus}]`)
    return `${nameOf(m.senderInboxId).padEnd(6)}│ ${m.text}${status}`
  }
  // Membership changes carry a JSON body: { epoch, addedInboxes, removedInboxes, committedBy }.
  try {
    const change = JSON.parse(m.text) as {
      epoch?: unknown
      addedInboxes?: ReadonlyArray<string>
      removedInboxes?: ReadonlyArray<string>
    }
    const parts = [
      ...(change.addedInboxes ?? []).map((i) => `+${nameOf(i)}`),
      ...(change.removedInboxes ?? []).map((i) => `-${nameOf(i)}`)
    ]
    return dim(`${"".padEnd(6)}│ ${nameOf(m.senderInboxId)} changed members: ${parts.join(" ")} (epoch ${String(change.epoch)})`)
  } catch {
    return dim(`${"".padEnd(6)}│ ${m.kind}: ${m.text}`)
  }
}

// ---------------------------------------------------------------------------------------------
// Run
// ---------------------------------------------------------------------------------------------

const started = performance.now()
const exit = await Effect.runPromiseExit(
  program.pipe(
    Effect.scoped,
    Logger.withMinimumLogLevel(LogLevel.Error)
  )
)
const total = (performance.now() - started).toFixed(0)

if (Exit.isFailure(exit)) {
  console.error(`\n${red("✗ the demo failed:")}\n${Cause.pretty(exit.cause)}`)
  process.exitCode = 1
} else if (failed.length > 0) {
  console.log(`\n${red(`✗ ${failed.length} of ${failed.length + passed} checks failed`)} in ${total} ms:`)
  for (const label of failed) console.log(`  ${red("✗")} ${label}`)
  process.exitCode = 1
} else {
  console.log(`\n${green(`✓ all ${passed} checks held`)} ${dim(`(${total} ms)`)}`)
}
