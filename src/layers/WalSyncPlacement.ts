/**
 * Where the WAL's sync runs: on the calling thread, or on libuv's thread pool.
 *
 * On a quick disk the calling thread is cheaper: the pool's round trip cost a `send` more than the
 * sync itself on this machine kind (`SqliteDurability`). On slow storage (a network volume, a
 * loaded disk) a sync can take tens of milliseconds, and on the calling thread it stalls every
 * fiber of the process for that long. So a sync on the thread that takes longer than
 * `STALL_MILLIS` moves the next ones to the pool, and every `PROBE_EVERY`-th sync there is tried on
 * the thread again: one that is quick brings them back. On slow storage the thread then waits on
 * at most one sync in `PROBE_EVERY`.
 *
 * Pure: the storage keeps the state and measures the syncs (`SqliteDurability`).
 */

/** A sync on the calling thread longer than this stalls the process more than the pool's round trip costs. */
export const STALL_MILLIS = 2
/** Syncs on the pool between two tries on the thread. */
export const PROBE_EVERY = 32

export type Placement = "thread" | "pool"

export interface PlacementState {
  readonly placement: Placement
  /** Syncs on the pool since the last try on the thread. */
  readonly pooled: number
}

export const initial: PlacementState = { placement: "thread", pooled: 0 }

/** Where the next sync runs. */
export const next = (state: PlacementState): Placement =>
  state.placement === "thread" || state.pooled + 1 >= PROBE_EVERY ? "thread" : "pool"

/** The state after a sync that ran at `ran` and took `millis`. */
export const observe = (state: PlacementState, ran: Placement, millis: number): PlacementState => {
  if (ran === "pool") return { placement: "pool", pooled: state.pooled + 1 }
  return millis > STALL_MILLIS ? { placement: "pool", pooled: 0 } : initial
}
