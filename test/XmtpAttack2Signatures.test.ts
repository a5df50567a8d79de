/**
 * Second attack round on the XMTP V3 face: signature verification bought for nothing. An
 * identity update of 16 actions may carry 31 distinct valid wallet signatures (ECDSA signs the
 * same text differently with fresh nonces, so the per-update cache of signatures does not
 * help); naming another inbox id than its CreateInbox makes, it is refused only after all of
 * them were recovered, stores nothing, and may be sent again and again as it is.
 */
import { expect, layer } from "@effect/vitest"
import { secp256k1 } from "@noble/curves/secp256k1.js"
import { keccak_256 } from "@noble/hashes/sha3.js"
import { Effect } from "effect"
import { monitorEventLoopDelay } from "node:perf_hooks"
import { refusal, signUpdate, nowNs, Xmtp } from "./support/XmtpHarness.ts"
import * as XmtpHarness from "./support/XmtpHarness.ts"

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

/** CreateInbox of `owner` then 15 wallets linked, each add with a fresh owner signature: 31 distinct signatures. Named `inboxId`. */
const costlyUpdate = (inboxId: string) => {
  const owner = randomizedWallet()
  const linked = Array.from({ length: 15 }, randomizedWallet)
  const create = { initialIdentifier: owner.address, nonce: "7", initialIdentifierKind: 1 }
  return signUpdate(
    {
      inboxId,
      clientTimestampNs: nowNs(),
      actions: [{ createInbox: create }, ...linked.map((w) => ({ add: { newMemberIdentifier: { ethereumAddress: w.address } } }))]
    },
    (text) => [
      { createInbox: { ...create, initialIdentifierSignature: owner.sign(text) } },
      ...linked.map((w) => ({
        add: { newMemberIdentifier: { ethereumAddress: w.address }, existingMemberSignature: owner.sign(text), newMemberSignature: w.sign(text) }
      }))
    ]
  )
}

layer(XmtpHarness.layer(), { excludeTestServices: true })("XMTP attack 2: signature amplification", (it) => {
  it.effect("one precomputed 7 KB update replayed 64 times at once does not hold the event loop for long", () =>
    Effect.gen(function*() {
      const { identity, mls } = yield* Xmtp
      // Any well-formed inbox id but the one the CreateInbox makes: refused at the very end.
      const identityUpdate = costlyUpdate("ab".repeat(32))
      const one = yield* refusal(identity, "PublishIdentityUpdate", { identityUpdate })
      expect(one.details).toContain("another inbox id")
      const histogram = monitorEventLoopDelay({ resolution: 5 })
      histogram.enable()
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
      const answers = yield* Effect.raceFirst(
        Effect.forEach(Array.from({ length: 64 }), () => refusal(identity, "PublishIdentityUpdate", { identityUpdate }), { concurrency: "unbounded" }),
        prober.pipe(Effect.as([]))
      )
      const wallMs = Math.round(performance.now() - start)
      // The call still waiting when the publishes were all answered.
      latencies.push(Math.round(performance.now() - probing))
      const used = process.cpuUsage(cpu)
      histogram.disable()
      const report = {
        requests: answers.length,
        wallMs,
        cpuMsPerRequest: Math.round((used.user + used.system) / 1000 / 64),
        maxDelayMs: Math.round(histogram.max / 1e6),
        trivialCallMaxMs: Math.max(...latencies),
        refused: new Set(answers.map((a) => a.details)).size === 1 ? answers[0]!.details : "mixed"
      }
      console.log(JSON.stringify(report))
      expect(report.maxDelayMs).toBeLessThan(100)
    }), { timeout: 60_000 })
})
