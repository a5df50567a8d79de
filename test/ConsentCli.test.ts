/**
 * `converge consent` as a user runs it: Alice is invited by Bob, looks at the consent of her
 * conversations, denies the group and Bob's inbox, and sees the group gone from the list.
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as path from "node:path"
import * as Cli from "./support/Cli.ts"

beforeAll(Cli.ensureBuilt, 180_000)

describe("converge consent", () => {
  it.live("show and set consent of a conversation (by prefix) and of an inbox; a bad state is a usage error", () =>
    Effect.scoped(Effect.gen(function*() {
      const { converge, dir, ok, startServer } = yield* Cli.workspace
      const { url } = yield* startServer(path.join(dir, "ds.sqlite"))
      const [alice, bob] = [path.join(dir, "alice"), path.join(dir, "bob")]
      const aliceInbox = yield* ok("init", "--profile", alice, "--server", url)
      const bobInbox = yield* ok("init", "--profile", bob, "--server", url)
      const group = yield* ok("group", "create", "--profile", bob, "--name", "Offers", aliceInbox)
      yield* ok("sync", "--profile", alice)

      expect(yield* ok("consent", "show", "--profile", alice)).toMatch(new RegExp(`${group}\\s+group\\s+unknown`))
      expect(yield* ok("consent", "show", "--profile", bob, group)).toBe("allowed")
      expect(yield* ok("consent", "set", "--profile", alice, "denied", group.slice(0, 6))).toBe(`denied: ${group}`)
      expect(yield* ok("consent", "set", "--profile", alice, "denied", "--inbox", bobInbox)).toContain("denied")
      expect(JSON.parse(yield* ok("consent", "show", "--profile", alice, "--inbox", bobInbox, "--json"))).toEqual({
        inboxId: bobInbox,
        consent: "denied"
      })
      // Denied: gone from the list, still shown by consent.
      expect(yield* ok("conversations", "--profile", alice)).not.toContain(group)
      expect(yield* ok("consent", "show", "--profile", alice)).toMatch(new RegExp(`${group}\\s+group\\s+denied`))

      const bad = yield* converge("consent", "set", "--profile", alice, "maybe", group)
      expect(bad.code).toBe(1)
      expect(bad.stderr).toContain("allowed, denied, unknown")
    })), 120_000)
})
