/** Plain ts-mls members and states for the tests that hold Converge's ts-mls steps to ts-mls's own. */
import {
  type ClientState,
  defaultCapabilities,
  defaultLifetime,
  encodeGroupState,
  generateKeyPackage,
  type KeyPackage,
  type MLSMessage,
  type PrivateKeyPackage,
  type processMessage,
  type Proposal
} from "ts-mls"
import { utf8 } from "../../src/domain/Bytes.ts"
import { nodeCiphersuite as cs } from "../../src/layers/NodeCiphersuite.ts"
import { BLANK_SECRET_NODE } from "../../src/layers/TsMlsStoredState.ts"

export interface Package {
  readonly publicPackage: KeyPackage
  readonly privatePackage: PrivateKeyPackage
}

export const newPackage = (name: string): Promise<Package> =>
  generateKeyPackage({ credentialType: "basic", identity: utf8(name) }, defaultCapabilities(), defaultLifetime, [], cs)

export const addOf = (pkg: Package): Proposal => ({ proposalType: "add", add: { keyPackage: pkg.publicPackage } })

export const acceptAll = () => "accept" as const

export const asGroupMessage = (message: MLSMessage) => message as Parameters<typeof processMessage>[0]

export const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex")

/** The state as ts-mls encodes it, its secret tree's parents blanked (Converge derives only the leaves' ratchets). */
export const leafStateBytes = (state: ClientState) =>
  hex(encodeGroupState({ ...state, secretTree: state.secretTree.map((node, i) => (i % 2 === 0 ? node : BLANK_SECRET_NODE)) }))
