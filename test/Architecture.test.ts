/**
 * The layout rules of ARCHITECTURE.md, checked on the source: no import cycle in `src/`; the
 * pure domain imports no services or adapters; ports and programs (`services/`) import no
 * adapter (`layers/`) and, transitively, no driver (SQLite, Postgres, WebSocket, RPC, ts-mls).
 */
import { describe, expect, it } from "@effect/vitest"
import * as fs from "node:fs"
import * as path from "node:path"

const root = path.resolve(import.meta.dirname, "../src")

const sourceFiles = (dir: string): Array<string> =>
  fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name)
    return entry.isDirectory() ? sourceFiles(full) : entry.name.endsWith(".ts") ? [full] : []
  })

/** Static imports and re-exports (type-only ones too: they still tie modules together). */
const IMPORT = /(?:^|\n)\s*(?:import|export)\s[^"']*?from\s+["']([^"']+)["']/g

const importsOf = (file: string): Array<string> =>
  Array.from(fs.readFileSync(file, "utf8").matchAll(IMPORT), (m) => m[1]!)

const graph = new Map<string, { readonly local: Array<string>; readonly packages: Array<string> }>(
  sourceFiles(root).map((file) => {
    const specifiers = importsOf(file)
    return [file, {
      local: specifiers.filter((s) => s.startsWith(".")).map((s) => path.resolve(path.dirname(file), s)),
      packages: specifiers.filter((s) => !s.startsWith(".") && !s.startsWith("node:"))
    }]
  })
)

const relative = (file: string) => path.relative(root, file)

const findCycle = (): Array<string> | undefined => {
  const state = new Map<string, "visiting" | "done">()
  const stack: Array<string> = []
  const visit = (file: string): Array<string> | undefined => {
    if (state.get(file) === "done") return undefined
    if (state.get(file) === "visiting") return [...stack.slice(stack.indexOf(file)), file]
    state.set(file, "visiting")
    stack.push(file)
    for (const next of graph.get(file)?.local ?? []) {
      const cycle = visit(next)
      if (cycle !== undefined) return cycle
    }
    stack.pop()
    state.set(file, "done")
    return undefined
  }
  for (const file of graph.keys()) {
    const cycle = visit(file)
    if (cycle !== undefined) return cycle.map(relative)
  }
  return undefined
}

const closure = (file: string, seen = new Set<string>()): Set<string> => {
  if (seen.has(file)) return seen
  seen.add(file)
  for (const next of graph.get(file)?.local ?? []) closure(next, seen)
  return seen
}

const DRIVERS = ["@effect/sql-pg", "pg", "@effect/sql-sqlite-node", "better-sqlite3", "ws", "@effect/rpc", "@effect/platform-node", "ts-mls"]

const inFolder = (folder: string) => [...graph.keys()].filter((f) => relative(f).startsWith(`${folder}/`))

describe("source layout", () => {
  it("has no import cycle", () => {
    expect(findCycle()).toBeUndefined()
  })

  it("keeps the domain pure: it imports no service and no adapter", () => {
    const offending = inFolder("domain").flatMap((file) =>
      (graph.get(file)?.local ?? [])
        .filter((target) => !relative(target).startsWith("domain/"))
        .map((target) => `${relative(file)} -> ${relative(target)}`)
    )
    expect(offending).toEqual([])
  })

  it("keeps ports and programs free of adapters and drivers", () => {
    const offending = inFolder("services").flatMap((file) => {
      const reached = [...closure(file)]
      const adapters = reached.filter((f) => relative(f).startsWith("layers/")).map(relative)
      const drivers = reached.flatMap((f) => graph.get(f)?.packages ?? []).filter((p) =>
        DRIVERS.some((d) => p === d || p.startsWith(`${d}/`))
      )
      return [...adapters, ...drivers].map((what) => `${relative(file)} reaches ${what}`)
    })
    expect(offending).toEqual([])
  })
})
