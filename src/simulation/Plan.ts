/**
 * The operations of a simulated history, and the generator that plans them from a seed.
 *
 * A plan is made before anything runs, from the seed and the parameters alone: the same seed
 * always gives the same operations and faults, whatever happens when they run. Clients are
 * named by index (`c0`..), groups by the order of their creation (`g0`..). The planner keeps a
 * model of who it *intends* to be in which group, so most operations make sense; when a run
 * goes otherwise (an add failed, a welcome is not read yet), the operation meets a typed error,
 * which the runner records.
 */
import type { CrashPoint } from "../services/Engine.ts"
import * as Prng from "./Prng.ts"

export interface Params {
  readonly seed: number
  /** Clients, each its own inbox and installation (>= 2; the issue asks for >= 5). */
  readonly clients: number
  /** Operations to plan (a race or watch counts as one). */
  readonly ops: number
}

/** Delivery-service operations a fault may be aimed at (undefined: any). */
export const faultTargets = [
  "sendGroupMessages",
  "queryGroupMessages",
  "batchQueryGroupMessages",
  "sendWelcomeMessages",
  "queryWelcomeMessages",
  "fetchKeyPackages",
  "getIdentityUpdates"
] as const
export type FaultTarget = typeof faultTargets[number]

export const crashPoints: ReadonlyArray<CrashPoint> = [
  "publish.beforeWriteAhead",
  "publish.afterWriteAheadBeforeSend",
  "publish.afterSendBeforeSync",
  "sync.midPage",
  "postCommit.beforeWelcomes"
]

/** Something one client does through its API. */
export type Action =
  | { readonly _tag: "Send"; readonly c: number; readonly g: number; readonly text: string }
  | { readonly _tag: "SendOptimistic"; readonly c: number; readonly g: number; readonly text: string }
  | { readonly _tag: "PublishPending"; readonly c: number; readonly g: number }
  | { readonly _tag: "CreateGroup"; readonly c: number; readonly g: number; readonly members: ReadonlyArray<number> }
  | { readonly _tag: "Add"; readonly c: number; readonly g: number; readonly targets: ReadonlyArray<number> }
  | { readonly _tag: "Remove"; readonly c: number; readonly g: number; readonly targets: ReadonlyArray<number> }
  | { readonly _tag: "UpdateKeys"; readonly c: number; readonly g: number }
  | { readonly _tag: "Sync"; readonly c: number; readonly g: number }
  | { readonly _tag: "SyncAll"; readonly c: number }

export type WelcomeForgery =
  /** Random bytes. */
  | "garbage"
  /** A well-formed welcome payload naming a real group, with random MLS bytes. */
  | "badWelcome"
  /** A real welcome meant for another installation, copied onto this one's topic. */
  | "misaddressed"
  /** One of this installation's own past welcomes, re-encoded so the DS stores it again. */
  | "stale"

export type Op =
  | Action
  | { readonly _tag: "Restart"; readonly c: number }
  /** Two actions at once (possibly of the same client). */
  | { readonly _tag: "Race"; readonly actions: readonly [Action, Action] }
  /** Client `c` streams messages (live subscriptions) while other clients act. */
  | { readonly _tag: "Watch"; readonly c: number; readonly actions: ReadonlyArray<Action> }
  // faults
  | { readonly _tag: "Drop"; readonly n: number; readonly op: FaultTarget | undefined }
  | { readonly _tag: "LoseResponse"; readonly n: number; readonly op: FaultTarget | undefined }
  | { readonly _tag: "Partition"; readonly c: number }
  | { readonly _tag: "Heal"; readonly c: number }
  | { readonly _tag: "Duplicate"; readonly n: number }
  | { readonly _tag: "PauseSubscriber"; readonly c: number }
  | { readonly _tag: "ResumeSubscriber"; readonly c: number }
  | { readonly _tag: "HoldTopic"; readonly g: number }
  | { readonly _tag: "ReleaseTopic"; readonly g: number }
  | { readonly _tag: "Crash"; readonly c: number; readonly point: CrashPoint }
  // hostile input, straight onto delivery-service topics
  | { readonly _tag: "InjectGarbage"; readonly g: number; readonly size: number; readonly salt: number }
  | { readonly _tag: "InjectTruncated"; readonly g: number; readonly pick: number; readonly keep: number }
  | { readonly _tag: "InjectReplay"; readonly g: number; readonly pick: number }
  | { readonly _tag: "InjectForeign"; readonly g: number; readonly from: number; readonly pick: number }
  | {
    readonly _tag: "ForgeWelcome"
    readonly c: number
    readonly variant: WelcomeForgery
    readonly pick: number
    readonly salt: number
  }

export type OpKind = Op["_tag"]

/** Faults and hostile inputs, as counted in a run's figures. */
export const isFault = (op: Op): boolean =>
  ["Drop", "LoseResponse", "Partition", "Duplicate", "PauseSubscriber", "HoldTopic", "Crash"].includes(op._tag) ||
  isHostile(op)

export const isHostile = (op: Op): boolean => op._tag.startsWith("Inject") || op._tag === "ForgeWelcome"

const weights = {
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
  Drop: 3,
  LoseResponse: 3,
  Partition: 2,
  Heal: 2,
  Duplicate: 2,
  PauseSubscriber: 1,
  ResumeSubscriber: 1,
  HoldTopic: 1,
  ReleaseTopic: 1,
  Crash: 6,
  InjectGarbage: 1,
  InjectTruncated: 1,
  InjectReplay: 1,
  InjectForeign: 1,
  ForgeWelcome: 2
} satisfies Record<OpKind, number>

const actionWeights = {
  Send: 10,
  SendOptimistic: 3,
  PublishPending: 1,
  CreateGroup: 1,
  Add: 4,
  Remove: 3,
  UpdateKeys: 3,
  Sync: 3,
  SyncAll: 4
} satisfies Record<Action["_tag"], number>

/** The planner's intentions: who it means to be in which group. */
interface Model {
  readonly groups: Array<Set<number>>
  /** `c:g` once `c` has presumably read its welcome to `g` (a syncAll after being added). */
  readonly joined: Set<string>
  readonly partitioned: Set<number>
  readonly paused: Set<number>
  readonly held: Set<number>
}

export const plan = (params: Params): ReadonlyArray<Op> => {
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
    const kind = model.groups.length === 0 ? "CreateGroup" : rng.weighted(actionWeights)
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

  const someGroup = () => (model.groups.length === 0 ? 0 : rng.int(model.groups.length))
  const maybeTarget = () => (rng.chance(0.4) ? undefined : rng.pick(faultTargets))

  // Every history starts with a group, so there is something to talk about.
  ops.push(createGroup(0))
  while (ops.length < params.ops) {
    const kind = rng.weighted(weights)
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
      case "Drop":
        ops.push({ _tag: "Drop", n: rng.between(1, 3), op: maybeTarget() })
        break
      case "LoseResponse":
        ops.push({ _tag: "LoseResponse", n: rng.between(1, 2), op: maybeTarget() })
        break
      case "Partition":
        model.partitioned.add(c)
        ops.push({ _tag: "Partition", c })
        break
      case "Heal": {
        const target = model.partitioned.size > 0 ? rng.pick([...model.partitioned]) : c
        model.partitioned.delete(target)
        ops.push({ _tag: "Heal", c: target })
        break
      }
      case "Duplicate":
        ops.push({ _tag: "Duplicate", n: rng.between(1, 3) })
        break
      case "PauseSubscriber":
        model.paused.add(c)
        ops.push({ _tag: "PauseSubscriber", c })
        break
      case "ResumeSubscriber": {
        const target = model.paused.size > 0 ? rng.pick([...model.paused]) : c
        model.paused.delete(target)
        ops.push({ _tag: "ResumeSubscriber", c: target })
        break
      }
      case "HoldTopic": {
        const g = someGroup()
        model.held.add(g)
        ops.push({ _tag: "HoldTopic", g })
        break
      }
      case "ReleaseTopic": {
        const g = model.held.size > 0 ? rng.pick([...model.held]) : someGroup()
        model.held.delete(g)
        ops.push({ _tag: "ReleaseTopic", g })
        break
      }
      case "Crash":
        ops.push({ _tag: "Crash", c, point: rng.pick(crashPoints) })
        break
      case "InjectGarbage":
        ops.push({ _tag: "InjectGarbage", g: someGroup(), size: rng.between(1, 300), salt: rng.int(2 ** 31) })
        break
      case "InjectTruncated":
        ops.push({ _tag: "InjectTruncated", g: someGroup(), pick: rng.int(1000), keep: rng.next() })
        break
      case "InjectReplay":
        ops.push({ _tag: "InjectReplay", g: someGroup(), pick: rng.int(1000) })
        break
      case "InjectForeign": {
        const g = someGroup()
        const others = model.groups.map((_, i) => i).filter((i) => i !== g)
        ops.push({ _tag: "InjectForeign", g, from: others.length === 0 ? g : rng.pick(others), pick: rng.int(1000) })
        break
      }
      case "ForgeWelcome":
        ops.push({
          _tag: "ForgeWelcome",
          c,
          variant: rng.pick(["garbage", "badWelcome", "misaddressed", "stale"] as const),
          pick: rng.int(1000),
          salt: rng.int(2 ** 31)
        })
        break
    }
  }
  return ops
}

// ---- printing ----

const cl = (c: number) => `c${c}`
const gr = (g: number) => `g${g}`
const list = (cs: ReadonlyArray<number>) => `[${cs.map(cl).join(",")}]`

export const describeAction = (a: Action): string => {
  switch (a._tag) {
    case "Send":
      return `${cl(a.c)} send ${gr(a.g)} "${a.text}"`
    case "SendOptimistic":
      return `${cl(a.c)} sendOptimistic ${gr(a.g)} "${a.text}"`
    case "PublishPending":
      return `${cl(a.c)} publishPending ${gr(a.g)}`
    case "CreateGroup":
      return `${cl(a.c)} createGroup ${gr(a.g)} with ${list(a.members)}`
    case "Add":
      return `${cl(a.c)} add ${list(a.targets)} to ${gr(a.g)}`
    case "Remove":
      return `${cl(a.c)} remove ${list(a.targets)} from ${gr(a.g)}`
    case "UpdateKeys":
      return `${cl(a.c)} updateKeys ${gr(a.g)}`
    case "Sync":
      return `${cl(a.c)} sync ${gr(a.g)}`
    case "SyncAll":
      return `${cl(a.c)} syncAll`
  }
}

export const describe = (op: Op): string => {
  switch (op._tag) {
    case "Send":
    case "SendOptimistic":
    case "PublishPending":
    case "CreateGroup":
    case "Add":
    case "Remove":
    case "UpdateKeys":
    case "Sync":
    case "SyncAll":
      return describeAction(op)
    case "Restart":
      return `${cl(op.c)} restart`
    case "Race":
      return `race { ${describeAction(op.actions[0])} | ${describeAction(op.actions[1])} }`
    case "Watch":
      return `${cl(op.c)} streams while { ${op.actions.map(describeAction).join("; ")} }`
    case "Drop":
      return `fault: drop next ${op.n} ${op.op ?? "request(s)"}`
    case "LoseResponse":
      return `fault: lose next ${op.n} response(s) of ${op.op ?? "any request"}`
    case "Partition":
      return `fault: partition ${cl(op.c)}`
    case "Heal":
      return `fault: heal ${cl(op.c)}`
    case "Duplicate":
      return `fault: duplicate delivery of next ${op.n} publish(es)`
    case "PauseSubscriber":
      return `fault: pause subscriptions of ${cl(op.c)}`
    case "ResumeSubscriber":
      return `fault: resume subscriptions of ${cl(op.c)}`
    case "HoldTopic":
      return `fault: hold deliveries of ${gr(op.g)} (reorder across topics)`
    case "ReleaseTopic":
      return `fault: release deliveries of ${gr(op.g)}`
    case "Crash":
      return `crash: arm ${cl(op.c)} at ${op.point}`
    case "InjectGarbage":
      return `hostile: ${op.size} random bytes onto ${gr(op.g)}`
    case "InjectTruncated":
      return `hostile: truncated envelope #${op.pick} onto ${gr(op.g)} (keep ${(op.keep * 100).toFixed(0)}%)`
    case "InjectReplay":
      return `hostile: replay envelope #${op.pick} of ${gr(op.g)}`
    case "InjectForeign":
      return `hostile: envelope #${op.pick} of ${gr(op.from)} onto ${gr(op.g)}`
    case "ForgeWelcome":
      return `hostile: forged welcome (${op.variant}) onto ${cl(op.c)}'s welcome topic`
  }
}
