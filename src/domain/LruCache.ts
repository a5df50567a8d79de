/**
 * A bounded cache for the adapters' hot lookups (parsed keys, verified key packages, prepared
 * statements): plain synchronous code, no effects, so a hit costs a Map lookup.
 */

/** A Map that forgets its least recently used entry beyond `capacity`. */
export class LruCache<V> {
  private readonly entries = new Map<string, V>()
  constructor(readonly capacity: number) {}

  get(key: string): V | undefined {
    const value = this.entries.get(key)
    if (value !== undefined) {
      this.entries.delete(key)
      this.entries.set(key, value)
    }
    return value
  }

  set(key: string, value: V): void {
    this.entries.delete(key)
    if (this.entries.size >= this.capacity) {
      const oldest = this.entries.keys().next()
      if (oldest.done !== true) this.entries.delete(oldest.value)
    }
    this.entries.set(key, value)
  }

  delete(key: string): void {
    this.entries.delete(key)
  }

  get size(): number {
    return this.entries.size
  }
}
