/**
 * The wire encodings of the delivery RPCs cost time linear in their input and refuse oversized
 * fields before parsing them: the attacks of issue 11 (a 10 MiB base64 payload decoded a
 * character at a time, a cursor of 48 million digits fed to `BigInt`) are cheap refusals.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Schema } from "effect"
import {
  Base64Bytes,
  DecimalBigInt,
  GroupQueryWire,
  IdentityUpdateInputWire,
  MAX_ID_CHARS
} from "../src/domain/DeliveryRpcs.ts"

const decodeBytes = Schema.decodeUnknownEither(Base64Bytes)
const encodeBytes = Schema.encodeSync(Base64Bytes)
const decodeDecimal = Schema.decodeUnknownEither(DecimalBigInt)

const timed = <A>(f: () => A): { readonly result: A; readonly millis: number } => {
  const start = performance.now()
  const result = f()
  return { result, millis: performance.now() - start }
}

describe("wire bytes", () => {
  it.effect("20 MiB of base64 decode and encode in native time, byte for byte", () =>
    Effect.sync(() => {
      const bytes = new Uint8Array(20 * 1024 * 1024).map((_, i) => (i * 7919) & 0xff)
      const encoded = timed(() => encodeBytes(bytes))
      expect(encoded.result).toBe(Buffer.from(bytes).toString("base64"))
      const decoded = timed(() => decodeBytes(encoded.result))
      const back = Either.getOrThrow(decoded.result)
      expect(back).toBeInstanceOf(Uint8Array)
      expect(back.length).toBe(bytes.length)
      expect(Buffer.from(back).equals(Buffer.from(bytes))).toBe(true)
      // Schema.Uint8ArrayFromBase64 took about 3.3 s for this; Buffer takes milliseconds.
      expect(encoded.millis + decoded.millis).toBeLessThan(1000)
    }))

  it.effect("what Buffer would silently skip or truncate is refused", () =>
    Effect.sync(() => {
      for (const bad of ["abc", "ab=c", "ab c", "YWJj\n", "YW-j", "YWJj====", "Y===", 42, null]) {
        expect(Either.isLeft(decodeBytes(bad)), String(bad)).toBe(true)
      }
      expect(Either.getOrThrow(decodeBytes(""))).toEqual(new Uint8Array(0))
      expect(Array.from(Either.getOrThrow(decodeBytes("AAEC/w==")))).toEqual([0, 1, 2, 255])
    }))

  it.effect("padded base64 another encoder wrote with non-zero pad bits still reads, as Buffer reads it", () =>
    Effect.sync(() => {
      // Buffer writes "AA==" and "AAA=" for these bytes; the text is not what it writes back.
      expect(Array.from(Either.getOrThrow(decodeBytes("AB==")))).toEqual([0])
      expect(Array.from(Either.getOrThrow(decodeBytes("AAB=")))).toEqual([0, 0])
      expect(Either.isLeft(decodeBytes("AB=A"))).toBe(true)
      expect(Either.isLeft(decodeBytes("A_B="))).toBe(true)
    }))
})

describe("wire decimals", () => {
  it.effect("a cursor of 48 million digits is refused before BigInt sees it", () =>
    Effect.sync(() => {
      const huge = "9".repeat(48_000_000)
      const { millis, result } = timed(() => decodeDecimal(huge))
      expect(Either.isLeft(result)).toBe(true)
      // BigInt alone took 22 s on this input.
      expect(millis).toBeLessThan(50)
    }))

  it.effect("20 digits and a sign pass, 21 digits and non-decimals do not", () =>
    Effect.sync(() => {
      expect(Either.getOrThrow(decodeDecimal("18446744073709551615"))).toBe(18446744073709551615n)
      expect(Either.getOrThrow(decodeDecimal("-1"))).toBe(-1n)
      expect(Either.getOrThrow(decodeDecimal("0"))).toBe(0n)
      for (const bad of ["184467440737095516150", "", "-", "1e3", "0x10", " 1", "1.0", 1]) {
        expect(Either.isLeft(decodeDecimal(bad)), String(bad)).toBe(true)
      }
    }))
})

describe("wire strings", () => {
  it.effect("ids, keys and signatures are bounded in length at decode", () =>
    Effect.sync(() => {
      const query = (groupId: string) => Schema.decodeUnknownEither(GroupQueryWire)({ groupId, afterSequenceId: "0" })
      // A malformed but short id reaches the service (for its typed error); a huge one does not.
      expect(Either.isRight(query("not-a-group-id"))).toBe(true)
      expect(Either.isLeft(query("a".repeat(MAX_ID_CHARS + 1)))).toBe(true)
      const update = (signature: string) =>
        Schema.decodeUnknownEither(IdentityUpdateInputWire)({
          inboxId: "a".repeat(64),
          sequence: 1,
          previousHash: "0".repeat(64),
          action: { _tag: "CreateInbox", rootPublicKey: "b".repeat(64) },
          signature
        })
      expect(Either.isRight(update("c".repeat(128)))).toBe(true)
      expect(Either.isLeft(update("c".repeat(1_000_000)))).toBe(true)
    }))
})
