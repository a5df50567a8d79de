/**
 * The joiner's tree checks in src/layers/TsMlsTreeHashes.ts must decide exactly as ts-mls 1.6.4's
 * `verifyParentHashes` and `treeHashRoot` do: a welcome one member accepts and another refuses
 * would split the group. Checked on the trees of a group whose members commit adds, removals and
 * path updates in a seeded random order, and on damaged copies of each (a parent hash changed, an
 * unmerged leaf listed or dropped, a node blanked), so both the accepting and the refusing paths
 * are compared.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { type ClientState, type Proposal, type RatchetTree, createCommit, createGroup, emptyPskIndex, processMessage } from "ts-mls"
import { defaultClientConfig } from "ts-mls/clientConfig.js"
import { verifyParentHashes as tsMlsVerifyParentHashes } from "ts-mls/parentHash.js"
import { treeHashRoot } from "ts-mls/treeHash.js"
import { utf8 } from "../src/domain/Bytes.ts"
import { nodeCiphersuite as cs } from "../src/layers/NodeCiphersuite.ts"
import { TreeHashes, verifyParentHashes } from "../src/layers/TsMlsTreeHashes.ts"
import { joinFromWelcome } from "../src/layers/TsMlsWelcome.ts"
import * as Prng from "../src/simulation/Prng.ts"

import { acceptAll, asGroupMessage, newPackage } from "./support/TsMlsFixtures.ts"

/** What a check did: its answer, or that it threw. */
const outcome = async <A>(run: () => Promise<A>): Promise<A | "throws"> => {
  try {
    return await run()
  } catch {
    return "throws"
  }
}

const hex = (bytes: Uint8Array | "throws") => bytes === "throws" ? bytes : Buffer.from(bytes).toString("hex")

/**
 * Both implementations on one tree: equal answers, returned for the tally. The tree hash also
 * computed reusing the hashes of `earlier` (a tree sharing some of its node objects).
 */
const compare = async (tree: RatchetTree, earlier: RatchetTree) => {
  const theirs = await outcome(() => tsMlsVerifyParentHashes(tree, cs.hash))
  const ours = await outcome(() => verifyParentHashes(tree, new TreeHashes(tree, cs.hash)))
  expect(ours).toEqual(theirs)
  const rootHash = hex(await outcome(() => treeHashRoot(tree, cs.hash)))
  expect(hex(await outcome(() => new TreeHashes(tree, cs.hash).root()))).toEqual(rootHash)
  expect(hex(await outcome(() => new TreeHashes(tree, cs.hash, new TreeHashes(earlier, cs.hash)).root()))).toEqual(rootHash)
  return theirs
}

type Node = NonNullable<RatchetTree[number]>
type ParentNode = Extract<Node, { readonly nodeType: "parent" }>

const parentIndices = (tree: RatchetTree) => tree.flatMap((n, i) => n?.nodeType === "parent" ? [i] : [])

/** Copies of the tree, each damaged in one way an attacker's welcome could be. */
const damaged = (tree: RatchetTree, rng: Prng.Prng): Array<RatchetTree> => {
  const parents = parentIndices(tree)
  const leaves = tree.flatMap((n, i) => n?.nodeType === "leaf" ? [i] : [])
  const withParent = (index: number, change: (p: ParentNode["parent"]) => ParentNode["parent"]) => {
    const copy = tree.slice()
    const node = copy[index] as ParentNode
    copy[index] = { ...node, parent: change(node.parent) }
    return copy
  }
  const out: Array<RatchetTree> = []
  if (parents.length > 0) {
    const p = rng.pick(parents)
    out.push(withParent(p, (parent) => {
      const parentHash = Uint8Array.from(parent.parentHash)
      if (parentHash.length > 0) parentHash[rng.int(parentHash.length)]! ^= 1
      return { ...parent, parentHash }
    }))
    const leafBelow = Math.floor(rng.int(tree.length) / 2)
    out.push(withParent(p, (parent) => ({ ...parent, unmergedLeaves: [...parent.unmergedLeaves, leafBelow] })))
    out.push(withParent(p, (parent) => ({ ...parent, unmergedLeaves: parent.unmergedLeaves.slice(1) })))
    const blanked = tree.slice()
    blanked[p] = undefined
    out.push(blanked)
  }
  if (leaves.length > 1) {
    const blanked = tree.slice()
    blanked[rng.pick(leaves)] = undefined
    out.push(blanked)
  }
  return out
}

/**
 * Six members who commit (founder plus five joined by welcome) and others who only get added or
 * removed. Each step one committer commits adds, a removal, both, or a bare path update; the
 * others process it. Returns every tree the group had.
 */
const evolvingGroupTrees = async (seed: number, steps: number): Promise<Array<RatchetTree>> => {
  const rng = Prng.make(seed)
  const names = ["a", "b", "c", "d", "e", "f"]
  const packages = await Promise.all(names.map(newPackage))
  let founder = await createGroup(utf8(`tree-hashes-${seed}`), packages[0]!.publicPackage, packages[0]!.privatePackage, [], cs)
  const adding = await createCommit({ state: founder, cipherSuite: cs }, {
    extraProposals: packages.slice(1).map((p): Proposal => ({ proposalType: "add", add: { keyPackage: p.publicPackage } })),
    ratchetTreeExtension: true
  })
  founder = adding.newState
  const committers: Array<ClientState> = [founder]
  for (const p of packages.slice(1)) {
    committers.push(await joinFromWelcome(adding.welcome!, p.publicPackage, p.privatePackage, cs, defaultClientConfig))
  }
  const trees: Array<RatchetTree> = [founder.ratchetTree]
  let fresh = 0
  for (let step = 0; step < steps; step++) {
    const who = rng.int(committers.length)
    const state = committers[who]!
    const committerLeaves = new Set(committers.map((c) => c.privatePath.leafIndex))
    const others = state.ratchetTree.flatMap((n, i) =>
      n?.nodeType === "leaf" && !committerLeaves.has(i / 2) ? [i / 2] : []
    )
    const proposals: Array<Proposal> = []
    const kind = rng.weighted({ add: 3, remove: 2, both: 2, update: 2 })
    if ((kind === "remove" || kind === "both") && others.length > 0) {
      proposals.push({ proposalType: "remove", remove: { removed: rng.pick(others) } })
    }
    if (kind === "add" || kind === "both") {
      for (let i = rng.between(1, 3); i > 0; i--) {
        const p = await newPackage(`member-${fresh++}`)
        proposals.push({ proposalType: "add", add: { keyPackage: p.publicPackage } })
      }
    }
    const result = await createCommit({ state, cipherSuite: cs }, { extraProposals: proposals, ratchetTreeExtension: true })
    committers[who] = result.newState
    for (const [i, other] of committers.entries()) {
      if (i === who) continue
      committers[i] = (await processMessage(asGroupMessage(result.commit), other, emptyPskIndex, acceptAll, cs)).newState
    }
    trees.push(result.newState.ratchetTree)
  }
  return trees
}

describe("a joiner's tree hashes and parent-hash chains", () => {
  it.effect("decide as ts-mls 1.6.4 on every tree of an evolving group and on damaged copies", () =>
    Effect.promise(async () => {
      const tally = { verified: 0, refused: 0, threw: 0, listedUnmerged: 0 }
      for (const seed of [1, 2, 3]) {
        const rng = Prng.make(seed * 7919)
        const trees = await evolvingGroupTrees(seed, 25)
        for (const [index, tree] of trees.entries()) {
          if (parentIndices(tree).some((i) => (tree[i] as ParentNode).parent.unmergedLeaves.length > 0)) {
            tally.listedUnmerged++
          }
          // The tree against the one before it (a commit apart), each damaged copy against the tree it copies.
          const pairs = [[tree, trees[Math.max(0, index - 1)]!], ...damaged(tree, rng).map((copy) => [copy, tree])] as const
          for (const [candidate, earlier] of pairs) {
            const decided = await compare(candidate, earlier)
            if (decided === true) tally.verified++
            else if (decided === false) tally.refused++
            else tally.threw++
          }
        }
      }
      // Both answers and the unmerged-leaves path were exercised, not only the easy case.
      expect(tally.verified).toBeGreaterThan(50)
      expect(tally.refused).toBeGreaterThan(50)
      expect(tally.listedUnmerged).toBeGreaterThan(20)
    }), 120_000)

  it.effect("hash each subtree once: a 100-member tree with a set root costs hundreds of digests, not thousands", () =>
    Effect.promise(async () => {
      const packages = await Promise.all(Array.from({ length: 100 }, (_, i) => newPackage(`m-${i}`)))
      let state = await createGroup(utf8("hundred-members"), packages[0]!.publicPackage, packages[0]!.privatePackage, [], cs)
      const commitWith = async (proposals: Array<Proposal>) =>
        (state = (await createCommit({ state, cipherSuite: cs }, { extraProposals: proposals, ratchetTreeExtension: true })).newState)
      await commitWith(packages.slice(1).map((p): Proposal => ({ proposalType: "add", add: { keyPackage: p.publicPackage } })))
      // A removal commits with a path: the root and the founder's ancestors are set.
      await commitWith([{ proposalType: "remove", remove: { removed: 99 } }])
      let digests = 0
      const counting = { ...cs.hash, digest: (data: Uint8Array) => (digests++, cs.hash.digest(data)) }
      const tree = state.ratchetTree
      expect(await verifyParentHashes(tree, new TreeHashes(tree, counting))).toBe(true)
      expect(digests).toBeLessThan(600)
      let theirs = 0
      const countingTheirs = { ...cs.hash, digest: (data: Uint8Array) => (theirs++, cs.hash.digest(data)) }
      expect(await tsMlsVerifyParentHashes(tree, countingTheirs)).toBe(true)
      expect(theirs).toBeGreaterThan(10 * digests)
    }), 60_000)
})
