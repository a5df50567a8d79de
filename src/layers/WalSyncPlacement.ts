/**
 * Where the WAL's sync runs: on the calling thread, or on libuv's thread pool.
 *
 * On a quick disk the calling thread is cheaper: the pool's round trip cost a `send` more than the
 * sync itself on this machine kind (`SqliteDurability`). On slow storage (a network volume, a
 * loaded disk) a sync can take tens of milliseconds, and on the calling thread it stalls every
 * fiber of the process for that long.
 *
 * So syncs run on the thread until `SLOW_TO_MOVE` of the last `WINDOW` there took longer than
 * `STALL_MILLIS` (one slow sync is common on a busy machine and moves nothing); then on the pool,
 * where every `PROBE_EVERY`-th is tried on the thread again. A quick try brings them back with a
 * clean record; a slow one keeps them on the pool. On storage that stays slow, the thread waits
 * on at most one sync in `PROBE_EVERY`.
 *
 * Pure: the storage keeps the state and times the syncs (`SqliteDurability`).
 */

/**
 * A sync on the calling thread longer than this is slow: it stalls the process far longer than the
 * pool's round trip costs. Local disks sync in well under a millisecond; on a loaded machine of
 * this kind (2 vCPUs) a sync timed on the thread, preemptions included, took over 2 ms in 7-15% of
 * cases and over 5 ms in about 3%. At 2 ms nearly half the syncs of a healthy disk went to the
 * pool there, and a `send` cost 5-9% more; at 5 ms, 0-4% of them did.
 */
export const STALL_MILLIS = 5
/** The syncs on the thread remembered, most recent last. */
export const WINDOW = 8
/** Slow syncs among the remembered ones that move the next syncs to the pool. */
export const SLOW_TO_MOVE = 3
/** Syncs between two tries on the thread, the try included. */
export const PROBE_EVERY = 32

export type Placement = "thread" | "pool"

export interface PlacementState {
  readonly placement: Placement
  /** Syncs on the pool since the last try on the thread. */
  readonly pooled: number
  /** Whether each remembered sync on the thread was slow, oldest first. */
  readonly slow: ReadonlyArray<boolean>
}

export const initial: PlacementState = { placement: "thread", pooled: 0, slow: [] }

/** Where the next sync runs. */
export const next = (state: PlacementState): Placement =>
  state.placement === "thread" || state.pooled + 1 >= PROBE_EVERY ? "thread" : "pool"

/** The state after a sync that ran at `ran` and took `millis` (timed on the thread only). */
export const observe = (state: PlacementState, ran: Placement, millis: number): PlacementState => {
  if (ran === "pool") return { ...state, pooled: state.pooled + 1 }
  const wasSlow = millis > STALL_MILLIS
  // A quick try from the pool: the disk is quick again.
  if (state.placement === "pool" && !wasSlow) return initial
  const slow = [...state.slow, wasSlow].slice(-WINDOW)
  const moves = slow.filter((s) => s).length >= SLOW_TO_MOVE
  return { placement: moves ? "pool" : "thread", pooled: 0, slow }
}
