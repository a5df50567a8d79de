/**
 * The identity repositories of `SqliteStorage`: the installation's identity (`converge_identity`,
 * one row), its key packages (`converge_key_packages`) and the inbox logs it has verified
 * (`converge_inbox_log`). Private keys are sealed at rest.
 */
import type { SqlClient } from "@effect/sql"
import { Effect, Schema } from "effect"
import { InboxId, InstallationId } from "../domain/Ids.ts"
import type { InboxLogEntry, StoredIdentity, StoredKeyPackage } from "../domain/Stored.ts"
import { IdentityUpdate } from "../domain/Wire.ts"
import type { IdentityRepository, InboxLogRepository, KeyPackageRepository } from "../services/Storage.ts"
import { Big, Bytes, column, Flag, Int, Nullable, type SealedColumn, type SealedWithKey } from "./SqliteColumns.ts"
import { decodeEach, type Quarantine } from "./SqliteQuarantine.ts"
import { first, type Run } from "./SqliteStatements.ts"
import { Sealed } from "./StorageKey.ts"

const IdentityRow = Schema.Struct({
  inboxId: column(InboxId, "inbox_id"),
  installationId: column(InstallationId, "installation_id"),
  rootSecretKey: column(Nullable(Sealed("root_secret_key")), "root_secret_key"),
  signaturePrivateKey: column(Sealed("signature_private_key"), "signature_private_key"),
  signaturePublicKey: column(Bytes, "signature_public_key"),
  registered: Flag,
  createdAtNs: column(Big, "created_at_ns")
})

const keyPackageRowWith = <S extends SealedColumn>(sealed: S) => Schema.Struct({
  ref: Schema.String,
  publicPackage: column(Bytes, "public_package"),
  privatePackage: column(sealed("private_package") as ReturnType<S>, "private_package"),
  createdAtNs: column(Big, "created_at_ns")
})
const KeyPackageRow = keyPackageRowWith(Sealed)

const InboxLogRow = Schema.Struct({
  inboxId: column(InboxId, "inbox_id"),
  sequence: Int,
  update: column(Schema.parseJson(IdentityUpdate), "update_json")
})

// The rows decode to exactly the port's values (checked by the compiler).
void ([true, true, true] satisfies [
  typeof IdentityRow.Type extends StoredIdentity ? true : false,
  typeof KeyPackageRow.Type extends StoredKeyPackage ? true : false,
  typeof InboxLogRow.Type extends InboxLogEntry ? true : false
])

export const make = (sql: SqlClient.SqlClient, run: Run, sealedWithKey: SealedWithKey, quarantine: Quarantine) => {
  const identity: IdentityRepository = {
    // No quarantine: without its identity the installation cannot run; the error says why.
    get: run(
      "identity.get",
      sql`SELECT * FROM converge_identity WHERE singleton = 1`.pipe(
        Effect.flatMap(Schema.decodeUnknown(Schema.Array(IdentityRow))),
        Effect.map(first)
      )
    ),
    insert: (stored) =>
      run(
        "identity.insert",
        Schema.encode(IdentityRow)(stored).pipe(
          Effect.flatMap((row) => sql`INSERT INTO converge_identity ${sql.insert({ singleton: 1, ...row } as never)}`)
        )
      ),
    markRegistered: run("identity.markRegistered", sql`UPDATE converge_identity SET registered = 1 WHERE singleton = 1`)
  }

  const keyPackages: KeyPackageRepository = {
    insert: (keyPackage) =>
      run(
        "keyPackages.insert",
        Schema.encode(KeyPackageRow)(keyPackage).pipe(
          Effect.flatMap((row) =>
            sql`INSERT INTO converge_key_packages ${sql.insert(row as never)} ON CONFLICT (ref) DO NOTHING`
          )
        )
      ),
    list: run(
      "keyPackages.list",
      sql`SELECT * FROM converge_key_packages ORDER BY created_at_ns DESC, rowid DESC`.pipe(
        Effect.flatMap(decodeEach(keyPackageRowWith(sealedWithKey), "converge_key_packages", quarantine.none))
      )
    ),
    remove: (ref) => run("keyPackages.remove", sql`DELETE FROM converge_key_packages WHERE ref = ${ref}`)
  }

  const inboxLogs: InboxLogRepository = {
    entries: (inboxId) =>
      run(
        "inboxLogs.entries",
        // A skipped entry breaks the chain: the log is then replayed from the network.
        sql`SELECT * FROM converge_inbox_log WHERE inbox_id = ${inboxId} ORDER BY sequence`.pipe(
          Effect.flatMap(decodeEach(InboxLogRow, "converge_inbox_log", quarantine.none))
        )
      ),
    append: (entries) =>
      entries.length === 0
        ? Effect.void
        : run(
          "inboxLogs.append",
          Schema.encode(Schema.Array(InboxLogRow))(entries).pipe(
            Effect.flatMap((rows) =>
              sql`INSERT INTO converge_inbox_log ${sql.insert(rows as never)}
                  ON CONFLICT (inbox_id, sequence) DO NOTHING`
            )
          )
        )
  }

  return { identity, keyPackages, inboxLogs }
}
