/**
 * The XMTP V3 face on a random loopback port over a fresh SQLite file, and grpc-js clients
 * built from the server's own service definitions: every call goes over real HTTP/2.
 */
import * as Grpc from "@grpc/grpc-js"
import { ed25519ph } from "@noble/curves/ed25519.js"
import { secp256k1 } from "@noble/curves/secp256k1.js"
import { keccak_256 } from "@noble/hashes/sha3.js"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Context, Effect, Either, Layer, Stream } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { encodeMlsMessage } from "ts-mls"
import { layerSqlite } from "../../src/layers/SqlDeliveryStore.ts"
import { inboxIdOf, signatureText } from "../../src/xmtp/Associations.ts"
import { IDENTITY_API, MLS_API } from "../../src/xmtp/Proto.ts"
import * as XmtpServer from "../../src/xmtp/XmtpServer.ts"
import * as XmtpStore from "../../src/xmtp/XmtpStore.ts"

type Callback = (error: Grpc.ServiceError | null, response: unknown) => void
type GrpcClient = Grpc.Client & Record<string, (request: unknown, callback: Callback) => void>
type StreamingClient = Grpc.Client & Record<string, (request: unknown) => Grpc.ClientReadableStream<unknown>>

export interface Xmtp {
  readonly port: number
  readonly mls: GrpcClient
  readonly identity: GrpcClient
}
export const Xmtp = Context.GenericTag<Xmtp>("test/Xmtp")

/** A server on `store` (an XMTP store and what it needs), on a random port, with its clients. */
export const serverOn = (
  store: Layer.Layer<XmtpStore.XmtpStore, unknown>,
  options: Partial<XmtpServer.XmtpServerOptions> = {}
) =>
  Effect.gen(function*() {
    const context = yield* Layer.build(store)
    const { port } = yield* XmtpServer.serve({ port: 0, host: "127.0.0.1", ...options }).pipe(Effect.provide(context))
    const address = `127.0.0.1:${port}`
    const credentials = Grpc.credentials.createInsecure()
    const mls = new (Grpc.makeClientConstructor(MLS_API, "MlsApi"))(address, credentials) as GrpcClient
    const identity = new (Grpc.makeClientConstructor(IDENTITY_API, "IdentityApi"))(address, credentials) as GrpcClient
    yield* Effect.addFinalizer(() => Effect.sync(() => (mls.close(), identity.close())))
    return { port, mls, identity } satisfies Xmtp
  }).pipe(Effect.orDie)

/** A server on a fresh SQLite file, with its clients; `options` tighten its limits. */
export const layer = (options: Partial<XmtpServer.XmtpServerOptions> = {}): Layer.Layer<Xmtp> =>
  Layer.scoped(
    Xmtp,
    Effect.gen(function*() {
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "converge-xmtp-"))),
        (d) => Effect.sync(() => fs.rmSync(d, { recursive: true, force: true }))
      )
      const store = XmtpStore.layer.pipe(
        Layer.provideMerge(layerSqlite),
        Layer.provide(SqliteClient.layer({ filename: path.join(dir, "ds.sqlite") }))
      )
      return yield* serverOn(store, options)
    })
  )

/** An MlsApi client on a connection of its own (grpc-js shares one per target otherwise); closed with the scope. */
export const otherConnection = Effect.gen(function*() {
  const { port } = yield* Xmtp
  return yield* Effect.acquireRelease(
    Effect.sync(() =>
      new (Grpc.makeClientConstructor(MLS_API, "MlsApi"))(`127.0.0.1:${port}`, Grpc.credentials.createInsecure(), {
        "grpc.use_local_subchannel_pool": 1
      }) as GrpcClient
    ),
    (client) => Effect.sync(() => client.close())
  )
})

/** A unary call: its response, or its gRPC error in the failure channel. */
export const call = (client: GrpcClient, method: string, request: unknown) =>
  Effect.async<any, Grpc.ServiceError>((resume) => {
    client[method]!(request, (error, response) => resume(error ? Effect.fail(error) : Effect.succeed(response)))
  })

/** The gRPC status a refused call ends with: code and reason. */
export const refusal = (client: GrpcClient, method: string, request: unknown) =>
  call(client, method, request).pipe(
    Effect.flip,
    Effect.map((e) => ({ code: e.code, details: e.details })),
    Effect.orElseSucceed(() => ({ code: 0, details: "accepted" }))
  )

export interface Subscription {
  /** Resolves once the server sent its headers (before any message). */
  readonly headers: Effect.Effect<void>
  readonly messages: Stream.Stream<any, Grpc.ServiceError>
}

/** A server stream; cancelled when the scope closes. */
export const subscribe = (client: GrpcClient, method: string, request: unknown) =>
  Effect.gen(function*() {
    const call = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const c = (client as unknown as StreamingClient)[method]!(request)
        // Cancelling at the end emits an error: unheard when the test never read the stream.
        c.on("error", () => {})
        return c
      }),
      (c) => Effect.sync(() => c.cancel())
    )
    const headers = Effect.async<void>((resume) => {
      call.once("metadata", () => resume(Effect.void))
    })
    const messages = Stream.async<any, Grpc.ServiceError>((emit) => {
      call.on("data", (m) => emit.single(m))
      call.on("error", (e: Grpc.ServiceError) => emit.fail(e))
      call.on("end", () => emit.end())
    })
    return { headers, messages } satisfies Subscription
  })

// ---- MLS bytes ----

const random = (n: number) => crypto.getRandomValues(new Uint8Array(n))

export const newGroupId = () => random(16)

/**
 * An MLS PrivateMessage of `group` (what libxmtp sends): the server reads only its group id
 * and content type, so the ciphertext may be anything. `tag` makes payloads distinct.
 */
export const privateMessage = (group: Uint8Array, contentType: "application" | "commit" | "proposal", tag: string) =>
  encodeMlsMessage({
    version: "mls10",
    wireformat: "mls_private_message",
    privateMessage: {
      groupId: group,
      epoch: 1n,
      contentType,
      authenticatedData: new Uint8Array(),
      encryptedSenderData: random(32),
      ciphertext: new TextEncoder().encode(tag)
    }
  })

export const groupInput = (data: Uint8Array) => ({ v1: { data, senderHmac: random(32), shouldPush: true } })

export const ids = (messages: ReadonlyArray<{ v1: { id: { toString(): string } } }>) => messages.map((m) => Number(m.v1.id.toString()))

// ---- identities ----

const utf8 = (text: string) => new TextEncoder().encode(text)
const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex")

export interface Wallet {
  readonly address: string
  readonly sign: (text: string) => Uint8Array
}

/** A fresh EOA that signs ERC-191 personal messages. */
export const newWallet = (): Wallet => {
  const secretKey = secp256k1.utils.randomSecretKey()
  const address = `0x${hex(keccak_256(secp256k1.getPublicKey(secretKey, false).subarray(1)).subarray(12))}`
  return {
    address,
    sign: (text) => {
      const body = utf8(text)
      const digest = keccak_256(new Uint8Array([...utf8(`\x19Ethereum Signed Message:\n${body.length}`), ...body]))
      const signature = secp256k1.sign(digest, secretKey, { prehash: false, format: "recovered" })
      // noble's recovered format puts the recovery byte first; Ethereum puts it last, plus 27.
      return new Uint8Array([...signature.subarray(1), signature[0]! + 27])
    }
  }
}

export interface Installation {
  readonly publicKey: Uint8Array
  readonly sign: (text: string) => Uint8Array
}

export const newInstallation = (): Installation => {
  const secretKey = ed25519ph.utils.randomSecretKey()
  return {
    publicKey: ed25519ph.getPublicKey(secretKey),
    sign: (text) => ed25519ph.sign(utf8(text), secretKey, { context: utf8("IDENTITY UPDATE SIGNATURE") })
  }
}

/** Fills each action's signatures from the update's text: `sign(action, text)` returns the signed action. */
export const signUpdate = (
  update: { inboxId: string; clientTimestampNs: string; actions: ReadonlyArray<Record<string, unknown>> },
  sign: (text: string) => ReadonlyArray<Record<string, unknown>>
) => {
  const text = Either.getOrThrow(signatureText(update as never))
  return { ...update, actions: sign(text) }
}

export const nowNs = () => String(BigInt(Date.now()) * 1_000_000n)

/** A CreateInbox (nonce 0) plus AddAssociation of `installation`, signed as libxmtp does it. */
export const registration = (wallet: Wallet, installation: Installation, nonce = 0n) => {
  const inboxId = inboxIdOf(wallet.address, nonce)
  const create = { initialIdentifier: wallet.address, nonce: String(nonce), initialIdentifierKind: 1 }
  const add = { newMemberIdentifier: { installationPublicKey: installation.publicKey } }
  return {
    inboxId,
    update: signUpdate({ inboxId, clientTimestampNs: nowNs(), actions: [{ createInbox: create }, { add }] }, (text) => {
      const walletSignature = { erc191: { bytes: wallet.sign(text) } }
      return [
        { createInbox: { ...create, initialIdentifierSignature: walletSignature } },
        {
          add: {
            ...add,
            existingMemberSignature: walletSignature,
            newMemberSignature: { installationKey: { bytes: installation.sign(text), publicKey: installation.publicKey } }
          }
        }
      ]
    })
  }
}
