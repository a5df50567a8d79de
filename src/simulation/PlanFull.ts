/**
 * The `full` generator: several installations per inbox (from the start and registered
 * mid-run), device revocations, leaving, and DMs (including both sides creating one at once).
 */
import type { Action, GovernanceKind, Op, OpKind, Params } from "./Ops.ts"
import { faultWeights, planFault } from "./PlanFaults.ts"
import * as Prng from "./Prng.ts"

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
  ...faultWeights
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

export const planFull = (params: Params): ReadonlyArray<Op> => {
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
