/**
 * Second attack round on the XMTP V3 face: signature verification bought for nothing. An
 * identity update of 16 actions may carry 31 distinct valid wallet signatures (ECDSA signs the
 * same text differently with fresh nonces, so the per-update cache of signatures does not
 * help); naming another inbox id than its CreateInbox makes, it is refused only after all of
 * them were recovered, stores nothing, and may be sent again and again as it is.
 */
import * as Grpc from "@grpc/grpc-js"
import { expect, layer } from "@effect/vitest"
import { secp256k1 } from "@noble/curves/secp256k1.js"
import { keccak_256 } from "@noble/hashes/sha3.js"
import { Effect } from "effect"
import { inboxIdOf } from "../src/xmtp/Associations.ts"
import { IDENTITY_API } from "../src/xmtp/Proto.ts"
import { newInstallation, newWallet, nowNs, refusal, registration, signUpdate, Xmtp } from "./support/XmtpHarness.ts"
import * as XmtpHarness from "./support/XmtpHarness.ts"
import { watchLoop } from "./support/LoopHold.ts"

const utf8 = (text: string) => new TextEncoder().encode(text)
const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex")

/** An EOA whose every ERC-191 signature of the same text is new (RFC 6979 plus fresh entropy). */
const randomizedWallet = () => {
  const secretKey = secp256k1.utils.randomSecretKey()
  const address = `0x${hex(keccak_256(secp256k1.getPublicKey(secretKey, false).subarray(1)).subarray(12))}`
  const sign = (text: string) => {
    const body = utf8(text)
    const digest = keccak_256(new Uint8Array([...utf8(`\x19Ethereum Signed Message:\n${body.length}`), ...body]))
    const s = secp256k1.sign(digest, secretKey, { prehash: false, format: "recovered", extraEntropy: true })
    return { erc191: { bytes: new Uint8Array([...s.subarray(1), s[0]! + 27]) } }
  }
  return { address, sign }
}

/**
 * CreateInbox of `owner` then 15 wallets linked, each add with a fresh owner signature: 31 distinct
 * signatures. Named `inboxId` (by default the one the CreateInbox makes); with `forgedLast`, the
 * last add's new member signature is another wallet's, so it is refused only after 30 recoveries.
 */
const costlyUpdate = (inboxId: string | undefined, forgedLast = false) => {
  const owner = randomizedWallet()
  const linked = Array.from({ length: 15 }, randomizedWallet)
  const stranger = randomizedWallet()
  const create = { initialIdentifier: owner.address, nonce: "7", initialIdentifierKind: 1 }
  return signUpdate(
    {
      inboxId: inboxId ?? inboxIdOf(owner.address, 7n),
      clientTimestampNs: nowNs(),
      actions: [{ createInbox: create }, ...linked.map((w) => ({ add: { newMemberIdentifier: { ethereumAddress: w.address } } }))]
    },
    (text) => [
      { createInbox: { ...create, initialIdentifierSignature: owner.sign(text) } },
      ...linked.map((w, i) => ({
        add: {
          newMemberIdentifier: { ethereumAddress: w.address },
          existingMemberSignature: owner.sign(text),
          newMemberSignature: (forgedLast && i === linked.length - 1 ? stranger : w).sign(text)
        }
      }))
    ]
  )
}

const attacks = [
  // Any well-formed inbox id but the one the CreateInbox makes: refused at the very end, before.
  { name: "naming another inbox id", update: () => costlyUpdate("ab".repeat(32)), refusal: "another inbox id" },
  // Only a recovery tells what is wrong: refused after 30 of them, whatever is checked first.
  { name: "whose last signature is a stranger's", update: () => costlyUpdate(undefined, true), refusal: "the new member's signature is not the new member's" }
]

layer(XmtpHarness.layer(), { excludeTestServices: true })("XMTP attack 2: signature amplification", (it) => {
  for (const attack of attacks) {
    it.scoped(`one precomputed 7 KB update ${attack.name}, replayed 64 times at once, does not hold the event loop for long`, () =>
      Effect.gen(function*() {
        const { identity, port } = yield* Xmtp
        // The flood fills its connection's 64 streams: others come on connections of their own.
        const mls = yield* XmtpHarness.otherConnection
        const honestIdentity = yield* Effect.acquireRelease(
          Effect.sync(() =>
            new (Grpc.makeClientConstructor(IDENTITY_API, "IdentityApi"))(`127.0.0.1:${port}`, Grpc.credentials.createInsecure(), {
              "grpc.use_local_subchannel_pool": 1
            }) as any
          ),
          (client) => Effect.sync(() => client.close())
        )
        const identityUpdate = attack.update()
        const one = yield* refusal(identity, "PublishIdentityUpdate", { identityUpdate })
        expect(one.details).toContain(attack.refusal)
        const loop = watchLoop()
        const cpu = process.cpuUsage()
        const start = performance.now()
        // A trivial call made meanwhile, every 50 ms.
        const latencies: Array<number> = []
        let probing = performance.now()
        const prober = Effect.gen(function*() {
          for (;;) {
            probing = performance.now()
            yield* XmtpHarness.call(mls, "QueryGroupMessages", { groupId: XmtpHarness.newGroupId() })
            latencies.push(Math.round(performance.now() - probing))
            yield* Effect.sleep("50 millis")
          }
        })
        // An honest client registering meanwhile: its two signature checks queue with the flood's.
        let honestMs = 0
        const honest = Effect.gen(function*() {
          yield* Effect.sleep("20 millis")
          const t = performance.now()
          yield* XmtpHarness.call(honestIdentity, "PublishIdentityUpdate", { identityUpdate: registration(newWallet(), newInstallation()).update })
          honestMs = Math.round(performance.now() - t)
        })
        const [answers] = yield* Effect.all([
          Effect.raceFirst(
            Effect.forEach(Array.from({ length: 64 }), () => refusal(identity, "PublishIdentityUpdate", { identityUpdate }), { concurrency: "unbounded" }),
            prober.pipe(Effect.as([]))
          ),
          honest
        ], { concurrency: "unbounded" })
        const wallMs = Math.round(performance.now() - start)
        // The call still waiting when the publishes were all answered.
        latencies.push(Math.round(performance.now() - probing))
        const used = process.cpuUsage(cpu)
        const held = loop.stop()
        const report = {
          attack: attack.name,
          requests: answers.length,
          wallMs,
          cpuMsPerRequest: Math.round((used.user + used.system) / 1000 / 64),
          ...held,
          trivialCallMaxMs: Math.max(...latencies),
          honestPublishMs: honestMs,
          refused: new Set(answers.map((a) => a.details)).size === 1 ? answers[0]!.details : "mixed"
        }
        console.log(JSON.stringify(report))
        expect(report.refused).toContain(attack.refusal)
        // Before: the loop held 1.3-2.5 s and a trivial call waited 4.5-9 s; now 27-81 ms and 61-405 ms.
        expect(report.maxHeldCpuMs).toBeLessThan(400)
        expect(report.trivialCallMaxMs).toBeLessThan(2_000)
        // Round-robin: the honest update's checks wait behind one check of each flooding request, not all of theirs.
        expect(report.honestPublishMs).toBeLessThan(Math.max(2000, wallMs / 2))
      }), { timeout: 120_000 })
  }
})
