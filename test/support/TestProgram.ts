/**
 * Runs one of the test programs under `test/support` in a process of its own (Node with tsx), for
 * stories that need what only a fresh process shows: how it exits, or a resource limit.
 */
import { spawn } from "node:child_process"
import * as path from "node:path"

export interface ProgramRun {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

const repo = path.resolve(import.meta.dirname, "../..")

/**
 * `test/support/<name>` with `args`; killed after 60 s. With `fileSizeLimitKiB`, its files cannot
 * grow past that (`ulimit -f`): a write beyond fails as on a full disk.
 */
export const runTestProgram = (
  name: string,
  args: ReadonlyArray<string>,
  options: { readonly fileSizeLimitKiB?: number } = {}
) =>
  new Promise<ProgramRun>((resolve) => {
    const node = [process.execPath, "--import", "tsx", path.join(repo, "test/support", name), ...args]
    const child = options.fileSizeLimitKiB === undefined
      ? spawn(node[0]!, node.slice(1), { cwd: repo, stdio: ["ignore", "pipe", "pipe"] })
      : spawn("bash", ["-c", `ulimit -f ${options.fileSizeLimitKiB} && exec "$@"`, "bash", ...node], {
        cwd: repo,
        stdio: ["ignore", "pipe", "pipe"]
      })
    let stdout = ""
    let stderr = ""
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()))
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000)
    child.on("exit", (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
