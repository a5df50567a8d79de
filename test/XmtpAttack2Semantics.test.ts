/**
 * Second attack round on the XMTP V3 face: requests that are valid protobuf but semantically
 * extreme. These withstood; kept as regression checks.
 */
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { call, newInstallation, newWallet, refusal, registration, Xmtp } from "./support/XmtpHarness.ts"
import * as XmtpHarness from "./support/XmtpHarness.ts"

layer(XmtpHarness.layer(), { excludeTestServices: true })("XMTP attack 2: extreme but well-formed requests", (it) => {
  it.effect("extreme paging values are answered, never INTERNAL or UNAVAILABLE", () =>
    Effect.gen(function*() {
      const { mls } = yield* Xmtp
      const group = XmtpHarness.newGroupId()
      yield* call(mls, "SendGroupMessages", { messages: [XmtpHarness.groupInput(XmtpHarness.privateMessage(group, "application", "a"))] })
      const codes = []
      for (const pagingInfo of [
        { limit: 4294967295, direction: 99, idCursor: "18446744073709551615" },
        { limit: 0, direction: 1, idCursor: "18446744073709551615" },
        { limit: 1, direction: 2, idCursor: "1" },
        { limit: 100, direction: 1, idCursor: "9223372036854775807" }
      ]) {
        codes.push((yield* refusal(mls, "QueryGroupMessages", { groupId: group, pagingInfo })).code)
        codes.push((yield* refusal(mls, "QueryWelcomeMessages", { installationKey: group, pagingInfo })).code)
      }
      codes.push((yield* refusal(mls, "BatchQueryCommitLog", {
        requests: Array.from({ length: 20 }, () => ({ groupId: group, pagingInfo: { idCursor: "18446744073709551615", limit: 4294967295 } }))
      })).code)
      codes.push((yield* refusal(mls, "GetNewestGroupMessage", { groupIds: Array(1000).fill(group), includeContent: true })).code)
      expect(codes.every((c) => c === 0)).toBe(true)
      const tooMany = yield* refusal(mls, "GetNewestGroupMessage", { groupIds: Array(1001).fill(group) })
      expect(tooMany.code).toBe(3)
    }))

  it.effect("a registration replayed for another inbox id, or with its nonce reused, is refused and changes nothing", () =>
    Effect.gen(function*() {
      const { identity } = yield* Xmtp
      const wallet = newWallet()
      const { inboxId, update } = registration(wallet, newInstallation())
      expect((yield* refusal(identity, "PublishIdentityUpdate", { identityUpdate: update })).code).toBe(0)
      // The same signed actions under another inbox id: the signature text names the inbox.
      const other = yield* refusal(identity, "PublishIdentityUpdate", { identityUpdate: { ...update, inboxId: "cd".repeat(32) } })
      expect(other.code).toBe(3)
      // The same update again (replay), and a fresh registration of the same address and nonce.
      expect((yield* refusal(identity, "PublishIdentityUpdate", { identityUpdate: update })).code).toBe(3)
      expect((yield* refusal(identity, "PublishIdentityUpdate", { identityUpdate: registration(wallet, newInstallation()).update })).code).toBe(3)
      const log = yield* call(identity, "GetIdentityUpdates", { requests: Array(100).fill({ inboxId, sequenceId: 0 }) })
      expect(log.responses.map((r: any) => r.updates.length)).toEqual(Array(100).fill(1))
      const scw = yield* refusal(identity, "VerifySmartContractWalletSignatures", { signatures: Array.from({ length: 100 }, () => ({ hash: new Uint8Array(32), signature: new Uint8Array(60_000) })) })
      expect(scw.code).toBe(12)
    }))

  it.effect("welcomes with hostile HPKE fields are bounded", () =>
    Effect.gen(function*() {
      const { mls } = yield* Xmtp
      const installationKey = new Uint8Array(32).fill(1)
      const big = yield* refusal(mls, "SendWelcomeMessages", { messages: [{ v1: { installationKey, data: new Uint8Array(10), hpkePublicKey: new Uint8Array(5000), wrapperAlgorithm: 1 } }] })
      const metadata = yield* refusal(mls, "SendWelcomeMessages", { messages: [{ v1: { installationKey, data: new Uint8Array(10), hpkePublicKey: new Uint8Array(32), welcomeMetadata: new Uint8Array(70_000) } }] })
      const pointer = yield* refusal(mls, "SendWelcomeMessages", { messages: [{ welcomePointer: { installationKey, welcomePointer: new Uint8Array(10), hpkePublicKey: new Uint8Array(32), wrapperAlgorithm: 7 } }] })
      expect([big.code, metadata.code, pointer.code]).toEqual([3, 3, 3])
    }))
})
