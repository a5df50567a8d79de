/**
 * The simulation's verdict is only as good as its checks: a check that never fires would pass
 * every seed. Here a run is damaged after it settles, the way a bug would leave it, and the
 * checks must name each damage: a stuck intent, a group marked forked, a message attributed to an
 * inbox that did not send it, and a confirmed send whose message its sender does not hold.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { KeyUpdateData } from "../src/domain/Intent.ts"
import type { ConversationId, MessageId } from "../src/domain/Ids.ts"
import { StoredMessage } from "../src/domain/Stored.ts"
import * as Simulation from "../src/simulation/Simulation.ts"
import { booted, type World } from "../src/simulation/World.ts"

const PARAMS = { seed: 7, clients: 5, ops: 30 } as const

/** Damages one installation that holds a group, and the run's record of its sends. */
const damage = (world: World) =>
  Effect.gen(function*() {
    const holders = []
    for (const [c, client] of booted(world)) {
      const storage = yield* world.net.storage(client)
      const groups = (yield* storage.groups.list({ includeInactive: false })).filter((g) => g.dmId === null)
      if (groups[0] !== undefined) holders.push({ c, client, storage, group: groups[0] })
    }
    const victim = holders[0]!
    const { storage, group } = victim
    yield* storage.intents.insert({ groupId: group.id, data: KeyUpdateData.make({}), createdAtNs: 0n })
    yield* storage.groups.markForked(group.id, "damaged by the test")
    // A text that names another inbox's installation as its author, stored as the victim's own.
    const impostor = world.installs.find((i) => world.inboxIds[i.inbox] !== victim.client.inboxId)!
    yield* storage.messages.insert(StoredMessage.make({
      id: "f".repeat(64) as MessageId,
      groupId: group.id,
      conversationId: group.id as unknown as ConversationId,
      senderInboxId: victim.client.inboxId,
      senderInstallationId: victim.client.installationId,
      sentAtNs: 1n,
      sequenceId: null,
      kind: "text",
      content: `m999-${impostor.name}`,
      membershipChange: null,
      deliveryStatus: "published",
      insertedAtNs: 1n,
      groupContext: null,
      contentType: null,
      contentBytes: null
    }))
    // A send the run saw confirmed, whose message its sender does not hold.
    const sent = world.sent.find((s) => s.confirmed)!
    world.sent.push({ ...sent, id: "e".repeat(64) as MessageId })
    return { group: group.id, victim: world.installs[victim.c]!.name }
  })

describe("the simulation's invariant checks", () => {
  it.effect("report nothing on an undamaged run and name each damage done to it", () =>
    Effect.gen(function*() {
      const clean = yield* Simulation.run(PARAMS)
      expect(clean.violations, Simulation.Report.format(clean)).toEqual([])
      expect(clean.figures.sent).toBeGreaterThan(0)

      let damaged: { readonly group: string; readonly victim: string } | undefined
      const report = yield* Simulation.run({
        ...PARAMS,
        beforeChecks: (world) => damage(world).pipe(Effect.map((d) => (damaged = d)), Effect.orDie)
      })
      expect(damaged).toBeDefined()
      const fired = new Set(report.violations.map((v) => v.invariant))
      expect([...fired].sort()).toEqual(
        expect.arrayContaining(["confirmed-send-not-published", "forked", "misattributed", "stuck-intent"])
      )
      const details = report.violations.map((v) => v.detail).join("\n")
      expect(details).toContain(`m999-`)
      expect(details).toContain("damaged by the test")
    }), 120_000)
})
