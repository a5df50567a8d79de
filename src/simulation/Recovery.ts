/**
 * Recovery after each operation: clients that crashed or broke are restarted, and a group whose
 * creation failed half-way is found at its creator, so later operations and the checks know it.
 */
import { Effect, Exit } from "effect"
import type { TraceEntry } from "./Report.ts"
import type { RunState } from "./RunState.ts"
import { judge } from "./Verdict.ts"

export const make = (s: RunState) => {
  /** A group whose creation failed half-way may still exist at its creator: find it by its name. */
  const discoverGroups = Effect.gen(function*() {
    for (const [g, creator] of s.world.creators.entries()) {
      if (creator === undefined || s.world.groups[g] !== undefined) continue
      const client = s.clients[creator]
      if (client === undefined) continue
      const storage = yield* s.net.storage(client)
      const rows = yield* storage.groups.list({ includeInactive: true })
      const found = rows.find((r) => r.kind === "group" && r.addedByInboxId === client.inboxId && r.name === `g${g}`)
      if (found !== undefined) s.world.groups[g] = found.id
    }
  }).pipe(Effect.catchAll(() => Effect.void))

  const restart = (entry: TraceEntry, c: number, why: string) =>
    Effect.gen(function*() {
      const client = s.clients[c]
      if (client === undefined) {
        entry.outcomes.push(`${s.clientName(c)} has not booted: nothing to restart`)
        return
      }
      s.counters.restarts++
      const exit = yield* Effect.exit(s.net.restart(client))
      if (Exit.isSuccess(exit)) entry.outcomes.push(`${s.clientName(c)} restarted (${why})`)
      else s.record(entry, `${s.clientName(c)} restart: `, judge(exit.pipe(Exit.as(""))))
    })

  /** Restarts every client that crashed or broke, except those still in use (`keep`). */
  const settle = (entry: TraceEntry, keep: ReadonlySet<number> = new Set()) =>
    Effect.gen(function*() {
      const log = yield* s.net.crashLog
      for (const crash of log.slice(s.counters.crashesSeen)) {
        const c = s.clients.findIndex((client) => client?.name === crash.client)
        if (c >= 0) s.broken.add(c)
        entry.outcomes.push(`${crash.client} crashed at ${crash.point}`)
      }
      s.counters.crashesSeen = log.length
      for (const c of [...s.broken].sort((a, b) => a - b)) {
        if (keep.has(c)) continue
        s.broken.delete(c)
        yield* restart(entry, c, "after a crash or defect")
      }
      yield* discoverGroups
    })

  return { restart, settle }
}
