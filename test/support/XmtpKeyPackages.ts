/** XMTP key packages as libxmtp makes them, for tests of the XMTP face. */
import { ed25519 } from "@noble/curves/ed25519.js"
import { defaultCapabilities, generateKeyPackageWithKey, getCiphersuiteFromName, getCiphersuiteImpl } from "ts-mls"
import { encodeKeyPackage, type KeyPackageTBS, signKeyPackage } from "ts-mls/keyPackage.js"
import { codecs, encode } from "../../src/xmtp/Proto.ts"

const XMTP_SUITE = "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519" as const

/** A valid XMTP key package (basic credential holding an MlsCredential), as libxmtp makes one; `tweak` changes it before signing. */
export const xmtpKeyPackage = async (tweak: (tbs: KeyPackageTBS) => KeyPackageTBS = (tbs) => tbs) => {
  // ts-mls needs an optional package for ChaCha20: make it on suite 1 (same Ed25519), then sign it as XMTP's suite.
  const cs = await getCiphersuiteImpl(getCiphersuiteFromName("MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"))
  const secret = ed25519.utils.randomSecretKey()
  const signatureKeyPair = { signKey: secret, publicKey: ed25519.getPublicKey(secret) }
  const inboxId = Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("hex")
  const credential = { credentialType: "basic" as const, identity: encode(codecs.mlsCredential, { inboxId }) }
  const now = BigInt(Math.floor(Date.now() / 1000))
  const { publicPackage } = await generateKeyPackageWithKey(
    credential,
    defaultCapabilities(),
    { notBefore: now - 10n, notAfter: now + 86_400n * 30n },
    [],
    signatureKeyPair,
    cs
  )
  const { signature: _, ...tbs } = publicPackage
  const signed = await signKeyPackage(tweak({ ...tbs, cipherSuite: XMTP_SUITE }), secret, cs.signature)
  return { bytes: encodeKeyPackage(signed), installationKey: signatureKeyPair.publicKey }
}
