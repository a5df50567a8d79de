// Forged and malformed requests straight to the XMTP face over gRPC (grpc-js with the server's
// own service definitions from dist/): each is refused with a status and a reason, and the
// SDK clients around them go on as if nothing happened.
import * as Grpc from "@grpc/grpc-js"
import { ed25519ph } from "@noble/curves/ed25519"
import { secp256k1 } from "@noble/curves/secp256k1"
import { keccak_256 } from "@noble/hashes/sha3"
import * as assert from "node:assert/strict"
import { inboxIdOf, signatureText } from "../../dist/xmtp/Associations.js"
import { IDENTITY_API, MLS_API } from "../../dist/xmtp/Proto.js"
import { eventually, newClient, startServer, tempDir, texts, XMTP_PORT } from "./lib.mjs"

const utf8 = (text) => new TextEncoder().encode(text)

const clients = () => {
  const address = `127.0.0.1:${XMTP_PORT}`
  const credentials = Grpc.credentials.createInsecure()
  const Mls = Grpc.makeClientConstructor(MLS_API, "MlsApi")
  const Identity = Grpc.makeClientConstructor(IDENTITY_API, "IdentityApi")
  return { mls: new Mls(address, credentials), identity: new Identity(address, credentials) }
}

/** The call's answer, or its gRPC error. */
const call = (client, method, request) =>
  new Promise((resolve) => client[method](request, (error, response) => resolve(error ? { error } : { response })))

const refused = async (client, method, request, reason) => {
  const { error } = await call(client, method, request)
  assert.ok(error, `${method} was accepted`)
  assert.equal(error.code, Grpc.status.INVALID_ARGUMENT, `${method}: ${error.details}`)
  assert.match(error.details, reason)
}

const erc191 = (secretKey, text) => {
  const body = utf8(text)
  const digest = keccak_256(new Uint8Array([...utf8(`\x19Ethereum Signed Message:\n${body.length}`), ...body]))
  const signature = secp256k1.sign(digest, secretKey)
  return new Uint8Array([...signature.toCompactRawBytes(), signature.recovery + 27])
}

/** A wallet of mallory's: the key is kept to sign forged updates. */
const mallory = () => {
  const secretKey = secp256k1.utils.randomPrivateKey()
  const publicKey = secp256k1.getPublicKey(secretKey, false)
  const address = `0x${Buffer.from(keccak_256(publicKey.subarray(1)).subarray(12)).toString("hex")}`
  const installationSecret = ed25519ph.utils.randomPrivateKey()
  return { secretKey, address, installationSecret, installationKey: ed25519ph.getPublicKey(installationSecret) }
}

const signed = (update, sign) => {
  const text = signatureText(update)
  if (text._tag !== "Right") throw new Error(`no signature text: ${text.left.reason}`)
  return sign(text.right)
}

export const tampering = (db) => {
  const dir = tempDir("converge-xmtp-tamper-")
  const s = {}
  const now = () => String(BigInt(Date.now()) * 1_000_000n)
  return [
    ["a server and alice, registered by the SDK", async () => {
      s.server = await startServer({ db })
      s.alice = await newClient("alice", dir)
      s.api = clients()
      s.m = mallory()
      const { response } = await call(s.api.identity, "GetIdentityUpdates", { requests: [{ inboxId: s.alice.inboxId, sequenceId: 0 }] })
      s.aliceLog = response.responses[0].updates
      assert.equal(s.aliceLog.length, 1)
    }],
    ["mallory's CreateInbox for alice's address, signed by mallory's wallet, is refused", async () => {
      const base = { inboxId: inboxIdOf(s.alice.address.toLowerCase(), 7n), clientTimestampNs: now() }
      const action = (sig) => ({ createInbox: { initialIdentifier: s.alice.address, nonce: 7, initialIdentifierKind: 1, initialIdentifierSignature: sig } })
      const update = { ...base, actions: [action(undefined)] }
      const signature = signed(update, (text) => ({ erc191: { bytes: erc191(s.m.secretKey, text) } }))
      await refused(s.api.identity, "PublishIdentityUpdate", { identityUpdate: { ...base, actions: [action(signature)] } },
        /not signed by the initial identifier/)
    }],
    ["mallory adding her installation to alice's inbox with her own wallet's signature is refused", async () => {
      const base = { inboxId: s.alice.inboxId, clientTimestampNs: now() }
      const add = (existing, added) => ({
        add: { newMemberIdentifier: { installationPublicKey: s.m.installationKey }, existingMemberSignature: existing, newMemberSignature: added }
      })
      const update = { ...base, actions: [add(undefined, undefined)] }
      const text = signatureText(update).right
      const existing = { erc191: { bytes: erc191(s.m.secretKey, text) } }
      const added = {
        installationKey: {
          bytes: ed25519ph.sign(utf8(text), s.m.installationSecret, { context: utf8("IDENTITY UPDATE SIGNATURE") }),
          publicKey: s.m.installationKey
        }
      }
      await refused(s.api.identity, "PublishIdentityUpdate", { identityUpdate: { ...base, actions: [add(existing, added)] } },
        /not signed by a member of the inbox/)
    }],
    ["alice's own first update, replayed, is refused", async () => {
      await refused(s.api.identity, "PublishIdentityUpdate", { identityUpdate: s.aliceLog[0].update }, /already created/)
    }],
    ["a smart-contract wallet signature is refused by name (no chain here)", async () => {
      const base = { inboxId: inboxIdOf(s.m.address, 0n), clientTimestampNs: now() }
      const update = {
        ...base,
        actions: [{ createInbox: { initialIdentifier: s.m.address, nonce: 0, initialIdentifierKind: 1, initialIdentifierSignature: { erc6492: { accountId: `eip155:1:${s.m.address}`, blockNumber: 1, signature: new Uint8Array(65) } } } }]
      }
      await refused(s.api.identity, "PublishIdentityUpdate", { identityUpdate: update }, /smart-contract wallet/)
    }],
    ["alice's key package with one byte changed is refused; the stored one is unchanged", async () => {
      const installationKey = Buffer.from(s.alice.installationId, "hex")
      const before = (await call(s.api.mls, "FetchKeyPackages", { installationKeys: [installationKey] })).response
      const original = before.keyPackages[0].keyPackageTlsSerialized
      assert.ok(original.length > 0)
      const forged = Uint8Array.from(original)
      forged[forged.length - 1] ^= 0x01
      await refused(s.api.mls, "UploadKeyPackage", { keyPackage: { keyPackageTlsSerialized: forged }, isInboxIdCredential: true },
        /invalid identity: key package: signature does not verify/)
      const after = (await call(s.api.mls, "FetchKeyPackages", { installationKeys: [installationKey] })).response
      assert.deepEqual(Buffer.from(after.keyPackages[0].keyPackageTlsSerialized), Buffer.from(original))
    }],
    ["a group message that is not MLS, and a commit-log batch over node-go's 10, are refused", async () => {
      await refused(s.api.mls, "SendGroupMessages", { messages: [{ v1: { data: utf8("not an MLS message"), senderHmac: new Uint8Array(), shouldPush: true } }] },
        /invalid group message/)
      const entry = { groupId: new Uint8Array(16), serializedCommitLogEntry: new Uint8Array(8), signature: { bytes: new Uint8Array(64), publicKey: new Uint8Array(32) } }
      await refused(s.api.mls, "BatchPublishCommitLog", { requests: Array.from({ length: 11 }, () => entry) }, /exceed the limit of 10/)
    }],
    ["nothing changed: alice's log has one entry and her address still names her inbox", async () => {
      const log = (await call(s.api.identity, "GetIdentityUpdates", { requests: [{ inboxId: s.alice.inboxId, sequenceId: 0 }] })).response
      assert.equal(log.responses[0].updates.length, 1)
      const ids = (await call(s.api.identity, "GetInboxIds", { requests: [{ identifier: s.alice.address, identifierKind: 1 }] })).response
      assert.equal(ids.responses[0].inboxId, s.alice.inboxId)
      const none = (await call(s.api.identity, "GetInboxIds", { requests: [{ identifier: s.m.address, identifierKind: 1 }] })).response
      assert.equal(none.responses[0].inboxId, undefined)
    }],
    ["the SDK goes on: bob finds alice, makes a group with her, and she reads him", async () => {
      const bob = await newClient("bob", dir)
      const group = await bob.conversations.createGroup([s.alice.inboxId])
      await group.sendText("still fine")
      await eventually("alice reads bob", async () => {
        await s.alice.conversations.sync()
        const mine = await s.alice.conversations.getConversationById(group.id)
        if (!mine) return false
        await mine.sync()
        return (await texts(mine)).includes("still fine")
      })
      s.api.mls.close()
      s.api.identity.close()
      await s.server.stop()
    }]
  ]
}
