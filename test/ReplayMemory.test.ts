/**
 * The delivery service's replay memory (`RequestAuthenticator`): only accepted requests are
 * remembered, one installation cannot push out another's nonces, and when many installations
 * fill the memory, what is forgotten is refused rather than replayable: retryably, since an
 * honest client's retry is signed anew and passes, while a replayed header never does.
 */
import { describe, expect, it } from "@effect/vitest"
import { Clock, Context, Effect, Layer, Option, Schedule, TestClock } from "effect"
import { WelcomeMessageInput } from "../src/domain/Wire.ts"
import { DeliveryService } from "../src/index.ts"
import * as Authenticator from "../src/layers/RequestAuthenticator.ts"
import { type RequestAuth, signRequest } from "../src/domain/RequestAuth.ts"
import { authenticatedAs, currentSigner, receivedSigner, type RequestSigner } from "../src/services/DeliveryAuth.ts"
import type { DeliveryStore } from "../src/services/DeliveryStore.ts"
import { type InstallationKeys, newInstallationKeys, registerInstallation } from "./support/DeliveryFixtures.ts"
import { fastClientOptions, rpcLayer } from "./support/RpcHarness.ts"

type Service = DeliveryService["Type"]

/** What an honest client is told when its statement is older than what the memory still holds. */
const signAnew = { _tag: "DeliveryError", reason: "LimitExceeded", retryable: true }
/** What a replay of a statement the memory still holds is told. */
const replayRefused = { _tag: "DeliveryError", reason: "Unauthenticated", retryable: false }

/** A signer that records every statement it makes, as a wire tap would. */
const recording = (keys: InstallationKeys, captured: Array<RequestAuth>): RequestSigner => (op, digest) =>
  Effect.tap(keys.signer(op, digest), (auth) => Effect.sync(() => captured.push(auth)))

/** The victim reads its welcomes once, with the statement captured; then a friend sends it one. */
const victimWithCapturedQuery = (service: Service) =>
  Effect.gen(function*() {
    const victim = yield* registerInstallation(service)
    const friend = yield* registerInstallation(service)
    const captured: Array<RequestAuth> = []
    const query = { installationId: victim.installation.id, afterSequenceId: 0n }
    expect((yield* authenticatedAs(service, recording(victim.installation, captured)).queryWelcomeMessages(query)).items)
      .toHaveLength(0)
    yield* friend.ds.sendWelcomeMessages([
      WelcomeMessageInput.make({ installationId: victim.installation.id, payload: new TextEncoder().encode("secret") })
    ])
    /** The captured statement presented again, as an attacker on the wire would. */
    const replay = Effect.either(authenticatedAs(service, receivedSigner(captured[0]!)).queryWelcomeMessages(query))
    return { victim, query, replay }
  })

describe("the replay memory, through the delivery service", () => {
  // The tester's finding: nonces were remembered before the rate limit, so 1,600 refused
  // requests of one account pushed the victim's nonce out of a 2,000-entry memory.
  it.effect("requests refused as RateLimited take no room, so one account cannot evict a victim's nonce", () =>
    Effect.gen(function*() {
      const service = yield* DeliveryService
      const { replay } = yield* victimWithCapturedQuery(service)
      const attacker = yield* registerInstallation(service)
      let rateLimited = 0
      for (let i = 0; i < 2_100; i++) {
        const r = yield* Effect.either(
          attacker.ds.queryWelcomeMessages({ installationId: attacker.installation.id, afterSequenceId: 0n })
        )
        if (r._tag === "Left" && r.left.reason === "RateLimited") rateLimited++
      }
      expect(rateLimited).toBe(1_600)
      expect(yield* replay).toMatchObject({ _tag: "Left", left: replayRefused })
    }).pipe(Effect.provide(DeliveryService.layerMemoryWith({ authentication: { maxRemembered: 2_000 } }))))

  // 30 accounts of 5 accepted requests each fill a memory of 100: the victim's statement, the
  // oldest, is forgotten, and must be refused because it is older than what is still held.
  it.effect("a flood from many installations cannot make a victim's captured request replayable", () =>
    Effect.gen(function*() {
      const service = yield* DeliveryService
      const { victim, query, replay } = yield* victimWithCapturedQuery(service)
      yield* TestClock.adjust("1 second")
      for (let account = 0; account < 30; account++) {
        const sybil = yield* registerInstallation(service)
        for (let i = 0; i < 5; i++) {
          // Time moves on between requests (a frozen clock would sign them all at one instant).
          yield* TestClock.adjust("1 millis")
          yield* sybil.ds.queryWelcomeMessages({ installationId: sybil.installation.id, afterSequenceId: 0n })
        }
      }
      // Refused, as a request to sign anew: a replayed header cannot be signed anew, so it never passes.
      const refused = yield* replay
      expect(refused).toMatchObject({ _tag: "Left", left: signAnew })
      expect(refused._tag === "Left" && refused.left.detail).toContain("older than the replay memory holds")
      expect(yield* replay).toMatchObject({ _tag: "Left", left: signAnew })
      // The victim's fresh requests still go through.
      yield* TestClock.adjust("1 second")
      expect((yield* victim.ds.queryWelcomeMessages(query)).items).toHaveLength(1)
    }).pipe(Effect.provide(DeliveryService.layerMemoryWith({ authentication: { maxRemembered: 100 } }))))
})

// ---- the authenticator alone, over a store that knows only installations' keys ----

const authenticatorOver = (installations: ReadonlyArray<InstallationKeys>, options: Authenticator.AuthenticatorOptions) => {
  const keys = new Map(installations.map((k) => [k.id as string, k.signaturePublicKey]))
  const store = {
    installation: (id: string) =>
      Effect.sync(() => {
        const signaturePublicKey = keys.get(id)
        return signaturePublicKey === undefined ? undefined : { inboxId: `inbox-${id}`, signaturePublicKey }
      })
  } as unknown as DeliveryStore["Type"]
  return Authenticator.make(store, (effect) => Effect.orDie(effect), options)
}

/** One signed `queryWelcomeMessages` as `signer`. */
const call = (authenticator: ReturnType<typeof Authenticator.make>, signer: RequestSigner) =>
  Effect.either(Effect.locally(
    authenticator.authenticate("queryWelcomeMessages", "digest"),
    currentSigner,
    Option.some(signer)
  ))

const reasonOf = (answer: Effect.Effect.Success<ReturnType<typeof call>>) =>
  answer._tag === "Left" ? answer.left.reason : "accepted"

describe("the replay memory of the authenticator", () => {
  it.effect("normal traffic is accepted, a replay refused, and nonces leave the memory with their window", () =>
    Effect.gen(function*() {
      const alice = newInstallationKeys()
      const authenticator = authenticatorOver([alice], { windowMillis: 60_000 })
      const captured: Array<RequestAuth> = []
      for (let i = 0; i < 10; i++) expect(reasonOf(yield* call(authenticator, recording(alice, captured)))).toBe("accepted")
      expect(reasonOf(yield* call(authenticator, receivedSigner(captured[3]!)))).toBe("Unauthenticated")
      expect(authenticator.remembered()).toEqual({ statements: 10, installations: 1 })
      // Past the window the old statements are refused by their time, and forgotten.
      yield* TestClock.adjust("61 seconds")
      expect(reasonOf(yield* call(authenticator, receivedSigner(captured[3]!)))).toBe("Unauthenticated")
      expect(reasonOf(yield* call(authenticator, alice.signer))).toBe("accepted")
      expect(authenticator.remembered()).toEqual({ statements: 1, installations: 1 })
    }))

  it.effect("requests refused before acceptance take no room in the memory", () =>
    Effect.gen(function*() {
      const alice = newInstallationKeys()
      const stranger = newInstallationKeys()
      const authenticator = authenticatorOver([alice], { rateLimit: { requestBurst: 3, requestsPerSecond: 1 } })
      const answers: Array<string> = []
      for (let i = 0; i < 20; i++) answers.push(reasonOf(yield* call(authenticator, alice.signer)))
      expect(answers.filter((a) => a === "accepted")).toHaveLength(3)
      expect(answers.filter((a) => a === "RateLimited")).toHaveLength(17)
      // Not a current installation; a signature by another key.
      expect(reasonOf(yield* call(authenticator, stranger.signer))).toBe("Unauthenticated")
      const forged: RequestSigner = (op, digest) =>
        Effect.map(stranger.signer(op, digest), (auth) => ({ ...auth, installationId: alice.id }) as RequestAuth)
      expect(reasonOf(yield* call(authenticator, forged))).toBe("Unauthenticated")
      expect(authenticator.remembered()).toEqual({ statements: 3, installations: 1 })
    }))

  it.effect("the memory stays within maxRemembered however many installations send", () =>
    Effect.gen(function*() {
      const installations = Array.from({ length: 100 }, () => newInstallationKeys())
      const authenticator = authenticatorOver(installations, { maxRemembered: 50 })
      for (const installation of installations) {
        for (let i = 0; i < 3; i++) {
          expect(reasonOf(yield* call(authenticator, installation.signer))).toBe("accepted")
          const held = authenticator.remembered()
          expect(held.statements).toBeLessThanOrEqual(50)
          expect(held.installations).toBeLessThanOrEqual(held.statements)
        }
        yield* TestClock.adjust("1 millis")
      }
      expect(authenticator.remembered().statements).toBe(50)
    }))

  // Sybils signing 4 minutes ahead (inside the window) hold their entries longest; the
  // victim's older statements are forgotten first, and are refused rather than replayable.
  it.effect("statements forgotten under a flood of future-dated ones are refused, fresh ones accepted", () =>
    Effect.gen(function*() {
      const victim = newInstallationKeys()
      const sybils = Array.from({ length: 20 }, () => newInstallationKeys())
      const authenticator = authenticatorOver([victim, ...sybils], { maxRemembered: 40 })
      const captured: Array<RequestAuth> = []
      for (let i = 0; i < 5; i++) expect(reasonOf(yield* call(authenticator, recording(victim, captured)))).toBe("accepted")
      yield* TestClock.adjust("1 second")
      for (const sybil of sybils) {
        const ahead: RequestSigner = (op, digest) =>
          Effect.map(Clock.currentTimeNanos, (now) =>
            signRequest(sybil.id, sybil.secretKey, op, digest, now + 4n * 60n * 1_000_000_000n))
        for (let i = 0; i < 2; i++) {
          yield* TestClock.adjust("1 millis")
          expect(reasonOf(yield* call(authenticator, ahead))).toBe("accepted")
        }
      }
      for (const auth of captured) {
        const replayed = yield* call(authenticator, receivedSigner(auth))
        expect(replayed).toMatchObject({ _tag: "Left", left: signAnew })
      }
      expect(authenticator.remembered().statements).toBe(40)
      // Signed after what was forgotten, the victim's next request goes through.
      yield* TestClock.adjust("1 millis")
      expect(reasonOf(yield* call(authenticator, victim.signer))).toBe("accepted")
    }))
})

// ---- an honest request caught behind the mark ----

describe("an honest request signed just before a flood moves the replay memory's mark", () => {
  // maxRemembered 10: a flood of 11 statements by another installation, all signed after the
  // honest one, forgets at least one of them, so the mark passes the honest statement's time.
  it.effect("is refused as retryable, and the same request signed anew is accepted; a true replay still is not", () =>
    Effect.gen(function*() {
      const alice = newInstallationKeys()
      const flooder = newInstallationKeys()
      const authenticator = authenticatorOver([alice, flooder], { maxRemembered: 10 })
      // Alice signs; her request is still on the wire while the flood arrives.
      const inFlight = yield* alice.signer("queryWelcomeMessages", "digest")
      for (let i = 0; i < 11; i++) {
        yield* TestClock.adjust("1 millis")
        expect(reasonOf(yield* call(authenticator, flooder.signer))).toBe("accepted")
      }
      const late = yield* call(authenticator, receivedSigner(inFlight))
      expect(late).toMatchObject({ _tag: "Left", left: signAnew })
      expect(late._tag === "Left" && late.left.detail).toContain("sign it anew")
      // Her client signs the retry anew (a new time and nonce): accepted.
      const captured: Array<RequestAuth> = []
      expect(reasonOf(yield* call(authenticator, recording(alice, captured)))).toBe("accepted")
      // That statement is remembered: presented again it is a replay, and retrying cannot help.
      expect(yield* call(authenticator, receivedSigner(captured[0]!))).toMatchObject({ _tag: "Left", left: replayRefused })
    }))

  // Over the network, as the engine calls it: the RPC client signs each attempt, so its retry
  // of the refused call carries a new statement and goes through.
  it.scopedLive("through the RPC client, the call is retried with a new statement and succeeds", () =>
    Effect.gen(function*() {
      const seenByRetries: Array<unknown> = []
      const network = Context.get(
        yield* Layer.build(rpcLayer(DeliveryService.layerMemoryWith({ authentication: { maxRemembered: 20 } }), {
          ...fastClientOptions,
          retrySchedule: Schedule.recurs(3).pipe(Schedule.tapInput((e) => Effect.sync(() => seenByRetries.push(e))))
        })),
        DeliveryService
      )
      const alice = yield* registerInstallation(network)
      const flooder = yield* registerInstallation(network)
      const flood = Effect.repeatN(
        flooder.ds.queryWelcomeMessages({ installationId: flooder.installation.id, afterSequenceId: 0n }),
        20
      )
      // Alice's first statement is held back until 21 of the flooder's requests are accepted.
      const signed: Array<RequestAuth> = []
      const heldBack: RequestSigner = (op, digest) =>
        Effect.gen(function*() {
          const auth = yield* alice.installation.signer(op, digest)
          signed.push(auth)
          if (signed.length === 1) yield* Effect.orDie(flood)
          return auth
        })
      const query = { installationId: alice.installation.id, afterSequenceId: 0n }
      const page = yield* authenticatedAs(network, heldBack).queryWelcomeMessages(query)
      expect(page.items).toEqual([])
      expect(seenByRetries).toHaveLength(1)
      expect(seenByRetries[0]).toMatchObject(signAnew)
      // Two attempts, two statements: a new nonce and a later time.
      expect(signed).toHaveLength(2)
      expect(signed[1]!.nonce).not.toBe(signed[0]!.nonce)
      expect(BigInt(signed[1]!.timeNs)).toBeGreaterThan(BigInt(signed[0]!.timeNs))
    }))
})
