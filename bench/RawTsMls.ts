/**
 * Plain ts-mls 1.6.4 calls, no Converge code: the raw figures every engine figure is compared with.
 * A raw group is set up once and then driven step by step, so a benchmark can run a raw step right
 * beside the engine step it is compared with (same moment of the machine, same JIT state).
 */
import { randomBytes } from "node:crypto"
import {
  createApplicationMessage,
  createCommit,
  createGroup,
  defaultCapabilities,
  defaultCryptoProvider,
  defaultLifetime,
  emptyPskIndex,
  generateKeyPackage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  joinGroup,
  type MLSMessage,
  processMessage,
  type Proposal
} from "ts-mls"
import { NATIVE_CIPHERSUITE, nodeCryptoProvider } from "../src/layers/NodeCiphersuite.ts"

export type Provider = "native" | "default"
export const PROVIDERS: ReadonlyArray<Provider> = ["native", "default"]

export const suiteOf = (provider: Provider) =>
  getCiphersuiteImpl(
    getCiphersuiteFromName(NATIVE_CIPHERSUITE),
    provider === "native" ? nodeCryptoProvider : defaultCryptoProvider
  )

const acceptAll = () => "accept" as const

export const groupMessage = (message: MLSMessage) => {
  if (message.wireformat !== "mls_private_message" && message.wireformat !== "mls_public_message") {
    throw new Error(`${message.wireformat} is not a group message`)
  }
  return message
}

/** Milliseconds of one raw add round: create the commit, the member's processMessage, the newcomer's joinGroup. */
export interface RawAddRound {
  readonly commit: number
  readonly commitProcess: number
  readonly join: number
}

export interface RawGroup {
  /** Encrypt one message (creator) and process it (member): the milliseconds of each. */
  readonly encryptAndProcess: (plaintext: Uint8Array) => Promise<{ readonly encrypt: number; readonly process: number }>
  /** Encrypt `count` messages, then process all of them in one timed loop: milliseconds per message. */
  readonly backlog: (count: number) => Promise<number>
  /** An add-one-member commit from the same pre-commit state each time (the group keeps its size). */
  readonly addRound: () => Promise<RawAddRound>
}

const timedMs = async <A>(run: () => Promise<A>): Promise<readonly [number, A]> => {
  const start = performance.now()
  const value = await run()
  return [performance.now() - start, value]
}

/**
 * A creator adds `size` members in one commit, one of them joins, the last is removed (so the
 * creator's path is set, as in any group after a removal: a newcomer's tree has parent-hash chains
 * to verify, as every real group's does).
 */
export const rawGroup = async (provider: Provider, size: number): Promise<RawGroup> => {
  const cs = await suiteOf(provider)
  const newPackage = (name: string) =>
    generateKeyPackage({ credentialType: "basic", identity: new TextEncoder().encode(name) }, defaultCapabilities(), defaultLifetime, [], cs)
  const creator = await newPackage("creator")
  const members = await Promise.all(Array.from({ length: size - 1 }, (_, i) => newPackage(`member-${i}`)))
  const addAll = members.map((m): Proposal => ({ proposalType: "add", add: { keyPackage: m.publicPackage } }))
  const leaving = await newPackage("leaving")
  const founded = await createGroup(randomBytes(16), creator.publicPackage, creator.privatePackage, [], cs)
  const setup = await createCommit({ state: founded, cipherSuite: cs }, {
    extraProposals: [...addAll, { proposalType: "add", add: { keyPackage: leaving.publicPackage } }],
    ratchetTreeExtension: true
  })
  let receiver = await joinGroup(setup.welcome!, members[0]!.publicPackage, members[0]!.privatePackage, emptyPskIndex, cs)
  const removal = await createCommit({ state: setup.newState, cipherSuite: cs }, {
    extraProposals: [{ proposalType: "remove", remove: { removed: size } }],
    ratchetTreeExtension: true
  })
  let sender = removal.newState
  receiver = (await processMessage(groupMessage(removal.commit), receiver, emptyPskIndex, acceptAll, cs)).newState
  let newcomers = 0

  const encryptOne = async (plaintext: Uint8Array) => {
    const sent = await createApplicationMessage(sender, plaintext, cs)
    sender = sent.newState
    return { version: "mls10" as const, wireformat: "mls_private_message" as const, privateMessage: sent.privateMessage }
  }
  return {
    encryptAndProcess: async (plaintext) => {
      const [encrypt, wire] = await timedMs(() => encryptOne(plaintext))
      const [process, processed] = await timedMs(() => processMessage(wire, receiver, emptyPskIndex, acceptAll, cs))
      receiver = processed.newState
      return { encrypt, process }
    },
    backlog: async (count) => {
      const plaintext = randomBytes(100)
      const pending: Array<MLSMessage & { wireformat: "mls_private_message" }> = []
      for (let i = 0; i < count; i++) pending.push(await encryptOne(plaintext))
      const start = performance.now()
      for (const wire of pending) receiver = (await processMessage(wire, receiver, emptyPskIndex, acceptAll, cs)).newState
      return (performance.now() - start) / count
    },
    addRound: async () => {
      const newcomer = await newPackage(`newcomer-${newcomers++}`)
      const add: Proposal = { proposalType: "add", add: { keyPackage: newcomer.publicPackage } }
      const [commit, result] = await timedMs(() =>
        createCommit({ state: sender, cipherSuite: cs }, { extraProposals: [add], ratchetTreeExtension: true }))
      const commitMessage = groupMessage(result.commit)
      const [commitProcess] = await timedMs(() => processMessage(commitMessage, receiver, emptyPskIndex, acceptAll, cs))
      const [join] = await timedMs(() =>
        joinGroup(result.welcome!, newcomer.publicPackage, newcomer.privatePackage, emptyPskIndex, cs))
      return { commit, commitProcess, join }
    }
  }
}
