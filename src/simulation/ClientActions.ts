/**
 * The client actions of a plan (send, create, add, remove, sync, leave, DMs), carried out on the
 * run's clients, alone or several at once (a race). An action of an installation that has not
 * booted, or on a group never created, is skipped.
 */
import { Cause, Deferred, Effect, Exit } from "effect"
import { type ConversationId, dmId, type GroupId, type InboxId } from "../domain/Ids.ts"
import type { SyncSummary } from "../domain/Model.ts"
import { simulatedCrashOf, type TestClient } from "../testing.ts"
import * as Plan from "./Plan.ts"
import type { TraceEntry } from "./Report.ts"
import type { RunState } from "./RunState.ts"
import { Hung, judge, Skipped } from "./Verdict.ts"

export const describeSummary = (s: SyncSummary) =>
  `received ${s.received}, messages ${s.messages}, commits ${s.commits}, skipped ${s.skipped}, published ${s.published}, joined ${s.joined}`

/** Looking up an installation's client and a group by their plan indexes; a missing one skips the operation. */
const lookups = (s: RunState) => {
  const groupOrSkip = (g: number): Effect.Effect<GroupId, Skipped> =>
    Effect.suspend(() => {
      const id = s.world.groups[g]
      return id === undefined ? Effect.fail(new Skipped({ reason: `g${g} was never created` })) : Effect.succeed(id)
    })

  /** The installation's client; an operation of one that never booted has nothing to do. */
  const clientOf = (c: number): Effect.Effect<TestClient, Skipped> =>
    Effect.suspend(() => {
      const client = s.clients[c]
      return client === undefined
        ? Effect.fail(new Skipped({ reason: `${s.clientName(c)} has not booted` }))
        : Effect.succeed(client)
    })

  const conversationOf = (c: number, g: number) =>
    Effect.zip(clientOf(c), groupOrSkip(g)).pipe(
      Effect.flatMap(([client, id]) => client.conversation(id as unknown as ConversationId))
    )

  const dmWith = (c: number, peer: number) =>
    clientOf(c).pipe(Effect.map((client) => dmId(client.inboxId, s.world.inboxIds[peer]!)))

  return { groupOrSkip, clientOf, conversationOf, dmWith }
}

type Lookups = ReturnType<typeof lookups>

const inboxes = (s: RunState, is: ReadonlyArray<number>): Array<InboxId> => is.map((i) => s.world.inboxIds[i]!)
/** Recorded before the action runs: whatever it does, these inboxes were asked for. */
const invite = (s: RunState, g: number, added: ReadonlyArray<InboxId>) => {
  const set = s.world.invited.get(g) ?? new Set<InboxId>()
  for (const inbox of added) set.add(inbox)
  s.world.invited.set(g, set)
}

/** Recorded before the action runs, like `invite`. */
const removing = (s: RunState, g: number, removed: ReadonlyArray<InboxId>) => {
  const set = s.world.removed.get(g) ?? new Set<InboxId>()
  for (const inbox of removed) set.add(inbox)
  s.world.removed.set(g, set)
}

/** Carries out one client action with the acting installation's client; its outcome text for the trace. */
const performWith = (
  s: RunState,
  { conversationOf, dmWith }: Lookups,
  index: number,
  a: Plan.Action,
  client: TestClient
): Effect.Effect<string, unknown> => {
  switch (a._tag) {
    case "Send":
    case "SendOptimistic":
      return Effect.gen(function*() {
        const conversation = yield* conversationOf(a.c, a.g)
        const id = yield* (a._tag === "Send" ? conversation.send(a.text) : conversation.sendOptimistic(a.text))
        s.world.sent.push({ op: index, c: a.c, g: a.g, dm: undefined, text: a.text, id, confirmed: a._tag === "Send" })
        return "ok"
      })
    case "PublishPending":
      return conversationOf(a.c, a.g).pipe(Effect.flatMap((cv) => cv.publishPending), Effect.as("ok"))
    case "CreateGroup":
      return Effect.gen(function*() {
        s.world.creators[a.g] = a.c
        invite(s, a.g, [client.inboxId, ...inboxes(s, a.members)])
        // Named after its label: every member must read that name (Invariants).
        const conversation = yield* client.createGroup(inboxes(s, a.members), { name: `g${a.g}` })
        s.world.groups[a.g] = conversation.id as unknown as GroupId
        return "ok"
      })
    case "Add":
      invite(s, a.g, inboxes(s, a.targets))
      return conversationOf(a.c, a.g).pipe(Effect.flatMap((cv) => cv.addMembers(inboxes(s, a.targets))), Effect.as("ok"))
    case "Remove":
      removing(s, a.g, inboxes(s, a.targets))
      return conversationOf(a.c, a.g).pipe(
        Effect.flatMap((cv) => cv.removeMembers(inboxes(s, a.targets))),
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
      removing(s, a.g, [client.inboxId])
      return conversationOf(a.c, a.g).pipe(
        Effect.flatMap((cv) => cv.leave),
        Effect.tap(() => Effect.sync(() => s.counters.leaves++)),
        Effect.as("ok")
      )
    case "Dm":
      return client.findOrCreateDm(s.world.inboxIds[a.peer]!).pipe(
        Effect.flatMap((cv) => cv.debugInfo),
        Effect.map((info) => `ok: ${info.groupIds.length} group(s) beneath, sending on ${info.groupIds[0]}`)
      )
    case "SendDm":
      return Effect.gen(function*() {
        const dm = yield* dmWith(a.c, a.peer)
        const conversation = yield* client.conversation(dm)
        const id = yield* (a.optimistic ? conversation.sendOptimistic(a.text) : conversation.send(a.text))
        s.world.sent.push({ op: index, c: a.c, g: undefined, dm, text: a.text, id, confirmed: !a.optimistic })
        return "ok"
      })
  }
}

/**
 * Runs actions concurrently. When one of them crashes its client, the others of the same
 * client are abandoned (interrupted), as a real crash would.
 */
const runActions = (s: RunState, perform: (index: number, a: Plan.Action) => Effect.Effect<string, unknown>) =>
  (index: number, entry: TraceEntry, list: ReadonlyArray<Plan.Action>, labels: boolean) =>
    Effect.gen(function*() {
      const signals = new Map<number, Deferred.Deferred<void>>()
      for (const a of list) if (!signals.has(a.c)) signals.set(a.c, yield* Deferred.make<void>())
      const exits = yield* Effect.forEach(
        list,
        (a) => {
          s.counters.actions++
          const signal = signals.get(a.c)!
          const guarded = perform(index, a).pipe(
            Effect.timeoutFail({ duration: s.opTimeout, onTimeout: () => new Hung({ after: String(s.opTimeout) }) }),
            Effect.onExit((exit) =>
              Exit.isFailure(exit) && !Cause.isInterruptedOnly(exit.cause)
                ? Effect.sync(() => {
                  const verdict = judge(exit, { olderVersion: s.installs[a.c]?.protocolVersion })
                  if (verdict.kind === "crash" || verdict.kind === "violation") s.broken.add(a.c)
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
        const verdict = judge(exit, { olderVersion: s.installs[a.c]?.protocolVersion })
        s.record(entry, labels ? `${Plan.describeAction(a, s.clientName)}: ` : "", verdict)
        // A defect leaves the client in an unknown state: restart it like a crash.
        if (verdict.kind === "violation" && verdict.invariant === "defect") s.broken.add(a.c)
      })
    })

export const make = (s: RunState) => {
  const found = lookups(s)
  const perform = (index: number, a: Plan.Action): Effect.Effect<string, unknown> =>
    found.clientOf(a.c).pipe(Effect.flatMap((client) => performWith(s, found, index, a, client)))
  const { clientOf, conversationOf, groupOrSkip } = found
  return { groupOrSkip, clientOf, conversationOf, perform, runActions: runActions(s, perform) }
}

export type ClientActions = ReturnType<typeof make>
