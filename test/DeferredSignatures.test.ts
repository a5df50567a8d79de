/**
 * A catch-up page's signatures are checked on the thread pool while the page decrypts
 * (layers/DeferredSignatures). Whatever the checks find, the page must read exactly as it reads
 * one message at a time: a forged signature is refused, and the messages around it still read.
 */
import { describe, expect, it, layer } from "@effect/vitest"
import { Effect, Either } from "effect"
import { type ClientState, createApplicationMessage, encodeMlsMessage } from "ts-mls"
import { fromUtf8, utf8 } from "../src/domain/Bytes.ts"
import { deferSignatures } from "../src/layers/DeferredSignatures.ts"
import { nodeCiphersuite } from "../src/layers/NodeCiphersuite.ts"
import * as TsMlsCrypto from "../src/layers/TsMlsCrypto.ts"
import { MlsCrypto, type MlsGroupState } from "../src/services/MlsCrypto.ts"
import { type Crypto, exchange, expectReason, type Member, setUpGroup } from "./support/MlsGroups.ts"

const clientOf = (state: MlsGroupState) => (state as unknown as { readonly client: ClientState }).client

/**
 * Mallory, a member, can derive every member's message keys (that is MLS: the secret tree is
 * shared), so she can encrypt in Alice's name; only the signature, made with her own key, betrays her.
 */
const forgedAs = (forger: Member, victim: Member, text: string) =>
  Effect.promise(async () => {
    const client = clientOf(forger.state)
    const victimLeaf = clientOf(victim.state).privatePath.leafIndex
    const pretending = { ...client, privatePath: { ...client.privatePath, leafIndex: victimLeaf } }
    const { privateMessage } = await createApplicationMessage(pretending, utf8(text), nodeCiphersuite)
    return encodeMlsMessage({ version: "mls10", wireformat: "mls_private_message", privateMessage })
  })

const encrypted = (crypto: Crypto, from: Member, text: string) =>
  Effect.gen(function*() {
    const sent = yield* crypto.encrypt(from.state, utf8(text))
    from.state = sent.state
    return sent.message
  })

/** The page read one message at a time with `process`: each text, or the refusal's reason. */
const oneByOne = (crypto: Crypto, state: MlsGroupState, page: ReadonlyArray<Uint8Array>) =>
  Effect.gen(function*() {
    const outcomes: Array<string> = []
    let current = state
    for (const message of page) {
      const result = yield* Effect.either(crypto.process(current, message))
      if (Either.isLeft(result)) {
        outcomes.push(`refused: ${result.left.reason}`)
      } else if (result.right.kind === "application") {
        outcomes.push(fromUtf8(result.right.plaintext))
        current = result.right.state
      }
    }
    return { outcomes, state: current }
  })

const asPage = (crypto: Crypto, state: MlsGroupState, page: ReadonlyArray<Uint8Array>) =>
  crypto.processApplications(state, page).pipe(Effect.map(({ results, state }) => ({
    outcomes: results.map((r) => Either.isLeft(r) ? `refused: ${r.left.reason}` : fromUtf8(r.right.plaintext)),
    senders: results.flatMap((r) => Either.isRight(r) ? [r.right.sender.installationId] : []),
    state
  })))

layer(TsMlsCrypto.layer())("a catch-up page with its signatures checked beside it", (it) => {
  it.effect("a forged message in the middle of a page is refused, and the page reads as one at a time", () =>
    Effect.gen(function*() {
      const crypto = yield* MlsCrypto
      const [alice, bob, mallory] = (yield* setUpGroup(crypto, 3)) as [Member, Member, Member]
      // Mallory reads Alice's first message, so she knows the key of Alice's next one.
      const first = yield* exchange(crypto, "lunch at noon?", alice, [mallory])
      const forged = yield* forgedAs(mallory, alice, "lunch is cancelled")
      const second = yield* encrypted(crypto, alice, "I booked a table")
      const third = yield* encrypted(crypto, alice, "see you there")
      const page = [first, forged, second, third]

      const read = yield* asPage(crypto, bob.state, page)
      expect(read.outcomes[0]).toBe("lunch at noon?")
      expect(read.outcomes[1]).toMatch(/^refused: /)
      expect(read.outcomes.slice(2)).toEqual(["I booked a table", "see you there"])
      expect(read.senders).toEqual(Array(3).fill(alice.identity.installationId))
      // Exactly what reading the same page one message at a time gives, refusal reason included.
      const sequential = yield* oneByOne(crypto, bob.state, page)
      expect(read.outcomes).toEqual(sequential.outcomes)

      // Bob's state after the page still reads what Alice sends next.
      const next = yield* encrypted(crypto, alice, "running late")
      const after = yield* crypto.process(read.state, next)
      expect(after.kind === "application" && fromUtf8(after.plaintext)).toBe("running late")
    }))

  it.effect("a page of honest messages from two senders reads as one at a time, a replay refused in both", () =>
    Effect.gen(function*() {
      const crypto = yield* MlsCrypto
      const [alice, bob, carol] = (yield* setUpGroup(crypto, 3)) as [Member, Member, Member]
      const texts = Array.from({ length: 12 }, (_, i) => `${i % 3 === 0 ? "carol" : "alice"} says ${i}`)
      const page: Array<Uint8Array> = []
      for (const text of texts) page.push(yield* encrypted(crypto, text.startsWith("carol") ? carol : alice, text))
      // A replay of the first message at the end: refused the second time, in both readings.
      page.push(page[0]!)

      const read = yield* asPage(crypto, bob.state, page)
      const sequential = yield* oneByOne(crypto, bob.state, page)
      expect(read.outcomes).toEqual([...texts, sequential.outcomes.at(-1)])
      expect(read.outcomes).toEqual(sequential.outcomes)
      expectReason(
        yield* Effect.flip(crypto.process(read.state, page[0]!)),
        "CannotDecrypt"
      )
    }))

  it.effect("read without waiting for the checks, a page confirms only if every signature holds", () =>
    Effect.gen(function*() {
      const crypto = yield* MlsCrypto
      const [alice, bob, mallory] = (yield* setUpGroup(crypto, 3)) as [Member, Member, Member]
      const first = yield* exchange(crypto, "lunch at noon?", alice, [mallory])
      const honest = [first, yield* encrypted(crypto, alice, "I booked a table")]
      const confirmedHonest = yield* crypto.processApplicationsUnconfirmed(bob.state, honest)
      expect(yield* confirmedHonest.confirmed).toBe(true)
      expect(confirmedHonest.results.map((r) => Either.isRight(r) && fromUtf8(r.right.plaintext)))
        .toEqual(["lunch at noon?", "I booked a table"])

      // Forged under the key of Alice's next message: the provisional reading takes it, and the
      // page says so by not confirming; read with every check awaited, it is refused alone.
      const forged = yield* forgedAs(mallory, alice, "lunch is cancelled")
      const page = [first, forged, yield* encrypted(crypto, alice, "see you there")]
      const unconfirmed = yield* crypto.processApplicationsUnconfirmed(bob.state, page)
      expect(yield* unconfirmed.confirmed).toBe(false)
      const strict = yield* asPage(crypto, bob.state, page)
      expect(strict.outcomes).toEqual((yield* oneByOne(crypto, bob.state, page)).outcomes)
      expect(strict.outcomes[1]).toMatch(/^refused: /)
    }))
})

// The deferred suite is written out field by field to share nodeCiphersuite's hidden class (a
// spread copy got another, and ts-mls's per-message steps deoptimized switching between them):
// that holds only while both list the same fields in the same order.
describe("the deferred ciphersuite", () => {
  it("lists nodeCiphersuite's fields in its order, only verify differing", () => {
    const deferred = deferSignatures(nodeCiphersuite)!
    expect(Object.keys(deferred.ciphersuite)).toEqual(Object.keys(nodeCiphersuite))
    expect(Object.keys(deferred.ciphersuite.signature)).toEqual(Object.keys(nodeCiphersuite.signature))
    expect(deferred.ciphersuite.kdf).toBe(nodeCiphersuite.kdf)
    expect(deferred.ciphersuite.signature.verify).not.toBe(nodeCiphersuite.signature.verify)
  })
})
