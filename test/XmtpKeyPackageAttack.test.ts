/**
 * Key packages crafted against UploadKeyPackage's verification (findings 9, 10 and 11 of the XMTP
 * attack round): each is refused as INVALID_ARGUMENT and changes nothing stored.
 */
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { decodeKeyPackage as tsDecodeKeyPackage, type KeyPackageTBS } from "ts-mls/keyPackage.js"
import { MAX_KEY_PACKAGE_BYTES, MAX_KEY_PACKAGE_LIST_ENTRIES } from "../src/xmtp/MlsInspect.ts"
import * as XmtpHarness from "./support/XmtpHarness.ts"
import { call, refusal, Xmtp } from "./support/XmtpHarness.ts"
import { xmtpKeyPackage } from "./support/XmtpKeyPackages.ts"

const INVALID_ARGUMENT = 3

const upload = (mls: Xmtp["mls"], bytes: Uint8Array) =>
  refusal(mls, "UploadKeyPackage", { keyPackage: { keyPackageTlsSerialized: bytes }, isInboxIdCredential: true })

const storedFor = (mls: Xmtp["mls"], installationKey: Uint8Array) =>
  call(mls, "FetchKeyPackages", { installationKeys: [installationKey] }).pipe(
    Effect.map((answer) => Buffer.from(answer.keyPackages[0].keyPackageTlsSerialized as Uint8Array).toString("hex"))
  )

/** `count` extensions of an unknown type with no data (3 bytes each). */
const emptyExtensions = (count: number) =>
  Array.from({ length: count }, () => ({ extensionType: 0xff00, extensionData: new Uint8Array(0) }))

// Key package lifetimes are checked against the real clock.
layer(XmtpHarness.layer(), { excludeTestServices: true })("XMTP key packages under attack", (it) => {
  it.effect("finding 9: a victim's key package re-encoded with a longer length form neither verifies nor replaces theirs", () =>
    Effect.gen(function*() {
      const { mls } = yield* Xmtp
      const victim = yield* Effect.promise(() => xmtpKeyPackage())
      expect((yield* upload(mls, victim.bytes)).code).toBe(0)
      const fetched = Buffer.from(yield* storedFor(mls, victim.installationKey), "hex")
      // KeyPackage = version(2) ciphersuite(2) init_key<V> ...: write the init key's length 0x20 as 0x40 0x20.
      expect(fetched[4]).toBe(32)
      const forged = new Uint8Array([...fetched.subarray(0, 4), 0x40, 0x20, ...fetched.subarray(5)])
      // ts-mls reads both to the same key package, so the signature over its re-encoding still verifies.
      expect(tsDecodeKeyPackage(forged, 0)?.[1]).toBe(forged.length)
      const answer = yield* upload(mls, forged)
      expect({ code: answer.code, stored: yield* storedFor(mls, victim.installationKey) })
        .toEqual({ code: INVALID_ARGUMENT, stored: Buffer.from(victim.bytes).toString("hex") })
      expect(answer.details).toMatch(/canonical encoding/)
    }))

  it.effect("finding 10: a key package whose init key is its leaf's encryption key is refused (RFC 9420 10.1)", () =>
    Effect.gen(function*() {
      const { mls } = yield* Xmtp
      const same = yield* Effect.promise(() => xmtpKeyPackage((tbs) => ({ ...tbs, initKey: tbs.leafNode.hpkePublicKey })))
      const answer = yield* upload(mls, same.bytes)
      expect(answer).toEqual({ code: INVALID_ARGUMENT, details: expect.stringMatching(/init key is the leaf's encryption key/) })
      expect(yield* storedFor(mls, same.installationKey)).toBe("")
    }))

  it.effect("finding 11: 300,000 empty extensions (900 KB) are refused as invalid, not answered INTERNAL", () =>
    Effect.gen(function*() {
      const { mls } = yield* Xmtp
      const { bytes } = yield* Effect.promise(() => xmtpKeyPackage())
      // The empty extensions vector is the byte before the 66-byte signature<V>.
      expect([...bytes.subarray(bytes.length - 67, bytes.length - 64)]).toEqual([0, 0x40, 0x40])
      const count = 300_000
      const extensions = new Uint8Array(4 + 3 * count)
      new DataView(extensions.buffer).setUint32(0, (3 * count) | 0x80000000)
      for (let i = 0; i < count; i++) extensions.set([0xff, 0x00, 0x00], 4 + 3 * i)
      const forged = new Uint8Array([...bytes.subarray(0, bytes.length - 67), ...extensions, ...bytes.subarray(bytes.length - 66)])
      expect(forged.length).toBeLessThan(1024 * 1024)
      expect((yield* upload(mls, forged)).code).toBe(INVALID_ARGUMENT)
    }))

  it.effect("finding 11: a signed key package with too many extensions is refused before ts-mls re-encodes it", () =>
    Effect.gen(function*() {
      const { mls } = yield* Xmtp
      const many = yield* Effect.promise(() =>
        xmtpKeyPackage((tbs) => ({ ...tbs, extensions: emptyExtensions(MAX_KEY_PACKAGE_LIST_ENTRIES + 1) }))
      )
      expect(many.bytes.length).toBeLessThan(MAX_KEY_PACKAGE_BYTES)
      const answer = yield* upload(mls, many.bytes)
      expect(answer).toEqual({ code: INVALID_ARGUMENT, details: expect.stringMatching(/more than 256 entries/) })
      // As many capabilities as that, in the leaf, too.
      const capabilities = yield* Effect.promise(() =>
        xmtpKeyPackage((tbs) => ({
          ...tbs,
          leafNode: {
            ...tbs.leafNode,
            capabilities: { ...tbs.leafNode.capabilities, proposals: Array.from({ length: 300 }, (_, i) => 0x8000 + i) }
          }
        }))
      )
      expect((yield* upload(mls, capabilities.bytes)).code).toBe(INVALID_ARGUMENT)
      expect([yield* storedFor(mls, many.installationKey), yield* storedFor(mls, capabilities.installationKey)]).toEqual(["", ""])
    }))

  it.effect("finding 11: a key package over the size bound is refused; one with a post-quantum-sized extension is not", () =>
    Effect.gen(function*() {
      const { mls } = yield* Xmtp
      const withData = (size: number) => (tbs: KeyPackageTBS) => ({
        ...tbs,
        extensions: [{ extensionType: 0xff01, extensionData: new Uint8Array(size).fill(7) }]
      })
      // libxmtp's carry a post-quantum key in an extension of 1,221 bytes (1,659 in all).
      const postQuantum = yield* Effect.promise(() => xmtpKeyPackage(withData(1221)))
      expect((yield* upload(mls, postQuantum.bytes)).code).toBe(0)
      const large = yield* Effect.promise(() => xmtpKeyPackage(withData(MAX_KEY_PACKAGE_BYTES)))
      expect(yield* upload(mls, large.bytes)).toEqual({
        code: INVALID_ARGUMENT,
        details: expect.stringMatching(new RegExp(`over ${MAX_KEY_PACKAGE_BYTES} bytes`))
      })
      expect(yield* storedFor(mls, large.installationKey)).toBe("")
    }))
})
