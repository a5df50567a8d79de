/**
 * The operations of a simulated history, and the generator that plans them from a seed.
 *
 * A plan is made before anything runs, from the seed and the parameters alone: the same seed
 * always gives the same operations and faults, whatever happens when they run. Inboxes are
 * named by index (`c0`..) and so is each one's first installation; further installations
 * (`c2b`, ...) are numbered after them in the order they are registered (`installations`);
 * groups are named by the order of their creation (`g0`..), DMs by their two inboxes. The
 * planner keeps a model of who it *intends* to be in which group and DM, so most operations
 * make sense; when a run goes otherwise (an add failed, a welcome is not read yet), the
 * operation meets a typed error, which the runner records.
 */
import * as MessagingPlan from "./MessagingPlan.ts"
import type { CrashPoint } from "../services/EngineContext.ts"
import * as Prng from "./Prng.ts"

/**
 * Which generator plans the history. `full` (the default) also plans second installations
 * (from the start and registered mid-run), device revocations, leaving, and DMs (including
 * both sides creating one at once). `classic` is the generator the first regression seeds were
 * found with (one installation per inbox, groups only): it plans exactly what it planned then,
 * so those seeds still replay the same histories.
 */
export type Profile = "classic" | "full"

export interface Params {
  readonly seed: number
  /** Inboxes, each with a first installation `c<i>` (>= 2; the issue asks for >= 5). */
  readonly clients: number
  /** Operations to plan (a race or watch counts as one). */
  readonly ops: number
  /** Default `full`. */
  readonly profile?: Profile
  /**
   * Also plan governance: renames (with `ifMatch`), role and policy changes, and hostile role
   * grabs (a member's commit, built outside the API, making itself super admin). Drawn from a
   * stream of their own, so a seed's other operations stay what they were. Default off.
   */
  readonly governance?: boolean
  /**
   * With `governance`: also plan minimum-version bumps (every client then runs
   * `SIMULATION_PROTOCOL_VERSION`; a bump asks for a version from 1 to it), from a stream of their
   * own. Default on; the regression seeds found before them pass `false` to replay as found.
   */
  readonly versionBumps?: boolean
  /**
   * Also plan messaging (the `full` profile only): direct messages inside groups, typed content
   * and deletions, from a stream of their own. Default on.
   */
  readonly messaging?: boolean
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

/**
 * Something one installation does through its API. `c` is an installation (`c<i>` is the first
 * installation of inbox `i`; further devices are numbered after the inboxes, see
 * `installations`); `members`, `targets` and `peer` are inboxes.
 */
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
  /** The installation's inbox leaves the group (every installation of it goes). */
  | { readonly _tag: "Leave"; readonly c: number; readonly g: number }
  /** `findOrCreateDm` with inbox `peer`. */
  | { readonly _tag: "Dm"; readonly c: number; readonly peer: number }
  /** A send on the DM with inbox `peer` (`sendOptimistic` if `optimistic`). */
  | {
    readonly _tag: "SendDm"
    readonly c: number
    readonly peer: number
    readonly text: string
    readonly optimistic: boolean
  }

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
  /** Inbox `inbox` registers a further installation, `d` (it joins the inbox's groups later). */
  | { readonly _tag: "AddDevice"; readonly inbox: number; readonly d: number }
  /** Installation `d`'s inbox revokes it (a RevokeInstallation signed with the inbox's root key). */
  | { readonly _tag: "RevokeDevice"; readonly d: number }
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
  /** A lying delivery service: the next `n` key-package fetches answer with another installation's. */
  | { readonly _tag: "LieKeyPackages"; readonly n: number }
  /** A malicious member: installation `c` posts a commit Converge never sends to group `g`. */
  | { readonly _tag: "ForgeCommit"; readonly c: number; readonly g: number; readonly variant: "foreignExtension" | "reinit" }
  // governance (`Params.governance`)
  | { readonly _tag: "Rename"; readonly c: number; readonly g: number; readonly name: string }
  | { readonly _tag: "SetRole"; readonly c: number; readonly g: number; readonly target: number; readonly role: GovernedRole }
  | { readonly _tag: "SetPolicy"; readonly c: number; readonly g: number; readonly policy: "everyone" | "admins" }
  /** Hostile: `c` commits, outside the API, settings that make its inbox a super admin. */
  | { readonly _tag: "ForgeRoleGrab"; readonly c: number; readonly g: number }
  /** `c` sets the group's minimum protocol version (`Params.versionBumps`). */
  | { readonly _tag: "SetMinVersion"; readonly c: number; readonly g: number; readonly version: number }
  /** Direct messages, typed content, deletions (`MessagingPlan`; `Params.messaging`). */
  | { readonly _tag: "Messaging"; readonly op: MessagingPlan.MessagingOp }

export type GovernedRole = "member" | "admin" | "superAdmin"
/** The governance operations, planned only with `Params.governance`. */
type GovernanceKind = "Rename" | "SetRole" | "SetPolicy" | "ForgeRoleGrab" | "SetMinVersion" | "Messaging"

/**
 * The protocol version every client of a governance run advertises: above the library's first,
 * so that a bump can raise a group's floor without pausing anyone (pausing has its stories).
 */
export const SIMULATION_PROTOCOL_VERSION = 2

export type OpKind = Op["_tag"]

const actionTags: ReadonlySet<OpKind> = new Set<Action["_tag"]>([
  "Send",
  "SendOptimistic",
  "PublishPending",
  "CreateGroup",
  "Add",
  "Remove",
  "UpdateKeys",
  "Sync",
  "SyncAll",
  "Leave",
  "Dm",
  "SendDm"
])

/** Whether an operation is one client's API call (see `Action`). */
export const isAction = (op: Op): op is Action => actionTags.has(op._tag)

/** Faults and hostile inputs, as counted in a run's figures. */
export const isFault = (op: Op): boolean =>
  ["Drop", "LoseResponse", "Partition", "Duplicate", "PauseSubscriber", "HoldTopic", "Crash"].includes(op._tag) ||
  isHostile(op)

export const isHostile = (op: Op): boolean =>
  op._tag.startsWith("Inject") || op._tag === "ForgeWelcome" || op._tag === "LieKeyPackages" ||
  op._tag === "ForgeCommit" || op._tag === "ForgeRoleGrab"

/** The actions of an operation (two for a race, several for a watch). */
export const actionsOf = (op: Op): ReadonlyArray<Action> => {
  switch (op._tag) {
    case "Race":
    case "Watch":
      return op.actions
    case "Send":
    case "SendOptimistic":
    case "PublishPending":
    case "CreateGroup":
    case "Add":
    case "Remove":
    case "UpdateKeys":
    case "Sync":
    case "SyncAll":
    case "Leave":
    case "Dm":
    case "SendDm":
      return [op]
    default:
      return []
  }
}

type FaultKind = Exclude<
  OpKind,
  Action["_tag"] | "Restart" | "Race" | "Watch" | "AddDevice" | "RevokeDevice" | "LieKeyPackages" | "ForgeCommit" | GovernanceKind
>

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

/** Weights of the `full` generator; `DmRace` is a race of both sides creating one DM. */
const fullWeights = {
  Send: 14,
  SendOptimistic: 4,
  PublishPending: 2,
  CreateGroup: 3,
  Add: 5,
  Remove: 3,
  UpdateKeys: 3,
  Sync: 4,
  SyncAll: 9,
  Leave: 3,
  Dm: 3,
  SendDm: 8,
  Restart: 3,
  Race: 6,
  DmRace: 2,
  Watch: 2,
  AddDevice: 2,
  RevokeDevice: 1,
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
} satisfies Record<Exclude<OpKind, "LieKeyPackages" | "ForgeCommit" | GovernanceKind> | "DmRace", number>

const fullActionWeights = {
  Send: 9,
  SendOptimistic: 3,
  PublishPending: 1,
  CreateGroup: 1,
  Add: 4,
  Remove: 2,
  UpdateKeys: 2,
  Sync: 3,
  SyncAll: 4,
  Leave: 2,
  Dm: 2,
  SendDm: 6
} satisfies Record<Action["_tag"], number>

/** What the fault planner keeps track of, whatever the generator. */
interface FaultModel {
  readonly groups: ReadonlyArray<unknown>
  readonly partitioned: Set<number>
  readonly paused: Set<number>
  readonly held: Set<number>
}

/**
 * One fault or hostile input. `c` is the installation it may aim at (drawn by the caller).
 * The random draws are those the classic generator always made, in the same order.
 */
const planFault = (rng: Prng.Prng, kind: FaultKind, c: number, model: FaultModel): Op => {
  const someGroup = () => (model.groups.length === 0 ? 0 : rng.int(model.groups.length))
  const maybeTarget = () => (rng.chance(0.4) ? undefined : rng.pick(faultTargets))
  switch (kind) {
    case "Drop":
      return { _tag: "Drop", n: rng.between(1, 3), op: maybeTarget() }
    case "LoseResponse":
      return { _tag: "LoseResponse", n: rng.between(1, 2), op: maybeTarget() }
    case "Partition":
      model.partitioned.add(c)
      return { _tag: "Partition", c }
    case "Heal": {
      const target = model.partitioned.size > 0 ? rng.pick([...model.partitioned]) : c
      model.partitioned.delete(target)
      return { _tag: "Heal", c: target }
    }
    case "Duplicate":
      return { _tag: "Duplicate", n: rng.between(1, 3) }
    case "PauseSubscriber":
      model.paused.add(c)
      return { _tag: "PauseSubscriber", c }
    case "ResumeSubscriber": {
      const target = model.paused.size > 0 ? rng.pick([...model.paused]) : c
      model.paused.delete(target)
      return { _tag: "ResumeSubscriber", c: target }
    }
    case "HoldTopic": {
      const g = someGroup()
      model.held.add(g)
      return { _tag: "HoldTopic", g }
    }
    case "ReleaseTopic": {
      const g = model.held.size > 0 ? rng.pick([...model.held]) : someGroup()
      model.held.delete(g)
      return { _tag: "ReleaseTopic", g }
    }
    case "Crash":
      return { _tag: "Crash", c, point: rng.pick(crashPoints) }
    case "InjectGarbage":
      return { _tag: "InjectGarbage", g: someGroup(), size: rng.between(1, 300), salt: rng.int(2 ** 31) }
    case "InjectTruncated":
      return { _tag: "InjectTruncated", g: someGroup(), pick: rng.int(1000), keep: rng.next() }
    case "InjectReplay":
      return { _tag: "InjectReplay", g: someGroup(), pick: rng.int(1000) }
    case "InjectForeign": {
      const g = someGroup()
      const others = model.groups.map((_, i) => i).filter((i) => i !== g)
      return { _tag: "InjectForeign", g, from: others.length === 0 ? g : rng.pick(others), pick: rng.int(1000) }
    }
    case "ForgeWelcome":
      return {
        _tag: "ForgeWelcome",
        c,
        variant: rng.pick(["garbage", "badWelcome", "misaddressed", "stale"] as const),
        pick: rng.int(1000),
        salt: rng.int(2 ** 31)
      }
  }
}

export const plan = (params: Params): ReadonlyArray<Op> => {
  const ops = params.profile === "classic" ? planClassic(params) : withAdversaries(planFull(params), params.seed)
  const governed = params.governance !== true
    ? ops
    : params.versionBumps === false
    ? withGovernance(ops, params)
    : withVersionBumps(withGovernance(ops, params), params)
  return params.profile !== "classic" && params.messaging !== false ? withMessaging(governed, params) : governed
}

/** Messaging operations between the planned ones, from a stream of their own (`MessagingPlan`). */
const withMessaging = (ops: ReadonlyArray<Op>, params: Params): ReadonlyArray<Op> => {
  const rng = Prng.make(params.seed ^ 0x3e55_a9e5)
  let groups = 0
  let k = 0
  return ops.flatMap((op): ReadonlyArray<Op> => {
    groups += actionsOf(op).filter((a) => a._tag === "CreateGroup").length
    if (groups === 0 || rng.next() >= 0.12) return [op]
    return [op, { _tag: "Messaging", op: MessagingPlan.draw(rng, params.clients, groups, k++) }]
  })
}

/**
 * Governance operations between the planned ones, from a stream of their own: by first
 * installations, on groups created so far.
 */
const withGovernance = (ops: ReadonlyArray<Op>, params: Params): ReadonlyArray<Op> => {
  const rng = Prng.make(params.seed ^ 0x90fe_7a11)
  let groups = 0
  let renames = 0
  const roles: ReadonlyArray<GovernedRole> = ["member", "admin", "superAdmin"]
  return ops.flatMap((op): ReadonlyArray<Op> => {
    groups += actionsOf(op).filter((a) => a._tag === "CreateGroup").length
    if (groups === 0 || rng.next() >= 0.1) return [op]
    const c = rng.int(params.clients)
    const g = rng.int(groups)
    const draw = rng.next()
    const extra: Op = draw < 0.4
      ? { _tag: "Rename", c, g, name: `${gr(g)}-r${renames++}` }
      : draw < 0.75
      ? { _tag: "SetRole", c, g, target: rng.int(params.clients), role: rng.pick(roles) }
      : draw < 0.85
      ? { _tag: "SetPolicy", c, g, policy: rng.next() < 0.5 ? "admins" : "everyone" }
      : { _tag: "ForgeRoleGrab", c, g }
    return [op, extra]
  })
}

/**
 * Minimum-version bumps between the planned ones, from a stream of their own: a version from 1
 * to the clients' own, by anyone (the policy lets only super admins, and the floor never goes
 * down: both are expected refusals).
 */
const withVersionBumps = (ops: ReadonlyArray<Op>, params: Params): ReadonlyArray<Op> => {
  const rng = Prng.make(params.seed ^ 0x7e25_10b5)
  let groups = 0
  return ops.flatMap((op): ReadonlyArray<Op> => {
    groups += actionsOf(op).filter((a) => a._tag === "CreateGroup").length
    if (groups === 0 || rng.next() >= 0.03) return [op]
    const version = rng.between(1, SIMULATION_PROTOCOL_VERSION)
    return [op, { _tag: "SetMinVersion", c: rng.int(params.clients), g: rng.int(groups), version }]
  })
}

/**
 * Adversaries: a lying delivery service (answering key-package fetches with another
 * installation's package) and a malicious member (posting commits Converge never sends).
 * Drawn from a stream of their own and inserted between the planned operations, so a seed's
 * other operations stay what they were.
 */
const withAdversaries = (ops: ReadonlyArray<Op>, seed: number): ReadonlyArray<Op> => {
  const rng = Prng.make(seed ^ 0x5eed_a5a5)
  const clients = Math.max(1, ...ops.flatMap((op) => ("c" in op && typeof op.c === "number" ? [op.c + 1] : [])))
  return ops.flatMap((op): ReadonlyArray<Op> => {
    const roll = rng.next()
    if (roll < 0.04) return [{ _tag: "LieKeyPackages", n: rng.between(1, 2) }, op]
    if (roll < 0.07) {
      return [{ _tag: "ForgeCommit", c: rng.int(clients), g: rng.int(3), variant: rng.chance(0.5) ? "foreignExtension" : "reinit" }, op]
    }
    return [op]
  })
}

/** One installation of the history: which inbox it belongs to, and its name in traces. */
export interface Installation {
  readonly inbox: number
  readonly name: string
}

/**
 * The installations a plan uses, by index: `c<i>` for inbox `i`'s first installation, then
 * each `AddDevice` in plan order, named after its inbox (`c2b`, `c2c`, ...).
 */
export const installations = (params: Params, ops: ReadonlyArray<Op>): ReadonlyArray<Installation> => {
  const out: Array<Installation> = Array.from({ length: params.clients }, (_, i) => ({ inbox: i, name: `c${i}` }))
  const perInbox = new Map<number, number>()
  for (const op of ops) {
    if (op._tag !== "AddDevice") continue
    const n = (perInbox.get(op.inbox) ?? 0) + 1
    perInbox.set(op.inbox, n)
    out[op.d] = { inbox: op.inbox, name: `c${op.inbox}${String.fromCharCode(97 + n)}` }
  }
  return out
}

// ---- the classic generator (unchanged: regression seeds depend on its every draw) ----

/** The planner's intentions: who it means to be in which group. */
interface Model {
  readonly groups: Array<Set<number>>
  /** `c:g` once `c` has presumably read its welcome to `g` (a syncAll after being added). */
  readonly joined: Set<string>
  readonly partitioned: Set<number>
  readonly paused: Set<number>
  readonly held: Set<number>
}

const planClassic = (params: Params): ReadonlyArray<Op> => {
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

// ---- the full generator: several installations per inbox, leaving, DMs ----

interface FullModel {
  /** Member inboxes the planner intends for each group. */
  readonly groups: Array<Set<number>>
  /** `c:g` once installation `c` has presumably read its welcome to `g`. */
  readonly joined: Set<string>
  /** DMs the planner expects to exist, as `lower:higher` inbox pairs. */
  readonly dms: Set<string>
  /** Every installation planned so far; `live` until revoked. */
  readonly installs: Array<{ readonly inbox: number; live: boolean }>
  readonly partitioned: Set<number>
  readonly paused: Set<number>
  readonly held: Set<number>
}

/** Live installations per inbox at most (a revoked one may be replaced by another). */
const MAX_LIVE_PER_INBOX = 2

const pairKey = (a: number, b: number) => (a < b ? `${a}:${b}` : `${b}:${a}`)

const planFull = (params: Params): ReadonlyArray<Op> => {
  const rng = Prng.make(params.seed)
  const k = params.clients
  const inboxes = Array.from({ length: k }, (_, i) => i)
  const model: FullModel = {
    groups: [],
    joined: new Set(),
    dms: new Set(),
    installs: inboxes.map((inbox) => ({ inbox, live: true })),
    partitioned: new Set(),
    paused: new Set(),
    held: new Set()
  }
  const ops: Array<Op> = []
  let texts = 0
  const inboxOf = (c: number) => model.installs[c]!.inbox
  const text = (c: number) => `m${texts++}-${installationName(c)}`
  const names = new Map<number, string>(inboxes.map((i) => [i, `c${i}`]))
  const installationName = (c: number) => names.get(c) ?? `c${c}`
  const live = () => model.installs.flatMap((x, c) => (x.live ? [c] : []))
  const liveOf = (inbox: number) => live().filter((c) => inboxOf(c) === inbox)

  const addDevice = (inbox: number): Op => {
    const d = model.installs.length
    const n = model.installs.filter((x) => x.inbox === inbox).length
    names.set(d, `c${inbox}${String.fromCharCode(97 + n)}`)
    model.installs.push({ inbox, live: true })
    return { _tag: "AddDevice", inbox, d }
  }

  const groupOf = (c: number): number | undefined => {
    const mine = model.groups.flatMap((members, g) => (members.has(inboxOf(c)) ? [g] : []))
    if (mine.length > 0 && rng.chance(0.95)) return rng.pick(mine)
    return model.groups.length === 0 ? undefined : rng.int(model.groups.length)
  }

  const createGroup = (c: number): Action => {
    const others = inboxes.filter((x) => x !== inboxOf(c))
    const members = rng.sample(others, rng.between(1, Math.min(3, others.length)))
    const g = model.groups.length
    model.groups.push(new Set([inboxOf(c), ...members]))
    model.joined.add(`${c}:${g}`)
    return { _tag: "CreateGroup", c, g, members }
  }

  const syncAll = (c: number): Action => {
    model.groups.forEach((members, g) => {
      if (members.has(inboxOf(c))) model.joined.add(`${c}:${g}`)
    })
    return { _tag: "SyncAll", c }
  }

  /** Another inbox for a DM of `c`: mostly one it already has a DM with. */
  const dmPeer = (c: number, known: number): number => {
    const self = inboxOf(c)
    const existing = inboxes.filter((x) => x !== self && model.dms.has(pairKey(self, x)))
    if (existing.length > 0 && rng.chance(known)) return rng.pick(existing)
    return rng.pick(inboxes.filter((x) => x !== self))
  }

  /** One action; `not` excludes installations (a watcher acts only through its stream). */
  const action = (not: ReadonlySet<number> = new Set()): Action => {
    const actors = live().filter((c) => !not.has(c))
    const inGroups = actors.filter((c) => model.groups.some((m) => m.has(inboxOf(c))))
    const c = inGroups.length > 0 && rng.chance(0.9) ? rng.pick(inGroups) : rng.pick(actors)
    const kind = model.groups.length === 0 ? "CreateGroup" : rng.weighted(fullActionWeights)
    switch (kind) {
      case "CreateGroup":
        return createGroup(c)
      case "SyncAll":
        return syncAll(c)
      case "Dm": {
        const peer = dmPeer(c, 0.3)
        model.dms.add(pairKey(inboxOf(c), peer))
        return { _tag: "Dm", c, peer }
      }
      case "SendDm": {
        const self = inboxOf(c)
        // Without a DM yet, mostly start one first, as an app would.
        if (!inboxes.some((x) => model.dms.has(pairKey(self, x))) && rng.chance(0.8)) {
          const peer = dmPeer(c, 0)
          model.dms.add(pairKey(self, peer))
          return { _tag: "Dm", c, peer }
        }
        return { _tag: "SendDm", c, peer: dmPeer(c, 0.9), text: text(c), optimistic: rng.chance(0.2) }
      }
    }
    const g = groupOf(c)!
    const members = model.groups[g]!
    const self = inboxOf(c)
    // A member that has not read its welcome yet mostly catches up first, as an app would.
    if (members.has(self) && !model.joined.has(`${c}:${g}`) && rng.chance(0.8)) return syncAll(c)
    switch (kind) {
      case "Send":
      case "SendOptimistic":
        return { _tag: kind, c, g, text: text(c) }
      case "PublishPending":
      case "UpdateKeys":
      case "Sync":
        return { _tag: kind, c, g }
      case "Leave":
        members.delete(self)
        return { _tag: "Leave", c, g }
      case "Add": {
        const outside = inboxes.filter((x) => !members.has(x))
        // Now and then an invalid add (an existing member): a typed error is expected.
        const targets = outside.length === 0 || rng.chance(0.05)
          ? [rng.pick(inboxes)]
          : rng.sample(outside, rng.between(1, Math.min(2, outside.length)))
        for (const t of targets) {
          members.add(t)
          for (const [d, x] of model.installs.entries()) if (x.inbox === t) model.joined.delete(`${d}:${g}`)
        }
        return { _tag: "Add", c, g, targets }
      }
      case "Remove": {
        const removable = [...members].filter((x) => x !== self)
        const targets = removable.length === 0 || rng.chance(0.05) ? [rng.pick(inboxes)] : [rng.pick(removable)]
        for (const t of targets) if (t !== self) members.delete(t)
        return { _tag: "Remove", c, g, targets }
      }
    }
  }

  /** Inboxes that may register another device (the whole history has at most 2k installations). */
  const deviceCandidates = () =>
    model.installs.length >= 2 * k ? [] : inboxes.filter((i) => liveOf(i).length < MAX_LIVE_PER_INBOX)

  // Some inboxes have a second installation from the start (at most a third of them).
  for (const inbox of inboxes.slice(1)) {
    const extra = model.installs.length - k
    if (extra < Math.ceil(k / 3) && ops.length < params.ops - 1 && rng.chance(0.3)) ops.push(addDevice(inbox))
  }
  // Then a group, so there is something to talk about.
  ops.push(createGroup(0))
  while (ops.length < params.ops) {
    const kind = rng.weighted(fullWeights)
    const c = rng.int(model.installs.length)
    switch (kind) {
      case "Send":
      case "SendOptimistic":
      case "PublishPending":
      case "CreateGroup":
      case "Add":
      case "Remove":
      case "UpdateKeys":
      case "Sync":
      case "SyncAll":
      case "Leave":
      case "Dm":
      case "SendDm":
        ops.push(action())
        break
      case "Restart":
        ops.push({ _tag: "Restart", c })
        break
      case "Race": {
        const first = action()
        ops.push({ _tag: "Race", actions: [first, action()] })
        break
      }
      case "DmRace": {
        // Both sides create the same DM at once, mostly a new one.
        const a = rng.pick(live())
        const others = live().filter((x) => inboxOf(x) !== inboxOf(a))
        if (others.length === 0) {
          ops.push(action())
          break
        }
        const fresh = others.filter((x) => !model.dms.has(pairKey(inboxOf(a), inboxOf(x))))
        const b = fresh.length > 0 && rng.chance(0.7) ? rng.pick(fresh) : rng.pick(others)
        model.dms.add(pairKey(inboxOf(a), inboxOf(b)))
        ops.push({
          _tag: "Race",
          actions: [{ _tag: "Dm", c: a, peer: inboxOf(b) }, { _tag: "Dm", c: b, peer: inboxOf(a) }]
        })
        break
      }
      case "Watch": {
        const n = rng.between(1, 3)
        ops.push({ _tag: "Watch", c, actions: Array.from({ length: n }, () => action(new Set([c]))) })
        break
      }
      case "AddDevice": {
        const candidates = deviceCandidates()
        ops.push(candidates.length === 0 ? action() : addDevice(rng.pick(candidates)))
        break
      }
      case "RevokeDevice": {
        // Only a further device is revoked: every inbox keeps its first installation.
        const devices = live().filter((d) => d >= k)
        if (devices.length === 0) {
          ops.push(action())
          break
        }
        const d = rng.pick(devices)
        model.installs[d]!.live = false
        ops.push({ _tag: "RevokeDevice", d })
        break
      }
      default:
        ops.push(planFault(rng, kind, c, model))
    }
  }
  return ops
}

// ---- printing ----

/** How installations are named in a description (default `c<index>`: right for inboxes' first ones). */
export type Names = (c: number) => string

const defaultNames: Names = (c) => `c${c}`
/** Inboxes are named after their first installation. */
const inbox = (i: number) => `c${i}`
const gr = (g: number) => `g${g}`
const list = (is: ReadonlyArray<number>) => `[${is.map(inbox).join(",")}]`

export const describeAction = (a: Action, names: Names = defaultNames): string => {
  const cl = names
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
    case "Leave":
      return `${cl(a.c)} leave ${gr(a.g)}`
    case "Dm":
      return `${cl(a.c)} findOrCreateDm with ${inbox(a.peer)}`
    case "SendDm":
      return `${cl(a.c)} ${a.optimistic ? "sendOptimistic" : "send"} dm with ${inbox(a.peer)} "${a.text}"`
  }
}

export const describe = (op: Op, names: Names = defaultNames): string => {
  const cl = names
  if (isAction(op)) return describeAction(op, names)
  switch (op._tag) {
    case "Restart":
      return `${cl(op.c)} restart`
    case "Race":
      return `race { ${describeAction(op.actions[0], names)} | ${describeAction(op.actions[1], names)} }`
    case "Watch":
      return `${cl(op.c)} streams while { ${op.actions.map((a) => describeAction(a, names)).join("; ")} }`
    case "AddDevice":
      return `inbox ${inbox(op.inbox)} registers a new installation ${cl(op.d)}`
    case "RevokeDevice":
      return `${cl(op.d)} is revoked by its inbox`
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
    case "LieKeyPackages":
      return `hostile: the delivery service answers the next ${op.n} key-package fetch(es) with another installation's`
    case "ForgeCommit":
      return `hostile: ${cl(op.c)} posts a forbidden ${op.variant} commit to g${op.g}`
    case "Rename":
      return `${cl(op.c)} renames ${gr(op.g)} to "${op.name}" (ifMatch its current name)`
    case "SetRole":
      return `${cl(op.c)} makes inbox ${inbox(op.target)} ${op.role} of ${gr(op.g)}`
    case "SetPolicy":
      return `${cl(op.c)} sets ${gr(op.g)}'s add/remove/metadata policies to ${op.policy}`
    case "ForgeRoleGrab":
      return `hostile: ${cl(op.c)} commits itself super admin of ${gr(op.g)} outside the API`
    case "SetMinVersion":
      return `${cl(op.c)} sets ${gr(op.g)}'s minimum protocol version to ${op.version}`
    case "Messaging":
      return MessagingPlan.describe(op.op, cl)
  }
}

/** Names of a plan's installations, for `describe`. */
export const namesOf = (params: Params, ops: ReadonlyArray<Op>): Names => {
  const all = installations(params, ops)
  return (c) => all[c]?.name ?? `c${c}`
}
