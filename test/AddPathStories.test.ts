/**
 * Stories of adding a member: the key package is checked when the action is taken and again when
 * the commit is built (the second check reuses what the first verified, except the lifetime), the
 * welcome is written ahead with the commit and sent once the commit is confirmed, in the same
 * bytes as ever. None of it may change what the newcomer reads, crashes and restarts included.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Schema } from "effect"
import { vi } from "vitest"
import { PostCommitData, PostCommitDataJson } from "../src/domain/Intent.ts"
import type { ConversationId, InstallationId } from "../src/domain/Ids.ts"
import { simulatedCrashOf, type TestClient, TestNetwork } from "../src/testing.ts"

const texts = (client: TestClient, id: ConversationId) =>
  client.conversation(id).pipe(
    Effect.flatMap((c) => c.messages()),
    Effect.map((ms) => ms.filter((m) => m.kind === "text").map((m) => m.text))
  )

const memberInboxes = (client: TestClient, id: ConversationId) =>
  client.conversation(id).pipe(
    Effect.flatMap((c) => c.members),
    Effect.map((ms) => ms.map((m) => m.inboxId))
  )

describe("add path", () => {
  it.live("Alice adds Dave: the add resolves once confirmed, Dave joins from the welcome and reads what follows", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, carol, dave] = yield* Effect.all([
        net.client("alice"),
        net.client("bob"),
        net.client("carol"),
        net.client("dave")
      ])
      const group = yield* alice.createGroup([bob.inboxId, carol.inboxId])
      yield* group.send("before Dave")
      yield* group.addMembers([dave.inboxId])
      // Confirmed when addMembers returns: nothing of it is left pending.
      const storage = yield* net.storage(alice)
      expect(yield* storage.intents.byState(["ToPublish", "Published", "Committed"])).toEqual([])
      expect((yield* dave.syncAll).joined).toBe(1)
      yield* group.send("after Dave")
      yield* dave.syncAll
      yield* bob.syncAll
      expect(yield* texts(dave, group.id)).toEqual(["after Dave"])
      expect(yield* texts(bob, group.id)).toEqual(["before Dave", "after Dave"])
      expect((yield* memberInboxes(bob, group.id)).sort()).toEqual([alice.inboxId, bob.inboxId, carol.inboxId, dave.inboxId].sort())

      // A second add in the same group takes the next newcomer the same way.
      const erin = yield* net.client("erin")
      yield* group.addMembers([erin.inboxId])
      expect((yield* erin.syncAll).joined).toBe(1)
      yield* (yield* dave.conversation(group.id)).send("Dave welcomes Erin")
      yield* erin.syncAll
      expect(yield* texts(erin, group.id)).toEqual(["Dave welcomes Erin"])
    })))

  it.live("Alice crashes after her add is confirmed, before the welcome went out: after the restart Dave is welcomed", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob, dave] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("dave")])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* net.crashAt(alice, "postCommit.beforeWelcomes")
      const crashed = yield* Effect.exit(group.addMembers([dave.inboxId]))
      expect(Exit.isFailure(crashed) && simulatedCrashOf(crashed.cause)?.point).toBe("postCommit.beforeWelcomes")
      // The commit landed; the welcome is still written ahead, not sent.
      expect((yield* dave.syncAll).joined).toBe(0)
      const [committed] = yield* (yield* net.storage(alice)).intents.byState(["Committed"])
      expect(committed?.postCommit?.installationIds).toEqual([dave.installationId])

      yield* net.restart(alice)
      yield* alice.syncAll
      expect((yield* dave.syncAll).joined).toBe(1)
      yield* (yield* alice.conversation(group.id)).send("welcome, Dave")
      yield* dave.syncAll
      yield* bob.syncAll
      expect(yield* texts(dave, group.id)).toEqual(["welcome, Dave"])
      expect(yield* texts(bob, group.id)).toEqual(["welcome, Dave"])
    })))

  it("a welcome written ahead by an earlier version (Effect's base64) reads back to the same bytes, and is written the same", () => {
    const welcome = Uint8Array.from({ length: 1000 }, (_, i) => (i * 7) & 0xff)
    const keyPackage = Uint8Array.from({ length: 301 }, (_, i) => (i * 13) & 0xff)
    const installationId = "ab".repeat(32) as InstallationId
    const Earlier = Schema.parseJson(Schema.Struct({
      welcome: Schema.Uint8ArrayFromBase64,
      installationIds: Schema.Array(Schema.String),
      keyPackages: Schema.Array(Schema.Uint8ArrayFromBase64)
    }))
    const stored = Schema.encodeSync(Earlier)({ welcome, installationIds: [installationId], keyPackages: [keyPackage] })
    const read = Schema.decodeSync(PostCommitDataJson)(stored)
    expect(read.welcome).toEqual(welcome)
    expect(read.keyPackages).toEqual([keyPackage])
    expect(Schema.encodeSync(PostCommitDataJson)(PostCommitData.make({
      welcome,
      installationIds: [installationId],
      keyPackages: [keyPackage]
    }))).toBe(stored)
  })

  it.live("a newcomer's key package checked once is still refused once its lifetime is over", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const dave = yield* net.client("dave")
      const [fetched] = yield* net.delivery.fetchKeyPackages([dave.installationId])
      const keyPackage = fetched!.keyPackage!
      expect((yield* net.crypto.keyPackageInfo(keyPackage)).installationId).toBe(dave.installationId)
      vi.useFakeTimers({ toFake: ["Date"] })
      try {
        vi.setSystemTime(Date.now() + 91 * 24 * 60 * 60 * 1000)
        const refused = yield* Effect.flip(net.crypto.keyPackageInfo(keyPackage))
        expect(refused.reason).toBe("Unauthenticated")
      } finally {
        vi.useRealTimers()
      }
      // A tampered copy is not taken for the one verified before.
      const tampered = Uint8Array.from(keyPackage)
      tampered[tampered.length - 1]! ^= 1
      expect((yield* Effect.flip(net.crypto.keyPackageInfo(tampered))).reason).toBe("BadSignature")
    })))
})
