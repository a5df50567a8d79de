/**
 * The node:crypto provider against ts-mls's default (WebCrypto, @hpke/core) provider, byte for byte:
 * (a) every primitive on random inputs, both directions; (b) RFC 9180's published HPKE vector and
 * MLS crypto-basics / key-schedule / secret-tree / tree-hash vectors generated with the default
 * provider (ts-mls 1.6.4 does not ship the mls-implementations JSON vectors); (c) a group whose
 * members use different providers, through the MlsCrypto port.
 */
import { describe, expect, it } from "@effect/vitest"
import { createHash, randomBytes } from "node:crypto"
import { Effect } from "effect"
import {
  type CiphersuiteImpl,
  createCommit,
  createGroup,
  defaultCapabilities,
  defaultCryptoProvider,
  defaultLifetime,
  generateKeyPackage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  type Proposal
} from "ts-mls"
import { refhash } from "ts-mls/crypto/hash.js"
import { decryptWithLabel, encryptWithLabel } from "ts-mls/crypto/hpke.js"
import { deriveSecret, deriveTreeSecret, expandWithLabel } from "ts-mls/crypto/kdf.js"
import { signWithLabel, verifyWithLabel } from "ts-mls/crypto/signature.js"
import { initializeEpoch, mlsExporter } from "ts-mls/keySchedule.js"
import { CryptoError as MlsCryptoError } from "ts-mls/mlsError.js"
import { verifyParentHashes } from "ts-mls/parentHash.js"
import { allSecretTreeValues, createSecretTree } from "ts-mls/secretTree.js"
import { treeHash, treeHashRoot } from "ts-mls/treeHash.js"
import { toNodeIndex } from "ts-mls/treemath.js"
import { fromHex, fromUtf8, sha256Hex, toHex, utf8 } from "../src/domain/Bytes.ts"
import type { GroupId, InboxId } from "../src/domain/Ids.ts"
import { LruCache } from "../src/domain/LruCache.ts"
import { installationIdOf } from "../src/domain/IdentityLog.ts"
import { NATIVE_CIPHERSUITE, nodeCiphersuite, nodeCryptoProvider } from "../src/layers/NodeCiphersuite.ts"
import { MlsCrypto } from "../src/index.ts"
import type { KeyPackageBundle, LeafIdentity, MlsGroupState } from "../src/services/MlsCrypto.ts"

const native = nodeCiphersuite
const defaultSuite = (): Promise<CiphersuiteImpl> =>
  getCiphersuiteImpl(getCiphersuiteFromName(NATIVE_CIPHERSUITE), defaultCryptoProvider)

const EMPTY_INFO = new Uint8Array(0)
const random = (n: number) => new Uint8Array(randomBytes(n))
const hexOf = async (p: Promise<Uint8Array>) => toHex(await p)

/** Deterministic bytes for generated vectors: SHA-256 in counter mode over a label. */
const seeded = (label: string, n: number): Uint8Array => {
  const out = new Uint8Array(n)
  for (let i = 0, off = 0; off < n; i++, off += 32) {
    out.set(createHash("sha256").update(`${label}/${i}`).digest().subarray(0, Math.min(32, n - off)), off)
  }
  return out
}

/** Both directions of each check, so a provider cannot pass by agreeing only with itself. */
const pairs = async () => {
  const other = await defaultSuite()
  return [["native", native, "default", other], ["default", other, "native", native]] as const
}

describe("NodeCiphersuite: primitives against the default provider", () => {
  it("is what MlsCrypto gets through ts-mls's CryptoProvider hook, for ciphersuite 1 only", async () => {
    expect(await getCiphersuiteImpl(getCiphersuiteFromName(NATIVE_CIPHERSUITE), nodeCryptoProvider)).toBe(native)
    await expect(
      getCiphersuiteImpl(getCiphersuiteFromName("MLS_128_DHKEMP256_AES128GCM_SHA256_P256"), nodeCryptoProvider)
    ).rejects.toThrow(/only/)
  })

  it("hash, HMAC and HKDF give the same bytes on random inputs", async () => {
    const other = await defaultSuite()
    for (let i = 0; i < 40; i++) {
      // WebCrypto refuses an empty HMAC key (MLS never uses one); HKDF's empty salt goes through @hpke/core.
      const [key, data, salt, info] = [random(1 + i % 70), random(i * 13), random(i % 3 === 0 ? 0 : 32), random(i)]
      expect(await hexOf(native.hash.digest(data))).toBe(await hexOf(other.hash.digest(data)))
      const mac = await native.hash.mac(key, data)
      expect(toHex(mac)).toBe(await hexOf(other.hash.mac(key, data)))
      expect(await other.hash.verifyMac(key, mac, data)).toBe(true)
      expect(await native.hash.verifyMac(key, await other.hash.mac(key, data), data)).toBe(true)
      expect(await native.hash.verifyMac(key, mac.subarray(1), data)).toBe(false)
      expect(await native.hash.verifyMac(key, mac, Uint8Array.of(...data, 1))).toBe(false)
      const prk = await native.kdf.extract(salt, data)
      expect(toHex(prk)).toBe(await hexOf(other.kdf.extract(salt, data)))
      // 1 to 200 bytes: one to seven HKDF blocks.
      const length = 1 + ((i * 37) % 200)
      expect(await hexOf(native.kdf.expand(prk, info, length))).toBe(await hexOf(other.kdf.expand(prk, info, length)))
    }
    expect(native.kdf.size).toBe(other.kdf.size)
  })

  it("Ed25519: same signatures from the same key, each verifies the other's, keys cross over", async () => {
    for (const [, signer, , verifier] of await pairs()) {
      for (let i = 0; i < 10; i++) {
        const { signKey, publicKey } = await signer.signature.keygen()
        expect(signKey.length).toBe(48) // PKCS#8, what stored states and key packages hold
        expect(publicKey.length).toBe(32)
        const message = random(i * 31)
        const signature = await signer.signature.sign(signKey, message)
        // Ed25519 is deterministic: the verifier's provider signs the same bytes with the same key.
        expect(toHex(await verifier.signature.sign(signKey, message))).toBe(toHex(signature))
        expect(await verifier.signature.verify(publicKey, message, signature)).toBe(true)
        const tampered = Uint8Array.from(signature)
        tampered[i % 64]! ^= 1
        expect(await verifier.signature.verify(publicKey, message, tampered)).toBe(false)
        expect(await signer.signature.verify(publicKey, message, tampered)).toBe(false)
        expect(await verifier.signature.verify(publicKey, Uint8Array.of(...message, 0), signature)).toBe(false)
      }
    }
    // A raw 32-byte seed is accepted as a signing key, as the default provider accepts it.
    const other = await defaultSuite()
    const seed = random(32)
    expect(await hexOf(native.signature.sign(seed, utf8("m")))).toBe(await hexOf(other.signature.sign(seed, utf8("m"))))
  })

  it("AES-GCM: same ciphertexts, each opens the other's, tampering fails with ts-mls's CryptoError", async () => {
    for (const [, sealer, , opener] of await pairs()) {
      for (let i = 0; i < 20; i++) {
        const [key, nonce, aad, plaintext] = [random(16), random(12), random(i % 2 === 0 ? 0 : i), random(i * 29)]
        const sealed = await sealer.hpke.encryptAead(key, nonce, aad, plaintext)
        expect(toHex(sealed)).toBe(await hexOf(opener.hpke.encryptAead(key, nonce, aad, plaintext)))
        expect(toHex(await opener.hpke.decryptAead(key, nonce, aad, sealed))).toBe(toHex(plaintext))
        const tampered = Uint8Array.from(sealed)
        tampered[i % sealed.length]! ^= 1
        await expect(opener.hpke.decryptAead(key, nonce, aad, tampered)).rejects.toBeInstanceOf(MlsCryptoError)
        await expect(sealer.hpke.decryptAead(key, nonce, aad, tampered)).rejects.toBeInstanceOf(MlsCryptoError)
      }
    }
    expect([native.hpke.keyLength, native.hpke.nonceLength]).toEqual([(await defaultSuite()).hpke.keyLength, 12])
  })

  it("HPKE: same derived key pairs; each opens the other's seals and imports the other's exported secrets", async () => {
    for (const [, sender, , receiver] of await pairs()) {
      for (let i = 0; i < 8; i++) {
        const ikm = random(32)
        const derived = await receiver.hpke.deriveKeyPair(ikm)
        const senderDerived = await sender.hpke.deriveKeyPair(ikm)
        const privateBytes = await receiver.hpke.exportPrivateKey(derived.privateKey)
        const publicBytes = await receiver.hpke.exportPublicKey(derived.publicKey)
        expect(toHex(await sender.hpke.exportPrivateKey(senderDerived.privateKey))).toBe(toHex(privateBytes))
        expect(toHex(await sender.hpke.exportPublicKey(senderDerived.publicKey))).toBe(toHex(publicBytes))

        const [info, aad, plaintext] = [random(i * 5), random(i % 2 === 0 ? 0 : 9), random(i * 40)]
        const sealed = await sender.hpke.seal(await sender.hpke.importPublicKey(publicBytes), plaintext, info, aad)
        const opened = await receiver.hpke.open(derived.privateKey, sealed.enc, sealed.ct, info, aad)
        expect(toHex(opened)).toBe(toHex(plaintext))
        const wrongInfo = receiver.hpke.open(derived.privateKey, sealed.enc, sealed.ct, Uint8Array.of(...info, 1), aad)
        await expect(wrongInfo).rejects.toBeInstanceOf(MlsCryptoError)

        const context = random(i * 3)
        const exported = await sender.hpke.exportSecret(await sender.hpke.importPublicKey(publicBytes), context, 32, info)
        const imported = await receiver.hpke.importSecret(derived.privateKey, context, exported.enc, 32, info)
        expect(toHex(imported)).toBe(toHex(exported.secret))

        // Generated keys survive an export and an import into the other provider.
        const generated = await sender.hpke.generateKeyPair()
        const reimported = await receiver.hpke.importPrivateKey(await sender.hpke.exportPrivateKey(generated.privateKey))
        const sealedToGenerated = await receiver.hpke.seal(
          await receiver.hpke.importPublicKey(await sender.hpke.exportPublicKey(generated.publicKey)),
          plaintext,
          info
        )
        expect(toHex(await sender.hpke.open(generated.privateKey, sealedToGenerated.enc, sealedToGenerated.ct, info)))
          .toBe(toHex(plaintext))
        expect(toHex(await receiver.hpke.exportPrivateKey(reimported)))
          .toBe(toHex(await sender.hpke.exportPrivateKey(generated.privateKey)))
      }
    }
    await expect(native.hpke.importPublicKey(random(31))).rejects.toBeInstanceOf(MlsCryptoError)
    // A small-order X25519 point gives an all-zero shared secret: both providers refuse it (RFC 9180 §7.1.4).
    for (const [, cs] of await pairs()) {
      const zero = new Uint8Array(32)
      await expect(cs.hpke.seal(await cs.hpke.importPublicKey(zero), random(8), EMPTY_INFO)).rejects.toThrow()
      const { privateKey } = await cs.hpke.generateKeyPair()
      await expect(cs.hpke.open(privateKey, zero, random(24), EMPTY_INFO)).rejects.toBeInstanceOf(MlsCryptoError)
    }
    expect(native.rng.randomBytes(48).length).toBe(48)
  })
})

describe("NodeCiphersuite: the key cache", () => {
  it("keeps at most its capacity, forgetting the least recently used key", () => {
    const cache = new LruCache<number>(3)
    for (const [key, value] of [["a", 1], ["b", 2], ["c", 3]] as const) cache.set(key, value)
    expect(cache.get("a")).toBe(1) // now the most recent
    cache.set("d", 4)
    expect([cache.size, cache.get("b"), cache.get("a"), cache.get("c"), cache.get("d")]).toEqual([3, undefined, 1, 3, 4])
    cache.set("c", 30) // replacing does not grow it
    expect([cache.size, cache.get("c")]).toEqual([3, 30])
  })
})

describe("NodeCiphersuite: the event loop", () => {
  it("a long run of awaited native calls still lets timers and I/O run", async () => {
    // Every call completes synchronously; without pacing, awaiting them is a microtask chain
    // that no timer can interrupt until it ends.
    let fired: number | undefined
    const start = performance.now()
    setTimeout(() => fired = performance.now() - start, 0)
    const { signKey } = await native.signature.keygen()
    let calls = 0
    while (performance.now() - start < 200) {
      await native.signature.sign(signKey, random(64))
      calls++
    }
    expect(calls).toBeGreaterThan(10)
    // Read before this function yields again: set only if the timer ran inside the loop.
    expect(fired).toBeDefined()
  })
})

describe("NodeCiphersuite: test vectors", () => {
  it("RFC 9180 A.1.1 (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM, base mode)", async () => {
    const ikmR = fromHex("6db9df30aa07dd42ee5e8181afdb977e538f5e1fec8a06223f33f7013e525037")
    const ikmE = fromHex("7268600d403fce431561aef583ee1613527cff655c1343f29812e66706df3234")
    const enc = fromHex("37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431")
    const recipient = await native.hpke.deriveKeyPair(ikmR)
    expect(await hexOf(native.hpke.exportPrivateKey(recipient.privateKey)))
      .toBe("4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8")
    expect(await hexOf(native.hpke.exportPublicKey(recipient.publicKey)))
      .toBe("3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d")
    expect(await hexOf(native.hpke.exportPublicKey((await native.hpke.deriveKeyPair(ikmE)).publicKey))).toBe(toHex(enc))
    const ct = fromHex("f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a")
    const info = fromHex("4f6465206f6e2061204772656369616e2055726e") // "Ode on a Grecian Urn"
    const opened = await native.hpke.open(recipient.privateKey, enc, ct, info, utf8("Count-0"))
    expect(fromUtf8(opened)).toBe("Beauty is truth, truth beauty")
  })

  /** RFC 9420's crypto-basics cases, the expected values computed by the default provider. */
  it.each(Array.from({ length: 12 }, (_, i) => i))("crypto-basics case %i", async (i) => {
    const other = await defaultSuite()
    const secret = seeded(`secret ${i}`, 32)
    const context = seeded(`context ${i}`, i * 11)
    const label = `label ${i}`
    const length = 1 + i * 9
    for (const [name, run] of [
      ["derive_secret", (cs: CiphersuiteImpl) => deriveSecret(secret, label, cs.kdf)],
      ["expand_with_label", (cs: CiphersuiteImpl) => expandWithLabel(secret, label, context, length, cs.kdf)],
      ["derive_tree_secret", (cs: CiphersuiteImpl) => deriveTreeSecret(secret, label, i * 1000, length, cs.kdf)],
      ["ref_hash", (cs: CiphersuiteImpl) => refhash(label, context, cs.hash)],
      ["mls_exporter", (cs: CiphersuiteImpl) => mlsExporter(secret, label, context, length, cs)]
    ] as const) {
      expect(await hexOf(run(native)), name).toBe(await hexOf(run(other)))
    }
    // sign_with_label: deterministic, so the same bytes; verify_with_label both ways.
    const { signKey, publicKey } = await other.signature.keygen()
    const signature = await signWithLabel(signKey, label, context, native.signature)
    expect(toHex(signature)).toBe(await hexOf(signWithLabel(signKey, label, context, other.signature)))
    expect(await verifyWithLabel(publicKey, label, context, signature, other.signature)).toBe(true)
    expect(await verifyWithLabel(publicKey, `${label}!`, context, signature, native.signature)).toBe(false)
    // encrypt_with_label: randomized, so each side decrypts the other's.
    const { privateKey } = await other.hpke.deriveKeyPair(secret)
    const keyBytes = await other.hpke.exportPublicKey((await other.hpke.deriveKeyPair(secret)).publicKey)
    const sealed = await encryptWithLabel(await native.hpke.importPublicKey(keyBytes), label, context, secret, native.hpke)
    expect(toHex(await decryptWithLabel(privateKey, label, context, sealed.enc, sealed.ct, other.hpke))).toBe(toHex(secret))
  })

  it("key schedule and secret tree over five epochs", async () => {
    const other = await defaultSuite()
    const run = async (cs: CiphersuiteImpl) => {
      const out: Array<string> = []
      let initSecret = seeded("init", 32)
      for (let epoch = 0n; epoch < 5n; epoch++) {
        const groupContext = {
          version: "mls10" as const,
          cipherSuite: NATIVE_CIPHERSUITE,
          groupId: seeded("group", 16),
          epoch,
          treeHash: seeded(`tree ${epoch}`, 32),
          confirmedTranscriptHash: seeded(`transcript ${epoch}`, 32),
          extensions: []
        }
        const psk = epoch % 2n === 0n ? new Uint8Array(32) : seeded(`psk ${epoch}`, 32)
        const secrets = await initializeEpoch(initSecret, seeded(`commit ${epoch}`, 32), groupContext, psk, cs.kdf)
        out.push(...Object.values(secrets.keySchedule).map(toHex))
        out.push(toHex(secrets.joinerSecret), toHex(secrets.welcomeSecret), toHex(secrets.encryptionSecret))
        const tree = await createSecretTree(5 + Number(epoch), secrets.encryptionSecret, cs.kdf)
        out.push(...allSecretTreeValues(tree).map(toHex))
        initSecret = secrets.keySchedule.initSecret
      }
      return out
    }
    const expected = await run(other)
    expect(expected.length).toBeGreaterThan(100)
    expect(await run(native)).toEqual(expected)
  })
})

describe("NodeCiphersuite: tree operations", () => {
  it("tree hashes and parent hashes of a tree grown by adds, updates and removals", async () => {
    const other = await defaultSuite()
    const newPackage = (name: string) =>
      generateKeyPackage({ credentialType: "basic", identity: utf8(name) }, defaultCapabilities(), defaultLifetime, [], other)
    const creator = await newPackage("creator")
    const members = await Promise.all(Array.from({ length: 9 }, (_, i) => newPackage(`member ${i}`)))
    let state = await createGroup(random(16), creator.publicPackage, creator.privatePackage, [], other)
    const commitWith = async (extraProposals: Array<Proposal>) =>
      (await createCommit({ state, cipherSuite: other }, { extraProposals })).newState
    state = await commitWith(members.map((m): Proposal => ({ proposalType: "add", add: { keyPackage: m.publicPackage } })))
    state = await commitWith([]) // an UpdatePath: parent nodes with keys and parent hashes
    state = await commitWith([{ proposalType: "remove", remove: { removed: 3 } }, { proposalType: "remove", remove: { removed: 7 } }])
    state = await commitWith([{ proposalType: "add", add: { keyPackage: (await newPackage("late")).publicPackage } }])
    const tree = state.ratchetTree
    expect(tree.some((node) => node === undefined)).toBe(true)
    expect(tree.some((node) => node?.nodeType === "parent")).toBe(true)
    expect(await hexOf(treeHashRoot(tree, native.hash))).toBe(toHex(state.groupContext.treeHash))
    for (let i = 0; i < tree.length; i++) {
      const index = toNodeIndex(i)
      expect(await hexOf(treeHash(tree, index, native.hash))).toBe(await hexOf(treeHash(tree, index, other.hash)))
    }
    expect(await verifyParentHashes(tree, native.hash)).toBe(true)
  })
})

// ---- (c) one group, two providers, through the MlsCrypto port -----------------------------------------

type Crypto = MlsCrypto["Type"]

interface Member {
  readonly name: string
  readonly crypto: Crypto
  readonly identity: LeafIdentity
  readonly keyPackage: KeyPackageBundle
  state: MlsGroupState
}

const cryptoWith = (provider: "native" | "default") => Effect.provide(MlsCrypto, MlsCrypto.layer({ provider }))

/** An installation whose keys come from `keysFrom` and whose later work is done by `crypto`. */
const newMember = (name: string, crypto: Crypto, keysFrom: Crypto = crypto) =>
  Effect.gen(function*() {
    const keys = yield* keysFrom.generateSignatureKeyPair
    const identity = { inboxId: sha256Hex(utf8(name)) as InboxId, installationId: installationIdOf(keys.publicKey) }
    const keyPackage = yield* keysFrom.generateKeyPackage(identity, keys)
    return { name, crypto, identity, keyPackage, state: undefined as unknown as MlsGroupState } satisfies Member
  })

const send = (text: string, from: Member, to: ReadonlyArray<Member>) =>
  Effect.gen(function*() {
    const sent = yield* from.crypto.encrypt(from.state, utf8(text))
    from.state = sent.state
    for (const member of to) {
      const processed = yield* member.crypto.process(member.state, sent.message)
      if (processed.kind !== "application") throw new Error(`${member.name} expected an application message`)
      expect(fromUtf8(processed.plaintext)).toBe(text)
      expect(processed.sender.installationId).toBe(from.identity.installationId)
      member.state = processed.state
    }
  })

const commit = (from: Member, to: ReadonlyArray<Member>, changes: Parameters<Crypto["createCommit"]>[1]) =>
  Effect.gen(function*() {
    const result = yield* from.crypto.createCommit(from.state, changes)
    from.state = result.staged
    for (const member of to) {
      const processed = yield* member.crypto.process(member.state, result.commit)
      if (processed.kind !== "commit") throw new Error(`${member.name} expected a commit`)
      expect(processed.committer.installationId).toBe(from.identity.installationId)
      member.state = processed.state
    }
    return result
  })

const expectConverged = (members: ReadonlyArray<Member>) => {
  const views = members.map((m) => m.crypto.view(m.state))
  for (const view of views) {
    expect(view.epochAuthenticator).toBe(views[0]!.epochAuthenticator)
    expect(view.members.map((m) => m.installationId).sort()).toEqual(members.map((m) => m.identity.installationId).sort())
  }
  return views[0]!
}

describe("NodeCiphersuite: a group mixing native and default providers", () => {
  it.effect("create, add, welcome joins, messages and commits both ways, a removal, stored states cross over", () =>
    Effect.gen(function*() {
      const fast = yield* cryptoWith("native")
      const slow = yield* cryptoWith("default")
      // Alice's keys were made by the default provider (as before this provider existed); native runs her.
      const alice = yield* newMember("alice", fast, slow)
      const bob = yield* newMember("bob", slow)
      const carol = yield* newMember("carol", fast)
      const dave = yield* newMember("dave", slow, fast)

      alice.state = yield* alice.crypto.createGroup(toHex(random(16)) as GroupId, alice.keyPackage, utf8("mixed"))
      const added = yield* commit(alice, [], { add: [bob.keyPackage.publicPackage, carol.keyPackage.publicPackage] })
      bob.state = yield* bob.crypto.joinFromWelcome(added.welcome!, [bob.keyPackage])
      carol.state = yield* carol.crypto.joinFromWelcome(added.welcome!, [carol.keyPackage])
      expect(expectConverged([alice, bob, carol]).epoch).toBe(1n)

      yield* send("from native alice", alice, [bob, carol])
      yield* send("from default bob", bob, [alice, carol])
      yield* commit(bob, [alice, carol], {}) // a default-provider commit with an UpdatePath
      yield* commit(carol, [alice, bob], {}) // a native one
      const withDave = yield* commit(carol, [alice, bob], { add: [dave.keyPackage.publicPackage] })
      dave.state = yield* dave.crypto.joinFromWelcome(withDave.welcome!, [dave.keyPackage])
      expect(expectConverged([alice, bob, carol, dave]).epoch).toBe(4n)
      yield* send("from default dave", dave, [alice, bob, carol])

      // Bob (default) removes Carol (native); she learns it, the rest carry on.
      const removal = yield* commit(bob, [alice, dave], { remove: [carol.identity.installationId] })
      const carolSees = yield* carol.crypto.process(carol.state, removal.commit)
      expect(carol.crypto.view(carolSees.state).active).toBe(false)
      expect(expectConverged([alice, bob, dave]).epoch).toBe(5n)
      // A native joiner of a default-made welcome.
      const erin = yield* newMember("erin", fast)
      const withErin = yield* commit(bob, [alice, dave], { add: [erin.keyPackage.publicPackage] })
      erin.state = yield* erin.crypto.joinFromWelcome(withErin.welcome!, [erin.keyPackage])
      expect(expectConverged([alice, bob, dave, erin]).epoch).toBe(6n)
      yield* send("from native erin", erin, [alice, bob, dave])

      // A state stored under one provider is loaded and used by the other, both ways.
      alice.state = yield* slow.deserialize(fast.serialize(alice.state))
      const aliceOnDefault = { ...alice, crypto: slow }
      yield* send("alice, reloaded on default", aliceOnDefault, [bob, dave, erin])
      bob.state = yield* fast.deserialize(slow.serialize(bob.state))
      const bobOnNative = { ...bob, crypto: fast }
      yield* commit(bobOnNative, [aliceOnDefault, dave, erin], {})
      yield* send("bob, reloaded on native", bobOnNative, [aliceOnDefault, dave, erin])
      expect(expectConverged([aliceOnDefault, bobOnNative, dave, erin]).metadata).toEqual(utf8("mixed"))
    }))
})
