/**
 * The opaque `MlsGroupState` over a ts-mls `ClientState`: wrapping it, what the engine reads from
 * it (its view, its inviter, its leaves), and its stored bytes (the format is TsMlsStoredState's).
 */
import { Effect } from "effect"
import type { ClientConfig, ClientState, RatchetTree } from "ts-mls"
import { toHex } from "../domain/Bytes.ts"
import type { GroupId } from "../domain/Ids.ts"
import type { GroupView, MlsCryptoShape, MlsGroupState } from "../services/MlsCrypto.ts"
import { decodeAll } from "./TsMlsErrors.ts"
import { leafMemberAt, membersOf } from "./TsMlsMembers.ts"
import { metadataIn } from "./TsMlsExtensions.ts"
import * as StoredState from "./TsMlsStoredState.ts"

type Service = MlsCryptoShape

interface Held {
  readonly client: ClientState
  /** For a state just joined from a welcome: the leaf that signed its GroupInfo. Not persisted. */
  readonly inviter?: number
}

export const wrap = (client: ClientState, inviter?: number): MlsGroupState =>
  (inviter === undefined ? { client } : { client, inviter } satisfies Held) as unknown as MlsGroupState
export const unwrapRaw = (state: MlsGroupState): ClientState => (state as unknown as Held).client

/** Views by the parts they are read from (states are immutable values; see `view`). */
const viewsByContext = new WeakMap<ClientState["groupContext"], {
  readonly keySchedule: ClientState["keySchedule"]
  readonly ratchetTree: RatchetTree
  readonly privatePath: ClientState["privatePath"]
  readonly groupActiveState: ClientState["groupActiveState"]
  readonly view: GroupView
}>()

export const view: Service["view"] = (state): GroupView => {
  const client = unwrapRaw(state)
  // An application message changes only the secret tree: its state shares every part a view reads.
  const known = viewsByContext.get(client.groupContext)
  if (
    known !== undefined && known.keySchedule === client.keySchedule && known.ratchetTree === client.ratchetTree &&
    known.privatePath === client.privatePath && known.groupActiveState === client.groupActiveState
  ) return known.view
  const made: GroupView = {
    groupId: toHex(client.groupContext.groupId) as GroupId,
    epoch: client.groupContext.epoch,
    epochAuthenticator: toHex(client.keySchedule.epochAuthenticator),
    members: membersOf(client.ratchetTree),
    active: client.groupActiveState.kind === "active",
    ownLeafIndex: client.privatePath.leafIndex,
    metadata: metadataIn(client.groupContext.extensions)
  }
  const { groupActiveState, keySchedule, privatePath, ratchetTree } = client
  viewsByContext.set(client.groupContext, { keySchedule, ratchetTree, privatePath, groupActiveState, view: made })
  return made
}

export const inviterOf: Service["inviterOf"] = (state) => {
  const inviter = (state as unknown as Held).inviter
  return inviter === undefined ? undefined : leafMemberAt(unwrapRaw(state).ratchetTree, inviter)
}

export const leafDetails: Service["leafDetails"] = (state) => {
  const tree = unwrapRaw(state).ratchetTree
  return membersOf(tree).flatMap((m) => {
    const node = tree[m.leafIndex * 2]
    if (node?.nodeType !== "leaf") return []
    return [{ ...m, encryptionKey: node.leaf.hpkePublicKey, groupSigned: node.leaf.leafNodeSource !== "key_package" }]
  })
}

/** A service's stored states; `clientConfig` is re-attached to what is read, as the encoding leaves it out. */
export const makeStoredStates = (clientConfig: ClientConfig) => {
  // The stored format (TsMlsStoredState): ts-mls's less its repeats, reusing the bytes of unchanged parts.
  const serialize: Service["serialize"] = (state) => StoredState.encodeStoredState(unwrapRaw(state))

  const deserialize: Service["deserialize"] = Effect.fn("MlsCrypto.deserialize")(function*(bytes) {
    const decoded = yield* decodeAll("group state", StoredState.decodeStoredState, bytes)
    // The encoding leaves out clientConfig (it holds functions), so it is re-attached here.
    return wrap({ ...decoded, clientConfig })
  })

  const serializeStaged: Service["serializeStaged"] = (staged, base) =>
    StoredState.encodeStagedState(unwrapRaw(staged), unwrapRaw(base))

  const deserializeStaged: Service["deserializeStaged"] = Effect.fn("MlsCrypto.deserializeStaged")(function*(bytes, base) {
    const decoded = yield* decodeAll("staged state", StoredState.decodeStagedState(unwrapRaw(base)), bytes)
    return wrap({ ...decoded, clientConfig })
  })

  const rebaseStaged: Service["rebaseStaged"] = (staged, was, now) => {
    const rebased = StoredState.rebaseStaged(unwrapRaw(staged), unwrapRaw(was), unwrapRaw(now))
    return rebased === unwrapRaw(staged) ? staged : wrap({ ...rebased, clientConfig })
  }

  return { serialize, deserialize, serializeStaged, deserializeStaged, rebaseStaged }
}
