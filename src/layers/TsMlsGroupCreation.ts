/**
 * A group's first state on an installation: created by its founder, or joined from a welcome
 * (with TsMlsWelcome's join, not ts-mls's `joinGroup`).
 */
import { Effect } from "effect"
import { createGroup as mlsCreateGroup } from "ts-mls"
import { fromHex, toHex } from "../domain/Bytes.ts"
import type { MlsCryptoShape } from "../services/MlsCrypto.ts"
import type { ClientSetup } from "./TsMlsClientConfig.ts"
import { fail, tryMls } from "./TsMlsErrors.ts"
import { METADATA_EXTENSION } from "./TsMlsExtensions.ts"
import { wrap } from "./TsMlsGroupState.ts"
import type { KeyPackageReader } from "./TsMlsKeyPackages.ts"
import { structuralIdentity } from "./TsMlsMembers.ts"
import { decodeMessage } from "./TsMlsMessages.ts"
import { joinWithSigner } from "./TsMlsWelcome.ts"

type Service = MlsCryptoShape

export const makeGroupCreation = (
  { clientConfig, cs, prepareTree }: ClientSetup,
  { decodeBundle, keyPackageRef }: KeyPackageReader
) => {
  const createGroup: Service["createGroup"] = Effect.fn("MlsCrypto.createGroup")(function*(groupId, bundle, metadata) {
    const { privatePackage, publicPackage } = yield* decodeBundle(bundle)
    const identity = structuralIdentity(publicPackage.leafNode.credential, publicPackage.leafNode.signaturePublicKey)
    if (typeof identity === "string") return yield* fail("Unauthenticated", identity)
    const extensions = metadata === undefined ? [] : [{ extensionType: METADATA_EXTENSION, extensionData: metadata }]
    const client = yield* tryMls(
      "createGroup",
      () => mlsCreateGroup(fromHex(groupId), publicPackage, privatePackage, extensions, cs, clientConfig)
    )
    return wrap(client)
  })

  const joinFromWelcome: Service["joinFromWelcome"] = Effect.fn("MlsCrypto.joinFromWelcome")(
    function*(bytes, keyPackages) {
      const message = yield* decodeMessage(bytes)
      if (message.wireformat !== "mls_welcome") return yield* fail("Malformed", "not a welcome message")
      const welcome = message.welcome
      const addressed = new Set(welcome.secrets.map((s) => toHex(s.newMember)))
      for (const bundle of keyPackages) {
        const { publicPackage, privatePackage } = yield* decodeBundle(bundle)
        // Recomputed rather than trusting `bundle.ref`, which came from storage.
        if (!addressed.has(yield* keyPackageRef(publicPackage))) continue
        // Not ts-mls's `joinGroup`: its tree check refuses trees ts-mls builds (see TsMlsWelcome).
        const joined = yield* tryMls(
          "joinFromWelcome",
          () => joinWithSigner(welcome, publicPackage, privatePackage, cs, clientConfig, prepareTree)
        )
        return wrap(joined.client, joined.signer)
      }
      return yield* fail("CannotDecrypt", "the welcome is not addressed to any of the given key packages")
    }
  )

  return { createGroup, joinFromWelcome }
}
