/**
 * XMTP's generated protobuf codecs (ts-proto, from the `@xmtp/proto` package) and the gRPC
 * service definitions of `xmtp.mls.api.v1.MlsApi` and `xmtp.identity.api.v1.IdentityApi` built
 * on them for `@grpc/grpc-js`. Nothing here encodes protobuf by hand.
 *
 * The package's ESM build does not load in Node (extensionless imports) and its `exports` map
 * names only the index, which leaves the identity API out: its CommonJS files are loaded by
 * absolute path. The MLS types come from the index; the identity shapes used here are spelled
 * out below (only the fields this server reads or writes).
 */
import type { ServiceDefinition } from "@grpc/grpc-js"
import type { mlsApi } from "@xmtp/proto"
import { createRequire } from "node:module"
import * as path from "node:path"

const require = createRequire(import.meta.url)
const root = path.dirname(require.resolve("@xmtp/proto"))
const load = (file: string): Record<string, unknown> => require(path.join(root, file)) as Record<string, unknown>

/** A ts-proto message codec. int64 fields are `Long`s; `fromPartial` also takes decimal strings. */
export interface Codec<T> {
  readonly encode: (message: T) => { finish(): Uint8Array }
  readonly decode: (bytes: Uint8Array) => T
  readonly fromPartial: (object: unknown) => T
}

/** A protobuf int64 as ts-proto gives it (a `Long`): its decimal string is exact. */
export interface Int64 {
  toString(): string
}

export const int64 = (value: Int64 | undefined): bigint => (value === undefined ? 0n : BigInt(value.toString()))

const mls = load("mls/api/v1/mls.pb.js")
const identityApi = load("identity/api/v1/identity.pb.js")
const association = load("identity/associations/association.pb.js")
const empty = load("google/protobuf/empty.pb.js")
const commitLog = load("mls/message_contents/commit_log.pb.js")
const credential = load("identity/credential.pb.js")

const codec = <T>(module: Record<string, unknown>, name: string): Codec<T> => {
  const found = module[name] as Codec<T> | undefined
  if (found === undefined || typeof found.encode !== "function") throw new Error(`@xmtp/proto has no codec ${name}`)
  return found
}

// ---- identity shapes (xmtp.identity.associations, xmtp.identity.api.v1) ----

export enum IdentifierKind {
  Unspecified = 0,
  Ethereum = 1,
  Passkey = 2
}

export interface RecoverableEd25519Signature {
  readonly bytes: Uint8Array
  readonly publicKey: Uint8Array
}
export interface Signature {
  readonly erc191?: { readonly bytes: Uint8Array } | undefined
  readonly erc6492?: unknown
  readonly installationKey?: RecoverableEd25519Signature | undefined
  readonly delegatedErc191?: unknown
  readonly passkey?: unknown
}
export interface MemberIdentifier {
  readonly ethereumAddress?: string | undefined
  readonly installationPublicKey?: Uint8Array | undefined
  readonly passkey?: { readonly key: Uint8Array } | undefined
}
export interface IdentityAction {
  readonly createInbox?: {
    readonly initialIdentifier: string
    readonly nonce: Int64
    readonly initialIdentifierSignature: Signature | undefined
    readonly initialIdentifierKind: IdentifierKind
  } | undefined
  readonly add?: {
    readonly newMemberIdentifier: MemberIdentifier | undefined
    readonly existingMemberSignature: Signature | undefined
    readonly newMemberSignature: Signature | undefined
  } | undefined
  readonly revoke?: {
    readonly memberToRevoke: MemberIdentifier | undefined
    readonly recoveryIdentifierSignature: Signature | undefined
  } | undefined
  readonly changeRecoveryAddress?: {
    readonly newRecoveryIdentifier: string
    readonly existingRecoveryIdentifierSignature: Signature | undefined
    readonly newRecoveryIdentifierKind: IdentifierKind
  } | undefined
}
export interface IdentityUpdate {
  readonly actions: ReadonlyArray<IdentityAction>
  readonly clientTimestampNs: Int64
  readonly inboxId: string
}
export interface GetInboxIdsRequest {
  readonly requests: ReadonlyArray<{ readonly identifier: string; readonly identifierKind: IdentifierKind }>
}
export interface GetIdentityUpdatesRequest {
  readonly requests: ReadonlyArray<{ readonly inboxId: string; readonly sequenceId: Int64 }>
}
export interface PublishIdentityUpdateRequest {
  readonly identityUpdate: IdentityUpdate | undefined
}
export interface CommitLogEntry {
  readonly sequenceId: Int64
  readonly serializedCommitLogEntry: Uint8Array
  readonly signature: RecoverableEd25519Signature | undefined
}
/** Responses are built with `fromPartial`, from plain objects. */
export type Message = unknown

export const codecs = {
  empty: codec<Message>(empty, "Empty"),
  identityUpdate: codec<IdentityUpdate>(association, "IdentityUpdate"),
  mlsCredential: codec<{ readonly inboxId: string }>(credential, "MlsCredential"),
  commitLogEntry: codec<CommitLogEntry>(commitLog, "CommitLogEntry"),
  groupMessage: codec<mlsApi.GroupMessage>(mls, "GroupMessage"),
  groupMessageV1: codec<mlsApi.GroupMessage_V1>(mls, "GroupMessage_V1"),
  welcomeMessage: codec<mlsApi.WelcomeMessage>(mls, "WelcomeMessage"),
  // requests and responses
  sendGroupMessagesRequest: codec<mlsApi.SendGroupMessagesRequest>(mls, "SendGroupMessagesRequest"),
  sendWelcomeMessagesRequest: codec<mlsApi.SendWelcomeMessagesRequest>(mls, "SendWelcomeMessagesRequest"),
  uploadKeyPackageRequest: codec<mlsApi.UploadKeyPackageRequest>(mls, "UploadKeyPackageRequest"),
  fetchKeyPackagesRequest: codec<mlsApi.FetchKeyPackagesRequest>(mls, "FetchKeyPackagesRequest"),
  fetchKeyPackagesResponse: codec<Message>(mls, "FetchKeyPackagesResponse"),
  queryGroupMessagesRequest: codec<mlsApi.QueryGroupMessagesRequest>(mls, "QueryGroupMessagesRequest"),
  queryGroupMessagesResponse: codec<Message>(mls, "QueryGroupMessagesResponse"),
  queryWelcomeMessagesRequest: codec<mlsApi.QueryWelcomeMessagesRequest>(mls, "QueryWelcomeMessagesRequest"),
  queryWelcomeMessagesResponse: codec<Message>(mls, "QueryWelcomeMessagesResponse"),
  subscribeGroupMessagesRequest: codec<mlsApi.SubscribeGroupMessagesRequest>(mls, "SubscribeGroupMessagesRequest"),
  subscribeWelcomeMessagesRequest: codec<mlsApi.SubscribeWelcomeMessagesRequest>(mls, "SubscribeWelcomeMessagesRequest"),
  batchPublishCommitLogRequest: codec<mlsApi.BatchPublishCommitLogRequest>(mls, "BatchPublishCommitLogRequest"),
  batchQueryCommitLogRequest: codec<mlsApi.BatchQueryCommitLogRequest>(mls, "BatchQueryCommitLogRequest"),
  batchQueryCommitLogResponse: codec<Message>(mls, "BatchQueryCommitLogResponse"),
  getNewestGroupMessageRequest: codec<mlsApi.GetNewestGroupMessageRequest>(mls, "GetNewestGroupMessageRequest"),
  getNewestGroupMessageResponse: codec<Message>(mls, "GetNewestGroupMessageResponse"),
  registerInstallationRequest: codec<Message>(mls, "RegisterInstallationRequest"),
  revokeInstallationRequest: codec<Message>(mls, "RevokeInstallationRequest"),
  mlsGetIdentityUpdatesRequest: codec<Message>(mls, "GetIdentityUpdatesRequest"),
  subscribeRequest: codec<Message>(mls, "SubscribeRequest"),
  getInboxIdsRequest: codec<GetInboxIdsRequest>(identityApi, "GetInboxIdsRequest"),
  getInboxIdsResponse: codec<Message>(identityApi, "GetInboxIdsResponse"),
  getIdentityUpdatesRequest: codec<GetIdentityUpdatesRequest>(identityApi, "GetIdentityUpdatesRequest"),
  getIdentityUpdatesResponse: codec<Message>(identityApi, "GetIdentityUpdatesResponse"),
  publishIdentityUpdateRequest: codec<PublishIdentityUpdateRequest>(identityApi, "PublishIdentityUpdateRequest"),
  publishIdentityUpdateResponse: codec<Message>(identityApi, "PublishIdentityUpdateResponse"),
  verifyScwRequest: codec<Message>(identityApi, "VerifySmartContractWalletSignaturesRequest")
} as const

export type SortDirection = mlsApi.SortDirection
export const SORT_ASCENDING = 1 as SortDirection

export const encode = <T>(c: Codec<T>, message: unknown): Uint8Array => c.encode(c.fromPartial(message)).finish()

// ---- gRPC service definitions ----

/**
 * Most fields a request's top level may hold (every repeated field of every request is at its
 * top level, but the identity update's actions), and most actions in an identity update. Far
 * above any request the handlers take (1,000 filters at most), far below what a decoder turns
 * into a heap blow-up: 8 MiB of empty repeated fields (gzip makes them 8 KiB on the wire) decode
 * into about 800 MiB of objects, before any handler could count them.
 */
export const MAX_REQUEST_FIELDS = 4096
export const MAX_IDENTITY_ACTIONS = 256

/** A request refused before it was decoded; the handler answers RESOURCE_EXHAUSTED with the reason. */
export class RefusedRequest {
  constructor(readonly reason: string) {}
}

class TooManyFields extends Error {}

/**
 * Counts the fields at the top level of protobuf `bytes`, past `max` throwing `TooManyFields`. Returns the
 * payload of the last length-delimited field numbered `wanted`, if asked. Malformed bytes stop the
 * scan quietly: the decoder then refuses them as it always did.
 */
export const scanFields = (bytes: Uint8Array, max: number, what: string, wanted?: number): Uint8Array | undefined => {
  let offset = 0
  let count = 0
  let found: Uint8Array | undefined
  const varint = (): number | undefined => {
    let value = 0
    for (let shift = 0; shift < 64; shift += 7) {
      if (offset >= bytes.length) return undefined
      const byte = bytes[offset++]!
      // Only lengths and tags are used: past 2^53 the bytes are malformed for this purpose.
      value += (byte & 0x7f) * 2 ** shift
      if ((byte & 0x80) === 0) return value
    }
    return undefined
  }
  while (offset < bytes.length) {
    const tag = varint()
    if (tag === undefined) return found
    if (++count > max) throw new TooManyFields(`${what} holds more than ${max} fields`)
    const field = Math.floor(tag / 8)
    switch (tag & 7) {
      case 0:
        if (varint() === undefined) return found
        break
      case 1:
        offset += 8
        break
      case 2: {
        const length = varint()
        if (length === undefined || offset + length > bytes.length) return found
        if (field === wanted) found = bytes.subarray(offset, offset + length)
        offset += length
        break
      }
      case 5:
        offset += 4
        break
      default:
        return found
    }
  }
  return found
}

/** Decodes a request once its field counts are known to be sane; else a `RefusedRequest`. */
const boundedDecode = (name: string, codec: Codec<unknown>) => (bytes: Buffer): unknown => {
  try {
    const update = scanFields(bytes, MAX_REQUEST_FIELDS, name, name === "PublishIdentityUpdate" ? 1 : undefined)
    if (update !== undefined) scanFields(update, MAX_IDENTITY_ACTIONS, `${name}'s identity update`)
  } catch (error) {
    if (error instanceof TooManyFields) return new RefusedRequest(error.message)
    throw error
  }
  return codec.decode(bytes)
}

interface MethodSpec {
  readonly name: string
  readonly request: Codec<unknown>
  readonly response: Codec<unknown>
  readonly stream?: boolean
}

const toBuffer = (bytes: Uint8Array) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)

/**
 * A grpc-js service definition. Handlers return plain objects; the response serializer runs
 * them through `fromPartial` first, so int64 fields may be given as decimal strings.
 */
const service = (fullName: string, methods: ReadonlyArray<MethodSpec>): ServiceDefinition => {
  const definition: Record<string, ServiceDefinition[string]> = {}
  for (const m of methods) {
    definition[m.name] = {
      path: `/${fullName}/${m.name}`,
      requestStream: false,
      responseStream: m.stream === true,
      originalName: m.name,
      requestSerialize: (value: unknown) => toBuffer(m.request.encode(m.request.fromPartial(value)).finish()),
      requestDeserialize: boundedDecode(m.name, m.request),
      responseSerialize: (value: unknown) => toBuffer(m.response.encode(m.response.fromPartial(value)).finish()),
      responseDeserialize: (bytes: Buffer) => m.response.decode(bytes)
    }
  }
  return definition as ServiceDefinition
}

const c = codecs as unknown as Record<keyof typeof codecs, Codec<unknown>>

export const MLS_API = service("xmtp.mls.api.v1.MlsApi", [
  { name: "SendGroupMessages", request: c.sendGroupMessagesRequest, response: c.empty },
  { name: "SendWelcomeMessages", request: c.sendWelcomeMessagesRequest, response: c.empty },
  { name: "RegisterInstallation", request: c.registerInstallationRequest, response: c.empty },
  { name: "UploadKeyPackage", request: c.uploadKeyPackageRequest, response: c.empty },
  { name: "FetchKeyPackages", request: c.fetchKeyPackagesRequest, response: c.fetchKeyPackagesResponse },
  { name: "RevokeInstallation", request: c.revokeInstallationRequest, response: c.empty },
  { name: "GetIdentityUpdates", request: c.mlsGetIdentityUpdatesRequest, response: c.empty },
  { name: "QueryGroupMessages", request: c.queryGroupMessagesRequest, response: c.queryGroupMessagesResponse },
  { name: "QueryWelcomeMessages", request: c.queryWelcomeMessagesRequest, response: c.queryWelcomeMessagesResponse },
  { name: "SubscribeGroupMessages", request: c.subscribeGroupMessagesRequest, response: c.groupMessage, stream: true },
  { name: "SubscribeWelcomeMessages", request: c.subscribeWelcomeMessagesRequest, response: c.welcomeMessage, stream: true },
  { name: "BatchPublishCommitLog", request: c.batchPublishCommitLogRequest, response: c.empty },
  { name: "BatchQueryCommitLog", request: c.batchQueryCommitLogRequest, response: c.batchQueryCommitLogResponse },
  { name: "GetNewestGroupMessage", request: c.getNewestGroupMessageRequest, response: c.getNewestGroupMessageResponse }
])

export const IDENTITY_API = service("xmtp.identity.api.v1.IdentityApi", [
  { name: "PublishIdentityUpdate", request: c.publishIdentityUpdateRequest, response: c.publishIdentityUpdateResponse },
  { name: "GetIdentityUpdates", request: c.getIdentityUpdatesRequest, response: c.getIdentityUpdatesResponse },
  { name: "GetInboxIds", request: c.getInboxIdsRequest, response: c.getInboxIdsResponse },
  { name: "VerifySmartContractWalletSignatures", request: c.verifyScwRequest, response: c.empty }
])
