/**
 * The command line as a user runs it: `converge serve` in one process, two profiles talking
 * through it from others, and a server restart that loses nothing it stored.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { type ChildProcess, execFile, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

const bin = path.resolve(import.meta.dirname, "../bin/converge")

/** Runs one CLI command; resolves with its exit code and output. */
const converge = (...args: ReadonlyArray<string>) =>
  Effect.async<{ readonly code: number; readonly stdout: string; readonly stderr: string }>((resume) => {
    execFile(bin, args, { timeout: 60_000 }, (error, stdout, stderr) => {
      resume(Effect.succeed({ code: error === null ? 0 : (error.code as number | undefined) ?? 1, stdout, stderr }))
    })
  })

const ok = (...args: ReadonlyArray<string>) =>
  converge(...args).pipe(
    Effect.filterOrDieMessage((r) => r.code === 0, `converge ${args.join(" ")} failed`),
    Effect.map((r) => r.stdout.trim())
  )

/** Starts `converge serve` and waits for the line with its URL. */
const startServer = (db: string, port = 0) =>
  Effect.acquireRelease(
    Effect.async<{ readonly process: ChildProcess; readonly url: string }>((resume) => {
      const child = spawn(bin, ["serve", "--port", String(port), "--db", db], { stdio: ["ignore", "pipe", "pipe"] })
      let output = ""
      child.stdout.on("data", (chunk: Buffer) => {
        output += chunk.toString()
        const match = /on (http:\/\/\S+)/.exec(output)
        if (match !== null) resume(Effect.succeed({ process: child, url: match[1]! }))
      })
      child.on("exit", (code) => resume(Effect.dieMessage(`converge serve exited with ${code}: ${output}`)))
    }),
    ({ process }) =>
      Effect.async<void>((resume) => {
        if (process.exitCode !== null) return resume(Effect.void)
        process.on("exit", () => resume(Effect.void))
        process.kill("SIGTERM")
      })
  )

describe("converge CLI", () => {
  it.live("two profiles chat through `converge serve`; a server restart loses nothing stored", () =>
    Effect.scoped(Effect.gen(function*() {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-cli-"))
      yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true })))
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
