import { ED25519_TORSION_SUBGROUP as ED25519_TORSION, ed25519 } from "@noble/curves/ed25519.js"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Option, TestClock } from "effect"
import { randomBytes } from "node:crypto"
import { fromHex, toHex } from "../src/domain/Bytes.ts"
import * as Ed25519 from "../src/domain/Ed25519.ts"
import * as IdentityLog from "../src/domain/IdentityLog.ts"
import { IdentityUpdate } from "../src/domain/Wire.ts"
import { TestNetwork } from "../src/testing.ts"

const newInbox = () => {
  const root = ed25519.utils.randomSecretKey()
  return { root, inboxId: IdentityLog.inboxIdOf(ed25519.getPublicKey(root)) }
}
/** An installation: an Ed25519 key pair (its id is the hash of the public key). */
const newInstallation = () => {
  const secret = ed25519.utils.randomSecretKey()
  const key = ed25519.getPublicKey(secret)
  return { secret, key, installationId: IdentityLog.installationIdOf(key) }
}
type Installation = ReturnType<typeof newInstallation>

const add = (i: Installation) => ({
  _tag: "AddInstallation" as const,
  installationId: i.installationId,
  signaturePublicKey: toHex(i.key)
})

/** The installation whose key an action adds, so `signUpdate` can prove possession. */
const installationsById = new Map<string, Installation>()
const sign = (
  root: Uint8Array,
  inboxId: ReturnType<typeof newInbox>["inboxId"],
  state: IdentityLog.InboxState | undefined,
  action: IdentityLog.UnsignedIdentityAction
) =>
  IdentityLog.signUpdate(
    root,
    inboxId,
    state,
    action,
    action._tag === "AddInstallation" ? installationsById.get(action.installationId)?.secret : undefined
  )

/** Builds a log by signing each action onto the previous state. */
const build = (
  root: Uint8Array,
  inboxId: ReturnType<typeof newInbox>["inboxId"],
  actions: ReadonlyArray<IdentityLog.UnsignedIdentityAction>
) => {
  const updates: Array<IdentityUpdate> = []
  let state: IdentityLog.InboxState | undefined
  for (const action of actions) {
    const update = sign(root, inboxId, state, action)
    state = Either.getOrThrow(IdentityLog.applyUpdate(state, update))
    updates.push(update)
  }
  return { updates, state: state! }
}

/** An inbox with two installations (a phone and a laptop) known to `sign`, and its CreateInbox action. */
const inboxWithDevices = () => {
  const { inboxId, root } = newInbox()
  const phone = newInstallation()
  const laptop = newInstallation()
  installationsById.set(phone.installationId, phone)
  installationsById.set(laptop.installationId, laptop)
  const create = { _tag: "CreateInbox" as const, rootPublicKey: toHex(ed25519.getPublicKey(root)) }
  return { inboxId, root, phone, laptop, create }
}

describe("IdentityLog", () => {
  const { inboxId, root, phone, laptop, create } = inboxWithDevices()

  it("replays a signed log into the current installations", () => {
    const { updates } = build(root, inboxId, [create, add(phone), add(laptop)])
    const state = Option.getOrThrow(Either.getOrThrow(IdentityLog.replay(updates)))
    expect(IdentityLog.currentInstallations(state)).toEqual([phone.installationId, laptop.installationId].sort())
    expect(IdentityLog.isCurrentInstallation(state, phone.installationId, phone.key)).toBe(true)
    // The right installation id with someone else's key is not that installation.
    expect(IdentityLog.isCurrentInstallation(state, phone.installationId, laptop.key)).toBe(false)
  })

  it("rejects an installation added with a bad signature", () => {
    const { state } = build(root, inboxId, [create])
    const forged = sign(ed25519.utils.randomSecretKey(), inboxId, state, add(phone))
    const result = IdentityLog.applyUpdate(state, forged)
    expect(Either.isLeft(result) && result.left.reason).toContain("bad root signature")
    const tampered = IdentityUpdate.make({ ...sign(root, inboxId, state, add(phone)), action: sign(root, inboxId, state, add(laptop)).action })
    expect(Either.isLeft(IdentityLog.applyUpdate(state, tampered))).toBe(true)
  })

  it("a revoked installation is no longer valid and cannot come back", () => {
    const { state } = build(root, inboxId, [create, add(phone), { _tag: "RevokeInstallation", installationId: phone.installationId }])
    expect(IdentityLog.isCurrentInstallation(state, phone.installationId, phone.key)).toBe(false)
    const readd = IdentityLog.applyUpdate(state, sign(root, inboxId, state, add(phone)))
    expect(Either.isLeft(readd) && readd.left.reason).toContain("revoked")
  })

  it("adding an installation needs that installation's own signature (proof of possession)", () => {
    const { state } = build(root, inboxId, [create])
    const stranger = newInstallation()
    // The root signs, but the installation's signature is made with a key the inbox does not hold.
    const withoutKey = IdentityLog.signUpdate(root, inboxId, state, add(stranger), ed25519.utils.randomSecretKey())
    const refused = IdentityLog.applyUpdate(state, withoutKey)
    expect(Either.isLeft(refused) && refused.left.reason).toContain("proof of possession")
    // A proof made for another position in the log does not fit this one.
    const proof = sign(root, inboxId, state, add(phone))
    const other = build(root, inboxId, [create, add(laptop)]).state
    const moved = IdentityUpdate.make({ ...sign(root, inboxId, other, add(phone)), action: proof.action })
    expect(Either.isLeft(IdentityLog.applyUpdate(other, moved))).toBe(true)
    expect(Either.isRight(IdentityLog.applyUpdate(state, proof))).toBe(true)
  })

  it("accepts only canonical signatures: no upper case, no junk around them", () => {
    const { state } = build(root, inboxId, [create])
    const good = sign(root, inboxId, state, add(phone))
    for (const signature of [good.signature.toUpperCase(), `${good.signature}00`, ` ${good.signature}`]) {
      const bent = IdentityUpdate.make({ ...good, signature })
      expect(Either.isLeft(IdentityLog.applyUpdate(state, bent))).toBe(true)
    }
    const action = good.action as Extract<IdentityUpdate["action"], { _tag: "AddInstallation" }>
    const bentProof = IdentityUpdate.make({
      ...good,
      action: { ...action, installationSignature: action.installationSignature.toUpperCase() }
    })
    expect(Either.isLeft(IdentityLog.applyUpdate(state, bentProof))).toBe(true)
    expect(Either.isRight(IdentityLog.applyUpdate(state, good))).toBe(true)
  })

  it("rejects replayed, reordered and mis-addressed entries", () => {
    const { state, updates } = build(root, inboxId, [create, add(phone)])
    const replay = IdentityLog.applyUpdate(state, updates[1]!)
    expect(Either.isLeft(replay) && replay.left.reason).toContain("replayed")
    const other = newInbox()
    const foreignCreate = IdentityLog.signUpdate(other.root, inboxId, undefined, {
      _tag: "CreateInbox",
      rootPublicKey: toHex(ed25519.getPublicKey(other.root))
    })
    const stolen = IdentityLog.applyUpdate(undefined, foreignCreate)
    expect(Either.isLeft(stolen) && stolen.left.reason).toContain("not the hash of the root public key")
    const wrongKey = IdentityLog.applyUpdate(
      state,
      sign(root, inboxId, state, { ...add(laptop), installationId: phone.installationId })
    )
    expect(Either.isLeft(wrongKey)).toBe(true)
  })
})

describe("IdentityLog signatures checked at once", () => {
  const { inboxId, root, phone, laptop, create } = inboxWithDevices()

  /** What a joiner does: every signature on the thread pool first, then the log replayed with those answers. */
  const replayChecked = async (rootKey: string | undefined, state: IdentityLog.InboxState | undefined, updates: ReadonlyArray<IdentityUpdate>) => {
    const checks = IdentityLog.signatureChecksOf(rootKey, updates)
    const valid = await Promise.all(checks.map((c) => Ed25519.verifyStrictAsync(c.publicKey, c.message, c.signature)))
    const verify = IdentityLog.preverified(checks, valid)
    let current = state
    for (const u of updates) {
      const next = IdentityLog.applyUpdate(current, u, verify)
      if (Either.isLeft(next)) return { checks, valid, result: next }
      current = next.right
    }
    return { checks, valid, result: Either.right(current!) }
  }

  it("a log checked at once replays to the same state, every root signature and proof of possession among the checks", async () => {
    const { updates, state } = build(root, inboxId, [create, add(phone), add(laptop), { _tag: "RevokeInstallation", installationId: phone.installationId }])
    const { checks, valid, result } = await replayChecked(undefined, undefined, updates)
    // 4 root signatures + 2 proofs of possession, all valid.
    expect(checks.length).toBe(6)
    expect(valid.every((v) => v)).toBe(true)
    expect(IdentityLog.currentInstallations(Either.getOrThrow(result))).toEqual(IdentityLog.currentInstallations(state))
    expect(Either.getOrThrow(result).headHash).toBe(state.headHash)
  })

  it("refuses exactly what one-by-one verification refuses: forged root signature, stolen proof, bent spelling", async () => {
    const { state } = build(root, inboxId, [create])
    const good = sign(root, inboxId, state, add(phone))
    const action = good.action as Extract<IdentityUpdate["action"], { _tag: "AddInstallation" }>
    const cases: ReadonlyArray<IdentityUpdate> = [
      sign(ed25519.utils.randomSecretKey(), inboxId, state, add(phone)),
      IdentityLog.signUpdate(root, inboxId, state, add(newInstallation()), ed25519.utils.randomSecretKey()),
      IdentityUpdate.make({ ...good, signature: good.signature.toUpperCase() }),
      IdentityUpdate.make({ ...good, signature: nonCanonicalS(good.signature) }),
      IdentityUpdate.make({ ...good, action: { ...action, installationSignature: action.installationSignature.toUpperCase() } })
    ]
    for (const update of cases) {
      const oneByOne = IdentityLog.applyUpdate(state, update)
      const { result } = await replayChecked(state.rootPublicKey, state, [update])
      expect(Either.isLeft(oneByOne)).toBe(true)
      expect(Either.isLeft(result) && result.left.reason).toBe(Either.isLeft(oneByOne) && oneByOne.left.reason)
    }
    expect(Either.isRight((await replayChecked(state.rootPublicKey, state, [good])).result)).toBe(true)
  })

  it("an answer given for other bytes does not carry over: a valid check of one entry proves nothing about another", async () => {
    const { state } = build(root, inboxId, [create])
    const good = sign(root, inboxId, state, add(phone))
    const checks = IdentityLog.signatureChecksOf(state.rootPublicKey, [good])
    const verify = IdentityLog.preverified(checks, checks.map(() => true))
    // The same signature on an entry that adds another installation: its bytes differ, so it is verified anew and fails.
    const swapped = IdentityUpdate.make({ ...good, action: { ...(good.action as Extract<IdentityUpdate["action"], { _tag: "AddInstallation" }>), installationId: laptop.installationId, signaturePublicKey: toHex(laptop.key) } })
    expect(Either.isLeft(IdentityLog.applyUpdate(state, swapped, verify))).toBe(true)
    expect(Either.isRight(IdentityLog.applyUpdate(state, good, verify))).toBe(true)
  })
})

/** The same signature with S + L in place of S: the equation still holds, the encoding is not canonical. */
const nonCanonicalS = (signatureHex: string): string => {
  const bytes = fromHex(signatureHex)
  const s = BigInt(`0x${toHex(bytes.slice(32).reverse())}`) + ED25519_L
  const le = fromHex(s.toString(16).padStart(64, "0")).reverse()
  return toHex(bytes.slice(0, 32)) + toHex(le)
}
const ED25519_L = 2n ** 252n + 27742317777372353535851937790883648493n

describe("IdentityLog signature encodings", () => {
  const { inboxId, root } = newInbox()
  const create = { _tag: "CreateInbox" as const, rootPublicKey: toHex(ed25519.getPublicKey(root)) }
  const signed = IdentityLog.signUpdate(root, inboxId, undefined, create)
  const withSignature = (u: IdentityUpdate, signature: string) => IdentityUpdate.make({ ...u, signature })
  const refusal = (u: IdentityUpdate, state?: IdentityLog.InboxState) => {
    const result = IdentityLog.applyUpdate(state, u)
    return Either.isLeft(result) ? result.left.reason : "accepted"
  }

  it("an entry signed before the move to node:crypto still verifies, with the same signature", () => {
    // Produced by the @noble/curves implementation this module used before (seed 1..32).
    const recorded = IdentityUpdate.make({
      inboxId: "65b60673d6ed884bf01c2c222d82ada0740f29ac3355d6a925c81f17f47a27b8" as typeof inboxId,
      sequence: 1,
      previousHash: IdentityLog.GENESIS_HASH,
      action: { _tag: "CreateInbox", rootPublicKey: "79b5562e8fe654f94078b112e8a98ba7901f853ae695bed7e0e3910bad049664" },
      signature: "43f476d4b2b07a80d582ef0a9feccdf0cb5d0223baf4c4413abb9659a1cfd999" +
        "35c11472618c3ad59b4454382848ec4273b08ef935dd81d8a23b2d18d86b3c01"
    })
    expect(refusal(recorded)).toBe("accepted")
    const seed = Uint8Array.from({ length: 32 }, (_, i) => i + 1)
    const resigned = IdentityLog.signUpdate(seed, recorded.inboxId, undefined, recorded.action)
    expect(resigned.signature).toBe(recorded.signature)
    // Random keys and messages: node:crypto and the pure-JS implementation agree both ways.
    for (let i = 0; i < 20; i++) {
      const secret = ed25519.utils.randomSecretKey()
      const message = new Uint8Array(randomBytes(i * 7))
      const signature = Ed25519.signEd25519(secret, message)
      expect(toHex(signature)).toBe(toHex(ed25519.sign(message, secret)))
      const publicKey = toHex(ed25519.getPublicKey(secret))
      expect(Ed25519.verifyStrict(publicKey, message, toHex(ed25519.sign(message, secret)))).toBe(true)
      expect(Ed25519.verifyStrict(publicKey, Uint8Array.of(...message, 0), toHex(signature))).toBe(false)
    }
  })

  it("refuses other spellings of a valid signature: uppercase, junk-suffixed, truncated, S + L", () => {
    expect(refusal(signed)).toBe("accepted")
    expect(refusal(withSignature(signed, signed.signature.toUpperCase()))).toContain("bad root signature")
    expect(refusal(withSignature(signed, `${signed.signature}zz`))).toContain("bad root signature")
    expect(refusal(withSignature(signed, `${signed.signature}00`))).toContain("bad root signature")
    expect(refusal(withSignature(signed, signed.signature.slice(0, 126)))).toContain("bad root signature")
    expect(refusal(withSignature(signed, nonCanonicalS(signed.signature)))).toContain("bad root signature")
  })

  it("refuses a small-order or non-canonically encoded root key, whose 'signatures' anyone can make", () => {
    // With the identity point as key, R = identity and S = 0 satisfy the verification equation
    // for every message; plain RFC 8032 verifiers (OpenSSL's, noble's ZIP-215 mode) accept it.
    const anySignature = `01${"00".repeat(31)}${"00".repeat(32)}`
    for (const key of [`01${"00".repeat(31)}`, `ee${"ff".repeat(30)}7f`]) {
      const forged = IdentityUpdate.make({
        inboxId: IdentityLog.inboxIdOf(fromHex(key)),
        sequence: 1,
        previousHash: IdentityLog.GENESIS_HASH,
        action: { _tag: "CreateInbox", rootPublicKey: key },
        signature: anySignature
      })
      expect(refusal(forged)).toContain("bad root signature")
    }
  })

  it.each([
    ["a real public key", () => ed25519.getPublicKey(ed25519.utils.randomSecretKey()), true],
    ["y = p (non-canonical zero)", () => fromHex(`ed${"ff".repeat(30)}7f`), false],
    ["y = p + 1 (non-canonical identity)", () => fromHex(`ee${"ff".repeat(30)}7f`), false],
    ["the identity with the sign bit set", () => fromHex(`01${"00".repeat(30)}80`), false],
    ...ED25519_TORSION.map((hex) => [`small-order point ${hex.slice(0, 8)}`, () => fromHex(hex), false] as const),
    ["31 bytes", () => new Uint8Array(31), false]
  ] as const)("isStrictPoint: %s -> %s", (_, point, strict) => {
    expect(Ed25519.isStrictPoint(point())).toBe(strict)
  })
})

describe("Identity through the delivery service", () => {
  it.scoped("a client registers its inbox and installation; a forged update is refused with a typed error", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const alice = yield* net.client("alice")
      const [log] = yield* net.delivery.getIdentityUpdates([{ inboxId: alice.inboxId, afterSequence: 0 }])
      expect(log?.updates.map((u) => u.update.action._tag)).toEqual(["CreateInbox", "AddInstallation"])
      const [kp] = yield* net.delivery.fetchKeyPackages([alice.installationId])
      expect(kp?.keyPackage).toBeInstanceOf(Uint8Array)

      const state = Option.getOrThrow(Either.getOrThrow(IdentityLog.replay(log!.updates.map((u) => u.update))))
      const intruder = newInstallation()
      installationsById.set(intruder.installationId, intruder)
      const forged = sign(ed25519.utils.randomSecretKey(), alice.inboxId, state, add(intruder))
      const refused = yield* net.delivery.publishIdentityUpdate(forged).pipe(Effect.flip)
      expect(refused._tag).toBe("InvalidIdentityUpdate")
    }))

  it.scoped("a key package serves one welcome: replaced at once, its private part gone after the grace period", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const [alice, bob] = yield* Effect.all([net.client("alice"), net.client("bob")])
      const ref = (bytes: Uint8Array | undefined) => net.crypto.keyPackageInfo(bytes!).pipe(Effect.map((i) => i.ref))
      const [served] = yield* net.delivery.fetchKeyPackages([bob.installationId])
      const used = yield* ref(served!.keyPackage)
      const group = yield* alice.createGroup([bob.inboxId])
      expect((yield* bob.syncAll).joined).toBe(1)
      // The server hands out a fresh one from now on.
      const [fresh] = yield* net.delivery.fetchKeyPackages([bob.installationId])
      expect(yield* ref(fresh!.keyPackage)).not.toBe(used)
      const privateRefs = Effect.flatMap(net.storage(bob), (s) => s.keyPackages.list).pipe(
        Effect.map((rows) => rows.map((r) => r.ref))
      )
      // Kept for welcomes sealed to it that may still be on their way...
      expect(yield* privateRefs).toContain(used)
      yield* TestClock.adjust("25 hours")
      yield* bob.syncAll
      // ...and gone once the grace period is over; the group goes on.
      expect(yield* privateRefs).not.toContain(used)
      yield* group.send("still here")
      yield* bob.syncAll
      const messages = yield* (yield* bob.conversation(group.id)).messages()
      expect(messages.map((m) => m.text)).toContain("still here")
    }))

  it.scoped("a revoked installation can no longer be added to a group", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const alice = yield* net.client("alice")
      const bob = yield* net.client("bob")
      const [log] = yield* net.delivery.getIdentityUpdates([{ inboxId: bob.inboxId, afterSequence: 0 }])
      const state = Option.getOrThrow(Either.getOrThrow(IdentityLog.replay(log!.updates.map((u) => u.update))))
      yield* net.delivery.publishIdentityUpdate(
        IdentityLog.signUpdate(bob.rootSecretKey!, bob.inboxId, state, {
          _tag: "RevokeInstallation",
          installationId: bob.installationId
        })
      )
      const refused = yield* alice.createGroup([bob.inboxId]).pipe(Effect.flip)
      expect(refused._tag).toBe("KeyPackageUnavailable")
    }))
})
