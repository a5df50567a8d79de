// `npm run bench:xmtp`: the official XMTP SDK and Converge's own client against the same
// `converge serve` (SQLite, loopback), side by side. Figures only, no thresholds.
// BENCH_SCALE=0.2 shrinks every count (a quick run).
import { execFileSync } from "node:child_process"
import * as path from "node:path"
import { newClient, repoRoot, startServer, tempDir, XMTP_PORT } from "./lib.mjs"

const SCALE = Math.max(0.05, Number(process.env.BENCH_SCALE ?? "1") || 1)
const n = (count, min = 2) => Math.max(min, Math.round(count * SCALE))
const TEXT = "m".repeat(100)

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length === 0 ? Number.NaN : (s[Math.floor((s.length - 1) / 2)] + s[Math.ceil((s.length - 1) / 2)]) / 2
}
const timed = async (f) => {
  const t0 = performance.now()
  await f()
  return performance.now() - t0
}
const samples = async (count, f) => {
  const out = []
  for (let i = 0; i < count; i++) out.push(await timed(f))
  return out
}

/** The SDK half: the same cases as bench/xmtp-converge.ts, with two SDK clients. */
const sdkCases = async (dir) => {
  const alice = await newClient("alice", dir)
  const bob = await newClient("bob", dir)
  const group = await alice.conversations.createGroup([bob.inboxId])
  await bob.conversations.sync()
  const bobGroup = await bob.conversations.getConversationById(group.id)
  // Warmed up as the Converge half is (as many send + sync rounds as measured sends; syncAll likewise).
  for (let i = 0; i < n(40); i++) {
    await group.sendText("warm up")
    await bobGroup.sync()
  }
  const send = await samples(n(40), () => group.sendText(TEXT))
  await bobGroup.sync()
  const endToEnd = await samples(n(20), async () => {
    await group.sendText(TEXT)
    await bobGroup.sync()
  })
  const batch = n(50, 10)
  const optimistic = await samples(n(4), async () => {
    for (let i = 0; i < batch; i++) await group.sendText(TEXT, true)
    await group.publishMessages()
  })
  await bobGroup.sync()
  const catchUpCount = n(500, 50)
  for (let i = 0; i < catchUpCount; i += 50) {
    for (let j = 0; j < Math.min(50, catchUpCount - i); j++) await group.sendText(TEXT, true)
    await group.publishMessages()
  }
  const catchUp = await timed(() => bobGroup.sync())
  const groups = n(50, 5)
  for (let i = 0; i < groups; i++) await alice.conversations.createGroup([bob.inboxId])
  for (let i = 0; i <= n(10, 3); i++) await bob.conversations.syncAll()
  const syncAll = await samples(n(10, 3), () => bob.conversations.syncAll())
  return {
    send: median(send),
    endToEnd: median(endToEnd),
    optimisticBatch: median(optimistic) / batch,
    catchUp,
    catchUpCount,
    syncAllIdle: median(syncAll),
    groups
  }
}

const fmt = (x) => (Number.isFinite(x) ? (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2)) : "-")

const table = (title, headers, rows) => {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)))
  const line = (cells) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ")
  console.log(`\n${title}\n${line(headers)}\n${widths.map((w) => "-".repeat(w)).join("  ")}`)
  for (const r of rows) console.log(line(r))
}

const main = async () => {
  const dir = tempDir("converge-bench-xmtp-")
  const server = await startServer({ db: path.join(dir, "ds.sqlite") })
  try {
    console.log(`converge serve: Converge face ${server.rpcUrl}, XMTP face 127.0.0.1:${XMTP_PORT} (SQLite); BENCH_SCALE=${SCALE}`)
    const sdk = await sdkCases(dir)
    const converge = JSON.parse(
      execFileSync(process.execPath, [path.join(repoRoot, "node_modules/tsx/dist/cli.mjs"), "bench/xmtp-converge.ts"], {
        cwd: repoRoot,
        env: { ...process.env, CONVERGE_RPC_URL: server.rpcUrl, XMTP_ADDR: `127.0.0.1:${XMTP_PORT}`, BENCH_SCALE: String(SCALE) },
        stdio: ["ignore", "pipe", "inherit"],
        maxBuffer: 16 * 1024 * 1024
      }).toString().trim().split("\n").pop()
    )
    const c = converge.client
    table("Clients against the same converge serve (median ms; lower is better)", ["case", "XMTP SDK 5.5.0", "Converge client"], [
      ["send (publish, confirmed)", fmt(sdk.send), fmt(c.send)],
      ["send end to end (send + receiver sync)", fmt(sdk.endToEnd), fmt(c.endToEnd)],
      ["optimistic send + publish, per message", fmt(sdk.optimisticBatch), fmt(c.optimisticBatch)],
      [`catch-up sync of ${sdk.catchUpCount} messages`, fmt(sdk.catchUp), fmt(c.catchUp)],
      [`syncAll over ${sdk.groups} idle groups`, fmt(sdk.syncAllIdle), fmt(c.syncAllIdle)]
    ])
    const { xmtpFace: x, convergeFace: ws, convergeFaceHttp: http } = converge
    table("Server faces on SQLite: raw throughput (messages or round trips/s; higher is better)", ["case", "XMTP V3 face (gRPC)", "Converge face (WebSocket)", "Converge face (HTTP)"], [
      ["publish, one message per call", fmt(x.single), fmt(ws.single), fmt(http.single)],
      ["publish, 50 messages per call", fmt(x.batched), fmt(ws.batched), fmt(http.batched)],
      ["query one message per call", fmt(x.query), fmt(ws.query), fmt(http.query)]
    ])
  } finally {
    await server.stop()
  }
  process.exit(0)
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
