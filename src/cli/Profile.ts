/**
 * A CLI profile: a folder holding one installation's database and the server it talks to.
 */
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Effect, Layer, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { InvalidInput } from "../domain/Errors.ts"
import { RPC_PATH } from "../layers/DeliveryServer.ts"
import * as SqliteStorage from "../layers/SqliteStorage.ts"
import { Client } from "../services/Client.ts"
import * as RpcDeliveryService from "../layers/RpcDeliveryService.ts"
import * as TsMlsCrypto from "../layers/TsMlsCrypto.ts"

export class ProfileFile extends Schema.Class<ProfileFile>("ProfileFile")({
  server: Schema.String
}) {}
const ProfileJson = Schema.parseJson(ProfileFile)

const files = (dir: string) => ({ profile: path.join(dir, "profile.json"), database: path.join(dir, "client.sqlite") })

export const readProfile = (dir: string) =>
  Effect.gen(function*() {
    const { profile } = files(dir)
    if (!fs.existsSync(profile)) {
      return yield* new InvalidInput({ reason: `no profile in ${dir}: run \`converge init --profile ${dir} --server URL\` first` })
    }
    const text = yield* Effect.try({
      try: () => fs.readFileSync(profile, "utf8"),
      catch: (e) => new InvalidInput({ reason: `cannot read ${profile}: ${e instanceof Error ? e.message : String(e)}` })
    })
    return yield* Schema.decodeUnknown(ProfileJson)(text).pipe(
      Effect.mapError(() => new InvalidInput({ reason: `${profile} is not a valid profile` }))
    )
  })

export const writeProfile = (dir: string, profile: ProfileFile) =>
  Effect.try({
    try: () => {
      fs.mkdirSync(dir, { recursive: true })
      fs.writeFileSync(files(dir).profile, Schema.encodeSync(ProfileJson)(profile) + "\n")
    },
    catch: (e) => new InvalidInput({ reason: `cannot write a profile in ${dir}: ${e instanceof Error ? e.message : String(e)}` })
  })

/** Accepts the server's base URL or its RPC endpoint. */
export const rpcUrl = (server: string) =>
  server.endsWith(RPC_PATH) ? server : `${server.replace(/\/+$/, "")}${RPC_PATH}`

/** A SQLite file the user named: failing to open it is theirs to fix, a typed one-line error. */
export const openSqlite = (filename: string) =>
  SqliteClient.layer({ filename }).pipe(
    Layer.mapError((e) => new InvalidInput({ reason: `cannot open the database ${filename}: ${e.message}` }))
  )

/** The client of a profile: its SQLite file, the network delivery service, ts-mls. */
export const clientLayer = (dir: string, server: string) =>
  Client.layer().pipe(
    Layer.provide(SqliteStorage.layer),
    Layer.provide(openSqlite(files(dir).database)),
    Layer.provide(RpcDeliveryService.layer({ url: rpcUrl(server) })),
    Layer.provide(TsMlsCrypto.layer())
  )
