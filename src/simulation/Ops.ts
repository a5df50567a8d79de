/**
 * The operations of a simulated history: what a plan is made of (client actions, faults, hostile
 * inputs, devices coming and going, governance), how they are counted, and which installations
 * a plan uses. The generators are in `PlanClassic` and `PlanFull`; `Plan` puts them together.
 */
import { PROTOCOL_VERSION } from "../domain/Model.ts"
import type { CrashPoint } from "../services/EngineContext.ts"
import type * as MessagingPlan from "./MessagingPlan.ts"

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
  "sendGroupMessagesIf",
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
  /**
   * Inbox `inbox` registers a further installation, `d` (it joins the inbox's groups later); with
   * `protocolVersion`, a device of an earlier build, left out of groups whose minimum is above it.
   */
  | { readonly _tag: "AddDevice"; readonly inbox: number; readonly d: number; readonly protocolVersion?: number }
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
export type GovernanceKind = "Rename" | "SetRole" | "SetPolicy" | "ForgeRoleGrab" | "SetMinVersion" | "Messaging"

/**
 * The protocol version every client of a governance run advertises: above the library's own, so
 * that a bump can raise a group's floor without pausing anyone (pausing has its stories).
 */
export const SIMULATION_PROTOCOL_VERSION = PROTOCOL_VERSION + 1

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

/** One installation of the history: which inbox it belongs to, and its name in traces. */
export interface Installation {
  readonly inbox: number
  readonly name: string
  /** An earlier build's version; none: the run's own. */
  readonly protocolVersion?: number
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
    out[op.d] = {
      inbox: op.inbox,
      name: `c${op.inbox}${String.fromCharCode(97 + n)}`,
      ...(op.protocolVersion === undefined ? {} : { protocolVersion: op.protocolVersion })
    }
  }
  return out
}
