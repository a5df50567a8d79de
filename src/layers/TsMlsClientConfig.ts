/**
 * What every part of one `MlsCrypto` service runs ts-mls with: its ciphersuite, and a ts-mls
 * `ClientConfig` whose AuthenticationService runs the structural credential check (the
 * installation id is the hash of the leaf's signature key), then the caller's `authenticate`.
 */
import {
  type AuthenticationService,
  type CiphersuiteImpl,
  type ClientConfig,
  type ClientState,
  type Credential,
  defaultKeyRetentionConfig,
  type RatchetTree
} from "ts-mls"
import { defaultClientConfig } from "ts-mls/clientConfig.js"
import type { LeafIdentity, MlsCryptoOptions, MlsGroupState } from "../services/MlsCrypto.ts"
import { CredentialRejected } from "./TsMlsErrors.ts"
import { unwrapRaw } from "./TsMlsGroupState.ts"
import { structuralIdentity } from "./TsMlsMembers.ts"
import * as StoredState from "./TsMlsStoredState.ts"

/** One service's ciphersuite and client config, shared by its parts. */
export interface ClientSetup {
  readonly cs: CiphersuiteImpl
  readonly clientConfig: ClientConfig
  readonly authenticateLeaf: (credential: Credential, signaturePublicKey: Uint8Array, newLeaf: boolean) => Promise<boolean>
  readonly prepareTree: (tree: RatchetTree) => Promise<void>
  readonly unwrap: (state: MlsGroupState) => ClientState
}

export const makeClientSetup = (cs: CiphersuiteImpl, options: MlsCryptoOptions): ClientSetup => {
  /** The structural check, then the caller's hook: throws `CredentialRejected` with the reason. */
  const authenticateLeaf = async (credential: Credential, signaturePublicKey: Uint8Array, newLeaf: boolean) => {
    const identity = structuralIdentity(credential, signaturePublicKey)
    if (typeof identity === "string") throw new CredentialRejected(identity)
    if (options.authenticate !== undefined && !(await options.authenticate(identity, signaturePublicKey, newLeaf))) {
      const which = newLeaf ? "a current installation" : "an installation"
      throw new CredentialRejected(
        `installation ${identity.installationId} is not ${which} of inbox ${identity.inboxId} with this key`
      )
    }
    return true
  }

  /** Hands the hook every structurally sound leaf of a tree about to be validated leaf by leaf. */
  const prepareTree = async (tree: RatchetTree): Promise<void> => {
    if (options.prepareAuthentication === undefined) return
    const leaves: Array<LeafIdentity & { readonly signaturePublicKey: Uint8Array }> = []
    for (const node of tree) {
      if (node?.nodeType !== "leaf") continue
      const identity = structuralIdentity(node.leaf.credential, node.leaf.signaturePublicKey)
      if (typeof identity !== "string") leaves.push({ ...identity, signaturePublicKey: node.leaf.signaturePublicKey })
    }
    // A warm-up only: if it fails, each leaf's own check meets the failure.
    await options.prepareAuthentication(leaves).catch(() => undefined)
  }

  // ts-mls calls this on commit path leaves, welcome trees and (after `checkAdds`) Adds.
  const authService: AuthenticationService = {
    validateCredential: (credential, signaturePublicKey) => authenticateLeaf(credential, signaturePublicKey, false)
  }

  const clientConfig: ClientConfig = {
    ...defaultClientConfig,
    // ts-mls keeps every past epoch when this is 0 (`slice(-0)`), so 1 is the floor; the stored
    // format reads at most MAX_PAST_EPOCHS back.
    keyRetentionConfig: {
      ...defaultKeyRetentionConfig,
      retainKeysForEpochs: Math.min(StoredState.MAX_PAST_EPOCHS, Math.max(1, options.maxPastEpochs ?? 3))
    },
    authService
  }
  /** A state's ts-mls client with this service's config (and so its `authenticate`), wherever it was made. */
  const unwrap = (state: MlsGroupState): ClientState => ({ ...unwrapRaw(state), clientConfig })

  return { cs, clientConfig, authenticateLeaf, prepareTree, unwrap }
}
