/**
 * Deterministic simulation of Converge under faults (FoundationDB style): a seed plans a
 * history of client actions (groups, DMs, leaving), installations registered and revoked,
 * faults, crashes and hostile input (`Plan`); the runner carries it out, one operation at a
 * time, against a `TestNetwork` (real SQLite, real ts-mls, the in-memory delivery service);
 * then every fault is healed, every installation syncs until nothing changes, and the
 * invariants are checked (`Invariants`).
 *
 * Operations run in plan order, so the history of operations and faults is the same on every
 * run of a seed. Inside a race or a watch, actions run concurrently, and how they interleave
 * may differ between runs; everything around them does not.
 *
 * Typed errors that an operation may meet under faults (a delivery error, a failed intent, a
 * group one was removed from, ...) are recorded in the trace, not counted as violations. A
 * defect that is not a `SimulatedCrash`, an unexpected error type, or an operation that hangs
 * is a violation.
 */
import {
  Cause,
  Deferred,
  type Duration,
  Effect,
  Exit,
  Fiber,
  Logger,
  LogLevel,
  Option,
  Stream
} from "effect"
import * as IdentityLog from "../domain/IdentityLog.ts"
import { type ConversationId, dmId, type GroupId, type InboxId } from "../domain/Ids.ts"
import type { SyncSummary } from "../domain/Model.ts"
import { defaultEngineOptions } from "../services/EngineContext.ts"
import { simulatedCrashOf, type TestClient, type TestDelivery, TestNetwork } from "../testing.ts"
import * as HistoryInvariants from "./HistoryInvariants.ts"
import * as HistoryOps from "./HistoryOps.ts"
import * as Invariants from "./Invariants.ts"
import * as MessagingInvariants from "./MessagingInvariants.ts"
import * as FaultOps from "./FaultOps.ts"
import * as MessagingOps from "./MessagingOps.ts"
import * as Plan from "./Plan.ts"
import { emptyFigures, type Figures, type Report, type TraceEntry, type Violation } from "./Report.ts"
import { firstLine, Hung, judge, Skipped, type Verdict } from "./Verdict.ts"
import { booted, type World } from "./World.ts"

export * as Plan from "./Plan.ts"
export * as Prng from "./Prng.ts"
export * as Report from "./Report.ts"

export interface Options extends Plan.Params {
  /** An operation that takes longer than this is a violation (it hung). Default 30 seconds. */
  readonly opTimeout?: Duration.DurationInput
  /** Rounds of "everyone syncs and publishes" before quiescence is declared missed. Default 8. */
  readonly maxQuiescenceRounds?: number
  /** Engine logs at or above this level go into the trace. Default `Warning` (`Debug` shows every skip). */
  readonly logLevel?: LogLevel.LogLevel
  /** The delivery service under test (always the store-backed one): memory (default), sqlite or rpc. */
  readonly delivery?: TestDelivery
  /**
   * The clients' periodic installation check, instead of the profile's (`full`: every sync).
   * A long one leaves new and revoked devices to immediate join (the batched identity changes).
   */
  readonly installationCheckInterval?: Duration.DurationInput
  /**
   * Runs after quiescence, before the invariants are checked. For tests of the checks
   * themselves: damage the world and see the right invariant fire.
   */
  readonly beforeChecks?: (world: World) => Effect.Effect<void>
}

/**
 * Engine options of the simulated clients. The `full` profile checks installations on every
 * sync, so that a new or revoked device is handled by the next sync rather than after 5 s of
 * wall-clock time; `classic` keeps the defaults its seeds were found with.
 */
const clientOptionsFor = (profile: Plan.Profile | undefined) =>
  profile === "classic" ? {} : { installationCheckInterval: "0 millis" as const }

const describeSummary = (s: SyncSummary) =>
  `received ${s.received}, messages ${s.messages}, commits ${s.commits}, skipped ${s.skipped}, published ${s.published}, joined ${s.joined}`

const formatLogMessage = (message: unknown) =>
  Array.isArray(message) ? message.map((m) => String(m)).join(" ") : String(message)

/** Runs one seed and checks it. Never fails: whatever goes wrong is a violation in the report. */
export const run = (options: Options): Effect.Effect<Report> => {
  const started = Date.now()
  const trace: Array<TraceEntry> = []
  let logs: Array<string> = []
  const logger = Logger.make(({ annotations, logLevel, message }) => {
    // Ids travel as log annotations (groupId, intentId, sequenceId), not inside the message.
    const ids = [...annotations].map(([key, value]) => `${key}=${String(value)}`).join(" ")
    logs.push(`${logLevel.label}: ${firstLine(formatLogMessage(message))}${ids === "" ? "" : ` (${ids})`}`)
  })
  const program = Effect.gen(function*() {
    const ops = Plan.plan(options)
    const full = options.profile !== "classic"
    const installs = Plan.installations(options, ops)
    /** Installations by name: `c3`, `c3b` (inbox c3's second device), ... */
    const clientName = Plan.namesOf(options, ops)
    const clientOptions = {
      ...(options.installationCheckInterval === undefined
        ? clientOptionsFor(options.profile)
        : { installationCheckInterval: options.installationCheckInterval }),
      ...(options.governance === true && options.versionBumps !== false
        ? { protocolVersion: Plan.SIMULATION_PROTOCOL_VERSION }
        : {})
    }
    const opTimeout = options.opTimeout ?? "30 seconds"
    const net = yield* TestNetwork.makeWith({ delivery: options.delivery ?? "memory" })
    const clients: Array<TestClient | undefined> = installs.map(() => undefined)
    for (let c = 0; c < options.clients; c++) clients[c] = yield* net.client(clientName(c), clientOptions)
    const world: World = {
      net,
      installs,
      clients,
      inboxIds: clients.slice(0, options.clients).map((client) => client!.inboxId),
      groups: [],
      creators: [],
      sent: [],
      forgedWelcomes: new Map(),
      invited: new Map(),
      removed: new Map(),
      promoted: new Map(),
      renamed: new Set(),
      forgedCommits: new Set(),
      violations: [],
      maxPastEpochs: defaultEngineOptions.maxPastEpochs
    }
    const violate = (invariant: string, detail: string) => world.violations.push({ invariant, detail })
    const messagingLog = MessagingOps.makeLog()
    let actions = 0
    let leaves = 0
    let revocations = 0
    let expected = 0
    let restarts = 0
    let crashesSeen = 0
    /** Clients to restart once the current operation is over (a crash or a defect hit them). */
    const broken = new Set<number>()

    const newEntry = (index: number, label: string): TraceEntry => {
      const entry: TraceEntry = { index, label, outcomes: [], logs: [] }
      trace.push(entry)
      logs = entry.logs
      return entry
    }

    /**
     * Names instead of random ids (`c3`, `c3b`, `g1`, `dm(c0,c3)`, `dm(c0,c3)@c3`), so that a trace reads well
     * and two runs of one seed print the same trace. Applied once the run is over, when every
     * installation and DM group is known.
     */
    const namer = (dmLabels: ReadonlyMap<GroupId, string>) => {
      const pairs: Array<readonly [string, string]> = []
      // DM ids first, so that they read the same whichever inbox id sorts first.
      world.inboxIds.forEach((a, i) =>
        world.inboxIds.forEach((b, j) => {
          if (i < j) pairs.push([dmId(a, b), Invariants.dmName([i, j])])
        })
      )
      for (const [c, client] of booted(world)) pairs.push([client.installationId, clientName(c)])
      world.inboxIds.forEach((id, i) => pairs.push([id, clientName(i)]))
      world.groups.forEach((id, g) => {
        if (id !== undefined) pairs.push([id, `g${g}`])
      })
      for (const [id, label] of dmLabels) pairs.push([id, label])
      return (text: string) => pairs.reduce((out, [id, name]) => out.replaceAll(id, name), text)
    }

    /** Records a verdict in the trace; a violation also goes to the report. */
    const record = (entry: TraceEntry, prefix: string, verdict: Verdict) => {
      entry.outcomes.push(`${prefix}${verdict.kind === "violation" ? `VIOLATION ${verdict.text}` : verdict.text}`)
      if (verdict.kind === "expected") expected++
      if (verdict.kind === "violation") violate(verdict.invariant, `op ${entry.index} (${entry.label}): ${verdict.text}`)
    }

    // ---- client actions ----

    const groupOrSkip = (g: number): Effect.Effect<GroupId, Skipped> =>
      Effect.suspend(() => {
        const id = world.groups[g]
        return id === undefined ? Effect.fail(new Skipped({ reason: `g${g} was never created` })) : Effect.succeed(id)
      })

    /** The installation's client; an operation of one that never booted has nothing to do. */
    const clientOf = (c: number): Effect.Effect<TestClient, Skipped> =>
      Effect.suspend(() => {
        const client = clients[c]
        return client === undefined
          ? Effect.fail(new Skipped({ reason: `${clientName(c)} has not booted` }))
          : Effect.succeed(client)
      })

    const conversationOf = (c: number, g: number) =>
      Effect.zip(clientOf(c), groupOrSkip(g)).pipe(
        Effect.flatMap(([client, id]) => client.conversation(id as unknown as ConversationId))
      )

    const inboxes = (is: ReadonlyArray<number>): Array<InboxId> => is.map((i) => world.inboxIds[i]!)
    /** Recorded before the action runs: whatever it does, these inboxes were asked for. */
    const invite = (g: number, added: ReadonlyArray<InboxId>) => {
      const set = world.invited.get(g) ?? new Set<InboxId>()
      for (const inbox of added) set.add(inbox)
      world.invited.set(g, set)
    }

    /** Recorded before the action runs, like `invite`. */
    const removing = (g: number, removed: ReadonlyArray<InboxId>) => {
      const set = world.removed.get(g) ?? new Set<InboxId>()
      for (const inbox of removed) set.add(inbox)
      world.removed.set(g, set)
    }

    const dmWith = (c: number, peer: number) =>
      clientOf(c).pipe(Effect.map((client) => dmId(client.inboxId, world.inboxIds[peer]!)))

    const perform = (index: number, a: Plan.Action): Effect.Effect<string, unknown> =>
      clientOf(a.c).pipe(Effect.flatMap((client) => performWith(index, a, client)))

    const performWith = (index: number, a: Plan.Action, client: TestClient): Effect.Effect<string, unknown> => {
      switch (a._tag) {
        case "Send":
        case "SendOptimistic":
          return Effect.gen(function*() {
            const conversation = yield* conversationOf(a.c, a.g)
            const id = yield* (a._tag === "Send" ? conversation.send(a.text) : conversation.sendOptimistic(a.text))
            world.sent.push({ op: index, c: a.c, g: a.g, dm: undefined, text: a.text, id, confirmed: a._tag === "Send" })
            return "ok"
          })
        case "PublishPending":
          return conversationOf(a.c, a.g).pipe(Effect.flatMap((cv) => cv.publishPending), Effect.as("ok"))
        case "CreateGroup":
          return Effect.gen(function*() {
            world.creators[a.g] = a.c
            invite(a.g, [client.inboxId, ...inboxes(a.members)])
            // Named after its label: every member must read that name (Invariants).
            const conversation = yield* client.createGroup(inboxes(a.members), { name: `g${a.g}` })
            world.groups[a.g] = conversation.id as unknown as GroupId
            return "ok"
          })
        case "Add":
          invite(a.g, inboxes(a.targets))
          return conversationOf(a.c, a.g).pipe(Effect.flatMap((cv) => cv.addMembers(inboxes(a.targets))), Effect.as("ok"))
        case "Remove":
          removing(a.g, inboxes(a.targets))
          return conversationOf(a.c, a.g).pipe(
            Effect.flatMap((cv) => cv.removeMembers(inboxes(a.targets))),
            Effect.as("ok")
          )
        case "UpdateKeys":
          return conversationOf(a.c, a.g).pipe(Effect.flatMap((cv) => cv.updateKeys), Effect.as("ok"))
        case "Sync":
          return conversationOf(a.c, a.g).pipe(
            Effect.flatMap((cv) => cv.sync),
            Effect.map((s) => `ok: ${describeSummary(s)}`)
          )
        case "SyncAll":
          return Effect.suspend(() => client.syncAll).pipe(Effect.map((s) => `ok: ${describeSummary(s)}`))
        case "Leave":
          removing(a.g, [client.inboxId])
          return conversationOf(a.c, a.g).pipe(
            Effect.flatMap((cv) => cv.leave),
            Effect.tap(() => Effect.sync(() => leaves++)),
            Effect.as("ok")
          )
        case "Dm":
          return client.findOrCreateDm(world.inboxIds[a.peer]!).pipe(
            Effect.flatMap((cv) => cv.debugInfo),
            Effect.map((info) => `ok: ${info.groupIds.length} group(s) beneath, sending on ${info.groupIds[0]}`)
          )
        case "SendDm":
          return Effect.gen(function*() {
            const dm = yield* dmWith(a.c, a.peer)
            const conversation = yield* client.conversation(dm)
            const id = yield* (a.optimistic ? conversation.sendOptimistic(a.text) : conversation.send(a.text))
            world.sent.push({ op: index, c: a.c, g: undefined, dm, text: a.text, id, confirmed: !a.optimistic })
            return "ok"
          })
      }
    }

    // ---- installations come and go ----

    /** Boots installation `d` as a further device of `inbox` (registering it on first boot). */
    const bootDevice = (d: number, inbox: number) =>
      Effect.gen(function*() {
        const first = yield* clientOf(inbox)
        const client = yield* net.client(clientName(d), { ...clientOptions, sameInboxAs: first })
        clients[d] = client
        return `ok: registered`
      })

    /** Publishes a RevokeInstallation of `d`, signed with its inbox's root key. */
    const revokeDevice = (d: number) =>
      Effect.gen(function*() {
        const device = yield* clientOf(d)
        const root = yield* clientOf(installs[d]!.inbox)
        const [log] = yield* net.delivery.getIdentityUpdates([{ inboxId: device.inboxId, afterSequence: 0 }])
        const state = IdentityLog.replay((log?.updates ?? []).map((u) => u.update))
        if (state._tag === "Left" || Option.isNone(state.right)) {
          return yield* Effect.dieMessage(`inbox of ${clientName(d)} has no valid identity log`)
        }
        const update = IdentityLog.signUpdate(root.rootSecretKey!, device.inboxId, state.right.value, {
          _tag: "RevokeInstallation",
          installationId: device.installationId
        })
        const envelope = yield* net.delivery.publishIdentityUpdate(update)
        revocations++
        return `ok: identity update ${envelope.sequenceId}`
      })

    /** A group whose creation failed half-way may still exist at its creator: find it by its name. */
    const discoverGroups = Effect.gen(function*() {
      for (const [g, creator] of world.creators.entries()) {
        if (creator === undefined || world.groups[g] !== undefined) continue
        const client = clients[creator]
        if (client === undefined) continue
        const storage = yield* net.storage(client)
        const rows = yield* storage.groups.list({ includeInactive: true })
        const found = rows.find((r) => r.kind === "group" && r.addedByInboxId === client.inboxId && r.name === `g${g}`)
        if (found !== undefined) world.groups[g] = found.id
      }
    }).pipe(Effect.catchAll(() => Effect.void))

    const restart = (entry: TraceEntry, c: number, why: string) =>
      Effect.gen(function*() {
        const client = clients[c]
        if (client === undefined) {
          entry.outcomes.push(`${clientName(c)} has not booted: nothing to restart`)
          return
        }
        restarts++
        const exit = yield* Effect.exit(net.restart(client))
        if (Exit.isSuccess(exit)) entry.outcomes.push(`${clientName(c)} restarted (${why})`)
        else record(entry, `${clientName(c)} restart: `, judge(exit.pipe(Exit.as(""))))
      })

    /** Restarts every client that crashed or broke, except those still in use (`keep`). */
    const settle = (entry: TraceEntry, keep: ReadonlySet<number> = new Set()) =>
      Effect.gen(function*() {
        const log = yield* net.crashLog
        for (const crash of log.slice(crashesSeen)) {
          const c = clients.findIndex((client) => client?.name === crash.client)
          if (c >= 0) broken.add(c)
          entry.outcomes.push(`${crash.client} crashed at ${crash.point}`)
        }
        crashesSeen = log.length
        for (const c of [...broken].sort((a, b) => a - b)) {
          if (keep.has(c)) continue
          broken.delete(c)
          yield* restart(entry, c, "after a crash or defect")
        }
        yield* discoverGroups
      })

    /**
     * Runs actions concurrently. When one of them crashes its client, the others of the same
     * client are abandoned (interrupted), as a real crash would.
     */
    const runActions = (index: number, entry: TraceEntry, list: ReadonlyArray<Plan.Action>, labels: boolean) =>
      Effect.gen(function*() {
        const signals = new Map<number, Deferred.Deferred<void>>()
        for (const a of list) if (!signals.has(a.c)) signals.set(a.c, yield* Deferred.make<void>())
        const exits = yield* Effect.forEach(
          list,
          (a) => {
            actions++
            const signal = signals.get(a.c)!
            const guarded = perform(index, a).pipe(
              Effect.timeoutFail({ duration: opTimeout, onTimeout: () => new Hung({ after: String(opTimeout) }) }),
              Effect.onExit((exit) =>
                Exit.isFailure(exit) && !Cause.isInterruptedOnly(exit.cause)
                  ? Effect.sync(() => {
                    const verdict = judge(exit)
                    if (verdict.kind === "crash" || verdict.kind === "violation") broken.add(a.c)
                  }).pipe(Effect.zipRight(simulatedCrashOf(exit.cause) === undefined ? Effect.void : Deferred.succeed(signal, undefined)))
                  : Effect.void
              )
            )
            return Effect.raceFirst(guarded, Deferred.await(signal).pipe(Effect.zipRight(Effect.interrupt))).pipe(
              Effect.exit
            )
          },
          { concurrency: "unbounded" }
        )
        exits.forEach((exit, i) => {
          const a = list[i]!
          const verdict = judge(exit)
          record(entry, labels ? `${Plan.describeAction(a, clientName)}: ` : "", verdict)
          // A defect leaves the client in an unknown state: restart it like a crash.
          if (verdict.kind === "violation" && verdict.invariant === "defect") broken.add(a.c)
        })
      })

    // ---- faults and hostile input ----

    const { fault, governance, welcomesOf } = FaultOps.make({ world, full, clientName, clientOf, groupOrSkip, conversationOf })

    // ---- the history ----

    const consentOps = full ? HistoryOps.plan(options.seed, ops.length) : new Map<number, HistoryOps.ConsentOp>()
    for (const [index, op] of ops.entries()) {
      const entry = newEntry(index, Plan.describe(op, clientName))
      if (Plan.isAction(op)) {
        yield* runActions(index, entry, [op], false)
      } else {
        switch (op._tag) {
          case "AddDevice":
            record(entry, "", judge(yield* Effect.exit(bootDevice(op.d, op.inbox))))
            break
          case "RevokeDevice":
            record(entry, "", judge(yield* Effect.exit(revokeDevice(op.d))))
            break
          case "Race":
            yield* runActions(index, entry, op.actions, true)
            break
          case "Restart":
            yield* restart(entry, op.c, "planned")
            break
          case "Rename":
          case "SetRole":
          case "SetPolicy":
          case "ForgeRoleGrab":
          case "SetMinVersion":
            record(entry, "", judge(yield* Effect.exit(governance(op))))
            break
          case "Messaging":
            record(entry, "", judge(yield* Effect.exit(MessagingOps.run(world, messagingLog, { clientOf, conversationOf }, index, op.op))))
            break
          case "Watch": {
            let received = 0
            const watcher = clients[op.c]
            const stream = yield* Effect.fork(
              Stream.runForEach(watcher === undefined ? Stream.empty : Stream.suspend(() => watcher.streamMessages), () =>
                Effect.sync(() => {
                  received++
                }))
            )
            for (const a of op.actions) {
              yield* runActions(index, entry, [a], true)
              yield* settle(entry, new Set([op.c]))
            }
            const exit = yield* Fiber.interrupt(stream)
            const verdict = judge(exit.pipe(Exit.as("")))
            if (verdict.kind === "abandoned" || verdict.kind === "ok") {
              entry.outcomes.push(`${clientName(op.c)}'s stream delivered ${received} message(s)`)
            } else record(entry, `${clientName(op.c)}'s stream: `, verdict)
            break
          }
          default: {
            const exit = yield* Effect.exit(fault(op))
            record(entry, "", judge(exit))
          }
        }
      }
      const consent = consentOps.get(index)
      if (consent !== undefined) record(entry, "consent: ", judge(yield* Effect.exit(HistoryOps.run(world, consent))))
      yield* settle(entry)
    }

    // ---- quiescence: heal everything, then sync until nothing changes ----

    const heal = newEntry(ops.length, "quiescence: heal every fault, disarm crash points")
    yield* net.faults.healAll
    const unfired = yield* net.disarmCrashes
    heal.outcomes.push(`${unfired} armed crash point(s) never reached`)
    yield* settle(heal)
    // A device whose registration was cut short by a fault finishes it now (it is idempotent).
    for (const [d, install] of installs.entries()) {
      if (d < options.clients || clients[d] !== undefined) continue
      const verdict = judge(yield* Effect.exit(bootDevice(d, install.inbox)))
      if (verdict.kind === "ok") heal.outcomes.push(`${clientName(d)} booted at last`)
      else {
        record(heal, `${clientName(d)} boot: `, verdict)
        if (verdict.kind !== "violation") violate("device-boot", `${clientName(d)} could not boot once healed: ${verdict.text}`)
      }
    }

    const fingerprint = Effect.gen(function*() {
      const parts: Array<string> = []
      for (const [c, client] of booted(world)) {
        const storage = yield* net.storage(client)
        const groups = yield* storage.groups.list({ includeInactive: true })
        for (const g of groups) {
          const messages = yield* storage.messages.byConversation(g.id as unknown as ConversationId, {})
          parts.push(`${client.name}:${g.id}:${g.epoch}:${g.membershipState}:${messages.length}:${messages.map((m) => m.deliveryStatus[0]).join("")}`)
        }
        const intents = yield* storage.intents.byState(["ToPublish", "Published", "Committed", "Processed", "Error"])
        parts.push(`${client.name}:intents:${intents.map((i) => `${i.id}${i.state}`).join(",")}`)
        parts.push(`${client.name}:welcomes:${(yield* welcomesOf(c)).length}`)
      }
      for (const id of world.groups) {
        if (id !== undefined) parts.push(`${id}:${(yield* Invariants.readTopic(world, id)).length}`)
      }
      return parts.join("\n")
    })

    const maxRounds = options.maxQuiescenceRounds ?? 8
    let rounds = 0
    let previous = ""
    let stable = false
    while (rounds < maxRounds && !stable) {
      rounds++
      const entry = newEntry(ops.length + rounds, `quiescence round ${rounds}: every client syncAll, then publishPending everywhere`)
      for (const [c, client] of booted(world)) {
        const synced = judge(yield* Effect.exit(
          Effect.suspend(() => client.syncAll).pipe(
            Effect.map((s) => `ok: ${describeSummary(s)}`),
            Effect.timeoutFail({ duration: opTimeout, onTimeout: () => new Hung({ after: String(opTimeout) }) })
          )
        ))
        if (synced.kind !== "ok") record(entry, `${clientName(c)} syncAll: `, synced)
        const conversations = yield* Effect.exit(client.conversations({ includeInactive: true }))
        if (Exit.isFailure(conversations)) {
          record(entry, `${clientName(c)} conversations: `, judge(conversations.pipe(Exit.as(""))))
          continue
        }
        for (const conversation of conversations.value) {
          const published = judge(yield* Effect.exit(
            conversation.publishPending.pipe(
              Effect.as("ok"),
              Effect.timeoutFail({ duration: opTimeout, onTimeout: () => new Hung({ after: String(opTimeout) }) })
            )
          ))
          if (published.kind !== "ok") record(entry, `${clientName(c)} publishPending ${conversation.id}: `, published)
        }
      }
      yield* settle(entry)
      const now = yield* fingerprint
      stable = now === previous
      previous = now
    }
    if (!stable) violate("no-quiescence", `state still changing after ${maxRounds} rounds of sync and publish`)

    // ---- invariants ----

    if (options.beforeChecks !== undefined) yield* options.beforeChecks(world)
    const checks = newEntry(ops.length + rounds + 1, "check invariants")
    const dms = yield* Invariants.dmGroups(world).pipe(Effect.orElseSucceed(() => []))
    const found = yield* Invariants.check(world, dms).pipe(
      Effect.catchAllCause((cause) =>
        Effect.succeed<ReadonlyArray<Violation>>([{ invariant: "check-failed", detail: Cause.pretty(cause) }])
      )
    )
    world.violations.push(...found)
    world.violations.push(...yield* MessagingInvariants.check(world, messagingLog).pipe(
      Effect.catchAllCause((cause) => Effect.succeed([{ invariant: "check-failed", detail: Cause.pretty(cause) }]))
    ))
    world.violations.push(...yield* HistoryInvariants.check(world).pipe(
      Effect.catchAllCause((cause) => Effect.succeed([{ invariant: "check-failed", detail: Cause.pretty(cause) }]))
    ))
    checks.outcomes.push(`${world.violations.length} violation(s)`)
    const named = namer(new Map(dms.map((d) => [d.groupId, d.label])))
    for (const entry of trace) {
      entry.outcomes.splice(0, entry.outcomes.length, ...entry.outcomes.map(named))
      entry.logs.splice(0, entry.logs.length, ...entry.logs.map(named))
    }
    const violations = world.violations.map((v) => ({ ...v, detail: named(v.detail) }))

    const stats = yield* net.faults.stats
    const crashLog = yield* net.crashLog
    const figures: Figures = {
      operations: ops.length,
      actions,
      faults: ops.filter(Plan.isFault).length,
      hostile: ops.filter(Plan.isHostile).length,
      crashesArmed: ops.filter((op) => op._tag === "Crash").length,
      crashes: crashLog.length,
      restarts,
      expectedErrors: expected,
      sent: world.sent.filter((s) => s.confirmed).length,
      installations: booted(world).length,
      revocations,
      leaves,
      dms: new Set(dms.map((d) => d.dmId)).size,
      quiescenceRounds: rounds,
      ds: stats
    }
    return { figures, violations }
  })

  return Effect.scoped(program).pipe(
    Effect.provide(Logger.replace(Logger.defaultLogger, logger)),
    Logger.withMinimumLogLevel(options.logLevel ?? LogLevel.Warning),
    Effect.catchAllCause((cause) =>
      Effect.succeed({
        figures: emptyFigures,
        violations: [{ invariant: "harness", detail: `the run itself failed: ${Cause.pretty(cause)}` }]
      })
    ),
    Effect.map(({ figures, violations }): Report => ({
      params: {
        seed: options.seed,
        clients: options.clients,
        ops: options.ops,
        ...(options.profile === undefined ? {} : { profile: options.profile }),
        ...(options.governance === undefined ? {} : { governance: options.governance }),
        ...(options.messaging === undefined ? {} : { messaging: options.messaging })
      },
      figures,
      violations,
      trace,
      elapsedMs: Date.now() - started
    }))
  )
}
