/**
 * Devices on the command line: a second profile of the same inbox (`init --same-inbox-as`),
 * signed in by the first without getting its root key; `devices list` and `devices revoke`.
 */
import { beforeAll, describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as path from "node:path"
import * as Cli from "./support/Cli.ts"

beforeAll(Cli.ensureBuilt, 180_000)

const jsonOf = (text: string): unknown => JSON.parse(text)

describe("converge devices", () => {
  it.live("a second device joins with init --same-inbox-as, reads the group after one sync of the other member, and is revoked", () =>
    Effect.scoped(Effect.gen(function*() {
      const { converge, dir, ok, startServer } = yield* Cli.workspace
      const { url } = yield* startServer(path.join(dir, "ds.sqlite"))
      const [laptop, phone, bob] = ["laptop", "phone", "bob"].map((name) => path.join(dir, name)) as [string, string, string]

      const aliceInbox = yield* ok("init", "--profile", laptop, "--server", url)
      const bobInbox = yield* ok("init", "--profile", bob, "--server", url)
      const group = yield* ok("group", "create", "--profile", bob, "--name", "Club", aliceInbox)
      yield* ok("sync", "--profile", laptop)

      // The phone takes the laptop's server and inbox; the laptop signs it in.
      const joined = yield* converge("init", "--profile", phone, "--same-inbox-as", laptop)
      expect(joined.code).toBe(0)
      expect(joined.stdout.trim()).toBe(aliceInbox)
      expect(joined.stderr).toContain("a further installation of the inbox of")
      const phoneId = (jsonOf(yield* ok("whoami", "--profile", phone, "--json")) as { installationId: string }).installationId
      const laptopId = (jsonOf(yield* ok("whoami", "--profile", laptop, "--json")) as { installationId: string }).installationId
      expect(jsonOf(yield* ok("devices", "list", "--profile", phone, "--json"))).toEqual([
        { installationId: phoneId, current: true },
        { installationId: laptopId, current: false }
      ])
      expect((yield* ok("devices", "list", "--profile", laptop)).split("\n")[0]).toMatch(/^INSTALLATION +CURRENT$/)

      // One sync of Bob's adds the phone to the group; the phone reads what comes next.
      yield* ok("sync", "--profile", bob)
      expect(yield* ok("sync", "--profile", phone)).toContain("joined 1")
      yield* ok("send", "--profile", bob, group, "hello both devices")
      const onPhone = jsonOf(yield* ok("messages", "--profile", phone, "--json", group)) as Array<{ text: string }>
      expect(onPhone.map((m) => m.text)).toContain("hello both devices")

      // The phone never got the root key: it cannot revoke; the laptop can, by a prefix.
      const refused = yield* converge("devices", "revoke", "--profile", phone, laptopId)
      expect(refused.code).toBe(1)
      expect(refused.stderr).toMatch(/^error: identity change refused: .*root key/m)
      const unknown = yield* converge("devices", "revoke", "--profile", laptop, "ab".repeat(32))
      expect(unknown.code).toBe(1)
      expect(unknown.stderr).toContain("not an installation of this inbox")
      expect(yield* ok("devices", "revoke", "--profile", laptop, phoneId.slice(0, 10))).toBe(`revoked ${phoneId}`)
      expect(jsonOf(yield* ok("devices", "list", "--profile", laptop, "--json"))).toEqual([
        { installationId: laptopId, current: true }
      ])
      yield* ok("sync", "--profile", bob)
      yield* ok("send", "--profile", bob, group, "after the phone was revoked")
      yield* converge("sync", "--profile", phone)
      const afterOnPhone = jsonOf(yield* ok("messages", "--profile", phone, "--json", group)) as Array<{ text: string }>
      expect(afterOnPhone.map((m) => m.text)).not.toContain("after the phone was revoked")
      const onLaptop = jsonOf(yield* ok("messages", "--profile", laptop, "--json", group)) as Array<{ text: string }>
      expect(onLaptop.map((m) => m.text)).toContain("after the phone was revoked")
      expect(bobInbox).not.toBe(aliceInbox)
    })), 120_000)
})
