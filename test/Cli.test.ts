/**
 * The command line as a user runs it: `converge serve` in one process, two profiles talking
 * through it from others, and a server restart that loses nothing it stored. Every command
 * runs the built package from a folder outside the repository.
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as path from "node:path"
import * as Cli from "./support/Cli.ts"

beforeAll(Cli.ensureBuilt, 120_000)

describe("converge CLI", () => {
  it.live("two profiles chat through `converge serve`; a server restart loses nothing stored", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = yield* Cli.tempDir
      const at = { cwd: dir }
      const ok = (...args: ReadonlyArray<string>) => Cli.ok(at, args)
      const converge = (...args: ReadonlyArray<string>) => Cli.run(at, args)
      const startServer = (db: string, port = 0) => Cli.startServer(at, ["--port", String(port), "--db", db])
      const db = path.join(dir, "ds.sqlite")
      const alice = path.join(dir, "alice")
      const bob = path.join(dir, "bob")

      const server = yield* Effect.scoped(Effect.gen(function*() {
        const { url } = yield* startServer(db)
        const aliceInbox = yield* ok("init", "--profile", alice, "--server", url)
        const bobInbox = yield* ok("init", "--profile", bob, "--server", url)
        expect(aliceInbox).toMatch(/^[0-9a-f]{64}$/)
        expect(yield* ok("whoami", "--profile", bob)).toBe(bobInbox)

        const group = yield* ok("group", "create", "--profile", alice, "--name", "Ropes & knots", bobInbox)
        yield* ok("send", "--profile", alice, group, "hello bob")
        expect(yield* ok("sync", "--profile", bob)).toContain("joined 1")
        expect(yield* ok("conversations", "--profile", bob)).toBe(`${group}  group  active  Ropes & knots`)
        yield* ok("send", "--profile", bob, group, "hello alice")
        const seenByAlice = yield* ok("messages", "--profile", alice, group)
        expect(seenByAlice).toMatch(/hello bob[\s\S]*hello alice/)
        // Sent now, read by bob only after the server restarts.
        yield* ok("send", "--profile", alice, group, "stored before the restart")
        return { url, group }
      }))

      const port = new URL(server.url).port
      yield* Effect.scoped(Effect.gen(function*() {
        yield* startServer(db, Number(port))
        const seenByBob = yield* ok("messages", "--profile", bob, server.group)
        expect(seenByBob).toMatch(/hello bob[\s\S]*hello alice[\s\S]*stored before the restart/)

        const bad = yield* converge("send", "--profile", bob, "f".repeat(32), "to nowhere")
        expect(bad.code).toBe(1)
        expect(bad.stderr.trim().split("\n")).toEqual([
          `error: ConversationNotFound: conversation ${"f".repeat(32)} not found`
        ])
        const help = yield* converge("group", "add", "--help")
        expect(help.code).toBe(0)
        expect(help.stdout).toContain("conversation-id")
      }))
    })), { timeout: 180_000 })
})
