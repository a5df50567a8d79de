// Shared by the XMTP end-to-end suite and the benchmark: an EIP-191 signer on @noble/curves (no
// chain), `converge serve --xmtp-port` as a child process, SDK clients with fresh keys, and
// small waiting helpers.
import { secp256k1 } from "@noble/curves/secp256k1"
import { keccak_256 } from "@noble/hashes/sha3"
import { Client, IdentifierKind } from "@xmtp/node-sdk"
import { spawn } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..")

// @xmtp/node-sdk 5.5.0 asks `ApiUrls[env]` in `getInboxIdForIdentifier` whatever `apiUrl` says:
// for env "local" that is http://localhost:5556, so the server must listen there.
export const XMTP_PORT = 5556
export const API_URL = `http://localhost:${XMTP_PORT}`

const utf8 = (text) => new TextEncoder().encode(text)
const hex = (bytes) => Buffer.from(bytes).toString("hex")

/** An externally owned account: a fresh secp256k1 key signing EIP-191 personal messages. */
export const makeSigner = () => {
  const secretKey = secp256k1.utils.randomPrivateKey()
  const publicKey = secp256k1.getPublicKey(secretKey, false)
  const address = `0x${hex(keccak_256(publicKey.subarray(1)).subarray(12))}`
  return {
    address,
    signer: {
      type: "EOA",
      getIdentifier: () => ({ identifier: address, identifierKind: IdentifierKind.Ethereum }),
      signMessage: (message) => {
        const body = utf8(message)
        const digest = keccak_256(new Uint8Array([...utf8(`\x19Ethereum Signed Message:\n${body.length}`), ...body]))
        const signature = secp256k1.sign(digest, secretKey)
        return new Uint8Array([...signature.toCompactRawBytes(), signature.recovery + 27])
      }
    }
  }
}

/** A temporary folder removed at exit. */
export const tempDir = (prefix) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  process.on("exit", () => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

/**
 * `converge serve` (the built CLI) with the XMTP face on XMTP_PORT; resolves once both faces
 * listen. `store` is `{ db }` (SQLite file) or `{ postgres }` (URL).
 */
export const startServer = async (store, { quiet = true } = {}) => {
  const args = ["dist/bin.js", "serve", "--port", "0", "--xmtp-port", String(XMTP_PORT)]
  if (store.postgres !== undefined) args.push("--postgres", store.postgres)
  else args.push("--db", store.db)
  const child = spawn(process.execPath, args, { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] })
  let output = ""
  const collect = (chunk) => {
    output += chunk
    if (!quiet) process.stderr.write(chunk)
  }
  child.stdout.on("data", collect)
  child.stderr.on("data", collect)
  const rpcUrl = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`converge serve did not start:\n${output}`)), 30_000)
    const check = () => {
      const rpc = /delivery service on (\S+)/.exec(output)
      if (rpc && output.includes("XMTP V3 API")) {
        clearTimeout(timer)
        resolve(rpc[1])
      }
    }
    child.stdout.on("data", check)
    child.once("exit", (code) => {
      clearTimeout(timer)
      reject(new Error(`converge serve exited (${code}):\n${output}`))
    })
  })
  return {
    rpcUrl,
    output: () => output,
    stop: () =>
      new Promise((resolve) => {
        if (child.exitCode !== null) return resolve()
        child.once("exit", () => resolve())
        child.kill("SIGTERM")
        setTimeout(() => child.kill("SIGKILL"), 5000).unref()
      })
  }
}

/** An SDK client with a fresh wallet, on the local server, its database in `dir`. */
export const newClient = async (name, dir, options = {}) => {
  const { address, signer } = makeSigner()
  const client = await Client.create(signer, {
    env: "local",
    apiUrl: API_URL,
    dbPath: path.join(dir, `${name}-${address}.db3`),
    dbEncryptionKey: crypto.getRandomValues(new Uint8Array(32)),
    loggingLevel: "Error",
    ...options
  })
  return Object.assign(client, { label: name, address })
}

/** Retries `check` until it returns a truthy value or `millis` pass; fails with `what`. */
export const eventually = async (what, check, millis = 20_000) => {
  const deadline = Date.now() + millis
  let last
  while (Date.now() < deadline) {
    try {
      const value = await check()
      if (value) return value
    } catch (e) {
      last = e
    }
    await new Promise((r) => setTimeout(r, 200))
  }
  throw new Error(`timed out: ${what}${last ? ` (last error: ${last.message ?? last})` : ""}`)
}

/** The texts of a conversation's messages, oldest first. */
export const texts = async (conversation) =>
  (await conversation.messages()).filter((m) => typeof m.content === "string").map((m) => m.content)

/** Collects what an async stream yields into `into`, in the background. */
export const collect = (stream, into) => {
  ;(async () => {
    try {
      for await (const item of stream) into.push(item)
    } catch {
      // ended
    }
  })()
  return into
}
