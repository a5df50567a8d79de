/**
 * A commit the disk refuses is a typed failure of the store, not a defect: @effect/sql runs COMMIT
 * under `orDie`, and a full disk shows up there, when SQLite writes the transaction's log.
 * Each story runs `test/support/FullDiskStore.ts` in its own process under a file-size limit
 * (`ulimit -f`: a write past it fails as on a full disk).
 */
import { describe, expect, it } from "@effect/vitest"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { runTestProgram } from "./support/TestProgram.ts"

interface Refusal {
  readonly attempt: number
  readonly defect: boolean
  readonly tag?: string
  readonly message: string
  /** The client's storage only: whether the refused transaction's row is there. */
  readonly refusedRowStored?: boolean
}

/** Runs the program for `kind` with files limited to 2 MiB; its one JSON line. */
const onFullDisk = async (kind: "storage" | "storage-lane" | "delivery"): Promise<Refusal> => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-full-"))
  try {
    const run = await runTestProgram("FullDiskStore.ts", [dir, kind], { fileSizeLimitKiB: 2048 })
    const line = run.stdout.trim().split("\n").at(-1) ?? ""
    if (run.code !== 0 || !line.startsWith("{")) throw new Error(`exit ${run.code}: ${run.stdout}${run.stderr}`)
    return JSON.parse(line) as Refusal
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

describe("a full disk", () => {
  it.each([
    ["the client's storage", "storage"],
    ["the client's storage over SqliteConnection (its own transactions)", "storage-lane"]
  ] as const)("%s: the transaction fails with a StorageError, and nothing of it is stored", async (_, kind) => {
    const refusal = await onFullDisk(kind)
    // Some transactions fit first; the one that does not is refused at its commit.
    expect(refusal.attempt).toBeGreaterThan(0)
    expect(refusal).toMatchObject({ defect: false, tag: "StorageError", refusedRowStored: false })
    // The error says what SQLite said, not only "Failed to execute statement".
    expect(refusal.message).toMatch(/SQLITE_(FULL|IOERR)/)
  }, 90_000)

  it("the delivery store: the append fails with a DeliveryStoreError", async () => {
    const refusal = await onFullDisk("delivery")
    expect(refusal.attempt).toBeGreaterThan(0)
    expect(refusal).toMatchObject({ defect: false, tag: "DeliveryStoreError" })
    expect(refusal.message).toMatch(/SQLITE_(FULL|IOERR)/)
  }, 90_000)
})
