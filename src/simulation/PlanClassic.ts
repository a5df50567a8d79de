/**
 * The `classic` generator: one installation per inbox, groups only. Unchanged since the first
 * regression seeds were found with it: they depend on its every draw.
 */
import type { Action, GovernanceKind, Op, OpKind, Params } from "./Ops.ts"
import { faultWeights, planFault } from "./PlanFaults.ts"
import * as Prng from "./Prng.ts"

/** Weights of the operations the `classic` generator plans (kept as they were: see `Profile`). */
const classicWeights = {
  Send: 20,
  SendOptimistic: 6,
  PublishPending: 2,
  CreateGroup: 3,
  Add: 6,
  Remove: 4,
  UpdateKeys: 4,
  Sync: 6,
  SyncAll: 10,
  Restart: 3,
  Race: 7,
  Watch: 3,
  ...faultWeights
} satisfies Record<
  Exclude<OpKind, "Leave" | "Dm" | "SendDm" | "AddDevice" | "RevokeDevice" | "LieKeyPackages" | "ForgeCommit" | GovernanceKind>,
  number
>

const classicActionWeights = {
  Send: 10,
  SendOptimistic: 3,
  PublishPending: 1,
  CreateGroup: 1,
  Add: 4,
  Remove: 3,
  UpdateKeys: 3,
  Sync: 3,
  SyncAll: 4
} satisfies Record<Exclude<Action["_tag"], "Leave" | "Dm" | "SendDm">, number>

/** The planner's intentions: who it means to be in which group. */
interface Model {
  readonly groups: Array<Set<number>>
  /** `c:g` once `c` has presumably read its welcome to `g` (a syncAll after being added). */
  readonly joined: Set<string>
  readonly partitioned: Set<number>
  readonly paused: Set<number>
  readonly held: Set<number>
}

export const planClassic = (params: Params): ReadonlyArray<Op> => {
  const rng = Prng.make(params.seed)
  const k = params.clients
  const clients = Array.from({ length: k }, (_, i) => i)
  const model: Model = { groups: [], joined: new Set(), partitioned: new Set(), paused: new Set(), held: new Set() }
  const ops: Array<Op> = []
  let texts = 0
  const text = (c: number) => `m${texts++}-c${c}`

  const groupOf = (c: number): number | undefined => {
    const mine = model.groups.flatMap((members, g) => (members.has(c) ? [g] : []))
    if (mine.length > 0 && rng.chance(0.95)) return rng.pick(mine)
    return model.groups.length === 0 ? undefined : rng.int(model.groups.length)
  }

  const createGroup = (c: number): Action => {
    const others = clients.filter((x) => x !== c)
    const members = rng.sample(others, rng.between(1, Math.min(3, others.length)))
    const g = model.groups.length
    model.groups.push(new Set([c, ...members]))
    model.joined.add(`${c}:${g}`)
    return { _tag: "CreateGroup", c, g, members }
  }

  const syncAll = (c: number): Action => {
    model.groups.forEach((members, g) => {
      if (members.has(c)) model.joined.add(`${c}:${g}`)
    })
    return { _tag: "SyncAll", c }
  }

  /** One action; `not` excludes clients (a watcher acts only through its stream). */
  const action = (not: ReadonlySet<number> = new Set()): Action => {
    const actors = clients.filter((c) => !not.has(c))
    // Mostly someone who is in a group; now and then anyone (typed errors expected).
    const inGroups = actors.filter((c) => model.groups.some((m) => m.has(c)))
    const c = inGroups.length > 0 && rng.chance(0.9) ? rng.pick(inGroups) : rng.pick(actors)
    const kind = model.groups.length === 0 ? "CreateGroup" : rng.weighted(classicActionWeights)
    if (kind === "CreateGroup" || kind === "SyncAll") {
      return kind === "CreateGroup" ? createGroup(c) : syncAll(c)
    }
    const g = groupOf(c)!
    const members = model.groups[g]!
    // A member that has not read its welcome yet mostly catches up first, as an app would.
    if (members.has(c) && !model.joined.has(`${c}:${g}`) && rng.chance(0.8)) return syncAll(c)
    switch (kind) {
      case "Send":
      case "SendOptimistic":
        return { _tag: kind, c, g, text: text(c) }
      case "PublishPending":
      case "UpdateKeys":
      case "Sync":
        return { _tag: kind, c, g }
      case "Add": {
        const outside = clients.filter((x) => !members.has(x))
        // Now and then an invalid add (an existing member): a typed error is expected.
        const targets = outside.length === 0 || rng.chance(0.05)
          ? [rng.pick(clients)]
          : rng.sample(outside, rng.between(1, Math.min(2, outside.length)))
        for (const t of targets) {
          members.add(t)
          model.joined.delete(`${t}:${g}`)
        }
        return { _tag: "Add", c, g, targets }
      }
      case "Remove": {
        const removable = [...members].filter((x) => x !== c)
        const targets = removable.length === 0 || rng.chance(0.05) ? [rng.pick(clients)] : [rng.pick(removable)]
        for (const t of targets) if (t !== c) members.delete(t)
        return { _tag: "Remove", c, g, targets }
      }
    }
  }

  // Every history starts with a group, so there is something to talk about.
  ops.push(createGroup(0))
  while (ops.length < params.ops) {
    const kind = rng.weighted(classicWeights)
    const c = rng.int(k)
    switch (kind) {
      case "Send":
      case "SendOptimistic":
      case "PublishPending":
      case "CreateGroup":
      case "Add":
      case "Remove":
      case "UpdateKeys":
      case "Sync":
      case "SyncAll": {
        ops.push(action())
        break
      }
      case "Restart":
        ops.push({ _tag: "Restart", c })
        break
      case "Race": {
        const first = action()
        ops.push({ _tag: "Race", actions: [first, action()] })
        break
      }
      case "Watch": {
        const n = rng.between(1, 3)
        ops.push({ _tag: "Watch", c, actions: Array.from({ length: n }, () => action(new Set([c]))) })
        break
      }
      default:
        ops.push(planFault(rng, kind, c, model))
    }
  }
  return ops
}
