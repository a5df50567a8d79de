/**
 * Application messages: encrypting one, and reading them, one (`process`'s case) or a page's run
 * at a time with the signatures checked beside it (`processApplications`, DeferredSignatures).
 */
import { Effect, Either } from "effect"
import {
  type CiphersuiteImpl,
  type ClientState,
  createApplicationMessage,
  encodeMlsMessage,
  type PrivateMessage
} from "ts-mls"
import { unprotectPrivateMessage } from "ts-mls/messageProtection.js"
import * as MlsError from "ts-mls/mlsError.js"
import { CryptoError } from "../domain/Errors.ts"
import type { MlsCryptoShape, MlsGroupState, Processed, ProcessedApplication } from "../services/MlsCrypto.ts"
import { deferSignatures } from "./DeferredSignatures.ts"
import type { ClientSetup } from "./TsMlsClientConfig.ts"
import { toCryptoError, tryMls } from "./TsMlsErrors.ts"
import { wrap } from "./TsMlsGroupState.ts"
import { senderAt } from "./TsMlsMembers.ts"
import { screen } from "./TsMlsMessages.ts"

type Service = MlsCryptoShape

/**
 * An application message: ts-mls 1.6.4's `processPrivateMessage` steps for that case (current
 * epoch, or a past one still retained), keeping the sender its sender data names, which
 * 1.6.4's result drops (notes §2). `unprotectPrivateMessage` decrypts the sender data, checks
 * the leaf is non-blank, decrypts the content and verifies its signature against that leaf.
 */
const processApplication = async (client: ClientState, pm: PrivateMessage, suite: CiphersuiteImpl) => {
  const past = pm.epoch < client.groupContext.epoch ? client.historicalReceiverData.get(pm.epoch) : undefined
  if (pm.epoch < client.groupContext.epoch && past === undefined) {
    throw new MlsError.ValidationError("Cannot process message, epoch too old")
  }
  const keys = past ?? {
    senderDataSecret: client.keySchedule.senderDataSecret,
    secretTree: client.secretTree,
    ratchetTree: client.ratchetTree,
    groupContext: client.groupContext
  }
  const result = await unprotectPrivateMessage(
    keys.senderDataSecret,
    pm,
    keys.secretTree,
    keys.ratchetTree,
    keys.groupContext,
    client.clientConfig.keyRetentionConfig,
    suite
  )
  const content = result.content.content
  if (content.contentType !== "application" || content.sender.senderType !== "member") {
    throw new MlsError.ValidationError("not an application message from a member")
  }
  const newState: ClientState = past === undefined
    ? { ...client, secretTree: result.tree }
    : {
      ...client,
      historicalReceiverData: new Map(client.historicalReceiverData).set(pm.epoch, { ...past, secretTree: result.tree })
    }
  return { plaintext: content.applicationData, leafIndex: content.sender.leafIndex, tree: keys.ratchetTree, newState }
}

export const makeEncrypt = ({ cs, unwrap }: ClientSetup): Service["encrypt"] =>
  Effect.fn("MlsCrypto.encrypt")(function*(state, plaintext) {
    const { newState, privateMessage } = yield* tryMls(
      "encrypt",
      () => createApplicationMessage(unwrap(state), plaintext, cs)
    )
    return {
      message: encodeMlsMessage({ version: "mls10", wireformat: "mls_private_message", privateMessage }),
      state: wrap(newState)
    }
  })

export const makeApplicationReceiver = ({ cs, unwrap }: ClientSetup) => {
  /** A screened private application message, decrypted and verified: the result `process` gives. */
  const applicationResult = async (
    client: ClientState,
    pm: PrivateMessage,
    epoch: bigint,
    suite: CiphersuiteImpl = cs
  ) => {
    const app = await processApplication(client, pm, suite)
    const sender = senderAt(app.tree, app.leafIndex)
    if (sender === undefined) return new CryptoError({ reason: "Internal", detail: "cannot resolve the sender leaf" })
    return {
      kind: "application",
      plaintext: app.plaintext,
      sender,
      epoch,
      state: wrap(app.newState)
    } satisfies Processed
  }

  /**
   * A page's run: per message the same screen and steps as `process`, each from the state the
   * previous success left; a refused message leaves the state as it was. With more than one
   * message the signatures are checked on the thread pool meanwhile (DeferredSignatures); if any
   * fails, the run is redone with the real checks, so the answer is always the sequential one.
   */
  const processApplications: Service["processApplications"] = (state, messages) =>
    Effect.promise(async () => {
      const deferred = messages.length > 1 ? deferSignatures(cs) : undefined
      if (deferred !== undefined) {
        const provisional = await applicationsRun(deferred.ciphersuite, state, messages)
        if (await deferred.allValid()) return provisional
      }
      return applicationsRun(cs, state, messages)
    }).pipe(Effect.withSpan("MlsCrypto.processApplications", { attributes: { messages: messages.length } }))

  const processApplicationsUnconfirmed: Service["processApplicationsUnconfirmed"] = (state, messages) =>
    Effect.promise(async () => {
      const deferred = messages.length > 1 ? deferSignatures(cs) : undefined
      if (deferred === undefined) return { ...(await applicationsRun(cs, state, messages)), confirmed: Effect.succeed(true) }
      const provisional = await applicationsRun(deferred.ciphersuite, state, messages)
      return { ...provisional, confirmed: Effect.promise(deferred.allValid) }
    }).pipe(Effect.withSpan("MlsCrypto.processApplications", { attributes: { messages: messages.length } }))

  const applicationsRun = async (suite: CiphersuiteImpl, state: MlsGroupState, messages: ReadonlyArray<Uint8Array>) => {
    const results: Array<Either.Either<ProcessedApplication, CryptoError>> = []
    let current = state
    for (const bytes of messages) {
      const client = unwrap(current)
      const screened = screen(client, bytes)
      if (screened instanceof CryptoError) {
        results.push(Either.left(screened))
        continue
      }
      const { header, message } = screened
      if (header.kind !== "application" || message.wireformat !== "mls_private_message") {
        results.push(Either.left(new CryptoError({ reason: "Malformed", detail: "not an application message" })))
        continue
      }
      const app = await applicationResult(client, message.privateMessage, header.epoch, suite)
        .catch(toCryptoError("process"))
      if (!(app instanceof CryptoError)) current = app.state
      results.push(app instanceof CryptoError ? Either.left(app) : Either.right(app))
    }
    return { results, state: current }
  }

  return { applicationResult, processApplications, processApplicationsUnconfirmed }
}

export type ApplicationReceiver = ReturnType<typeof makeApplicationReceiver>
