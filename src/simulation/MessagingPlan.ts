/**
 * Messaging operations for the seeded simulation: direct messages inside a group, typed
 * content (the example codecs and a type nobody knows) and deletions, own or someone else's.
 * Drawn from a stream of their own (`Plan.withMessaging`), so a seed's other operations stay
 * what they were; carried out by `MessagingOps`, checked by `MessagingInvariants`.
 */
import type { Prng } from "./Prng.ts"

export type MessagingOp =
  /** `c` writes inbox `to` (by index) inside group `g`. */
  | { readonly _tag: "SendDirect"; readonly c: number; readonly g: number; readonly to: number; readonly k: number }
  /** `c` sends typed content to `g`, referencing its `pick`-th text there (for a reply or reaction). */
  | {
    readonly _tag: "SendContent"
    readonly c: number
    readonly g: number
    readonly codec: "reply" | "reaction" | "unknown"
    readonly pick: number
    readonly k: number
  }
  /** `c` deletes a text of `g` it holds: one of its own, or anyone's (allowed to super admins only). */
  | { readonly _tag: "DeleteMessage"; readonly c: number; readonly g: number; readonly own: boolean; readonly pick: number }

/** Texts of these operations are `m<100000 + k>-<installation>`, like every text the run sends. */
export const textOf = (k: number, installation: string) => `m${100_000 + k}-${installation}`

/** One messaging operation by a first installation, on a group created so far. */
export const draw = (rng: Prng, clients: number, groups: number, k: number): MessagingOp => {
  const c = rng.int(clients)
  const g = rng.int(groups)
  const roll = rng.next()
  if (roll < 0.35) return { _tag: "SendDirect", c, g, to: rng.int(clients), k }
  if (roll < 0.65) {
    const codec = rng.pick(["reply", "reaction", "unknown"] as const)
    return { _tag: "SendContent", c, g, codec, pick: rng.int(1000), k }
  }
  return { _tag: "DeleteMessage", c, g, own: rng.chance(0.7), pick: rng.int(1000) }
}

export const describe = (op: MessagingOp, name: (c: number) => string): string => {
  switch (op._tag) {
    case "SendDirect":
      return `${name(op.c)} sendDirect in g${op.g} to inbox ${op.to} "${textOf(op.k, name(op.c))}"`
    case "SendContent":
      return `${name(op.c)} sendContent ${op.codec} to g${op.g} "${textOf(op.k, name(op.c))}"`
    case "DeleteMessage":
      return `${name(op.c)} deletes ${op.own ? "its own" : "a"} message of g${op.g} (pick ${op.pick})`
  }
}
