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
import { gr } from "./Describe.ts"
import * as MessagingPlan from "./MessagingPlan.ts"
import { actionsOf, type GovernedRole, type Op, type Params, SIMULATION_PROTOCOL_VERSION } from "./Ops.ts"
import { planClassic } from "./PlanClassic.ts"
import { planFull } from "./PlanFull.ts"
import * as Prng from "./Prng.ts"

export * from "./Describe.ts"
export * from "./Ops.ts"

export const plan = (params: Params): ReadonlyArray<Op> => {
  const ops = params.profile === "classic" ? planClassic(params) : withAdversaries(planFull(params), params.seed)
  const governed = params.governance !== true
    ? ops
    : params.versionBumps === false
    ? withGovernance(ops, params)
    : withOldDevices(withVersionBumps(withGovernance(ops, params), params), params.seed)
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
 * Devices of earlier builds: half the further installations, drawn from a stream of their own,
 * advertise a version below the run's (1 or 2): a group whose minimum is above it leaves them out
 * (new groups admit 2 and later, a bump may raise it to 3), and a member a later bump leaves
 * below the minimum is paused there (it reads but cannot write).
 */
const withOldDevices = (ops: ReadonlyArray<Op>, seed: number): ReadonlyArray<Op> => {
  const rng = Prng.make(seed ^ 0x01d_de71)
  return ops.map((op) =>
    op._tag === "AddDevice" && rng.chance(0.5)
      ? { ...op, protocolVersion: rng.between(1, SIMULATION_PROTOCOL_VERSION - 1) }
      : op
  )
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
