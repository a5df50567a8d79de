/**
 * Runs the `converge` command as a user does: the built JavaScript (`bin/converge` runs
 * `dist/bin.js`), as a child process whose working folder is outside the repository.
 */
import { Effect } from "effect"
import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

const root = path.resolve(import.meta.dirname, "../..")
export const bin = path.join(root, "bin/converge")

const newestMtime = (dir: string): number =>
  fs.readdirSync(dir, { withFileTypes: true }).reduce((newest, entry) => {
    const full = path.join(dir, entry.name)
    const mtime = entry.isDirectory() ? newestMtime(full) : fs.statSync(full).mtimeMs
    return Math.max(newest, mtime)
  }, 0)

/**
 * The CLI tests exercise `dist/`: rebuild it when any source file is newer, so a test never
 * passes or fails on yesterday's build.
 */
export const ensureBuilt = () => {
  const entry = path.join(root, "dist/bin.js")
  const built = fs.existsSync(entry) ? fs.statSync(entry).mtimeMs : 0
  if (built < newestMtime(path.join(root, "src"))) {
    execFileSync("npm", ["run", "build"], { cwd: root, stdio: "ignore" })
  }
}

/** A fresh folder outside the repository, removed with the scope. */
export const tempDir = Effect.acquireRelease(
  Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "converge-cli-"))),
  (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
)

export interface Run {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

export interface RunOptions {
  readonly cwd: string
  readonly env?: Record<string, string>
}

/** The environment of every run: no colour, no settings inherited from the developer's shell. */
const baseEnv = () => {
  const env: Record<string, string> = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (value !== undefined && !key.startsWith("CONVERGE_")) env[key] = value
  }
  return { ...env, NO_COLOR: "1" }
}

/** Runs one command; resolves with its exit code and output, whatever the code. */
export const run = (options: RunOptions, args: ReadonlyArray<string>) =>
  Effect.async<Run>((resume) => {
    execFile(
      bin,
      args,
      { cwd: options.cwd, env: { ...baseEnv(), ...options.env }, timeout: 60_000 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : 1
        resume(Effect.succeed({ code, stdout, stderr }))
      }
    )
  })

/** Runs one command that must succeed; its trimmed stdout. */
export const ok = (options: RunOptions, args: ReadonlyArray<string>) =>
  run(options, args).pipe(
    Effect.filterOrDieMessage((r) => r.code === 0, `converge ${args.join(" ")} failed`),
    Effect.map((r) => r.stdout.trim())
  )

/** Runs `converge serve` in the scope and waits for the line with its URL. */
export const startServer = (options: RunOptions, args: ReadonlyArray<string>) =>
  Effect.acquireRelease(
    Effect.async<{ readonly process: ChildProcess; readonly url: string }>((resume) => {
      const child = spawn(bin, ["serve", ...args], {
        cwd: options.cwd,
        env: { ...baseEnv(), ...options.env },
        stdio: ["ignore", "pipe", "pipe"]
      })
      let output = ""
      const onData = (chunk: Buffer) => {
        output += chunk.toString()
        const match = /on (http:\/\/\S+)/.exec(output)
        if (match !== null) resume(Effect.succeed({ process: child, url: match[1]! }))
      }
      child.stdout.on("data", onData)
      child.stderr.on("data", (chunk: Buffer) => {
        output += chunk.toString()
      })
      child.on("exit", (code) => resume(Effect.dieMessage(`converge serve exited with ${code}: ${output}`)))
    }),
    ({ process }) =>
      Effect.async<void>((resume) => {
        if (process.exitCode !== null || process.signalCode !== null) return resume(Effect.void)
        process.on("exit", () => resume(Effect.void))
        process.kill("SIGTERM")
      })
  )

/** A scratch directory with the command bound to it: `ok` for a success's output, `converge` for any run. */
export const workspace = Effect.gen(function*() {
  const dir = yield* tempDir
  const at = { cwd: dir }
  return {
    dir,
    ok: (...args: ReadonlyArray<string>) => ok(at, args),
    converge: (...args: ReadonlyArray<string>) => run(at, args),
    startServer: (db: string, port = 0) => startServer(at, ["--port", String(port), "--db", db])
  }
})
