/**
 * Faults and hostile inputs, planned the same way by both generators: the random draws are
 * those the classic generator always made, in the same order, so old seeds replay.
 */
import { type Action, crashPoints, faultTargets, type GovernanceKind, type Op, type OpKind } from "./Ops.ts"
import type * as Prng from "./Prng.ts"

export type FaultKind = Exclude<
  OpKind,
  Action["_tag"] | "Restart" | "Race" | "Watch" | "AddDevice" | "RevokeDevice" | "LieKeyPackages" | "ForgeCommit" | GovernanceKind
>

/** What the fault planner keeps track of, whatever the generator. */
/**
 * Weights of the faults both generators plan, last in their tables in this order: a weighted
 * draw walks the keys in order, so the seeds of either generator replay as they were found.
 */
export const faultWeights = {
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
} as const

export interface FaultModel {
  readonly groups: ReadonlyArray<unknown>
  readonly partitioned: Set<number>
  readonly paused: Set<number>
  readonly held: Set<number>
}

/**
 * One fault or hostile input. `c` is the installation it may aim at (drawn by the caller).
 * The random draws are those the classic generator always made, in the same order.
 */
export const planFault = (rng: Prng.Prng, kind: FaultKind, c: number, model: FaultModel): Op => {
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
