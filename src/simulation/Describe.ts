/**
 * Plans in words, for traces: one line per operation, installations by name (`c2`, `c2b`),
 * groups by creation order (`g0`), DMs by their two inboxes.
 */
import * as MessagingPlan from "./MessagingPlan.ts"
import { type Action, installations, isAction, type Op, type Params } from "./Ops.ts"

/** How installations are named in a description (default `c<index>`: right for inboxes' first ones). */
export type Names = (c: number) => string

const defaultNames: Names = (c) => `c${c}`
/** Inboxes are named after their first installation. */
const inbox = (i: number) => `c${i}`
export const gr = (g: number) => `g${g}`
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
      return `inbox ${inbox(op.inbox)} registers a new installation ${cl(op.d)}${
        op.protocolVersion === undefined ? "" : ` of protocol version ${op.protocolVersion}`
      }`
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

