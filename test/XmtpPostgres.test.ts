/**
 * Two XMTP V3 servers on one Postgres (as two `converge serve --postgres` instances would be):
 * a group's messages keep one order whichever server takes them, and identity updates sent
 * to both at once are each verified against the log they extend.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Chunk, Context, Effect, Fiber, Layer, Stream } from "effect"
import * as PgDeliveryStore from "../src/layers/PgDeliveryStore.ts"
import * as XmtpStore from "../src/xmtp/XmtpStore.ts"
import * as Postgres from "./support/Postgres.ts"
import {
  call,
  groupInput,
  ids,
  newGroupId,
  newInstallation,
  newWallet,
  nowNs,
  privateMessage,
  refusal,
  registration,
  serverOn,
  signUpdate,
  subscribe,
  type Wallet,
  type Installation,
  type Xmtp
} from "./support/XmtpHarness.ts"

class Pair extends Context.Tag("test/XmtpPair")<Pair, { readonly a: Xmtp; readonly b: Xmtp }>() {}

/** One server: its own pool, store and LISTEN connection, on the suite's schema. */
const instance = XmtpStore.layer.pipe(
  Layer.provideMerge(PgDeliveryStore.layerPg({ heartbeatMillis: 1000 })),
  Layer.provideMerge(Layer.fresh(Postgres.layerClient))
)

const pair = Layer.scoped(
  Pair,
  Effect.gen(function*() {
    const schema = yield* Postgres.TestSchema
    const store = instance.pipe(Layer.provide(Layer.succeed(Postgres.TestSchema, schema)))
    return { a: yield* serverOn(store), b: yield* serverOn(store) }
  })
).pipe(Layer.provide(Postgres.layerSchema("xmtp-pair")), Layer.orDie)

/** An update adding `installation` to `wallet`'s inbox, signed by the wallet. */
const addition = (inboxId: string, wallet: Wallet, installation: Installation) => {
  const member = { installationPublicKey: installation.publicKey }
  return signUpdate({ inboxId, clientTimestampNs: nowNs(), actions: [{ add: { newMemberIdentifier: member } }] }, (text) => [{
    add: {
      newMemberIdentifier: member,
      existingMemberSignature: { erc191: { bytes: wallet.sign(text) } },
      newMemberSignature: { installationKey: { bytes: installation.sign(text), publicKey: installation.publicKey } }
    }
  }])
}

const suite = () =>
  layer(pair, { timeout: 60_000 })("Two XMTP V3 servers on one Postgres", (it) => {
    it.scoped("messages sent through both servers at once get one order, followed live through either", () =>
      Effect.gen(function*() {
        const { a, b } = yield* Pair
        const group = newGroupId()
        const sub = yield* subscribe(a.mls, "SubscribeGroupMessages", { filters: [{ groupId: group, idCursor: 0 }] })
        yield* sub.headers
        const seen = yield* sub.messages.pipe(Stream.take(40), Stream.runCollect, Effect.fork)
        yield* Effect.forEach(Array.from({ length: 40 }, (_, i) => i), (i) =>
          call(i % 2 === 0 ? a.mls : b.mls, "SendGroupMessages", { messages: [groupInput(privateMessage(group, "application", `m${i}`))] }),
          { concurrency: 8, discard: true })
        const expected = Array.from({ length: 40 }, (_, i) => i + 1)
        expect(ids(Chunk.toArray(yield* Fiber.join(seen)))).toEqual(expected)
        const fromB = yield* call(b.mls, "QueryGroupMessages", { groupId: group, pagingInfo: { direction: 1 } })
        expect(ids(fromB.messages)).toEqual(expected)
      }))

    it.effect("two installations added through both servers at once: both land, in one log both servers serve", () =>
      Effect.gen(function*() {
        const { a, b } = yield* Pair
        const alice = newWallet()
        const { inboxId, update } = registration(alice, newInstallation())
        yield* call(a.identity, "PublishIdentityUpdate", { identityUpdate: update })
        const [phone, laptop] = [addition(inboxId, alice, newInstallation()), addition(inboxId, alice, newInstallation())]
        yield* Effect.all([
          call(a.identity, "PublishIdentityUpdate", { identityUpdate: phone }),
          call(b.identity, "PublishIdentityUpdate", { identityUpdate: laptop })
        ], { concurrency: 2 })
        const logs = yield* Effect.forEach([a, b], (server) =>
          call(server.identity, "GetIdentityUpdates", { requests: [{ inboxId, sequenceId: 0 }] }))
        const sequences = logs.map((log) => log.responses[0].updates.map((u: any) => u.sequenceId.toString()))
        expect(sequences).toEqual([["1", "2", "3"], ["1", "2", "3"]])
        expect((yield* refusal(b.identity, "PublishIdentityUpdate", { identityUpdate: phone })).details).toMatch(/replay/)
      }))
  })

const pgUp = await Postgres.reachable()
if (pgUp) suite()
else if (Postgres.required) {
  describe("Two XMTP V3 servers on one Postgres", () => {
    it("answers at CONVERGE_TEST_PG_URL", () => {
      throw new Error("CI must run the Postgres suites: no database at CONVERGE_TEST_PG_URL (run .ci/postgres.sh)")
    })
  })
} else {
  describe.skip("Two XMTP V3 servers on one Postgres (no database at CONVERGE_TEST_PG_URL)", () => {
    it("skipped", () => {})
  })
}
