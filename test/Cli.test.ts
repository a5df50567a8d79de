/**
 * The command line as a user runs it: `converge serve` in one process, profiles talking
 * through it from others. Every command runs the built package (`bin/converge` -> `dist/`)
 * from a folder outside the repository.
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as fs from "node:fs"
import * as http from "node:http"
import * as net from "node:net"
import type { AddressInfo } from "node:net"
import * as path from "node:path"
import * as Cli from "./support/Cli.ts"

beforeAll(Cli.ensureBuilt, 180_000)

/** A scratch folder with runners bound to it. */
const jsonOf = (text: string): unknown => JSON.parse(text)

/** A port nobody listens on right now. */
const freePort = Effect.async<number>((resume) => {
  const server = net.createServer().listen(0, "127.0.0.1", () => {
    const { port } = server.address() as AddressInfo
    server.close(() => resume(Effect.succeed(port)))
  })
})

describe("converge CLI", () => {
  it.live("two profiles chat through `converge serve`; --json, prefixes, confirmations; a restart loses nothing", () =>
    Effect.scoped(Effect.gen(function*() {
      const { converge, dir, ok, startServer } = yield* Cli.workspace
      const db = path.join(dir, "ds.sqlite")
      const [alice, bob, carol] = ["alice", "bob", "carol"].map((name) => path.join(dir, name)) as [string, string, string]

      const server = yield* Effect.scoped(Effect.gen(function*() {
        const { url } = yield* startServer(db)
        const aliceInbox = yield* ok("init", "--profile", alice, "--server", url)
        const bobInbox = yield* ok("init", "--profile", bob, "--server", url)
        const carolInbox = yield* ok("init", "--profile", carol, "--server", url)
        expect(aliceInbox).toMatch(/^[0-9a-f]{64}$/)
        // A profile holds keys: its folder and files are the owner's alone.
        const mode = (file: string) => fs.statSync(file).mode & 0o777
        expect(mode(alice)).toBe(0o700)
        expect(mode(path.join(alice, "profile.json"))).toBe(0o600)
        expect(mode(path.join(alice, "client.sqlite"))).toBe(0o600)
        expect(jsonOf(yield* ok("whoami", "--profile", bob, "--json"))).toMatchObject({ inboxId: bobInbox, server: url })

        const group = yield* ok("group", "create", "--profile", alice, "--name", "Ropes & knots", bobInbox)
        const prefix = group.slice(0, 6)
        yield* ok("send", "--profile", alice, prefix, "hello bob")
        expect(yield* ok("sync", "--profile", bob)).toContain("joined 1")
        expect((yield* ok("conversations", "--profile", bob)).split("\n")).toEqual([
          expect.stringMatching(/^ID +KIND +STATE +NAME$/),
          expect.stringMatching(new RegExp(`^${group} +group +active +Ropes & knots$`))
        ])
        expect(jsonOf(yield* ok("conversations", "--profile", bob, "--json"))).toEqual([
          { id: group, kind: "group", state: "active", name: "Ropes & knots", peer: null }
        ])
        yield* ok("send", "--profile", bob, prefix, "hello alice")
        const seen = jsonOf(yield* ok("messages", "--profile", alice, "--json", group)) as Array<{ text: string; sender: string }>
        expect(seen.filter((m) => m.text.startsWith("hello")).map((m) => [m.sender, m.text])).toEqual([
          [aliceInbox, "hello bob"],
          [bobInbox, "hello alice"]
        ])

        expect(yield* ok("group", "add", "--profile", alice, prefix, carolInbox)).toBe(
          `added 1 member(s) to Ropes & knots (${group})`
        )
        const members = jsonOf(yield* ok("members", "--profile", alice, "--json", prefix)) as Array<{ inboxId: string }>
        expect(members.map((m) => m.inboxId).sort()).toEqual([aliceInbox, bobInbox, carolInbox].sort())
        // A unique prefix of a member's inbox id is enough to remove it.
        expect(yield* ok("group", "remove", "--profile", alice, prefix, carolInbox.slice(0, 10))).toBe(
          `removed 1 member(s) from Ropes & knots (${group})`
        )
        const notMember = yield* converge("group", "remove", "--profile", alice, group, carolInbox)
        expect(notMember.code).toBe(1)
        expect(notMember.stderr.split("\n")[0]).toBe(`error: inbox ${carolInbox}: not a member of group ${group}`)

        // Governance: Alice renames the group and makes Bob an admin; policies stay hers to change.
        expect(yield* ok("group", "rename", "--profile", alice, prefix, "Knots only")).toBe(
          `renamed Ropes & knots to Knots only (${group})`
        )
        yield* ok("group", "role", "--profile", alice, prefix, bobInbox.slice(0, 10), "admin")
        yield* ok("sync", "--profile", bob)
        expect(jsonOf(yield* ok("group", "info", "--profile", bob, "--json", prefix))).toMatchObject({
          name: "Knots only",
          admins: [bobInbox],
          superAdmins: [aliceInbox],
          policies: { addMember: "everyone" }
        })
        const denied = yield* converge("group", "policy", "--profile", bob, prefix, "--add-member", "admins")
        expect(denied.code).toBe(1)
        expect(denied.stderr).toContain("updatePermissions needs superAdmins")

        const dm = yield* ok("dm", "--profile", bob, aliceInbox)
        expect(yield* ok("leave", "--profile", bob, prefix)).toMatch(/^asked to leave Knots only/)
        // Sent now, read by alice only after the server restarts.
        yield* ok("send", "--profile", bob, dm, "stored before the restart")
        return { url, dm }
      }))

      const port = new URL(server.url).port
      yield* Effect.scoped(Effect.gen(function*() {
        yield* startServer(db, Number(port))
        // The DM is found by a prefix of the peer's inbox id (welcomes are fetched when unknown).
        const bobInbox = yield* ok("whoami", "--profile", bob)
        const seenByAlice = yield* ok("messages", "--profile", alice, bobInbox.slice(0, 12))
        expect(seenByAlice).toContain("stored before the restart")
        expect(jsonOf(yield* ok("conversations", "--profile", alice, "--json"))).toContainEqual(
          { id: server.dm, kind: "dm", state: "active", name: null, peer: bobInbox }
        )
      }))
    })), { timeout: 300_000 })

  it.live("a send with the server down is queued (exit 3), reads work offline, and it is sent once later", () =>
    Effect.scoped(Effect.gen(function*() {
      const { converge, dir, ok, startServer } = yield* Cli.workspace
      const db = path.join(dir, "ds.sqlite")
      const [alice, bob] = [path.join(dir, "alice"), path.join(dir, "bob")]

      const setup = yield* Effect.scoped(Effect.gen(function*() {
        const { url } = yield* startServer(db)
        yield* ok("init", "--profile", alice, "--server", url)
        const bobInbox = yield* ok("init", "--profile", bob, "--server", url)
        const group = yield* ok("group", "create", "--profile", alice, "--name", "offline", bobInbox)
        yield* ok("sync", "--profile", bob)
        return { url, group }
      }))

      // The server is down now.
      const sent = yield* converge("send", "--profile", alice, setup.group, "sent while offline")
      expect(sent.code).toBe(3)
      const queued = /^queued: will be sent on the next sync \(([0-9a-f]{64})\)$/.exec(sent.stdout.trim())
      expect(queued).not.toBeNull()
      expect(sent.stderr).toContain(`cannot reach the server ${setup.url}`)

      const local = yield* converge("messages", "--profile", alice, "--json", setup.group)
      expect(local.code).toBe(0)
      expect(local.stderr).toContain(`cannot reach the server ${setup.url}`)
      expect(jsonOf(local.stdout)).toContainEqual(
        expect.objectContaining({ id: queued![1], text: "sent while offline", deliveryStatus: "unpublished" })
      )
      expect(yield* ok("conversations", "--profile", alice)).toContain("offline")
      expect((yield* ok("members", "--profile", alice, setup.group)).split("\n")).toHaveLength(3)
      const statusOf = (profile: string) =>
        ok("status", "--profile", profile, "--json").pipe(
          Effect.map((out) => (jsonOf(out) as { conversations: Array<{ pendingIntents: number; behind: string | null }> }).conversations[0])
        )
      expect(yield* statusOf(alice)).toMatchObject({ pendingIntents: 1, behind: null })

      yield* Effect.scoped(Effect.gen(function*() {
        yield* startServer(db, Number(new URL(setup.url).port))
        yield* ok("sync", "--profile", alice)
        yield* ok("sync", "--profile", alice) // a second sync sends nothing again
        expect(yield* statusOf(alice)).toMatchObject({ pendingIntents: 0, behind: "0" })
        expect(yield* statusOf(bob)).toMatchObject({ pendingIntents: 0, behind: "1" })
        const texts = (profile: string) =>
          ok("messages", "--profile", profile, "--json", setup.group).pipe(
            Effect.map((out) => (jsonOf(out) as Array<{ text: string; deliveryStatus: string }>).filter((m) => m.text === "sent while offline"))
          )
        expect(yield* texts(bob)).toEqual([expect.objectContaining({ deliveryStatus: "published" })])
        expect(yield* texts(alice)).toEqual([expect.objectContaining({ deliveryStatus: "published" })])
      }))
    })), { timeout: 300_000 })

  it.live("each mistake prints one error line naming it, a hint, and exit 1; a failed init leaves nothing", () =>
    Effect.scoped(Effect.gen(function*() {
      const { converge, dir, startServer } = yield* Cli.workspace
      const firstLines = (args: ReadonlyArray<string>) =>
        converge(...args).pipe(Effect.map((r) => ({ code: r.code, lines: r.stderr.trim().split("\n") })))

      const { url } = yield* startServer(path.join(dir, "ds.sqlite"))
      const port = new URL(url).port
      expect(yield* firstLines(["serve", "--port", port, "--db", path.join(dir, "other.sqlite")])).toEqual({
        code: 1,
        lines: [
          `error: --port ${port}: the address 127.0.0.1:${port} is already in use`,
          "hint: stop what listens there, or choose another --port (0 picks a free one)"
        ]
      })
      expect(yield* firstLines(["serve", "--port", "70000"])).toEqual({
        code: 1,
        lines: ["error: --port 70000: a port is a number from 0 to 65535", "hint: converge serve --help"]
      })
      const missing = path.join(dir, "no-such-folder")
      expect((yield* firstLines(["serve", "--port", "0", "--db", path.join(missing, "ds.sqlite")])).lines[0]).toBe(
        `error: --db ${path.join(missing, "ds.sqlite")}: the folder ${missing} does not exist`
      )
      expect(yield* firstLines(["send", "--profile", dir])).toEqual({
        code: 1,
        lines: ["error: Missing argument <conversation-id>", "hint: converge send --help"]
      })
      expect((yield* firstLines(["whoami", "--profile", dir])).lines[0]).toBe(`error: --profile ${dir}: no profile in this folder`)

      // Nobody listens on the port of a server that was stopped.
      const deadUrl = yield* Effect.scoped(startServer(path.join(dir, "dead.sqlite"))).pipe(Effect.map((s) => s.url))
      const failedInit = yield* firstLines(["init", "--profile", path.join(dir, "carol"), "--server", deadUrl])
      expect(failedInit.code).toBe(1)
      expect(failedInit.lines[0]).toMatch(new RegExp(`^error: cannot reach the server ${deadUrl.replace(/[.]/g, "\\.")}: `))
      expect(fs.readdirSync(dir).filter((f) => f.includes("carol"))).toEqual([])

      const alice = path.join(dir, "alice")
      yield* Cli.ok({ cwd: dir }, ["init", "--profile", alice, "--server", url])
      expect(yield* firstLines(["send", "--profile", alice, "f".repeat(32), "to nowhere"])).toEqual({
        code: 1,
        lines: [
          `error: conversation ${"f".repeat(32)}: not found in this profile`,
          "hint: `converge conversations` lists them; `converge sync` fetches new ones"
        ]
      })
      // Logs go to stderr: stdout holds only the result.
      const logged = yield* Cli.run({ cwd: dir, env: { CONVERGE_LOG_LEVEL: "Debug" } }, ["whoami", "--profile", alice])
      expect(logged.stdout).toMatch(/^[0-9a-f]{64}\n$/)
      expect(logged.stderr).toContain("level=DEBUG")
      // No colour into a pipe, even without NO_COLOR; help describes options and defaults.
      const help = yield* Cli.run({ cwd: dir, env: { NO_COLOR: "" } }, ["serve", "--help"])
      expect(help.code).toBe(0)
      expect(help.stdout).not.toContain("\x1b[")
      expect(help.stdout).toContain("default 5555 (env CONVERGE_PORT)")
    })), { timeout: 300_000 })

  it.live("with CONVERGE_OTLP_URL, a command exports its spans; serve --metrics-port exposes Prometheus text", () =>
    Effect.scoped(Effect.gen(function*() {
      const { dir } = yield* Cli.workspace
      const spanNames: Array<string> = []
      const collector = yield* Effect.acquireRelease(
        Effect.async<http.Server>((resume) => {
          const server = http.createServer((req, res) => {
            let text = ""
            req.on("data", (chunk: Buffer) => (text += chunk.toString()))
            req.on("end", () => {
              if (req.url === "/v1/traces") {
                const body = JSON.parse(text) as { resourceSpans: Array<{ scopeSpans: Array<{ spans: Array<{ name: string }> }> }> }
                for (const rs of body.resourceSpans) for (const ss of rs.scopeSpans) spanNames.push(...ss.spans.map((s) => s.name))
              }
              res.writeHead(200, { "content-type": "application/json" }).end("{}")
            })
          })
          server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
        }),
        (server) => Effect.async<void>((resume) => {
          server.close(() => resume(Effect.void))
        })
      )
      const metricsPort = yield* freePort
      const { url } = yield* Cli.startServer({ cwd: dir }, [
        "--port", "0", "--db", path.join(dir, "ds.sqlite"), "--metrics-port", String(metricsPort)
      ])
      const otlp = `http://127.0.0.1:${(collector.address() as AddressInfo).port}`
      yield* Cli.ok({ cwd: dir, env: { CONVERGE_OTLP_URL: otlp } }, ["init", "--profile", path.join(dir, "alice"), "--server", url])
      expect(spanNames).toContain("Identity.register")
      expect(spanNames).toContain("DeliveryRpc.publishIdentityUpdate")

      const metrics = yield* Effect.promise(() => fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.text()))
      expect(metrics).toContain("# TYPE converge_ds_requests_total counter")
      expect(metrics).toMatch(/^converge_ds_requests_total\{method="publishIdentityUpdate"\} [1-9]/m)
      expect(metrics).toMatch(/^converge_ds_request_duration_milliseconds_count\{time_unit="milliseconds",method="uploadKeyPackage"\} 1$/m)
    })), { timeout: 120_000 })
})
