/**
 * The key-package operations of the store-backed delivery service. Key packages are decoded and
 * their signatures verified (`MlsCrypto.keyPackageInfo`); the package must name the uploading
 * installation, which must be a current installation of the inbox the package names. One key
 * package per installation is kept: the latest.
 */
import { Effect } from "effect"
import { DeliveryError } from "../domain/Errors.ts"
import { FIRST_PROTOCOL_VERSION } from "../domain/Model.ts"
import { requestDigests } from "../domain/RequestAuth.ts"
import type { KeyPackageUpload } from "../domain/Wire.ts"
import type { DeliveryService, FetchedKeyPackage } from "../services/DeliveryService.ts"
import { checkIdCount, serverSpan } from "./DeliveryRequests.ts"
import { forbidden, type StoreDeliveryContext } from "./StoreDeliveryContext.ts"

type Service = DeliveryService["Type"]

const invalidKeyPackage = (detail: string) =>
  new DeliveryError({ reason: "InvalidKeyPackage", retryable: false, detail })

export const uploadKeyPackage = (c: StoreDeliveryContext): Service["uploadKeyPackage"] => (upload: KeyPackageUpload) =>
  Effect.gen(function*() {
    yield* c.checks.installationId(upload.installationId, "uploadKeyPackage")
    yield* c.checks.payload(upload.keyPackage, `uploadKeyPackage for ${upload.installationId}`)
    const caller = yield* c.authenticate(
      "uploadKeyPackage",
      requestDigests.uploadKeyPackage(upload),
      upload.keyPackage.length
    )
    if (caller.installationId !== upload.installationId) {
      return yield* Effect.fail(forbidden(`uploadKeyPackage: only ${upload.installationId} may upload its key package`))
    }
    // Decode and verify before anything is stored: signatures, lifetime, and that the
    // leaf's installation id is the hash of its signature key.
    const info = yield* c.crypto.keyPackageInfo(upload.keyPackage).pipe(
      Effect.mapError((error) =>
        invalidKeyPackage(`key package for ${upload.installationId} does not verify: ${error.message}`)
      )
    )
    if (info.installationId !== upload.installationId) {
      return yield* Effect.fail(
        invalidKeyPackage(
          `key package names installation ${info.installationId}, uploaded for ${upload.installationId}`
        )
      )
    }
    // Members refuse a leaf below version 1, so such a package could only ever fail an add.
    if ((info.protocolVersion ?? FIRST_PROTOCOL_VERSION) < FIRST_PROTOCOL_VERSION) {
      return yield* Effect.fail(
        invalidKeyPackage(`key package for ${upload.installationId} advertises protocol version ${info.protocolVersion}; versions start at ${FIRST_PROTOCOL_VERSION}`)
      )
    }
    // Stored only if the installation is (still) a current installation of the inbox its
    // credential names: checked with the write, so a concurrent revocation wins cleanly.
    const accepted = yield* c.stored(c.store.putKeyPackage(upload.installationId, info.inboxId, upload.keyPackage))
    if (!accepted) {
      return yield* Effect.fail(
        invalidKeyPackage(
          `installation ${upload.installationId} is not a current installation of inbox ${info.inboxId}`
        )
      )
    }
  }).pipe(serverSpan("DeliveryService.uploadKeyPackage"))

export const fetchKeyPackages = (c: StoreDeliveryContext): Service["fetchKeyPackages"] => (installationIds) =>
  Effect.gen(function*() {
    yield* checkIdCount(installationIds, "fetchKeyPackages")
    for (const id of installationIds) yield* c.checks.installationId(id, "fetchKeyPackages")
    if (installationIds.length === 0) return []
    const found = yield* c.stored(c.store.getKeyPackages(installationIds))
    return installationIds.map((installationId): FetchedKeyPackage => ({
      installationId,
      keyPackage: found.get(installationId)
    }))
  }).pipe(serverSpan("DeliveryService.fetchKeyPackages"))
