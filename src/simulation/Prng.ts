/**
 * A small seeded PRNG (splitmix32) for the simulation: the same seed gives the same stream of
 * numbers on every machine, so a seed names one history.
 */

export interface Prng {
  /** A uniform float in [0, 1). */
  readonly next: () => number
  /** A uniform integer in [0, n). `n` must be a positive integer. */
  readonly int: (n: number) => number
  /** A uniform integer in [lo, hi], both included. */
  readonly between: (lo: number, hi: number) => number
  /** True with probability `p`. */
  readonly chance: (p: number) => boolean
  /** One element of a non-empty array. */
  readonly pick: <A>(items: ReadonlyArray<A>) => A
  /** A key chosen with probability proportional to its weight (weights >= 0, not all 0). */
  readonly weighted: <K extends string>(weights: Readonly<Record<K, number>>) => K
  /** `k` distinct elements (fewer if the array is shorter), in random order. */
  readonly sample: <A>(items: ReadonlyArray<A>, k: number) => Array<A>
  /** `n` random bytes. */
  readonly bytes: (n: number) => Uint8Array
}

/** splitmix32: a 32-bit state, a Weyl sequence through a good mixer. */
export const make = (seed: number): Prng => {
  let state = seed >>> 0
  const nextUint32 = () => {
    state = (state + 0x9e3779b9) >>> 0
    let z = state
    z = Math.imul(z ^ (z >>> 16), 0x21f0aaad)
    z = Math.imul(z ^ (z >>> 15), 0x735a2d97)
    return (z ^ (z >>> 15)) >>> 0
  }
  const next = () => nextUint32() / 4294967296
  const int = (n: number) => {
    if (!Number.isInteger(n) || n <= 0) throw new Error(`Prng.int: n must be a positive integer, got ${n}`)
    return Math.floor(next() * n)
  }
  const pick = <A>(items: ReadonlyArray<A>): A => {
    if (items.length === 0) throw new Error("Prng.pick: empty array")
    return items[int(items.length)]!
  }
  return {
    next,
    int,
    between: (lo, hi) => lo + int(hi - lo + 1),
    chance: (p) => next() < p,
    pick,
    weighted: <K extends string>(weights: Readonly<Record<K, number>>): K => {
      const entries = Object.entries(weights) as Array<[K, number]>
      const total = entries.reduce((sum, [, w]) => sum + w, 0)
      if (!(total > 0)) throw new Error("Prng.weighted: no positive weight")
      let roll = next() * total
      for (const [key, w] of entries) {
        if (roll < w) return key
        roll -= w
      }
      return entries[entries.length - 1]![0]
    },
    sample: <A>(items: ReadonlyArray<A>, k: number): Array<A> => {
      const copy = [...items]
      for (let i = copy.length - 1; i > 0; i--) {
        const j = int(i + 1)
        ;[copy[i], copy[j]] = [copy[j]!, copy[i]!]
      }
      return copy.slice(0, Math.max(0, k))
    },
    bytes: (n) => {
      const out = new Uint8Array(n)
      for (let i = 0; i < n; i += 4) {
        const word = nextUint32()
        for (let b = 0; b < 4 && i + b < n; b++) out[i + b] = (word >>> (8 * b)) & 0xff
      }
      return out
    }
  }
}
