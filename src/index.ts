/**
 * Converge: an Effect service layer for MLS group messaging.
 * The public contract is shared/API.md.
 */
export * from "./domain/Errors.ts"
export * from "./domain/Ids.ts"
export {
  GroupMetadata,
  MAX_GROUP_APP_DATA,
  MAX_GROUP_DESCRIPTION,
  MAX_GROUP_IMAGE_URL,
  MAX_GROUP_NAME,
  Member,
  Message,
  PROTOCOL_VERSION,
  SyncSummary
} from "./domain/Model.ts"
/** The JSON in `Message.text` of a `membershipChange` and a `metadataChange` message. */
export { MembershipChange, MembershipChangeJson, MetadataChange, MetadataChangeJson } from "./domain/Content.ts"
/** Typed content: the codec pattern and the two example codecs (the engine never looks inside content). */
export { type ContentCodec, type EncodedContent, jsonCodec, type ReceivedContent } from "./domain/codecs/ContentCodec.ts"
export { Reply } from "./domain/codecs/Reply.ts"
export { Reaction } from "./domain/codecs/Reaction.ts"
export { MAX_CONTENT_BYTES, MAX_CONTENT_TYPE_LENGTH } from "./domain/Content.ts"
export { PermissionPolicies, Policy, PolicyPreset, presets as PolicyPresets, Role } from "./domain/Governance.ts"
export type { MembershipState } from "./domain/Stored.ts"
export { ConsentState, ConsentSubject } from "./domain/Consent.ts"
export type { HistorySyncStatus } from "./services/HistorySync.ts"
export {
  type ClientOptions,
  type Conversation,
  type ConversationDebugInfo,
  type CreateGroupOptions,
  type GovernanceActionError
} from "./services/Client.ts"
export { DeliveryServer } from "./layers/DeliveryServer.ts"
export { Identity } from "./services/Identity.ts"
export type { FaultControls, FaultStats, FaultyDelivery } from "./layers/FaultyDeliveryService.ts"
export { Storage } from "./services/Storage.ts"
export * as SqliteStorage from "./layers/SqliteStorage.ts"
/** The client's SQLite: `SqlClient` plus the lane its storage runs hot statements on (`SqliteConnection.layer({ filename })`). */
export * as SqliteConnection from "./layers/SqliteConnection.ts"
export * as Wire from "./domain/Wire.ts"
/** The engine's Effect metrics: messages, commits, epoch conflicts, retries, skips by reason, sync lag, publish time. */
export * as EngineMetrics from "./services/EngineMetrics.ts"

// ---- ports with their adapters' layers ----
// The ports (src/services) import no adapter and no driver; the names of the API contract
// (`DeliveryService.layerMemory`, `MlsCrypto.layer`, ...) hang the adapters' layers on them here.
// Postgres lives apart, in `converge/postgres`, so that only its users load the driver.

import { Layer } from "effect"
import * as MemoryDeliveryStore from "./layers/MemoryDeliveryStore.ts"
import * as RpcDeliveryService from "./layers/RpcDeliveryService.ts"
import * as SqlDeliveryStore from "./layers/SqlDeliveryStore.ts"
import * as StoreDeliveryService from "./layers/StoreDeliveryService.ts"
import * as TsMlsCrypto from "./layers/TsMlsCrypto.ts"
import * as SqliteStorageLayer from "./layers/SqliteStorage.ts"
import { Client as ClientProgram, type ClientOptions as Options } from "./services/Client.ts"
import { DeliveryService as DeliveryServicePort } from "./services/DeliveryService.ts"
import { DeliveryStore as DeliveryStorePort } from "./services/DeliveryStore.ts"
import { MlsCrypto as MlsCryptoPort } from "./services/MlsCrypto.ts"

export class DeliveryService extends DeliveryServicePort {
  /** An in-process delivery service (the store-backed service over a fresh memory store). */
  static readonly layerMemory = StoreDeliveryService.layerMemory()
  static readonly layerMemoryWith = StoreDeliveryService.layerMemory
  /** The service `converge serve` runs, over any provided `DeliveryStore` (needs `MlsCrypto`). */
  static readonly layerStore = StoreDeliveryService.layer
  /** The client of a `DeliveryServer` over the network. */
  static readonly layerRpc = RpcDeliveryService.layer
}

export class DeliveryStore extends DeliveryStorePort {
  static readonly layerMemory = MemoryDeliveryStore.layer
  static readonly layerSqlite = SqlDeliveryStore.layerSqlite
}

export class MlsCrypto extends MlsCryptoPort {
  /** ts-mls 1.6.4. */
  static readonly layer = TsMlsCrypto.layer
}

export class Client extends ClientProgram {
  /**
   * A client from `DeliveryService | MlsCrypto | SqlClient`: its store is SQLite
   * (`SqliteStorage.layer`, migrations on open). `layerWithStorage` takes any `Storage`, for
   * example `SqliteStorage.layerWithKey(key)` to seal secrets at rest.
   */
  static readonly layer = (options?: Options) =>
    ClientProgram.layerWithStorage(options).pipe(Layer.provide(SqliteStorageLayer.layer))
}
