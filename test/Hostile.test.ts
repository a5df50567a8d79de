/**
 * Issue 11's attacks, replayed against a real `converge serve` process on loopback (SQLite in a
 * temp dir), the way an attacker would make them: reads that need no account are made without
 * one; writes are tried without an account (refused at the door) and then with one, a
 * registered installation signing its requests as any client does, which the byte, page, filter
 * and rate caps must still bound. After each attack the server is still up, a normal request
 * answers within a second, and its resident memory stays under 1 GiB. Every loop is bounded in
 * count and time; the timeouts of the server are shortened so the suite stays short.
 */
import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { toHex } from "../src/domain/Bytes.ts"
import type { GroupId } from "../src/domain/Ids.ts"
import { AUTH_HEADER, RequestAuthJson, requestDigests, signRequest } from "../src/domain/RequestAuth.ts"
import { defaultRateLimit } from "../src/layers/RequestAuthenticator.ts"
import {
  type InstallationKeys,
  mlsPayload,
  mlsPayloadOfSize,
  newInbox,
  newInstallationKeys
} from "./support/DeliveryFixtures.ts"
import { WebSocket, type WsClient } from "./support/RawWebSocket.ts"

const bin = path.resolve(import.meta.dirname, "../bin/converge")
const MiB = 1024 * 1024
const GiB = 1024 * MiB

/** The limits this server runs with: defaults, except short timeouts and a small connection cap. */
const MAX_CONNECTIONS = 100
const TIMEOUT_SECONDS = 2
/** Topics all subscriptions may follow together: one full subscription and a half. */
const MAX_SUBSCRIBED_TOPICS = 1500


interface Server {
  readonly process: ChildProcess
  readonly url: string
  readonly port: number
  readonly dir: string
  output: string
}
let server: Server

const startServer = (dir: string) =>
  new Promise<Server>((resolve, reject) => {
    const child = spawn(bin, [
      "serve", "--port", "0", "--db", path.join(dir, "ds.sqlite"),
      "--max-connections", String(MAX_CONNECTIONS),
      "--max-subscribed-topics", String(MAX_SUBSCRIBED_TOPICS),
      "--headers-timeout", String(TIMEOUT_SECONDS),
      "--request-timeout", String(TIMEOUT_SECONDS),
      "--idle-timeout", String(TIMEOUT_SECONDS),
      "--slow-reader-timeout", String(TIMEOUT_SECONDS)
    ], { stdio: ["ignore", "pipe", "pipe"] })
    const started: Partial<Server> & { output: string } = { process: child, dir, output: "" }
    const timer = setTimeout(() => reject(new Error(`no URL from converge serve: ${started.output}`)), 30_000)
    const onData = (chunk: Buffer) => {
      started.output += chunk.toString()
      const match = /on (http:\/\/\S+)/.exec(started.output)
      if (match !== null && started.url === undefined) {
        clearTimeout(timer)
        const url = match[1]!
        resolve(Object.assign(started, { url, port: Number(new URL(url).port) }) as Server)
      }
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.on("exit", (code) => reject(new Error(`converge serve exited with ${code}: ${started.output}`)))
  })

beforeAll(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-hostile-"))
  server = await startServer(dir)
}, 40_000)

afterAll(async () => {
  if (server === undefined) return
  await new Promise<void>((resolve) => {
    if (server.process.exitCode !== null) return resolve()
    server.process.on("exit", () => resolve())
    server.process.kill("SIGTERM")
  })
  fs.rmSync(server.dir, { recursive: true, force: true })
})

// ---- measuring ----

const rssBytes = (): number => {
  const status = fs.readFileSync(`/proc/${server.process.pid}/status`, "utf8")
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) * 1024
}

const randomHex = (bytes: number) => toHex(crypto.getRandomValues(new Uint8Array(bytes)))
const randomGroup = () => randomHex(16) as GroupId

/**
 * A request the server refuses before reading its body (413): depending on timing, the client
 * reads the 413 or finds the connection closed under its upload. Either is the refusal.
 */
const postRefused = async (body: string) => {
  try {
    return (await post(body)).status
  } catch (error) {
    const code = (error as { cause?: { code?: string } }).cause?.code
    if (code === "EPIPE" || code === "ECONNRESET") return 413
    throw error
  }
}

/** One RPC over HTTP with a raw ndjson body; the status, the last line parsed, and the time it took. */
const post = async (body: string, timeoutMillis = 15_000) => {
  const started = performance.now()
  const response = await fetch(server.url, {
    method: "POST",
    headers: { "content-type": "application/ndjson" },
    body,
    signal: AbortSignal.timeout(timeoutMillis)
  })
  const text = await response.text()
  const lines = text.trim().split("\n").filter((l) => l.length > 0)
  return {
    status: response.status,
    last: lines.length > 0 ? JSON.parse(lines[lines.length - 1]!) : undefined,
    bytes: text.length,
    millis: performance.now() - started
  }
}

const request = (tag: string, payload: unknown, headers: ReadonlyArray<readonly [string, string]> = []) =>
  JSON.stringify({ _tag: "Request", id: "1", tag, payload, headers }) + "\n"

/** The exit of a call the service refused with `reason`. */
const refusedWith = (reason: string) => ({
  _tag: "Exit",
  exit: { _tag: "Failure", cause: { _tag: "Fail", error: { _tag: "DeliveryError", reason } } }
})
const succeeded = { _tag: "Exit", exit: { _tag: "Success" } }

/** A normal request (one page of an empty topic) and how long it took; it must succeed. */
const probe = async () => {
  const answer = await post(request("queryGroupMessages", { query: { groupId: randomHex(16), afterSequenceId: "0" } }), 5000)
  expect(answer.last).toMatchObject({ _tag: "Exit", exit: { _tag: "Success" } })
  return answer.millis
}

/** The measures reported after an attack: the probe's time and the server's memory. */
const afterAttack = async (name: string) => {
  expect(server.process.exitCode).toBeNull()
  const millis = await probe()
  const rss = rssBytes()
  console.log(`[hostile] ${name}: normal request ${millis.toFixed(0)} ms, server RSS ${(rss / MiB).toFixed(0)} MiB`)
  expect(millis).toBeLessThan(1000)
  expect(rss).toBeLessThan(GiB)
}

/**
 * A `subscribeGroupMessages` POST on a connection of its own, read for `millis` or until its
 * exit: the exit if the server ended it (a refusal), none while it is open.
 */
const subscribeOnSocket = (filters: ReadonlyArray<{ groupId: string; afterSequenceId: string }>, millis: number) =>
  new Promise<{ socket: net.Socket; exit: any }>((resolve) => {
    const body = request("subscribeGroupMessages", { filters })
    let text = ""
    const socket = net.connect(server.port, "127.0.0.1", () =>
      socket.write(
        `POST /rpc HTTP/1.1\r\nhost: x\r\ncontent-type: application/ndjson\r\n` +
          `content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
      ))
    const done = (exit: unknown) => {
      clearTimeout(timer)
      socket.off("data", onData)
      resolve({ socket, exit })
    }
    const onData = (chunk: Buffer) => {
      text += chunk.toString()
      const line = text.split("\n").find((l) => l.startsWith("{") && l.includes(`"_tag":"Exit"`))
      if (line !== undefined) done(JSON.parse(line))
    }
    const timer = setTimeout(() => done(undefined), millis)
    socket.on("data", onData)
    socket.on("error", () => {})
  })

// ---- attackers with an account ----

/** A new inbox with one installation, registered the way any user registers (proof of possession). */
const register = async (): Promise<InstallationKeys> => {
  const installation = newInstallationKeys()
  const inbox = newInbox()
  for (const update of [inbox.create(), inbox.add(installation)]) {
    const stored = await post(request("publishIdentityUpdate", { update }))
    expect(stored.last).toMatchObject(succeeded)
  }
  return installation
}

const encodeAuth = Schema.encodeSync(RequestAuthJson)

/** A sendGroupMessages body, signed now by `sender` as its client would sign it (unsigned without one). */
const sendGroup = (groupId: GroupId, payloads: ReadonlyArray<Uint8Array>, sender?: InstallationKeys) => {
  const messages = payloads.map((payload) => ({ groupId, payload }))
  const headers: Array<readonly [string, string]> = []
  if (sender !== undefined) {
    const digest = requestDigests.sendGroupMessages(messages)
    const nowNs = BigInt(Date.now()) * 1_000_000n
    headers.push([AUTH_HEADER, encodeAuth(signRequest(sender.id, sender.secretKey, "sendGroupMessages", digest, nowNs))])
  }
  const wire = messages.map((m) => ({ groupId, payload: Buffer.from(m.payload).toString("base64") }))
  return request("sendGroupMessages", { messages: wire }, headers)
}

const poisonedGroup = randomGroup()

/** A 1 MiB MLS message of the poisoned group, distinct per tag (identical payloads are stored once). */
const bigPayload = (tag: number) => mlsPayloadOfSize(poisonedGroup, MiB, `${tag}.${randomHex(4)}`)
const bigPayloads = (count: number, from = 0) => Array.from({ length: count }, (_, i) => bigPayload(from + i))

const sleep = (millis: number) => new Promise((resolve) => setTimeout(resolve, millis))

describe("converge serve under attack", () => {
  it.live("large payload batches, then a page of 100: refused without an account, bounded by bytes with one", () =>
    Effect.promise(async () => {
      const emptyPage = request("queryGroupMessages", { query: { groupId: poisonedGroup, afterSequenceId: "0" } })
      // Without an account, a batch under the body limit is refused before anything is stored.
      const anonymous = await post(sendGroup(poisonedGroup, bigPayloads(5)))
      expect(anonymous.last).toMatchObject(refusedWith("Unauthenticated"))
      expect((await post(emptyPage)).last.exit.value.items).toEqual([])
      // With one: the batch (ten 1 MiB payloads) is over the 8 MiB body limit.
      const attackers = [await register(), await register()]
      expect(await postRefused(sendGroup(poisonedGroup, bigPayloads(10), attackers[0]))).toBe(413)
      // Bytes that are not MLS messages of this group are refused too: no poisoning with junk.
      const junk = await post(sendGroup(poisonedGroup, [new Uint8Array(MiB).fill(7)], attackers[0]))
      expect(junk.last).toMatchObject(refusedWith("InvalidRequest"))
      const otherGroup = await post(sendGroup(poisonedGroup, [mlsPayloadOfSize(randomGroup(), MiB, 0)], attackers[0]))
      expect(otherGroup.last).toMatchObject(refusedWith("InvalidRequest"))
      expect((await post(emptyPage)).last.exit.value.items).toEqual([])
      // 100 MiB of well-formed messages stored in batches under the limit (by two accounts: one
      // stays within its byte burst), then the page that used to take 4.5 GB of heap.
      for (let batch = 0; batch < 20; batch++) {
        const sent = await post(sendGroup(poisonedGroup, bigPayloads(5, batch * 5), attackers[batch % 2]))
        expect(sent.last).toMatchObject(succeeded)
      }
      let peak = rssBytes()
      for (let round = 0; round < 5; round++) {
        const page = await post(request("queryGroupMessages", {
          query: { groupId: poisonedGroup, afterSequenceId: String(round * 4), limit: 100 }
        }))
        const items = page.last.exit.value.items as ReadonlyArray<{ payload: string }>
        expect(items.length).toBe(4)
        expect(page.last.exit.value.next).toBe(String(round * 4 + 4))
        console.log(`[hostile] page of 100 x 1 MiB asked: ${items.length} items, ${(page.bytes / MiB).toFixed(1)} MiB, ${page.millis.toFixed(0)} ms`)
        peak = Math.max(peak, rssBytes())
      }
      console.log(`[hostile] after 100 MiB stored and 5 pages read: peak RSS ${(peak / MiB).toFixed(0)} MiB`)
      await afterAttack("payload batches and a big page")
    }), 60_000)

  it.live("eight WebSockets asking 60 pages of 4 MiB each and reading nothing: their answers are refused, not held", () =>
    // The pages of the poisoned group, stored by the story before.
    Effect.promise(async () => {
      const before = rssBytes()
      let peak = before
      const sockets: Array<any> = []
      for (let c = 0; c < 8; c++) {
        const ws = new WebSocket(server.url.replace(/^http/, "ws")) as any
        await new Promise<void>((resolve) => ws.on("open", () => resolve()))
        ws.on("error", () => {})
        ws._socket.pause()
        for (let id = 1; id <= 60; id++) {
          const query = { groupId: poisonedGroup, afterSequenceId: String((id % 24) * 4) }
          ws.send(JSON.stringify({ _tag: "Request", id: String(id), tag: "queryGroupMessages", payload: { query }, headers: [] }))
        }
        sockets.push(ws)
      }
      for (let i = 0; i < 16; i++) {
        await sleep(250)
        peak = Math.max(peak, rssBytes())
      }
      for (const ws of sockets) ws.terminate()
      const grown = (peak - before) / MiB
      console.log(`[hostile] 8 WebSockets x 60 queries of 4 MiB pages, never read: server peak +${grown.toFixed(0)} MiB`)
      // Each holds at most what its socket may hold unread (16 MiB) and an answer in its turn;
      // before, every answer computed waited for the reader, holding its memory (+830 MiB).
      expect(grown).toBeLessThan(400)
      await afterAttack("WebSockets asking for large pages and reading nothing")
    }), 30_000)

  it.live("a WebSocket reading nothing and sending requests it is refused: dropped, not left to grow", () =>
    // Each malformed request is refused with an answer twice its size; refusals were written
    // outside the slow-reader watch, so the connection grew for as long as the client sent
    // (+930 MiB in 20 s, never dropped).
    Effect.promise(async () => {
      const before = rssBytes()
      let peak = before
      const ws = new WebSocket(server.url.replace(/^http/, "ws")) as any
      await new Promise<void>((resolve) => ws.on("open", () => resolve()))
      let closed = false
      ws.on("error", () => {})
      ws.on("close", () => closed = true)
      ws._socket.pause()
      const frame = (id: number) =>
        JSON.stringify({ _tag: "Request", id: String(id), tag: "queryGroupMessages", payload: {}, headers: "x" })
      const started = performance.now()
      let id = 0
      while (!closed && performance.now() - started < 8_000) {
        // Sent only as fast as the server reads: the growth is the server's, not this client's.
        if (ws.bufferedAmount < MiB) for (let i = 0; i < 2000; i++) ws.send(frame(++id))
        await sleep(20)
        peak = Math.max(peak, rssBytes())
      }
      ws.terminate()
      const grown = (peak - before) / MiB
      console.log(`[hostile] a WebSocket sending ${id} refused requests, reading nothing: server peak +${grown.toFixed(0)} MiB`)
      expect(closed, "the server still holds the connection").toBe(true)
      expect(grown).toBeLessThan(200)
      await afterAttack("a WebSocket sending refused requests and reading nothing")
    }), 30_000)

  it.live("a cursor of 48 million digits is refused at once, as is one of 7 million", () =>
    Effect.promise(async () => {
      const started = performance.now()
      const huge = await postRefused(request("queryGroupMessages", {
        query: { groupId: randomHex(16), afterSequenceId: "9".repeat(48_000_000) }
      }))
      const hugeMillis = performance.now() - started
      expect(huge).toBe(413)
      const underBody = await post(request("queryGroupMessages", {
        query: { groupId: randomHex(16), afterSequenceId: "9".repeat(7_000_000) }
      }))
      expect(underBody.last).toMatchObject({ _tag: "Exit", exit: { _tag: "Failure", cause: { _tag: "Die" } } })
      console.log(`[hostile] 48M-digit cursor: ${hugeMillis.toFixed(0)} ms (413); 7M digits: ${underBody.millis.toFixed(0)} ms (defect)`)
      expect(underBody.millis).toBeLessThan(1000)
      await afterAttack("48M-digit cursor")
    }), 30_000)

  it.live("a subscription to 45,000 groups is a typed refusal", () =>
    Effect.promise(async () => {
      const filters = Array.from({ length: 45_000 }, () => ({ groupId: randomHex(16), afterSequenceId: "0" }))
      const answer = await post(request("subscribeGroupMessages", { filters }))
      expect(answer.last).toMatchObject({
        _tag: "Exit",
        exit: { _tag: "Failure", cause: { _tag: "Fail", error: { _tag: "DeliveryError", reason: "LimitExceeded" } } }
      })
      console.log(`[hostile] subscribe to 45,000 groups: refused in ${answer.millis.toFixed(0)} ms`)
      await afterAttack("45,000-group subscription")
    }), 30_000)

  it.live("subscriptions past --max-subscribed-topics are refused at once, retryably; a closed one frees its topics", () =>
    Effect.promise(async () => {
      const thousandTopics = () => Array.from({ length: 1000 }, () => ({ groupId: randomHex(16), afterSequenceId: "0" }))
      const holder = await subscribeOnSocket(thousandTopics(), 500)
      expect(holder.exit).toBeUndefined()
      const refused = await subscribeOnSocket(thousandTopics(), 5000)
      refused.socket.destroy()
      expect(refused.exit).toMatchObject(refusedWith("LimitExceeded"))
      expect(refused.exit.exit.cause.error.retryable).toBe(true)
      expect(refused.exit.exit.cause.error.detail).toContain(`its limit of ${MAX_SUBSCRIBED_TOPICS}`)
      // The server lets go of the holder's topics once its connection closes.
      holder.socket.destroy()
      let again = await subscribeOnSocket(thousandTopics(), 500)
      for (let tries = 0; again.exit !== undefined && tries < 20; tries++) {
        again.socket.destroy()
        await sleep(250)
        again = await subscribeOnSocket(thousandTopics(), 500)
      }
      again.socket.destroy()
      expect(again.exit).toBeUndefined()
      await afterAttack("subscriptions past the server-wide topic bound")
    }), 30_000)

  it.live("300 idle WebSockets: the connection cap refuses the rest, the idle timeout closes the others", () =>
    Effect.promise(async () => {
      const wsUrl = server.url.replace(/^http/, "ws")
      const outcomes = await Promise.all(Array.from({ length: 300 }, () =>
        new Promise<{ readonly ws: WsClient; readonly opened: boolean }>((resolve) => {
          const ws = new WebSocket(wsUrl)
          const timer = setTimeout(() => resolve({ ws, opened: false }), 10_000)
          ws.on("open", () => (clearTimeout(timer), resolve({ ws, opened: true })))
          ws.on("unexpected-response", () => (clearTimeout(timer), resolve({ ws, opened: false })))
          ws.on("error", () => (clearTimeout(timer), resolve({ ws, opened: false })))
        })))
      const opened = outcomes.filter((o) => o.opened)
      console.log(`[hostile] 300 WebSockets against a cap of ${MAX_CONNECTIONS}: ${opened.length} open, ${300 - opened.length} refused`)
      expect(opened.length).toBeLessThanOrEqual(MAX_CONNECTIONS)
      // A few places may be held by keep-alive HTTP connections of the earlier tests.
      expect(opened.length).toBeGreaterThanOrEqual(MAX_CONNECTIONS - 10)
      // Idle: closed by the server after the idle timeout (2 s, checked here within 6 s).
      const closedAt = await Promise.all(opened.map(({ ws }) =>
        new Promise<number>((resolve) => {
          const started = performance.now()
          if (ws.readyState === 3) return resolve(0)
          const timer = setTimeout(() => resolve(Number.POSITIVE_INFINITY), 6000)
          ws.on("close", () => (clearTimeout(timer), resolve(performance.now() - started)))
        })))
      for (const { ws } of outcomes) ws.terminate()
      console.log(`[hostile] idle WebSockets closed by the server after at most ${Math.max(...closedAt).toFixed(0)} ms`)
      expect(Math.max(...closedAt)).toBeLessThan(6000)
      await afterAttack("300 idle WebSockets")
    }), 30_000)

  it.live("a slow request body and slow headers are cut off by the request timeout", () =>
    Effect.promise(async () => {
      const trickle = (head: string) =>
        new Promise<number>((resolve) => {
          const started = performance.now()
          const socket = net.connect(server.port, "127.0.0.1", () => socket.write(head))
          const drip = setInterval(() => socket.write("x"), 300)
          const give = setTimeout(() => (socket.destroy(), resolve(Number.POSITIVE_INFINITY)), 15_000)
          socket.on("error", () => {})
          socket.on("data", () => {})
          socket.on("close", () => {
            clearInterval(drip)
            clearTimeout(give)
            resolve(performance.now() - started)
          })
        })
      const [body, headers] = await Promise.all([
        trickle("POST /rpc HTTP/1.1\r\nhost: x\r\ncontent-type: application/ndjson\r\ncontent-length: 100000\r\n\r\n"),
        trickle("POST /rpc HTTP/1.1\r\nhost: x\r\nx-slow: ")
      ])
      console.log(`[hostile] slow body cut after ${body.toFixed(0)} ms, slow headers after ${headers.toFixed(0)} ms`)
      expect(body).toBeLessThan((TIMEOUT_SECONDS + 3) * 1000)
      expect(headers).toBeLessThan((TIMEOUT_SECONDS + 3) * 1000)
      await afterAttack("slow body and headers")
    }), 30_000)

  it.live("getIdentityUpdates asking 100 times for one long log answers a bounded page", () =>
    Effect.promise(async () => {
      // An inbox needs no account: its log is signed by its own root key, each added
      // installation proving possession of its key.
      const inbox = newInbox()
      const { inboxId } = inbox
      const entries = 300
      for (let i = 0; i < entries; i++) {
        const update = i === 0 ? inbox.create() : inbox.add(newInstallationKeys())
        const stored = await post(request("publishIdentityUpdate", { update }))
        expect(stored.last).toMatchObject({ exit: { _tag: "Success" } })
      }
      const queries = Array.from({ length: 100 }, () => ({ inboxId, afterSequence: 0 }))
      const answer = await post(request("getIdentityUpdates", { queries }))
      const logs = answer.last.exit.value as ReadonlyArray<{ updates: ReadonlyArray<unknown>; truncated?: boolean }>
      const total = logs.reduce((n, l) => n + l.updates.length, 0)
      console.log(
        `[hostile] 100 x one ${entries}-entry log: ${total} entries, ${(answer.bytes / 1024).toFixed(0)} KiB ` +
          `(unbounded: ${100 * entries} entries), ${answer.millis.toFixed(0)} ms`
      )
      expect(total).toBe(500)
      expect(logs.at(-1)?.truncated).toBe(true)
      const tooMany = await post(request("getIdentityUpdates", { queries: [...queries, ...queries] }))
      expect(tooMany.last).toMatchObject({ exit: { cause: { error: { reason: "BatchTooLarge" } } } })
      await afterAttack("100 x one identity log")
    }), 60_000)

  it.live("WebSocket messages of 100 MB are refused from their header, five at once", () =>
    Effect.promise(async () => {
      const before = rssBytes()
      const frame = Buffer.alloc(100 * 1000 * 1000)
      const wsUrl = server.url.replace(/^http/, "ws")
      const codes = await Promise.all(Array.from({ length: 5 }, () =>
        new Promise<{ readonly code: number; readonly millis: number }>((resolve) => {
          const ws = new WebSocket(wsUrl)
          let started = 0
          const timer = setTimeout(() => (ws.terminate(), resolve({ code: -1, millis: Number.POSITIVE_INFINITY })), 15_000)
          ws.on("open", () => {
            started = performance.now()
            ws.send(frame)
          })
          ws.on("error", () => {})
          ws.on("close", (code: number) => (clearTimeout(timer), resolve({ code, millis: performance.now() - started })))
        })))
      const after = rssBytes()
      console.log(
        `[hostile] 5 x 100 MB WebSocket messages: closed with ${codes.map((c) => c.code).join(",")} after at most ` +
          `${Math.max(...codes.map((c) => c.millis)).toFixed(0)} ms; RSS ${(before / MiB).toFixed(0)} -> ${(after / MiB).toFixed(0)} MiB`
      )
      for (const { code } of codes) expect(code === 1009 || code === 1006).toBe(true)
      expect(after - before).toBeLessThan(100 * MiB)
      await afterAttack("100 MB WebSocket messages")
    }), 30_000)

  it.live("HTTP subscribers that never read are cut off, holding bounded memory", () =>
    Effect.promise(async () => {
      const body = request("subscribeGroupMessages", { filters: [{ groupId: poisonedGroup, afterSequenceId: "0" }] })
      const sockets = Array.from({ length: 5 }, () => {
        const socket = net.connect(server.port, "127.0.0.1", () =>
          socket.write(
            `POST /rpc HTTP/1.1\r\nhost: x\r\ncontent-type: application/ndjson\r\n` +
              `content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
          ))
        socket.on("error", () => {})
        socket.pause()
        return socket
      })
      let peak = 0
      const started = performance.now()
      // The server cuts them after the slow-reader timeout (2 s) and logs it (within 1 s).
      while (!/refusal[:=] ?slowReader/.test(server.output) && performance.now() - started < 30_000) {
        peak = Math.max(peak, rssBytes())
        await sleep(250)
      }
      const cutAfter = performance.now() - started
      for (const socket of sockets) socket.destroy()
      console.log(`[hostile] 5 never-reading HTTP subscribers to 100 MiB: cut off after ${cutAfter.toFixed(0)} ms, peak RSS ${(peak / MiB).toFixed(0)} MiB`)
      expect(server.output).toMatch(/refusal[:=] ?slowReader/)
      expect(peak).toBeLessThan(GiB)
      await afterAttack("never-reading HTTP subscribers")
    }), 30_000)

  it.live("an installation flooding sends is rate limited; another installation's send still answers within 1 s", () =>
    Effect.promise(async () => {
      const [flooder, bystander] = [await register(), await register()]
      const group = randomGroup()
      const outcomes = { accepted: 0, rateLimited: 0, other: [] as Array<unknown> }
      let sent = 0
      let done = false
      const started = performance.now()
      // Eight connections sending small, well-formed, signed messages back to back: bounded
      // by count and time, and stopped once the bystander has its answer.
      const flood = async () => {
        while (!done && sent < 5000 && performance.now() - started < 30_000) {
          const answer = await post(sendGroup(group, [mlsPayload(group, `flood ${sent++}`)], flooder))
          if (answer.last?.exit?._tag === "Success") outcomes.accepted += 1
          else if (answer.last?.exit?.cause?.error?.reason === "RateLimited") {
            expect(answer.last.exit.cause.error.retryable).toBe(true)
            outcomes.rateLimited += 1
          } else outcomes.other.push(answer.last ?? answer.status)
        }
      }
      const flooding = Promise.all(Array.from({ length: 8 }, flood))
      while (outcomes.rateLimited === 0 && performance.now() - started < 30_000) await sleep(20)
      expect(outcomes.rateLimited).toBeGreaterThan(0)
      // While the flood goes on and is being refused, another installation sends as usual.
      const normal = await post(sendGroup(group, [mlsPayload(group, "hello from a bystander")], bystander), 5000)
      done = true
      await flooding
      const seconds = (performance.now() - started) / 1000
      console.log(
        `[hostile] flood of ${sent} sends in ${seconds.toFixed(1)} s: ${outcomes.accepted} accepted, ` +
          `${outcomes.rateLimited} rate limited; another installation's send ${normal.millis.toFixed(0)} ms`
      )
      expect(normal.last).toMatchObject(succeeded)
      expect(normal.millis).toBeLessThan(1000)
      expect(outcomes.other).toEqual([])
      // The burst, then the sustained rate: no more.
      const { requestBurst, requestsPerSecond } = defaultRateLimit
      expect(outcomes.accepted).toBeGreaterThanOrEqual(requestBurst)
      expect(outcomes.accepted).toBeLessThanOrEqual(requestBurst + Math.ceil(requestsPerSecond * seconds))
      // A refused send stored nothing: the topic holds the accepted ones and the bystander's.
      let stored = 0
      for (let cursor: string | undefined = "0"; cursor !== undefined;) {
        const page = await post(request("queryGroupMessages", { query: { groupId: group, afterSequenceId: cursor } }))
        stored += page.last.exit.value.items.length
        cursor = page.last.exit.value.next
      }
      expect(stored).toBe(outcomes.accepted + 1)
      await afterAttack("send flood by one installation")
    }), 60_000)

  it.live("refusals are logged at Info, one line per class and interval", () =>
    Effect.promise(async () => {
      await sleep(1500)
      const classes = Array.from(server.output.matchAll(/refusal[:=] ?(\w+)/g), (m) => m[1]!)
      const counts = new Map<string, number>()
      for (const c of classes) counts.set(c, (counts.get(c) ?? 0) + 1)
      console.log(`[hostile] refusal log lines: ${JSON.stringify(Object.fromEntries(counts))}`)
      const kinds = [
        "bodyTooLarge",
        "LimitExceeded",
        "connections",
        "idleWebSocket",
        "messageTooLarge",
        "Unauthenticated",
        "InvalidRequest",
        "RateLimited"
      ]
      for (const kind of kinds) expect(counts.get(kind) ?? 0, kind).toBeGreaterThan(0)
      // 200 refused connections in one burst, hundreds of rate-limited sends in a few seconds:
      // a line or two, not one per refusal.
      expect(counts.get("connections")).toBeLessThanOrEqual(3)
      expect(counts.get("RateLimited")).toBeLessThanOrEqual(3)
    }), 10_000)
})
