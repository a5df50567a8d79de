/**
 * The key packages of the SQL delivery store (`ds_key_packages`): one per current installation,
 * uploaded by its owner, deleted when it is revoked.
 */
import type { SqlClient } from "@effect/sql"
import { Effect } from "effect"
import type { InboxId, InstallationId } from "../domain/Ids.ts"
import type { DeliveryStore } from "../services/DeliveryStore.ts"
import { failedCommitAsError } from "./FailedCommit.ts"
import { bytesOf, failed } from "./SqlDeliveryRows.ts"

type Service = DeliveryStore["Type"]

/** The key-package operations of the store on `sql`; `forShare` locks the owner row on Postgres. */
export const make = (sql: SqlClient.SqlClient, { forShare }: { readonly forShare: ReturnType<SqlClient.SqlClient["literal"]> }) => {
  const putKeyPackage: Service["putKeyPackage"] = (installationId, inboxId, keyPackage) =>
    sql.withTransaction(Effect.gen(function*() {
      // Share-locking the owner row makes a concurrent revocation wait for this upload (and
      // then delete it), or this upload see the revocation.
      const [owner] = yield* sql<{ inbox_id: InboxId }>`
          SELECT inbox_id FROM ds_installations WHERE installation_id = ${installationId} ${forShare}`
      if (owner?.inbox_id !== inboxId) return false
      const stored = keyPackage.slice()
      yield* sql`INSERT INTO ds_key_packages (installation_id, key_package) VALUES (${installationId}, ${stored})
          ON CONFLICT (installation_id) DO UPDATE SET key_package = excluded.key_package`
      return true
    })).pipe(failedCommitAsError, failed("putKeyPackage"))

  const getKeyPackages: Service["getKeyPackages"] = (installationIds) =>
    Effect.gen(function*() {
      const found = new Map<InstallationId, Uint8Array>()
      const unique = Array.from(new Set(installationIds))
      for (let i = 0; i < unique.length; i += 500) {
        const rows = yield* sql<{ installation_id: InstallationId; key_package: unknown }>`
            SELECT installation_id, key_package FROM ds_key_packages
            WHERE ${sql.in("installation_id", unique.slice(i, i + 500))}`
        for (const row of rows) found.set(row.installation_id, bytesOf(row.key_package))
      }
      return found as ReadonlyMap<InstallationId, Uint8Array>
    }).pipe(failed("getKeyPackages"))

  return { putKeyPackage, getKeyPackages }
}
