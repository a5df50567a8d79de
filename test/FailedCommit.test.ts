/**
 * A commit the disk refuses is a typed failure of the store, not a defect: @effect/sql runs COMMIT
 * under `orDie`, and a full disk shows up there, when SQLite writes the transaction's log.
 * Each story runs `test/support/FullDiskStore.ts` in its own process under a file-size limit
 * (`ulimit -f`: a write past it fails as on a full disk).
 */
import { describe, expect, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

interface Refusal {
  readonly attempt: number
  readonly defect: boolean
  readonly tag?: string
  readonly message: string
  /** The client's storage only: whether the refused transaction's row is there. */
  readonly refusedRowStored?: boolean
}

/** Runs the program for `kind` with files limited to 2 MiB; its one JSON line. */
const onFullDisk = (kind: "storage" | "delivery") =>
  new Promise<Refusal>((resolve, reject) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-full-"))
    const repo = path.resolve(import.meta.dirname, "..")
    const program = path.join(repo, "test/support/FullDiskStore.ts")
    const child = spawn("bash", ["-c", `ulimit -f 2048 && exec "$0" --import tsx "$1" "$2" "$3"`, process.execPath, program, dir, kind], {
      cwd: repo,
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    let errors = ""
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (errors += chunk.toString()))
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000)
    child.on("exit", (code) => {
      clearTimeout(timer)
      fs.rmSync(dir, { recursive: true, force: true })
      const line = output.trim().split("\n").at(-1) ?? ""
      if (code !== 0 || !line.startsWith("{")) return reject(new Error(`exit ${code}: ${output}${errors}`))
      resolve(JSON.parse(line) as Refusal)
    })
  })

describe("a full disk", () => {
  it("the client's storage: the transaction fails with a StorageError, and nothing of it is stored", async () => {
    const refusal = await onFullDisk("storage")
    // Some transactions fit first; the one that does not is refused at its commit.
    expect(refusal.attempt).toBeGreaterThan(0)
    expect(refusal).toMatchObject({ defect: false, tag: "StorageError", refusedRowStored: false })
  }, 90_000)

  it("the delivery store: the append fails with a DeliveryStoreError", async () => {
    const refusal = await onFullDisk("delivery")
    expect(refusal.attempt).toBeGreaterThan(0)
    expect(refusal).toMatchObject({ defect: false, tag: "DeliveryStoreError" })
  }, 90_000)
})
