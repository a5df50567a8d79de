/**
 * The XMTP V3 face under attack at its transport and in the answers it builds: requests that
 * decode into huge objects, requests that never finish arriving, readers that read nothing,
 * lookups that would load far more than they answer, pages cut by bytes, and cursors past
 * int64. Each story states what `converge serve` must do (from an attack round on the face;
 * each failed before its fix).
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Effect } from "effect"
import * as ChildProcess from "node:child_process"
import * as Net from "node:net"
import * as path from "node:path"
import * as v8 from "node:v8"
import * as vm from "node:vm"
import { codecs, encode, MAX_REQUEST_FIELDS, scanFields } from "../src/xmtp/Proto.ts"
import * as Cli from "./support/Cli.ts"
import { call, refusal, Xmtp } from "./support/XmtpHarness.ts"
import * as XmtpHarness from "./support/XmtpHarness.ts"
import { xmtpKeyPackage } from "./support/XmtpKeyPackages.ts"

describe("counting a request's fields before it is decoded", () => {
  const keys = (n: number) => encode(codecs.fetchKeyPackagesRequest, { installationKeys: Array.from({ length: n }, () => new Uint8Array(32)) })
  it("takes a request of the most fields any handler takes, refuses one past the bound, and finds a nested message", () => {
    expect(scanFields(keys(1000), MAX_REQUEST_FIELDS, "FetchKeyPackages")).toBeUndefined()
    expect(() => scanFields(keys(MAX_REQUEST_FIELDS + 1), MAX_REQUEST_FIELDS, "FetchKeyPackages")).toThrow(/more than 4096 fields/)
    // 4 MiB of empty repeated fields: refused after counting, not decoded into millions of objects.
    expect(() => scanFields(new Uint8Array(4 * 1024 * 1024).map((_, i) => (i % 2 === 0 ? 0x0a : 0)), MAX_REQUEST_FIELDS, "x")).toThrow()
    const update = encode(codecs.publishIdentityUpdateRequest, { identityUpdate: { inboxId: "a".repeat(64), actions: [{}, {}, {}] } })
    const nested = scanFields(update, MAX_REQUEST_FIELDS, "PublishIdentityUpdate", 1)!
    expect(() => scanFields(nested, 2, "identity update")).toThrow(/more than 2 fields/)
  })

  it("stops quietly on malformed bytes, which the decoder then refuses as before", () => {
    for (const bytes of [Uint8Array.of(0x0a, 0x7f), Uint8Array.of(0xff, 0xff), Uint8Array.of(0x0b), Uint8Array.of(0x08)]) {
      expect(scanFields(bytes, MAX_REQUEST_FIELDS, "x", 1)).toBeUndefined()
    }
  })
})

layer(XmtpHarness.layer())("XMTP attack: cursors", (it) => {
  it.effect("a uint64 cursor above int64's range is the caller's mistake (or 'from the newest'), not UNAVAILABLE", () =>
    Effect.gen(function*() {
      const { identity, mls } = yield* Xmtp
      const group = XmtpHarness.newGroupId()
      yield* call(mls, "SendGroupMessages", { messages: [XmtpHarness.groupInput(XmtpHarness.privateMessage(group, "application", "a"))] })
      // id_cursor and sequence_id are uint64 in XMTP's protos: 2^63 and up are valid encodings.
      const desc = yield* refusal(mls, "QueryGroupMessages", { groupId: group, pagingInfo: { direction: 2, idCursor: "9223372036854775808" } })
      const updates = yield* refusal(identity, "GetIdentityUpdates", { requests: [{ inboxId: "a".repeat(64), sequenceId: "18446744073709551615" }] })
      // UNAVAILABLE (14) tells the client to retry the same request forever, and each one logs "the store failed".
      expect([desc.code, updates.code]).not.toContain(14)
    }))
})

// ---- HTTP/2: a unary request whose message never completes ----

/**
 * A child process (so its buffers are not counted here) that opens `streams` unary calls on one
 * HTTP/2 connection, each announcing a gRPC message of `declared` bytes and sending `sent` of
 * them, then prints "sent" and keeps the connection open, printing "ended N" as calls end.
 */
const partialUnaryClient = (port: number, streams: number, declared: number, sent: number) =>
  Effect.acquireRelease(
    Effect.async<{ readonly ended: () => number }>((resume) => {
      const script = `
        const http2 = require("node:http2")
        const session = http2.connect("http://127.0.0.1:${port}")
        session.on("error", () => {})
        let written = 0, ended = 0
        for (let i = 0; i < ${streams}; i++) {
          const stream = session.request({ ":method": "POST", ":path": "/xmtp.mls.api.v1.MlsApi/SendGroupMessages",
            "content-type": "application/grpc", te: "trailers" }, { endStream: false })
          stream.on("error", () => {})
          stream.resume()
          stream.on("close", () => console.log("ended " + (++ended)))
          const prefix = Buffer.alloc(5)
          prefix.writeUInt32BE(${declared}, 1)
          stream.write(Buffer.concat([prefix, Buffer.alloc(${sent}, 7)]), () => { if (++written === ${streams}) console.log("sent") })
        }
        setInterval(() => {}, 1000)`
      const child = ChildProcess.spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "inherit"] })
      let ended = 0
      child.stdout.setEncoding("utf8")
      child.stdout.on("data", (text: string) => {
        for (const line of text.split("\n")) {
          if (line === "sent") resume(Effect.succeed({ child, ended: () => ended }))
          if (line.startsWith("ended ")) ended = Number(line.slice(6))
        }
      })
    }),
    (c) => Effect.sync(() => (c as any).child.kill())
  )

v8.setFlagsFromString("--expose-gc")
const gc = vm.runInNewContext("gc") as () => void

/** Live ArrayBuffer and external bytes of this process (the server), after a full GC. */
const externalBytes = () => {
  gc()
  const m = process.memoryUsage()
  return m.arrayBuffers + m.external
}

layer(XmtpHarness.layer({ requestTimeoutMillis: 1000, idleTimeoutMillis: 2000 }), { excludeTestServices: true })(
  "XMTP attack: unary calls whose request never completes",
  (it) => {
    it.scoped("such a call is ended by --request-timeout and what it sent is let go", () =>
      Effect.gen(function*() {
        const { port } = yield* Xmtp
        const MiB = 1024 * 1024
        const before = externalBytes()
        // 16 calls (of the 64 one connection may open), each 4 MiB of an announced 4 MiB + 1 message.
        const client = yield* partialUnaryClient(port, 16, 4 * MiB + 1, 4 * MiB)
        // Each call ends at the request timeout (1 s), and what it took in is let go soon after.
        let settled = { open: 16, heldOver16MiB: true }
        for (let waited = 0; waited < 10_000 && (settled.open > 0 || settled.heldOver16MiB); waited += 500) {
          yield* Effect.sleep("500 millis")
          settled = { open: 16 - client.ended(), heldOver16MiB: externalBytes() - before > 16 * MiB }
        }
        expect(settled).toEqual({ open: 0, heldOver16MiB: false })
      }))

    it.scoped("a complete request whose stream is never half-closed is ended too (and does not keep the connection from idling)", () =>
      Effect.gen(function*() {
        const { port } = yield* Xmtp
        // An empty message (length 0) with no END_STREAM: grpc-js waits for the half-close before calling the handler.
        const client = yield* partialUnaryClient(port, 1, 0, 0)
        yield* Effect.sleep("5 seconds")
        expect(client.ended()).toBe(1)
      }))
  }
)

// ---- answers that load far more than they send ----

/** The most live ArrayBuffer/external memory (after GC) seen every 20 ms while `effect` runs, above what it was before. */
const peakLiveBytes = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const before = externalBytes()
    let peak = 0
    const timer = setInterval(() => (peak = Math.max(peak, externalBytes() - before)), 20)
    const result = yield* Effect.ensuring(effect, Effect.sync(() => clearInterval(timer)))
    return { result, peakMiB: Math.round(peak / (1024 * 1024)) }
  })

layer(XmtpHarness.layer(), { excludeTestServices: true })("XMTP attack: answers that load more than they send", (it) => {
  it.effect("GetNewestGroupMessage without content, one group named 300 times, does not load 300 MiB", () =>
    Effect.gen(function*() {
      const { mls } = yield* Xmtp
      const group = XmtpHarness.newGroupId()
      // One message of ~1 MiB, posted by anyone (no authentication on this port).
      yield* call(mls, "SendGroupMessages", {
        messages: [XmtpHarness.groupInput(XmtpHarness.privateMessage(group, "application", "x".repeat(1_000_000)))]
      })
      // A ~6 KB request: the same group id 300 times (1,000 are allowed), and no content wanted.
      const { peakMiB, result } = yield* peakLiveBytes(
        call(mls, "GetNewestGroupMessage", { groupIds: Array(300).fill(group), includeContent: false })
      )
      expect(result.responses.length).toBe(300)
      expect(peakMiB).toBeLessThan(50)
      // With content, the same request would answer 300 MiB: refused, saying why.
      const withContent = yield* refusal(mls, "GetNewestGroupMessage", { groupIds: Array(300).fill(group), includeContent: true })
      expect(withContent.code).toBe(8)
      expect(withContent.details).toContain("ask for fewer groups")
    }))

  it.effect("a commit-log entry is at most ~1 MiB: its signature's bytes and public key are bounded too", () =>
    Effect.gen(function*() {
      const { mls } = yield* Xmtp
      const groupId = XmtpHarness.newGroupId()
      // A 1-byte entry whose "signature" is 6 MiB (Ed25519 signatures are 64 bytes, keys 32).
      const signature = { bytes: new Uint8Array(6 * 1024 * 1024).fill(9), publicKey: new Uint8Array(1024 * 1024).fill(8) }
      const answer = yield* refusal(mls, "BatchPublishCommitLog", { requests: [{ groupId, serializedCommitLogEntry: new Uint8Array([1]), signature }] })
      // Once stored, every reader of this group's commit log gets a ~7 MiB page (a 4 MiB-default gRPC client cannot take it).
      const read = yield* refusal(mls, "BatchQueryCommitLog", { requests: [{ groupId, pagingInfo: { idCursor: 0 } }] })
      expect({ publish: answer.code, read: read.code }).toEqual({ publish: 3, read: 0 })
    }))

  it.effect("FetchKeyPackages naming one large key package 100 times is answered without a blow-up", () =>
    Effect.gen(function*() {
      const { mls } = yield* Xmtp
      // Anyone's own, validly self-signed key package, made as large as the face takes (16 KiB) by an extension.
      const big = yield* Effect.promise(() =>
        xmtpKeyPackage((tbs) => ({ ...tbs, extensions: [{ extensionType: 0xff00, extensionData: new Uint8Array(15_000) }] }))
      )
      yield* call(mls, "UploadKeyPackage", { keyPackage: { keyPackageTlsSerialized: big.bytes }, isInboxIdCredential: true })
      const { peakMiB, result } = yield* peakLiveBytes(
        call(mls, "FetchKeyPackages", { installationKeys: Array(100).fill(big.installationKey) })
      )
      expect(result.keyPackages.length).toBe(100)
      expect(peakMiB).toBeLessThan(50)
    }))

  it.effect("BatchQueryCommitLog over 5 groups whose logs hold 4 MiB each answers within one page's bytes, and asked again from its cursors reads every entry", () =>
    Effect.gen(function*() {
      const { mls } = yield* Xmtp
      const groups = Array.from({ length: 5 }, () => XmtpHarness.newGroupId())
      const signature = { bytes: new Uint8Array(64), publicKey: new Uint8Array(32) }
      // Anyone may post commit-log entries to any group id; 4 entries of ~1 MiB per group (one call each).
      for (const groupId of groups) {
        yield* call(mls, "BatchPublishCommitLog", {
          requests: Array.from({ length: 4 }, (_, i) => ({ groupId, serializedCommitLogEntry: new Uint8Array(1_000_000).fill(i + 1), signature }))
        })
      }
      // A reader following the answers' cursors, as libxmtp pages: every batch is answered, none over 4 MiB.
      const cursors = groups.map(() => "0")
      const read = groups.map(() => 0)
      for (let round = 0; round < 10 && read.some((n) => n < 4); round++) {
        const answer = yield* call(mls, "BatchQueryCommitLog", {
          requests: groups.map((groupId, i) => ({ groupId, pagingInfo: { idCursor: cursors[i] } }))
        })
        const bytes = answer.responses.flatMap((r: any) => r.commitLogEntries).reduce((n: number, e: any) => n + e.serializedCommitLogEntry.length, 0)
        expect(bytes).toBeLessThanOrEqual(4 * 1024 * 1024)
        answer.responses.forEach((r: any, i: number) => {
          read[i] += r.commitLogEntries.length
          const last = r.commitLogEntries[r.commitLogEntries.length - 1]
          if (last !== undefined) cursors[i] = last.sequenceId.toString()
        })
      }
      expect(read).toEqual([4, 4, 4, 4, 4])
    }))
})

// ---- requests whose decoding costs far more than their bytes ----

/** A free loopback port. */
const freePort = Effect.async<number>((resume) => {
  const server = Net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const { port } = server.address() as Net.AddressInfo
    server.close(() => resume(Effect.succeed(port)))
  })
})

/** `converge serve --xmtp-port` as a child process (the built CLI), with `nodeOptions`; its XMTP port and process. */
const xmtpServeProcess = (nodeOptions: string) =>
  Effect.gen(function*() {
    const dir = yield* Cli.tempDir
    const port = yield* freePort
    const xmtpPort = yield* freePort
    return yield* Effect.acquireRelease(
      Effect.async<{ readonly child: ChildProcess.ChildProcess; readonly port: number; output: () => string }>((resume) => {
        const child = ChildProcess.spawn(Cli.bin, ["serve", "--port", String(port), "--xmtp-port", String(xmtpPort), "--db", path.join(dir, "ds.sqlite")], {
          cwd: dir,
          env: { ...process.env, NODE_OPTIONS: nodeOptions, NO_COLOR: "1" },
          stdio: ["ignore", "pipe", "pipe"]
        })
        let output = ""
        const onData = (chunk: Buffer) => {
          output += chunk.toString()
          if (/XMTP V3 API .* on http/.test(output)) resume(Effect.succeed({ child, port: xmtpPort, output: () => output }))
        }
        child.stdout.on("data", onData)
        child.stderr.on("data", onData)
      }),
      ({ child }) =>
        Effect.async<void>((resume) => {
          if (child.exitCode !== null || child.signalCode !== null) return resume(Effect.void)
          child.on("exit", () => resume(Effect.void))
          child.kill("SIGTERM")
        })
    )
  })

/**
 * A client process that sends `streams` complete FetchKeyPackages requests of 8 MiB - 16 bytes,
 * each 4,194,296 empty `installation_keys` (the bytes 0a 00 repeated), gzip-compressed (grpc-js
 * takes gzip): about 8 KiB on the wire each. It does not end the streams.
 */
const manyEmptyKeysClient = (port: number, streams: number) =>
  Effect.acquireRelease(
    Effect.async<{ readonly child: ChildProcess.ChildProcess; readonly wireBytes: number }>((resume) => {
      const script = `
        const http2 = require("node:http2")
        const zlib = require("node:zlib")
        const session = http2.connect("http://127.0.0.1:${port}")
        session.on("error", () => {})
        const n = 4 * 1024 * 1024 - 8
        const message = Buffer.alloc(2 * n)
        for (let i = 0; i < n; i++) message[2 * i] = 0x0a
        const gz = zlib.gzipSync(message, { level: 9 })
        const body = Buffer.alloc(5 + gz.length)
        body.writeUInt8(1, 0)
        body.writeUInt32BE(gz.length, 1)
        gz.copy(body, 5)
        console.log(body.length)
        for (let i = 0; i < ${streams}; i++) {
          const stream = session.request({ ":method": "POST", ":path": "/xmtp.mls.api.v1.MlsApi/FetchKeyPackages",
            "content-type": "application/grpc", "grpc-encoding": "gzip", te: "trailers" }, { endStream: false })
          stream.on("error", () => {})
          stream.resume()
          stream.write(body)
        }
        setInterval(() => {}, 1000)`
      const child = ChildProcess.spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "ignore"] })
      child.stdout.once("data", (text: Buffer) => resume(Effect.succeed({ child, wireBytes: Number(text.toString().trim()) })))
    }),
    ({ child }) => Effect.sync(() => child.kill())
  )

describe("XMTP attack: a request that decodes to a huge object", () => {
  it.scopedLive("three 8 KiB gzip FetchKeyPackages requests (8 MiB inflated) on one connection do not take down converge serve", () =>
    Effect.gen(function*() {
      // A 1.5 GiB heap so the test stays light; Node's default on this machine is ~4 GiB: 5 such streams (of the 64 allowed).
      const server = yield* xmtpServeProcess(process.env.ATTACK_HEAP ?? "--max-old-space-size=1536")
      yield* manyEmptyKeysClient(server.port, Number(process.env.ATTACK_STREAMS ?? 3))
      // Each is refused (over 100 keys) only once its stream ends; until then its decoded request (~830 MiB) is held.
      const exited = yield* Effect.async<number | null>((resume) => {
        server.child.once("exit", (code, signal) => resume(Effect.succeed(code ?? (signal as never))))
      }).pipe(Effect.timeoutTo({ duration: "20 seconds", onTimeout: () => "still running", onSuccess: (code) => `exited: ${code}` }))
      expect(exited).toBe("still running")
    }), { timeout: 90_000 })
})

// ---- subscriptions whose reader reads nothing ----

/** A client process that opens `streams` SubscribeGroupMessages to `groupHex` from cursor 0 on one connection and reads nothing. */
const nonReadingSubscriber = (port: number, groupHex: string, streams: number) =>
  Effect.acquireRelease(
    Effect.async<ChildProcess.ChildProcess>((resume) => {
      const script = `
        const http2 = require("node:http2")
        const session = http2.connect("http://127.0.0.1:${port}", { settings: { initialWindowSize: 65535 } })
        session.on("error", () => {})
        const group = Buffer.from("${groupHex}", "hex")
        // SubscribeGroupMessagesRequest { filters: [{ group_id, id_cursor: 0 }] }
        const filter = Buffer.concat([Buffer.from([0x0a, group.length]), group])
        const message = Buffer.concat([Buffer.from([0x0a, filter.length]), filter])
        const body = Buffer.alloc(5 + message.length)
        body.writeUInt32BE(message.length, 1)
        message.copy(body, 5)
        let opened = 0
        for (let i = 0; i < ${streams}; i++) {
          const stream = session.request({ ":method": "POST", ":path": "/xmtp.mls.api.v1.MlsApi/SubscribeGroupMessages",
            "content-type": "application/grpc", te: "trailers" }, { endStream: false })
          stream.on("error", () => {})
          stream.pause()
          stream.on("response", () => { if (++opened === ${streams}) console.log("open") })
          stream.end(body)
        }
        setInterval(() => {}, 1000)`
      const child = ChildProcess.spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "ignore"] })
      child.stdout.once("data", () => resume(Effect.succeed(child)))
    }),
    (child) => Effect.sync(() => child.kill())
  )

layer(XmtpHarness.layer({ slowReaderTimeoutMillis: 20_000 }), { excludeTestServices: true })("XMTP attack: subscriptions that read nothing", (it) => {
  // 8 of the 32 subscriptions one connection may hold, to a group of 40 messages of ~1 MiB (anyone may post them).
  it.scoped("8 subscriptions whose reader reads nothing hold about a page and the message being written each (under 14 MiB), not ~30 MiB", () =>
    Effect.gen(function*() {
      const { mls, port } = yield* Xmtp
      const group = XmtpHarness.newGroupId()
      for (let i = 0; i < 40; i++) {
        yield* call(mls, "SendGroupMessages", {
          messages: [XmtpHarness.groupInput(XmtpHarness.privateMessage(group, "application", String(i).padEnd(1_000_000, "x")))]
        })
      }
      yield* Effect.sleep("1 second")
      externalBytes()
      const before = externalBytes()
      yield* nonReadingSubscriber(port, Buffer.from(group).toString("hex"), 8)
      yield* Effect.sleep("3 seconds")
      const heldMiB = Math.round((externalBytes() - before) / (1024 * 1024))
      // One message in flight per subscription (written, waiting for HTTP/2 to take it) and the page it came from.
      expect(heldMiB).toBeLessThan(8 * 14)
    }), { timeout: 120_000 })
})

// ---- paging: a page cut by bytes that says it is the last ----

layer(XmtpHarness.layer())("XMTP attack: paging by bytes", (it) => {
  /** The bytes the server stores for a message (its GroupMessage record), as XmtpMlsApi builds it. */
  const storedSize = (group: Uint8Array, data: Uint8Array, senderHmac: Uint8Array) =>
    encode(codecs.groupMessage, { v1: { groupId: group, data, senderHmac, shouldPush: true, isCommit: false } }).length

  /** An application message of `group` whose stored record is exactly `size` bytes with `senderHmac`. */
  const messageOfStoredSize = (group: Uint8Array, size: number, senderHmac: Uint8Array, tag: string) => {
    let length = size - 200
    for (;;) {
      const data = XmtpHarness.privateMessage(group, "application", tag.padEnd(length, "y"))
      const stored = storedSize(group, data, senderHmac)
      if (stored === size) return data
      length += size - stored
      if (stored > size && size - stored === 0) throw new Error("no exact size")
    }
  }

  const MiB = 1024 * 1024
  const hmac = new Uint8Array(32).fill(1)
  const bigHmac = new Uint8Array(1024).fill(2)

  /** Three records of 3 MiB - 512 bytes in all: just under the 3 MiB above which a short page "may continue". */
  const sendThree = (group: Uint8Array) =>
    Effect.gen(function*() {
      const { mls } = yield* Xmtp
      const third = Math.floor((3 * MiB - 512) / 3)
      for (const [i, size] of [third, third, 3 * MiB - 512 - 2 * third].entries()) {
        yield* call(mls, "SendGroupMessages", { messages: [{ v1: { data: messageOfStoredSize(group, size, hmac, `m${i}`), senderHmac: hmac, shouldPush: true } }] })
      }
    })

  /** One message of 1 MiB of MLS data or less with a 1,024-byte sender hmac (both within the limits): a record of 1 MiB + 1,050. */
  const sendBig = (group: Uint8Array) =>
    Effect.gen(function*() {
      const { mls } = yield* Xmtp
      const data = messageOfStoredSize(group, MiB + 1050, bigHmac, "big")
      expect(data.length).toBeLessThanOrEqual(MiB)
      yield* call(mls, "SendGroupMessages", { messages: [{ v1: { data, senderHmac: bigHmac, shouldPush: true } }] })
    })

  const seen = (page: any) => ({ ids: XmtpHarness.ids(page.messages), cursor: page.pagingInfo.idCursor.toString() })

  it.effect("a page the store cut at 4 MiB names a cursor, so the reader asks for the rest (ascending and descending)", () =>
    Effect.gen(function*() {
      const { mls } = yield* Xmtp
      // Ascending: ids 1-3 (3 MiB - 512), then 4 (1 MiB + 1,050): the store stops before 4.
      const forward = XmtpHarness.newGroupId()
      yield* sendThree(forward)
      yield* sendBig(forward)
      // Descending (history backfill, from the newest): ids 4-2 (3 MiB - 512), then 1 (1 MiB + 1,050).
      const backward = XmtpHarness.newGroupId()
      yield* sendBig(backward)
      yield* sendThree(backward)

      const asc = seen(yield* call(mls, "QueryGroupMessages", { groupId: forward, pagingInfo: { direction: 1, limit: 100 } }))
      const desc = seen(yield* call(mls, "QueryGroupMessages", { groupId: backward, pagingInfo: { direction: 2, limit: 100 } }))
      // Neither page holds everything: each must name where to go on from (node-go: the page's last id).
      expect({ asc, desc }).toEqual({ asc: { ids: [1, 2, 3], cursor: "3" }, desc: { ids: [4, 3, 2], cursor: "2" } })
    }), { timeout: 60_000 })
})

