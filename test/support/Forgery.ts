/**
 * A malicious member's forgery for tests: Mallory holds the secret tree everyone holds, so she can
 * encrypt a text under the key of another member's next message; only the signature, made with
 * her own key, gives her away. Three members in a group of Alice's, read by all, to forge into.
 */
import { Effect, Option } from "effect"
import {
  type ClientState,
  createApplicationMessage,
  encodeMlsMessage,
  getCiphersuiteFromName,
  getCiphersuiteImpl
} from "ts-mls"
import { defaultClientConfig } from "ts-mls/clientConfig.js"
import { toHex, utf8 } from "../../src/domain/Bytes.ts"
import type { GroupId } from "../../src/domain/Ids.ts"
import { GroupMessageInput } from "../../src/domain/Wire.ts"
import { decodeStoredState } from "../../src/layers/TsMlsStoredState.ts"
import { type TestClient, TestNetwork } from "../../src/testing.ts"

export type Network = Effect.Effect.Success<typeof TestNetwork.make>

const suite = getCiphersuiteImpl(getCiphersuiteFromName("MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"))

/** A member's MLS state for a group, straight from its database (what a malicious client holds). */
export const stateOf = (net: Network, client: TestClient, groupId: GroupId) =>
  Effect.gen(function*() {
    const row = yield* (yield* net.storage(client)).groups.get(groupId)
    const decoded = decodeStoredState(Option.getOrThrow(row).mlsState, 0)![0]
    return { ...decoded, clientConfig: defaultClientConfig } as ClientState
  })

/** `forger`'s text encrypted as the next message of the member at `victimLeaf`, signed with the forger's key. */
export const forgedAs = (net: Network, forger: TestClient, victimLeaf: number, groupId: GroupId, text: string) =>
  Effect.gen(function*() {
    const client = yield* stateOf(net, forger, groupId)
    const pretending = { ...client, privatePath: { ...client.privatePath, leafIndex: victimLeaf } }
    const content = JSON.stringify({ _tag: "Text", nonce: toHex(crypto.getRandomValues(new Uint8Array(16))), text })
    const { privateMessage } = yield* Effect.promise(async () =>
      createApplicationMessage(pretending, utf8(content), await suite)
    )
    return encodeMlsMessage({ version: "mls10", wireformat: "mls_private_message", privateMessage })
  })

/** Alice's group with Bob and Mallory, read by both, pages of 100: Alice's leaf is the one to forge. */
export const groupWithMallory = Effect.gen(function*() {
  const net = yield* TestNetwork.makeWith({ clientDefaults: { pageSize: 100 } })
  const [alice, bob, mallory] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("mallory")])
  const group = yield* alice.createGroup([bob.inboxId, mallory.inboxId])
  yield* Effect.all([bob.syncAll, mallory.syncAll])
  const groupId = (yield* group.debugInfo).groupIds[0]!
  const aliceLeaf = (yield* stateOf(net, alice, groupId)).privatePath.leafIndex
  return { net, alice, bob, mallory, group, groupId, aliceLeaf }
})

/**
 * Alice asks "lunch at noon?"; Mallory, having read it, posts "lunch is cancelled" under the key of
 * Alice's next message, in her name; Alice then writes twice more. One page for whoever was away.
 */
export const postForgedPage = (
  { aliceLeaf, group, groupId, mallory, net }: Effect.Effect.Success<typeof groupWithMallory>
) =>
  Effect.gen(function*() {
    yield* group.send("lunch at noon?")
    yield* mallory.syncAll
    const forged = yield* forgedAs(net, mallory, aliceLeaf, groupId, "lunch is cancelled")
    yield* (yield* net.intruder).sendGroupMessages([GroupMessageInput.make({ groupId, payload: forged })])
    for (const text of ["I booked a table", "see you there"]) yield* group.sendOptimistic(text)
    yield* group.publishPending
  })
