/**
 * What the XMTP V3 server reads out of MLS bytes, as node-go's validation service does: the
 * group id of a group message and whether it is a commit (or proposal), read from its header, and a key package's
 * installation key after verifying it (size and list bounds, canonical encoding, init key distinct
 * from the leaf's encryption key, signatures, lifetime, an `MlsCredential` naming an inbox).
 * Nothing else of the MLS content is checked: clients validate commits themselves.
 */
import { ed25519 } from "@noble/curves/ed25519.js"
import { Data, Effect } from "effect"
import type { KeyPackage } from "ts-mls"
import type { Signature } from "ts-mls/crypto/signature.js"
import { encodeKeyPackage, verifyKeyPackage } from "ts-mls/keyPackage.js"
import { decodeKeyPackage } from "../layers/TsMlsDecoders.ts"
import { verifyLeafNodeSignatureKeyPackage } from "ts-mls/leafNode.js"
import { codecs } from "./Proto.ts"

/** Bytes that are not what they claim to be; `reason` is sent to the caller. */
export class MalformedMls extends Data.TaggedError("MalformedMls")<{ readonly reason: string }> {}

/** XMTP's one ciphersuite: MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519. */
const XMTP_CIPHERSUITE = "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519"

const decodeWhole = <A>(
  what: string,
  decode: (bytes: Uint8Array, offset: number) => [A, number] | undefined,
  bytes: Uint8Array
): Effect.Effect<A, MalformedMls> =>
  Effect.suspend(() => {
    let decoded: [A, number] | undefined
    try {
      decoded = decode(bytes, 0)
    } catch (e) {
      return Effect.fail(new MalformedMls({ reason: `${what}: ${e instanceof Error ? e.message : String(e)}` }))
    }
    if (decoded === undefined || decoded[1] !== bytes.length) {
      return Effect.fail(new MalformedMls({ reason: `${what}: cannot decode` }))
    }
    return Effect.succeed(decoded[0])
  })

export interface GroupMessageFacts {
  readonly groupId: Uint8Array
  readonly isCommit: boolean
}

/** A bounded reader of TLS-encoded MLS fields: every read is O(1) and checked against the end. */
class Reader {
  private offset = 0
  constructor(private readonly bytes: Uint8Array) {}

  get done() {
    return this.offset === this.bytes.length
  }

  uint(width: 1 | 2 | 4): number {
    if (this.offset + width > this.bytes.length) throw new MalformedMls({ reason: "truncated" })
    let value = 0
    for (let i = 0; i < width; i++) value = value * 256 + this.bytes[this.offset++]!
    return value
  }

  skip(n: number) {
    if (this.offset + n > this.bytes.length) throw new MalformedMls({ reason: "truncated" })
    this.offset += n
  }

  /** An `opaque<V>`: RFC 9420's variable-length integer (prefix 11 is invalid), then that many bytes. */
  opaque(): Uint8Array {
    const first = this.uint(1)
    const prefix = first >> 6
    if (prefix === 3) throw new MalformedMls({ reason: "invalid variable-length integer" })
    let length = first & 0x3f
    for (let i = 0; i < (1 << prefix) - 1; i++) length = length * 256 + this.uint(1)
    const start = this.offset
    this.skip(length)
    return this.bytes.subarray(start, this.offset)
  }
}

const WIRE_FORMATS: Record<number, string> = {
  1: "mls_public_message",
  2: "mls_private_message",
  3: "mls_welcome",
  4: "mls_group_info",
  5: "mls_key_package"
}
const APPLICATION = 1
const COMMIT = 3
/** Sender types (RFC 9420 6): member and external carry a uint32 index, the new-member kinds nothing. */
const SENDER_MEMBER = 1
const SENDER_EXTERNAL = 2
const SENDER_NEW_MEMBER_COMMIT = 4

const contentType = (reader: Reader) => {
  const type = reader.uint(1)
  if (type < APPLICATION || type > COMMIT) throw new MalformedMls({ reason: `unknown content type ${type}` })
  return type
}

/** A PrivateMessage is its header and three opaque fields: all of it is read. */
const privateFacts = (reader: Reader): GroupMessageFacts => {
  const groupId = reader.opaque().slice()
  reader.skip(8) // epoch
  const type = contentType(reader)
  reader.opaque() // authenticated_data
  reader.opaque() // encrypted_sender_data
  reader.opaque() // ciphertext
  if (!reader.done) throw new MalformedMls({ reason: "bytes after the message" })
  return { groupId, isCommit: type !== APPLICATION }
}

/**
 * A PublicMessage is read up to its content type, and an application message to its end. The
 * content of a proposal or commit is not read: the server does not validate it (clients do), and
 * decoding a commit whole costs time in proportion to what a sender chooses to put in it.
 */
const publicFacts = (reader: Reader): GroupMessageFacts => {
  const groupId = reader.opaque().slice()
  reader.skip(8) // epoch
  const sender = reader.uint(1)
  if (sender === SENDER_MEMBER || sender === SENDER_EXTERNAL) reader.skip(4)
  else if (sender < SENDER_MEMBER || sender > SENDER_NEW_MEMBER_COMMIT) throw new MalformedMls({ reason: `unknown sender type ${sender}` })
  reader.opaque() // authenticated_data
  const type = contentType(reader)
  if (type === APPLICATION) {
    reader.opaque() // application_data
    reader.opaque() // signature
    if (sender === SENDER_MEMBER) reader.opaque() // membership_tag
    if (!reader.done) throw new MalformedMls({ reason: "bytes after the message" })
  }
  return { groupId, isCommit: type !== APPLICATION }
}

/**
 * The group id and commit-ness of an MLS group message (a PrivateMessage or PublicMessage), read
 * from its header by hand in constant time, whatever the message's size.
 */
export const inspectGroupMessage = (bytes: Uint8Array): Effect.Effect<GroupMessageFacts, MalformedMls> =>
  Effect.suspend(() => {
    try {
      const reader = new Reader(bytes)
      if (reader.uint(2) !== 1) throw new MalformedMls({ reason: "not MLS 1.0" })
      const wireFormat = reader.uint(2)
      const facts = wireFormat === 2 ? privateFacts(reader) : wireFormat === 1 ? publicFacts(reader) : undefined
      if (facts === undefined) {
        const name = WIRE_FORMATS[wireFormat] ?? `wire format ${wireFormat}`
        throw new MalformedMls({ reason: `a ${name} is not a group message` })
      }
      if (facts.groupId.length === 0) throw new MalformedMls({ reason: "empty group id" })
      return Effect.succeed(facts)
    } catch (e) {
      return Effect.fail(new MalformedMls({ reason: `group message: ${e instanceof MalformedMls ? e.reason : String(e)}` }))
    }
  })

/** ts-mls's signature port on @noble/curves Ed25519 (verification only: the server signs nothing). */
const ed25519Signature: Signature = {
  verify: async (publicKey, message, signature) => {
    try {
      return ed25519.verify(signature, message, publicKey, { zip215: false })
    } catch {
      return false
    }
  },
  sign: () => Promise.reject(new Error("the XMTP server does not sign")),
  keygen: () => Promise.reject(new Error("the XMTP server makes no keys"))
}

export interface KeyPackageFacts {
  /** The leaf's signature key: XMTP's installation key. */
  readonly installationKey: Uint8Array
  /** The inbox its `MlsCredential` names. */
  readonly inboxId: string
  readonly notAfterSeconds: bigint
}

const checkLifetime = (kp: KeyPackage, nowSeconds: bigint): Effect.Effect<void, MalformedMls> => {
  const { notBefore, notAfter } = kp.leafNode.lifetime
  // A little leeway for clocks, as openmls allows.
  return notBefore - 3600n <= nowSeconds && nowSeconds <= notAfter
    ? Effect.void
    : Effect.fail(new MalformedMls({ reason: `key package: outside its lifetime (${notBefore}..${notAfter})` }))
}

/**
 * libxmtp's key packages (@xmtp/node-sdk 5.5.0) are 1,659 bytes, 1,221 of them a post-quantum
 * key in an extension; anything far past that is refused before ts-mls spends time on it.
 */
export const MAX_KEY_PACKAGE_BYTES = 16 * 1024

/**
 * Entries in any one list of a key package (each capability list, each extension list): libxmtp's
 * longest has 8. ts-mls encodes a list through one nested closure per entry, so a long one
 * overflows the stack when the signature is checked.
 */
export const MAX_KEY_PACKAGE_LIST_ENTRIES = 256

const sameBytes = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((byte, i) => byte === b[i])

/** What can be refused from the decoded value alone, before anything is re-encoded. */
const checkShape = (kp: KeyPackage): Effect.Effect<void, MalformedMls> => {
  const refuse = (reason: string) => Effect.fail(new MalformedMls({ reason: `key package: ${reason}` }))
  const { capabilities, credential } = kp.leafNode
  if (kp.cipherSuite !== XMTP_CIPHERSUITE) return refuse(`ciphersuite ${kp.cipherSuite} is not XMTP's`)
  // Checked here, not after the signatures: an X.509 credential is one more list to re-encode.
  if (credential.credentialType !== "basic") return refuse("the credential is not a basic credential")
  const lists = [
    capabilities.versions,
    capabilities.ciphersuites,
    capabilities.extensions,
    capabilities.proposals,
    capabilities.credentials,
    kp.leafNode.extensions,
    kp.extensions
  ]
  if (lists.some((list) => list.length > MAX_KEY_PACKAGE_LIST_ENTRIES)) {
    return refuse(`a list of more than ${MAX_KEY_PACKAGE_LIST_ENTRIES} entries`)
  }
  if (kp.leafNode.signaturePublicKey.length !== 32) return refuse("the signature key is not an Ed25519 key")
  // RFC 9420 10.1; openmls refuses it too (InitKeyEqualsEncryptionKey).
  if (sameBytes(kp.initKey, kp.leafNode.hpkePublicKey)) return refuse("the init key is the leaf's encryption key")
  return Effect.void
}

/**
 * The signatures are checked over ts-mls's re-encoding of the decoded value, so the bytes received
 * must be that encoding: otherwise a copy of another's key package with, say, a length written in a
 * longer form would verify as theirs and replace it (openmls and tls_codec refuse such bytes).
 */
const checkCanonical = (kp: KeyPackage, bytes: Uint8Array): Effect.Effect<void, MalformedMls> =>
  Effect.try({
    try: () => encodeKeyPackage(kp),
    catch: (e) => new MalformedMls({ reason: `key package: ${e instanceof Error ? e.message : String(e)}` })
  }).pipe(
    Effect.filterOrFail(
      (encoded) => sameBytes(encoded, bytes),
      () => new MalformedMls({ reason: "key package: not in the canonical encoding" })
    ),
    Effect.asVoid
  )

const checkSignatures = (kp: KeyPackage): Effect.Effect<void, MalformedMls> =>
  Effect.tryPromise({
    try: async () =>
      await verifyKeyPackage(kp, ed25519Signature) &&
      await verifyLeafNodeSignatureKeyPackage(kp.leafNode, ed25519Signature),
    // No failure of ts-mls is a defect: whatever it throws on, the bytes are what is wrong.
    catch: (e) => new MalformedMls({ reason: `key package: ${e instanceof Error ? e.message : String(e)}` })
  }).pipe(
    Effect.filterOrFail(
      (signed) => signed,
      () => new MalformedMls({ reason: "key package: signature does not verify" })
    ),
    Effect.asVoid
  )

/** Decodes and verifies a key package as node-go does (`VerifiedKeyPackageV2`). */
export const verifyXmtpKeyPackage = (
  bytes: Uint8Array,
  nowSeconds: bigint
): Effect.Effect<KeyPackageFacts, MalformedMls> =>
  Effect.gen(function*() {
    if (bytes.length > MAX_KEY_PACKAGE_BYTES) {
      return yield* new MalformedMls({ reason: `key package: over ${MAX_KEY_PACKAGE_BYTES} bytes` })
    }
    const kp = yield* decodeWhole("key package", decodeKeyPackage, bytes)
    yield* checkShape(kp)
    yield* checkCanonical(kp, bytes)
    yield* checkSignatures(kp)
    yield* checkLifetime(kp, nowSeconds)
    const credential = kp.leafNode.credential
    // Refused in checkShape already; again here for the type.
    if (credential.credentialType !== "basic") {
      return yield* new MalformedMls({ reason: "key package: the credential is not a basic credential" })
    }
    const inboxId = yield* Effect.try({
      try: () => codecs.mlsCredential.decode(credential.identity).inboxId,
      catch: () => new MalformedMls({ reason: "key package: the credential is not an MlsCredential" })
    })
    if (!/^[0-9a-f]{64}$/.test(inboxId)) {
      return yield* new MalformedMls({ reason: "key package: the credential names no inbox id" })
    }
    return { installationKey: kp.leafNode.signaturePublicKey, inboxId, notAfterSeconds: kp.leafNode.lifetime.notAfter }
  })
