/**
 * Converge: an Effect service layer for MLS group messaging.
 * The public contract is shared/API.md.
 */
export * from "./domain/Errors.ts"
export * from "./domain/Ids.ts"
export { GroupMetadata, MAX_GROUP_DESCRIPTION, MAX_GROUP_NAME, Member, Message, SyncSummary } from "./domain/Model.ts"
/** The JSON in `Message.text` of a `membershipChange` message. */
export { MembershipChange, MembershipChangeJson } from "./domain/Content.ts"
export type { MembershipState } from "./domain/Stored.ts"
export {
  Client,
  type ClientOptions,
  type Conversation,
  type ConversationDebugInfo
} from "./services/Client.ts"
export { DeliveryService } from "./services/DeliveryService.ts"
export { DeliveryStore } from "./services/DeliveryStore.ts"
export { DeliveryServer } from "./layers/DeliveryServer.ts"
export { Identity } from "./services/Identity.ts"
export { MlsCrypto } from "./services/MlsCrypto.ts"
export { Storage } from "./services/Storage.ts"
export * as SqliteStorage from "./layers/SqliteStorage.ts"
export * as Wire from "./domain/Wire.ts"
