/**
 * The `MlsCrypto` port on ts-mls 1.6.4, ciphersuite 1 (X25519, AES-128-GCM, SHA-256, Ed25519):
 * the service composed from its parts, and its layer. Only this module and its parts import
 * ts-mls; see /work/shared/notes/ts-mls.md for the version-specific facts they rely on (sender
 * recovery, pending commits, error classes). The parts, by concept:
 *
 * - TsMlsClientConfig: the ciphersuite and client config a service shares, its leaf authentication;
 * - TsMlsKeyPackages: key packages made, decoded and verified; TsMlsSealing: welcomes sealed to one;
 * - TsMlsGroupCreation: a group created, or joined from a welcome (TsMlsWelcome);
 * - TsMlsCommits: commits created and received commits checked (TsMlsCommitRules);
 * - TsMlsApplications: application messages encrypted and read; TsMlsReceive: `process`;
 * - TsMlsMessages: decoding, headers and the screen of received messages; TsMlsErrors: ts-mls
 *   failures as CryptoErrors;
 * - TsMlsGroupState: the opaque state, its views and stored bytes (TsMlsStoredState,
 *   TsMlsStateCodec); TsMlsExtensions, TsMlsMembers, TsMlsTreeHashes, TsMlsDecoders.
 *
 * Leaf credentials are basic credentials whose identity is UTF-8 `inboxId:installationId`,
 * and the installation id must be the SHA-256 of the leaf's signature key. That structural
 * check runs inside ts-mls's AuthenticationService hook on every leaf it validates, followed
 * by the caller's `authenticate`.
 */
import { type Context, Effect, Layer } from "effect"
import { type CiphersuiteImpl, defaultCryptoProvider, getCiphersuiteFromName, getCiphersuiteImpl } from "ts-mls"
import { MlsCrypto, type MlsCryptoOptions } from "../services/MlsCrypto.ts"
import { nodeCryptoProvider } from "./NodeCiphersuite.ts"
import { makeApplicationReceiver, makeEncrypt } from "./TsMlsApplications.ts"
import { makeClientSetup } from "./TsMlsClientConfig.ts"
import { makeAddChecks, makeCommitCreation, makeReceivedCommitChecks } from "./TsMlsCommits.ts"
import { makeGroupCreation } from "./TsMlsGroupCreation.ts"
import { inviterOf, leafDetails, makeStoredStates, view } from "./TsMlsGroupState.ts"
import { makeKeyPackageGenerator, makeKeyPackageReader } from "./TsMlsKeyPackages.ts"
import { header, inspect, inspectAll } from "./TsMlsMessages.ts"
import { makeProcess } from "./TsMlsReceive.ts"
import { installRejectionGuard } from "./TsMlsRejectionGuard.ts"
import { makeSealing } from "./TsMlsSealing.ts"

type Service = Context.Tag.Service<MlsCrypto>

const CIPHERSUITE = "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519" as const

export const make = (options: MlsCryptoOptions): Effect.Effect<Service> =>
  Effect.gen(function*() {
    const provider = options.provider === "default" ? defaultCryptoProvider : nodeCryptoProvider
    const cs = yield* Effect.promise(() => getCiphersuiteImpl(getCiphersuiteFromName(CIPHERSUITE), provider))
    installRejectionGuard()
    return serviceOn(cs, options)
  })

/** The service over one ciphersuite implementation; `authenticatedBy` makes a copy with another hook. */
const serviceOn = (cs: CiphersuiteImpl, options: MlsCryptoOptions): Service => {
  const setup = makeClientSetup(cs, options)
  // One key package cache per service: an add's package verified in its checks is not verified again.
  const keyPackages = makeKeyPackageReader(cs)
  const { generateKeyPackage, generateSignatureKeyPair } = makeKeyPackageGenerator(cs, keyPackages.keyPackageRef)
  const { openSealed, sealToKeyPackage } = makeSealing(cs, keyPackages.decodeBundle)
  const { createGroup, joinFromWelcome } = makeGroupCreation(setup, keyPackages)
  const checkAdds = makeAddChecks(setup, keyPackages.signaturesHeld)
  const createCommit = makeCommitCreation(setup, keyPackages.keptOrDecoded, checkAdds)
  const applications = makeApplicationReceiver(setup)
  const process = makeProcess(setup, applications.applicationResult, makeReceivedCommitChecks(setup, checkAdds))
  const { deserialize, deserializeStaged, rebaseStaged, serialize, serializeStaged } = makeStoredStates(
    setup.clientConfig
  )

  return {
    maxPastEpochs: setup.clientConfig.keyRetentionConfig.retainKeysForEpochs,
    rebaseStaged,
    sealToKeyPackage,
    openSealed,
    generateSignatureKeyPair,
    generateKeyPackage,
    keyPackageInfo: keyPackages.keyPackageInfo,
    createGroup,
    createCommit,
    joinFromWelcome,
    encrypt: makeEncrypt(setup),
    inspect,
    inspectAll,
    header,
    process,
    processApplications: applications.processApplications,
    processApplicationsUnconfirmed: applications.processApplicationsUnconfirmed,
    view,
    serialize,
    deserialize,
    serializeStaged,
    deserializeStaged,
    inviterOf,
    leafDetails,
    authenticatedBy: (authenticate, prepare) =>
      serviceOn(cs, { ...options, authenticate, ...(prepare === undefined ? {} : { prepareAuthentication: prepare }) })
  } satisfies Service
}

/** `MlsCrypto` on ts-mls 1.6.4 (`MlsCrypto.layer` in the package root). */
export const layer = (options: MlsCryptoOptions = {}): Layer.Layer<MlsCrypto> => Layer.effect(MlsCrypto, make(options))
