/**
 * Who is calling the delivery service. A caller's requests are authenticated by the
 * `RequestSigner` in the fiber that makes them (`currentSigner`), so the port's methods keep
 * their shape and every transport carries the same statement:
 *
 * - In process, the client's signer signs each request and the store-backed service verifies
 *   it, exactly as a server does.
 * - Over the network, the RPC client signs each attempt and sends the statement in a header;
 *   the server hands it to the service as a signer that returns what was received.
 *
 * `authenticatedAs` gives a client's view of a delivery service in which every call is
 * signed by that installation.
 */
import { Clock, Effect, FiberRef, Option, Stream } from "effect"
import type { InstallationId } from "../domain/Ids.ts"
import { type AuthenticatedOperation, type RequestAuth, signRequest } from "../domain/RequestAuth.ts"
import type { DeliveryService } from "./DeliveryService.ts"

/** Produces the authentication of one request (operation and request digest). */
export type RequestSigner = (op: AuthenticatedOperation, digest: string) => Effect.Effect<RequestAuth>

export const currentSigner: FiberRef.FiberRef<Option.Option<RequestSigner>> = FiberRef.unsafeMake(Option.none())

/** Signs with an installation's MLS signature key, at the time of `Clock`. */
export const installationSigner = (installationId: InstallationId, privateKey: Uint8Array): RequestSigner =>
(op, digest) => Effect.map(Clock.currentTimeNanos, (now) => signRequest(installationId, privateKey, op, digest, now))

/** A signer that only hands back a statement received from elsewhere (a server's request header). */
export const receivedSigner = (auth: RequestAuth): RequestSigner => () => Effect.succeed(auth)

type Service = DeliveryService["Type"]

/**
 * Every call of `service` made through the result is signed by `signer`. A client's view: do
 * not serve it (`DeliveryServer`), or every caller would act as this installation.
 */
export const authenticatedAs = (service: Service, signer: RequestSigner): Service => {
  const signed = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.locally(effect, currentSigner, Option.some(signer))
  const signedStream = <A, E>(stream: Stream.Stream<A, E>) =>
    Stream.unwrapScoped(Effect.as(Effect.locallyScoped(currentSigner, Option.some(signer)), stream))
  return {
    sendGroupMessages: (messages) => signed(service.sendGroupMessages(messages)),
    sendGroupMessagesIf: (messages, ifTopicEndsAt) => signed(service.sendGroupMessagesIf(messages, ifTopicEndsAt)),
    queryGroupMessages: (query) => signed(service.queryGroupMessages(query)),
    batchQueryGroupMessages: (queries) => signed(service.batchQueryGroupMessages(queries)),
    syncQuery: (query) => signed(service.syncQuery(query)),
    subscribeGroupMessages: (filters) => signedStream(service.subscribeGroupMessages(filters)),
    sendWelcomeMessages: (messages) => signed(service.sendWelcomeMessages(messages)),
    queryWelcomeMessages: (query) => signed(service.queryWelcomeMessages(query)),
    subscribeWelcomeMessages: (filter) => signedStream(service.subscribeWelcomeMessages(filter)),
    uploadKeyPackage: (upload) => signed(service.uploadKeyPackage(upload)),
    fetchKeyPackages: (ids) => signed(service.fetchKeyPackages(ids)),
    publishIdentityUpdate: (update) => signed(service.publishIdentityUpdate(update)),
    getIdentityUpdates: (queries) => signed(service.getIdentityUpdates(queries))
  }
}
