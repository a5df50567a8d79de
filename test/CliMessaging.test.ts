/**
 * Messaging from the command line: a direct message inside a group (`send --to`), deleting a
 * message for everyone (`delete`), and disappearing messages (`group set --disappear-after`).
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as path from "node:path"
import { formatDisappearAfter, parseDisappearAfter } from "../src/cli/MessagingCommands.ts"
import * as Cli from "./support/Cli.ts"

beforeAll(Cli.ensureBuilt, 180_000)

interface JsonMessage {
  readonly id: string
  readonly text: string
  readonly groupContext: string | null
  readonly deleted: boolean
}

describe("converge messaging commands", () => {
  it.each([
    ["30s", 30_000_000_000n],
    ["15m", 900_000_000_000n],
    ["7d", 604_800_000_000_000n],
    ["off", null],
    ["7 days", undefined],
    ["0s", undefined],
    ["3651d", undefined]
  ] as const)("--disappear-after %s", (text, ns) => expect(parseDisappearAfter(text)).toBe(ns))
  it("confirmations name the largest whole unit", () => {
    expect(formatDisappearAfter(604_800_000_000_000n)).toBe("1w")
    expect(formatDisappearAfter(90_000_000_000n)).toBe("90s")
  })

  it.live("send --to writes one member in the group's context; delete erases a message for everyone; group set --disappear-after", () =>
    Effect.scoped(Effect.gen(function*() {
      const { converge, dir, ok, startServer } = yield* Cli.workspace
      const { url } = yield* startServer(path.join(dir, "ds.sqlite"))
      const [alice, bob, carol] = ["alice", "bob", "carol"].map((name) => path.join(dir, name)) as [string, string, string]
      const aliceInbox = yield* ok("init", "--profile", alice, "--server", url)
      const bobInbox = yield* ok("init", "--profile", bob, "--server", url)
      const carolInbox = yield* ok("init", "--profile", carol, "--server", url)
      const group = yield* ok("group", "create", "--profile", alice, "--name", "Trip", bobInbox, carolInbox)
      yield* ok("sync", "--profile", bob)
      yield* ok("sync", "--profile", carol)
      const messagesOf = (profile: string, conversation: string) =>
        ok("messages", "--profile", profile, "--json", conversation).pipe(
          Effect.map((out) => (JSON.parse(out) as Array<JsonMessage & { kind: string }>).filter((m) => m.kind === "text"))
        )

      // A direct message to bob (by a prefix of his inbox id), in the group's context.
      const direct = yield* ok("send", "--profile", alice, "--to", bobInbox.slice(0, 8), group, "psst: bring the tent")
      expect(direct).toMatch(/^[0-9a-f]{64}$/)
      yield* ok("sync", "--profile", bob)
      expect(yield* messagesOf(bob, aliceInbox.slice(0, 8))).toEqual([
        expect.objectContaining({ id: direct, text: "psst: bring the tent", groupContext: group })
      ])
      expect(yield* messagesOf(carol, group)).toEqual([])
      const notMember = yield* converge("send", "--profile", alice, "--to", "f".repeat(64), group, "hi")
      expect(notMember.code).toBe(1)
      expect(notMember.stderr).toContain(`not a member of group ${group}`)

      // Alice deletes her own message (by a prefix); carol may not delete it.
      const oops = yield* ok("send", "--profile", alice, group, "oops")
      yield* ok("sync", "--profile", carol)
      const refused = yield* converge("delete", "--profile", carol, oops.slice(0, 10))
      expect(refused.code).toBe(1)
      expect(refused.stderr).toContain("error: PermissionDenied")
      expect(yield* ok("delete", "--profile", alice, oops.slice(0, 10))).toBe(`deleted ${oops} for everyone in ${group}`)
      expect(yield* messagesOf(carol, group)).toEqual([expect.objectContaining({ id: oops, text: "", deleted: true })])
      expect((yield* converge("delete", "--profile", alice, oops)).stderr).toContain("MessageAlreadyDeleted")

      // Disappearing messages: set, shown by group info, bad durations refused.
      expect(yield* ok("group", "set", "--profile", alice, "--disappear-after", "7d", group)).toBe(
        `messages sent to ${group} from now on disappear after 1w`
      )
      yield* ok("sync", "--profile", bob)
      expect(JSON.parse(yield* ok("group", "info", "--profile", bob, "--json", group))).toMatchObject({
        disappearAfterNs: String(7n * 86_400_000_000_000n)
      })
      const bad = yield* converge("group", "set", "--profile", alice, "--disappear-after", "soon", group)
      expect(bad.code).toBe(1)
      expect(bad.stderr).toContain("error: --disappear-after soon: not a duration")
    })), { timeout: 300_000 })
})
