/**
 * A client never freezes while it makes HPKE keys: every commit and welcome it seals generates one.
 *
 * On Node 20, exporting a key fresh from `generateKeyPairSync` as JWK can deadlock the process: the
 * export holds the key's mutex while it allocates, a garbage collection in that allocation may
 * collect the generating job, and the job's destructor takes the same mutex. The main thread then
 * waits on itself for good, with no error and no CPU (a full bench run froze on it). The node:crypto
 * provider now makes its X25519 keys from random bytes it imports, which no job ever shares.
 */
import { describe, expect, it } from "@effect/vitest"
import { x25519 } from "@noble/curves/ed25519.js"
import { spawn } from "node:child_process"
import * as path from "node:path"
import { toHex } from "../src/domain/Bytes.ts"
import { nodeCiphersuite } from "../src/layers/NodeCiphersuite.ts"

const repo = path.resolve(import.meta.dirname, "..")

/** `test/support/KeyPairLoop.ts` in its own Node process; whether it finished within `limitMs`. */
const generateInChild = (count: number, flags: ReadonlyArray<string>, limitMs: number) =>
  new Promise<{ readonly finished: boolean; readonly output: string }>((resolve) => {
    const child = spawn(process.execPath, [...flags, "--import", "tsx", path.join(repo, "test/support/KeyPairLoop.ts"), String(count)], {
      cwd: repo,
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()))
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()))
    // A deadlocked process never exits by itself.
    const timer = setTimeout(() => child.kill("SIGKILL"), limitMs)
    child.on("exit", (code) => {
      clearTimeout(timer)
      resolve({ finished: code === 0, output: output.trim() })
    })
  })

describe("generating HPKE key pairs", () => {
  it("a client that generates 100,000 key pairs with a 1 MiB young generation (a collection every few hundred pairs) never freezes", async () => {
    // Before the fix, 4 runs of 4 froze within these 100,000 (and most within a few thousand).
    const run = await generateInChild(100_000, ["--max-semi-space-size=1"], 60_000)
    expect(run).toEqual({ finished: true, output: "done" })
  }, 90_000)

  it("a generated key pair is what X25519 says: the private key clamped as OpenSSL clamps it, the public key its product with the base point", async () => {
    for (let i = 0; i < 20; i++) {
      const { privateKey, publicKey } = await nodeCiphersuite.hpke.generateKeyPair()
      const secret = await nodeCiphersuite.hpke.exportPrivateKey(privateKey)
      expect(secret.length).toBe(32)
      expect([secret[0]! & 7, secret[31]! & 0xc0]).toEqual([0, 0x40])
      expect(toHex(await nodeCiphersuite.hpke.exportPublicKey(publicKey))).toBe(toHex(x25519.getPublicKey(secret)))
    }
  })
})
