/**
 * Fixtures for tests of the delivery service as it is served: every write is signed by a
 * current installation (`DeliveryAuth`), and a group topic takes only MLS messages of its own
 * group. So here:
 *
 * - an installation is a real Ed25519 key pair, registered through its inbox's identity log
 *   with proof of possession (`registerInstallation`), and tests write through
 *   `authenticatedAs` views of the service;
 * - a group message is a syntactically valid MLS PrivateMessage (`mlsMessage`) whose
 *   ciphertext is the test's text in clear (`textOf` reads it back), so "send text, read
 *   text" tests stay synchronous and need no group state. The server only reads the header.
 */
import { ed25519 } from "@noble/curves/ed25519.js"
import { Effect } from "effect"
import { concat, fromHex, toHex, utf8 } from "../../src/domain/Bytes.ts"
import { hashOfUpdate, inboxIdOf, installationIdOf, signUpdate, type UnsignedIdentityAction } from "../../src/domain/IdentityLog.ts"
import type { GroupId, InboxId, InstallationId } from "../../src/domain/Ids.ts"
import { ed25519Seed } from "../../src/domain/RequestAuth.ts"
import { type GroupMessageEnvelope, GroupMessageInput, type IdentityUpdate } from "../../src/domain/Wire.ts"
import { authenticatedAs, installationSigner, type RequestSigner } from "../../src/services/DeliveryAuth.ts"
import type { DeliveryService } from "../../src/services/DeliveryService.ts"

type Service = DeliveryService["Type"]

export const randomBytes = (n: number) => crypto.getRandomValues(new Uint8Array(n))
export const newGroupId = () => toHex(randomBytes(16)) as GroupId
export const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => BigInt(from + i))

// ---- MLS payloads (RFC 9420 §6.3.2, TLS presentation with §2.1.2 variable-length vectors) ----

/** The minimal QUIC-style varint MLS requires for vector lengths (up to 2^30 - 1). */
const varint = (n: number): Uint8Array => {
  if (n < 0x40) return Uint8Array.of(n)
  if (n < 0x4000) return Uint8Array.of(0x40 | (n >> 8), n & 0xff)
  if (n < 0x40000000) return Uint8Array.of(0x80 | (n >>> 24), (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
  throw new Error(`vector of ${n} bytes is too long for MLS`)
}
const vector = (bytes: Uint8Array) => concat(varint(bytes.length), bytes)
const u16 = (n: number) => Uint8Array.of(n >> 8, n & 0xff)
const u64 = (n: bigint) => {
  const out = new Uint8Array(8)
  new DataView(out.buffer).setBigUint64(0, n)
  return out
}

const MLS_10 = 1
const WIRE_FORMAT_PRIVATE_MESSAGE = 2
const contentTypes = { application: 1, proposal: 2, commit: 3 } as const

export interface MlsPayloadOptions {
  readonly contentType?: keyof typeof contentTypes
  readonly epoch?: bigint
}

/**
 * An MLS PrivateMessage of `groupId` whose ciphertext is `text` (UTF-8): well-formed to any
 * MLS parser, decryptable by nobody. Deterministic, so the same text on the same topic is the
 * same payload (the service stores it once).
 */
export const mlsPayload = (groupId: GroupId, text: string, options: MlsPayloadOptions = {}): Uint8Array =>
  concat(
    u16(MLS_10),
    u16(WIRE_FORMAT_PRIVATE_MESSAGE),
    vector(fromHex(groupId)),
    u64(options.epoch ?? 0n),
    Uint8Array.of(contentTypes[options.contentType ?? "application"]),
    vector(new Uint8Array(0)), // authenticated_data
    vector(new Uint8Array(16)), // encrypted_sender_data
    vector(utf8(text)) // ciphertext
  )

const WIRE_FORMAT_GROUP_INFO = 4
const CIPHER_SUITE_X25519_AES128GCM_SHA256_ED25519 = 1

/**
 * An MLS GroupInfo (§12.4.3) naming `groupId`, with empty hashes and signature: an MLS message
 * of the group that is not a group message (no application, proposal or commit).
 */
export const mlsGroupInfo = (groupId: GroupId): Uint8Array =>
  concat(
    u16(MLS_10),
    u16(WIRE_FORMAT_GROUP_INFO),
    // GroupContext
    u16(MLS_10),
    u16(CIPHER_SUITE_X25519_AES128GCM_SHA256_ED25519),
    vector(fromHex(groupId)),
    u64(1n),
    vector(new Uint8Array(0)), // tree_hash
    vector(new Uint8Array(0)), // confirmed_transcript_hash
    vector(new Uint8Array(0)), // group context extensions
    vector(new Uint8Array(0)), // extensions
    vector(new Uint8Array(0)), // confirmation_tag
    new Uint8Array(4), // signer (u32)
    vector(new Uint8Array(0)) // signature
  )

export const mlsMessage = (groupId: GroupId, text: string, options?: MlsPayloadOptions): GroupMessageInput =>
  GroupMessageInput.make({ groupId, payload: mlsPayload(groupId, text, options) })

/**
 * An `mlsPayload` of exactly `size` bytes whose text starts with `tag` (distinct tags give
 * distinct payloads): for tests of byte bounds, which must count the MLS framing too.
 */
export const mlsPayloadOfSize = (groupId: GroupId, size: number, tag: string | number): Uint8Array => {
  const prefix = `${tag}:`
  // The framing is fixed but for the ciphertext's length prefix (1, 2 or 4 bytes).
  const framing = mlsPayload(groupId, "").length - 1
  for (const lengthBytes of [1, 2, 4]) {
    const textLength = size - framing - lengthBytes
    if (textLength < prefix.length || varint(textLength).length !== lengthBytes) continue
    return mlsPayload(groupId, prefix + "x".repeat(textLength - prefix.length))
  }
  throw new Error(`no mlsPayload of exactly ${size} bytes with tag ${tag}`)
}

/** The text `mlsPayload` put in a payload. */
export const textOf = (payload: Uint8Array): string => {
  let offset = 4 // version, wire format
  const readVector = () => {
    const first = payload[offset]!
    const size = 1 << (first >> 6)
    let length = first & 0x3f
    for (let i = 1; i < size; i++) length = length * 256 + payload[offset + i]!
    const start = offset + size
    offset = start + length
    return payload.subarray(start, offset)
  }
  readVector() // group_id
  offset += 8 + 1 // epoch, content_type
  readVector() // authenticated_data
  readVector() // encrypted_sender_data
  const ciphertext = readVector()
  if (offset !== payload.length) throw new Error("not a payload built by mlsPayload")
  return new TextDecoder().decode(ciphertext)
}

// ---- installations and inboxes ----

export interface InstallationKeys {
  readonly id: InstallationId
  readonly signaturePublicKey: string
  /** The Ed25519 secret key (32-byte seed): proves possession and signs requests. */
  readonly secretKey: Uint8Array
  readonly signer: RequestSigner
}

/** An installation key pair; from an MLS signature key pair when given its private key (PKCS#8 or seed). */
export const newInstallationKeys = (privateKey: Uint8Array = ed25519.utils.randomSecretKey()): InstallationKeys => {
  const secretKey = ed25519Seed(privateKey)
  const publicKey = ed25519.getPublicKey(secretKey)
  const id = installationIdOf(publicKey)
  return { id, signaturePublicKey: toHex(publicKey), secretKey, signer: installationSigner(id, secretKey) }
}

/** An inbox whose log the test signs entry by entry, tracking the head as the server would. */
export const newInbox = () => {
  const rootSecretKey = ed25519.utils.randomSecretKey()
  const rootPublicKey = ed25519.getPublicKey(rootSecretKey)
  const inboxId: InboxId = inboxIdOf(rootPublicKey)
  let head: { sequence: number; headHash: string } | undefined
  let previousHead: typeof head
  const next = (
    action: UnsignedIdentityAction,
    signingKey: Uint8Array = rootSecretKey,
    installationSecretKey?: Uint8Array
  ): IdentityUpdate => {
    const update = signUpdate(signingKey, inboxId, head, action, installationSecretKey)
    previousHead = head
    head = { sequence: update.sequence, headHash: hashOfUpdate(update) }
    return update
  }
  const addition = (installation: Pick<InstallationKeys, "id" | "signaturePublicKey">) => ({
    _tag: "AddInstallation" as const,
    installationId: installation.id,
    signaturePublicKey: installation.signaturePublicKey
  })
  return {
    inboxId,
    create: () => next({ _tag: "CreateInbox", rootPublicKey: toHex(rootPublicKey) }),
    /** Adds the installation, proving possession with its own key (or, for a test, `provedWith`). */
    add: (
      installation: Pick<InstallationKeys, "id" | "signaturePublicKey" | "secretKey">,
      provedWith: Uint8Array = installation.secretKey
    ) => next(addition(installation), rootSecretKey, provedWith),
    revoke: (installation: Pick<InstallationKeys, "id">) =>
      next({ _tag: "RevokeInstallation", installationId: installation.id }),
    /** Forgets the last entry signed (one the service refused): the next one takes its place. */
    rewind: () => {
      head = previousHead
    },
    /** Signs the next entry with some other root key: a forgery. */
    forge: (action: UnsignedIdentityAction, installationSecretKey?: Uint8Array) =>
      next(action, ed25519.utils.randomSecretKey(), installationSecretKey)
  }
}
export type Inbox = ReturnType<typeof newInbox>

export interface Registered {
  readonly inbox: Inbox
  readonly installation: InstallationKeys
  /** The delivery service as this installation: every call signed by it. */
  readonly ds: Service
}

/**
 * A new inbox with one installation (new keys unless given), registered on `ds`. Keys and
 * inbox are made when the effect runs, so running it twice registers two installations.
 */
export const registerInstallation = (ds: Service, keys?: InstallationKeys) =>
  Effect.gen(function*() {
    const installation = keys ?? newInstallationKeys()
    const inbox = newInbox()
    yield* ds.publishIdentityUpdate(inbox.create())
    yield* ds.publishIdentityUpdate(inbox.add(installation))
    return { inbox, installation, ds: authenticatedAs(ds, installation.signer) } satisfies Registered
  })

/**
 * A fresh topic on `ds` with four messages of about 1 MiB: one page, answered with about 5.4 MB
 * of JSON. For readers that do not read.
 */
export const topicOfBigMessages = (ds: Service) =>
  Effect.gen(function*() {
    const writer = yield* registerInstallation(ds)
    const groupId = newGroupId()
    for (let i = 0; i < 4; i++) {
      yield* writer.ds.sendGroupMessages([GroupMessageInput.make({ groupId, payload: mlsPayloadOfSize(groupId, 1024 * 1024 - 64, i) })])
    }
    return groupId
  })

/** Reads a whole topic by paging through it. */
export const readAll = (ds: Service, groupId: GroupId) =>
  Effect.gen(function*() {
    const all: Array<GroupMessageEnvelope> = []
    let cursor = 0n
    for (;;) {
      const page = yield* ds.queryGroupMessages({ groupId, afterSequenceId: cursor })
      all.push(...page.items)
      if (page.next === undefined) return all
      cursor = page.next
    }
  })

/** The texts of a topic, in order. */
export const textsOf = (envelopes: ReadonlyArray<{ readonly payload: Uint8Array }>) =>
  envelopes.map((e) => textOf(e.payload))
