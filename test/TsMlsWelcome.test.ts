/**
 * The join that replaces ts-mls 1.6.4's `joinGroup` (src/layers/TsMlsWelcome.ts), checked against
 * ts-mls itself: the same state where ts-mls accepts a welcome, a working member where ts-mls
 * wrongly refuses one, and refusals where the tree really breaks RFC 9420's unmerged-leaves rule.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import {
  type CiphersuiteImpl,
  type ClientState,
  type Credential,
  type KeyPackage,
  type PrivateKeyPackage,
  type Proposal,
  type RatchetTree,
  type Welcome,
  createApplicationMessage,
  createCommit,
  createGroup,
  defaultCapabilities,
  defaultLifetime,
  emptyPskIndex,
  generateKeyPackage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  joinGroup,
  processPrivateMessage
} from "ts-mls"
import { defaultClientConfig } from "ts-mls/clientConfig.js"
import { utf8 } from "../src/domain/Bytes.ts"
import { toNodeIndex } from "ts-mls/treemath.js"
import {
  checkUnmergedLeaves,
  joinFromWelcome,
  joinWithSigner,
  privateKeysFromPathSecret,
  validateRatchetTree
} from "../src/layers/TsMlsWelcome.ts"
import { leafStateBytes } from "./support/TsMlsFixtures.ts"

interface Package {
  readonly publicPackage: KeyPackage
  readonly privatePackage: PrivateKeyPackage
}

const suite = () => getCiphersuiteImpl(getCiphersuiteFromName("MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"))

const newPackage = (cs: CiphersuiteImpl, name: string): Promise<Package> =>
  generateKeyPackage({ credentialType: "basic", identity: utf8(name) }, defaultCapabilities(), defaultLifetime, [], cs)

const commit = async (cs: CiphersuiteImpl, state: ClientState, proposals: Array<Proposal>) => {
  const result = await createCommit({ state, cipherSuite: cs }, { extraProposals: proposals, ratchetTreeExtension: true })
  return { state: result.newState, welcome: result.welcome }
}

const add = (p: Package): Proposal => ({ proposalType: "add", add: { keyPackage: p.publicPackage } })
const remove = (leaf: number): Proposal => ({ proposalType: "remove", remove: { removed: leaf } })

const welcomeOf = (w: Welcome | undefined): Welcome => {
  if (w === undefined) throw new Error("the commit has no welcome")
  return w
}

/**
 * Leaves 0..4 (a..e); b removes a with a path, so b's ancestors are non-blank; b adds f into the
 * freed leaf 0, listed as unmerged at nodes 1, 3 and 7; then b adds g at leaf 5, listed only at
 * the root. The root now lists [0, 5] and node 3 lists [0]: what ts-mls 1.6.4 wrongly refuses.
 */
const refilledTree = Effect.promise(async () => {
  const cs = await suite()
  const [a, b, c, d, e, f, g] = await Promise.all(["a", "b", "c", "d", "e", "f", "g"].map((n) => newPackage(cs, n)))
  const founder = await createGroup(utf8("refilled-leaf-gp"), a!.publicPackage, a!.privatePackage, [], cs)
  const five = await commit(cs, founder, [b!, c!, d!, e!].map(add))
  const bob = await joinFromWelcome(welcomeOf(five.welcome), b!.publicPackage, b!.privatePackage, cs, defaultClientConfig)
  const withoutA = await commit(cs, bob, [remove(0)])
  const withF = await commit(cs, withoutA.state, [add(f!)])
  const withG = await commit(cs, withF.state, [add(g!)])
  return { cs, bob: withG.state, f: f!, g: g!, fWelcome: welcomeOf(withF.welcome), gWelcome: welcomeOf(withG.welcome) }
})

/** a, b and c; a removes c and adds h in one commit, so the commit has a path and h's welcome a path secret. */
const pathWelcome = Effect.promise(async () => {
  const cs = await suite()
  const [a, b, c, h] = await Promise.all(["a", "b", "c", "h"].map((n) => newPackage(cs, n)))
  const founder = await createGroup(utf8("path-secret-group"), a!.publicPackage, a!.privatePackage, [], cs)
  const three = await commit(cs, founder, [b!, c!].map(add))
  const swap = await commit(cs, three.state, [remove(2), add(h!)])
  return { cs, alice: swap.state, h: h!, welcome: welcomeOf(swap.welcome) }
})

const parentAt = (tree: RatchetTree, nodeIndex: number) => {
  const node = tree[nodeIndex]
  if (node?.nodeType !== "parent") throw new Error(`node ${nodeIndex} is not a parent`)
  return node.parent
}

/** A copy of the tree with one parent's unmerged_leaves replaced. */
const withUnmerged = (tree: RatchetTree, nodeIndex: number, unmergedLeaves: Array<number>): RatchetTree =>
  tree.map((node, i) =>
    i === nodeIndex && node?.nodeType === "parent" ? { ...node, parent: { ...node.parent, unmergedLeaves } } : node
  )

describe("joining from a welcome (TsMlsWelcome)", () => {
  it.effect("where ts-mls accepts the welcome, the join builds the very same state", () =>
    Effect.gen(function*() {
      const { cs, f, fWelcome } = yield* refilledTree
      const ours = yield* Effect.promise(() =>
        joinFromWelcome(fWelcome, f.publicPackage, f.privatePackage, cs, defaultClientConfig)
      )
      const theirs = yield* Effect.promise(() =>
        joinGroup(fWelcome, f.publicPackage, f.privatePackage, emptyPskIndex, cs, undefined, undefined, defaultClientConfig)
      )
      expect(leafStateBytes(ours)).toEqual(leafStateBytes(theirs))
    }))

  it.effect("a welcome with a path secret gives the same state as ts-mls's, with the path's keys", () =>
    Effect.gen(function*() {
      const { cs, h, welcome } = yield* pathWelcome
      const ours = yield* Effect.promise(() =>
        joinFromWelcome(welcome, h.publicPackage, h.privatePackage, cs, defaultClientConfig)
      )
      const theirs = yield* Effect.promise(() =>
        joinGroup(welcome, h.publicPackage, h.privatePackage, emptyPskIndex, cs, undefined, undefined, defaultClientConfig)
      )
      // h is leaf 2 (node 4); node 5 above it is blank since c's removal, the root (node 3) is a's
      // and h's common ancestor: h holds its leaf key and the root's key.
      expect(Object.keys(ours.privatePath.privateKeys).map(Number)).toEqual([3, 4])
      expect(leafStateBytes(ours)).toEqual(leafStateBytes(theirs))
    }))

  it.effect("a path secret that does not give the tree's keys is refused", () =>
    Effect.gen(function*() {
      const { alice, cs } = yield* pathWelcome
      const refused = yield* Effect.promise(() =>
        privateKeysFromPathSecret(alice.ratchetTree, toNodeIndex(3), new Uint8Array(32).fill(7), cs)
          .then(() => "accepted", (e: Error) => e.message)
      )
      expect(refused).toBe("the path secret does not give the key of node 3")
    }))

  it.effect("a member added after a refilled leaf joins, though ts-mls 1.6.4 refuses, and reads the group", () =>
    Effect.gen(function*() {
      const { bob, cs, g, gWelcome } = yield* refilledTree
      expect(parentAt(bob.ratchetTree, 7).unmergedLeaves).toEqual([0, 5])
      expect(parentAt(bob.ratchetTree, 3).unmergedLeaves).toEqual([0])

      const refused = yield* Effect.promise(() =>
        joinGroup(gWelcome, g.publicPackage, g.privatePackage, emptyPskIndex, cs, undefined, undefined, defaultClientConfig)
          .then(() => "joined", (e: Error) => e.message)
      )
      expect(refused).toBe("non-blank intermediate node must list leaf node in its unmerged_leaves")

      const joined = yield* Effect.promise(() =>
        joinFromWelcome(gWelcome, g.publicPackage, g.privatePackage, cs, defaultClientConfig)
      )
      expect(joined.groupContext.epoch).toBe(bob.groupContext.epoch)
      expect(joined.keySchedule.epochAuthenticator).toEqual(bob.keySchedule.epochAuthenticator)
      const sent = yield* Effect.promise(() => createApplicationMessage(bob, utf8("hello g"), cs))
      const read = yield* Effect.promise(() =>
        processPrivateMessage(joined, sent.privateMessage, emptyPskIndex, cs)
      )
      expect(read.kind).toBe("applicationMessage")
      if (read.kind === "applicationMessage") expect(new TextDecoder().decode(read.message)).toBe("hello g")
    }))

  it.effect("the tree of that welcome passes the whole RFC 9420 validation", () =>
    Effect.gen(function*() {
      const { bob, cs } = yield* refilledTree
      const error = yield* Effect.promise(() =>
        validateRatchetTree(bob.ratchetTree, bob.groupContext, defaultClientConfig, cs)
      )
      expect(error).toBeUndefined()
    }))

  it.effect("a node between an unmerged leaf and the parent listing it must list it too", () =>
    Effect.gen(function*() {
      const { bob } = yield* refilledTree
      expect(checkUnmergedLeaves(withUnmerged(bob.ratchetTree, 3, []))?.message)
        .toBe("node 3 between leaf 0 and node 7 does not list it as unmerged")
    }))

  it.effect("an unmerged leaf must be a non-blank leaf below the parent that lists it", () =>
    Effect.gen(function*() {
      const { bob } = yield* refilledTree
      // Leaf 6 (node 12) is blank; leaf 5 is not below node 3 (leaves 0..3).
      expect(checkUnmergedLeaves(withUnmerged(bob.ratchetTree, 7, [0, 5, 6]))?.message)
        .toBe("unmerged leaf 6 of node 7 is not a non-blank leaf below it")
      expect(checkUnmergedLeaves(withUnmerged(bob.ratchetTree, 3, [0, 5]))?.message)
        .toBe("unmerged leaf 5 of node 3 is not a non-blank leaf below it")
    }))

  it.effect("a tree whose unmerged leaves were tampered with fails its hashes even when the lists are consistent", () =>
    Effect.gen(function*() {
      const { bob, cs } = yield* refilledTree
      // Dropping leaf 5 from the root is consistent, but the tree is no longer the one signed for.
      const tampered = withUnmerged(bob.ratchetTree, 7, [0])
      expect(checkUnmergedLeaves(tampered)).toBeUndefined()
      const error = yield* Effect.promise(() =>
        validateRatchetTree(tampered, bob.groupContext, defaultClientConfig, cs)
      )
      expect(error?.message).toMatch(/parent hash|tree hash/)
    }))

  it.effect("identity lookups run while the tree is checked; a leaf they refuse still keeps the joiner out", () =>
    Effect.gen(function*() {
      const { cs, f, fWelcome } = yield* refilledTree
      const events: Array<string> = []
      // The lookups come in once the welcome's six signatures (its group info, its five leaves)
      // have been checked, or after 2 s: a join that waits for them first never sees those checks.
      const treeSignatures = 6
      let lookupsDone: Promise<void> = Promise.resolve()
      let release: () => void = () => undefined
      const prepare = async () => {
        events.push("lookups started")
        await lookupsDone
        events.push("lookups done")
      }
      const judging = (refused: string | undefined) => ({
        ...defaultClientConfig,
        authService: {
          validateCredential: async (credential: Credential) => {
            const name = credential.credentialType === "basic" ? new TextDecoder().decode(credential.identity) : "?"
            events.push(`credential ${name}`)
            return name !== refused
          }
        }
      })
      const watched: CiphersuiteImpl = {
        ...cs,
        signature: {
          ...cs.signature,
          verify: (publicKey, message, signature) => {
            events.push("signature checked")
            if (events.filter((e) => e === "signature checked").length === treeSignatures) setImmediate(release)
            return cs.signature.verify(publicKey, message, signature)
          }
        }
      }
      const join = (refused: string | undefined) => {
        events.length = 0
        lookupsDone = new Promise<void>((resolve) => {
          release = resolve
          setTimeout(resolve, 2_000)
        })
        return joinWithSigner(fWelcome, f.publicPackage, f.privatePackage, watched, judging(refused), prepare)
      }
      const refusedJoin = yield* Effect.promise(() => join("d").then(() => "joined", (e: Error) => e.message))
      expect(refusedJoin).toBe("Could not validate credential")
      expect(events[0]).toBe("lookups started")
      // The group info's and every leaf's signature, checked before the lookups came in.
      expect(events.slice(1, 1 + treeSignatures)).toEqual(Array(treeSignatures).fill("signature checked"))
      expect(events[1 + treeSignatures]).toBe("lookups done")
      expect(events).toContain("credential d")

      const joined = yield* Effect.promise(() => join(undefined))
      expect(joined.client.groupContext.groupId).toEqual(utf8("refilled-leaf-gp"))
      // Every leaf of the tree, the welcome's signer first, judged after the lookups.
      const leaves = joined.client.ratchetTree.filter((node) => node?.nodeType === "leaf").length
      expect(leaves).toBe(5)
      expect(events.filter((e) => e.startsWith("credential")).length).toBe(1 + leaves)
      expect(events.indexOf("lookups done")).toBeLessThan(events.findIndex((e) => e.startsWith("credential")))
    }))
})
