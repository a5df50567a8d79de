/**
 * A catch-up page is read while its signatures are still being checked beside it (on the thread
 * pool); the page's transaction waits for those checks last, just before it ends. A forgery in
 * the middle of a page must still read exactly as it reads one message at a time: refused alone,
 * the messages around it kept, nothing of the provisional reading stored.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect, Option } from "effect"
import {
  type ClientState,
  createApplicationMessage,
  encodeMlsMessage,
  getCiphersuiteFromName,
  getCiphersuiteImpl
} from "ts-mls"
import { defaultClientConfig } from "ts-mls/clientConfig.js"
import { toHex, utf8 } from "../src/domain/Bytes.ts"
import type { GroupId } from "../src/domain/Ids.ts"
import { GroupMessageInput } from "../src/domain/Wire.ts"
import { decodeStoredState } from "../src/layers/TsMlsStoredState.ts"
import type { Conversation } from "../src/services/Client.ts"
import { type TestClient, TestNetwork } from "../src/testing.ts"

type Network = Effect.Effect.Success<typeof TestNetwork.make>

const suite = getCiphersuiteImpl(getCiphersuiteFromName("MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"))

const texts = (conversation: Conversation) =>
  conversation.messages().pipe(Effect.map((messages) => messages.filter((m) => m.kind === "text").map((m) => m.text)))

/** A member's MLS state for a group, straight from its database (what a malicious client holds). */
const stateOf = (net: Network, client: TestClient, groupId: GroupId) =>
  Effect.gen(function*() {
    const row = yield* (yield* net.storage(client)).groups.get(groupId)
    const decoded = decodeStoredState(Option.getOrThrow(row).mlsState, 0)![0]
    return { ...decoded, clientConfig: defaultClientConfig } as ClientState
  })

/**
 * Mallory, a member, holds the secret tree everyone holds, so she can encrypt a text under the
 * key of Alice's next message; only the signature, made with her own key, gives her away.
 */
const forgedAs = (net: Network, forger: TestClient, victimLeaf: number, groupId: GroupId, text: string) =>
  Effect.gen(function*() {
    const client = yield* stateOf(net, forger, groupId)
    const pretending = { ...client, privatePath: { ...client.privatePath, leafIndex: victimLeaf } }
    const content = JSON.stringify({ _tag: "Text", nonce: toHex(crypto.getRandomValues(new Uint8Array(16))), text })
    const { privateMessage } = yield* Effect.promise(async () =>
      createApplicationMessage(pretending, utf8(content), await suite)
    )
    return encodeMlsMessage({ version: "mls10", wireformat: "mls_private_message", privateMessage })
  })

describe("Signatures checked while the page is written", () => {
  it.scoped("a member's forgery amid a catch-up page is refused alone; the texts around it land and the group reads on", () =>
    Effect.gen(function*() {
      const net = yield* TestNetwork.makeWith({ clientDefaults: { pageSize: 100 } })
      const [alice, bob, mallory] = yield* Effect.all([net.client("alice"), net.client("bob"), net.client("mallory")])
      const group = yield* alice.createGroup([bob.inboxId, mallory.inboxId])
      yield* Effect.all([bob.syncAll, mallory.syncAll])
      const groupId = (yield* group.debugInfo).groupIds[0]!
      const aliceLeaf = (yield* stateOf(net, alice, groupId)).privatePath.leafIndex

      // Bob is away. Mallory reads Alice's first text, so she knows the key of Alice's next one,
      // and posts her own text under it, in Alice's name, before Alice writes again.
      yield* group.send("lunch at noon?")
      yield* mallory.syncAll
      const forged = yield* forgedAs(net, mallory, aliceLeaf, groupId, "lunch is cancelled")
      yield* (yield* net.intruder).sendGroupMessages([GroupMessageInput.make({ groupId, payload: forged })])
      for (const text of ["I booked a table", "see you there"]) yield* group.sendOptimistic(text)
      yield* group.publishPending

      // One page, one run of four application messages: the forgery is read before its check is
      // done, and uses the key Alice's next text needs; the page must not keep that reading.
      const summary = yield* bob.syncAll
      expect(summary.messages).toBe(3)
      expect(summary.skippedBy).toEqual({ unprocessable: 1 })
      const atBob = yield* bob.conversation(group.id)
      expect(yield* texts(atBob)).toEqual(["lunch at noon?", "I booked a table", "see you there"])
      const senders = (yield* atBob.messages()).filter((m) => m.kind === "text").map((m) => m.senderInboxId)
      expect(senders).toEqual([alice.inboxId, alice.inboxId, alice.inboxId])

      // The state the page stored is the honest one: Bob reads what comes next, and is read.
      yield* group.send("still there?")
      yield* bob.syncAll
      yield* atBob.send("yes")
      yield* alice.syncAll
      expect((yield* texts(group)).slice(-2)).toEqual(["still there?", "yes"])
      expect(yield* texts(atBob)).not.toContain("lunch is cancelled")
    }))
})
