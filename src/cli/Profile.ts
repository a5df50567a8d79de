/**
 * A CLI profile: a folder holding one installation's database and the server it talks to.
 */
import { Context, Duration, Effect, Layer, Option, Schedule, Schema } from "effect"
import * as fs from "node:fs"
import * as path from "node:path"
import { InvalidInput } from "../domain/Errors.ts"
import { withDriverCause } from "../domain/FailureDetail.ts"
import { RPC_PATH } from "../layers/DeliveryServer.ts"
import * as SqliteConnection from "../layers/SqliteConnection.ts"
import * as SqliteStorage from "../layers/SqliteStorage.ts"
import { Client, type ClientOptions } from "../services/Client.ts"
import { Identity } from "../services/Identity.ts"
import * as RpcDeliveryService from "../layers/RpcDeliveryService.ts"
import * as TsMlsCrypto from "../layers/TsMlsCrypto.ts"
import { Unreachable, UsageError } from "./Errors.ts"

export class ProfileFile extends Schema.Class<ProfileFile>("ProfileFile")({
  server: Schema.String
}) {}
const ProfileJson = Schema.parseJson(ProfileFile)

const files = (dir: string) => ({ profile: path.join(dir, "profile.json"), database: path.join(dir, "client.sqlite") })

const errorText = (e: unknown) => (e instanceof Error ? e.message : String(e))

export const readProfile = (dir: string) =>
  Effect.gen(function*() {
    const { profile } = files(dir)
    if (!fs.existsSync(profile)) {
      return yield* new UsageError({
        argument: `--profile ${dir}`,
        reason: "no profile in this folder",
        hint: `create one with \`converge init --profile ${dir} --server URL\` (or set CONVERGE_PROFILE)`
      })
    }
    const text = yield* Effect.try({
      try: () => fs.readFileSync(profile, "utf8"),
      catch: (e) => new UsageError({ argument: `--profile ${dir}`, reason: `cannot read ${profile}: ${errorText(e)}` })
    })
    return yield* Schema.decodeUnknown(ProfileJson)(text).pipe(
      Effect.mapError(() => new UsageError({ argument: `--profile ${dir}`, reason: `${profile} is not a valid profile` }))
    )
  })

/** The RPC endpoint of a server; its base URL or the endpoint itself may be given. */
export const rpcUrl = (server: string) =>
  server.endsWith(RPC_PATH) ? server : `${server.replace(/\/+$/, "")}${RPC_PATH}`

/** A SQLite file the user named: failing to open it is theirs to fix, a typed one-line error. */
export const openSqlite = (filename: string) =>
  SqliteConnection.layer({ filename }).pipe(
    // With SQLite's own words ("unable to open database file"), not only that it failed.
    Layer.mapError((e) => new InvalidInput({ reason: `cannot open the database ${filename}: ${withDriverCause(e)}` })),
    // Readable by its owner only (SQLite creates files after the umask, usually 0644).
    Layer.tap(() => Effect.sync(() => privateFiles(filename)))
  )

/** The database and its journal files: owner read and write only. */
const privateFiles = (filename: string) => {
  for (const file of [filename, `${filename}-wal`, `${filename}-shm`, `${filename}-journal`]) {
    if (fs.existsSync(file)) fs.chmodSync(file, 0o600)
  }
}

/**
 * How long a command waits for the server before it reports it unreachable. A person is
 * waiting: a text message or a commit round trip on a live server takes milliseconds.
 */
export const NETWORK_BOUND = Duration.seconds(5)

/** The client of a profile: its SQLite file, the network delivery service (short timeouts), ts-mls. */
export const clientLayer = (dir: string, server: string, options: ClientOptions = {}) =>
  Client.layerWithStorage({
    transportSchedule: Schedule.exponential("50 millis").pipe(Schedule.intersect(Schedule.recurs(3))),
    ...options
  }).pipe(
    // Exposed too: to tell whether a change is queued, and for `status`. Secrets are sealed at
    // rest when CONVERGE_STORAGE_KEY is set.
    Layer.provideMerge(storageLayer),
    Layer.provide(openSqlite(files(dir).database)),
    // Shared with the commands too (`status` asks the server how far behind each group is).
    Layer.provideMerge(deliveryLayer(server)),
    Layer.provide(TsMlsCrypto.layer())
  )

const deliveryLayer = (server: string) =>
  RpcDeliveryService.layer({
    url: rpcUrl(server),
    timeout: "3 seconds",
    retrySchedule: Schedule.exponential("50 millis").pipe(Schedule.intersect(Schedule.recurs(2)))
  })

/** The sealed-storage key's config error as the user's to fix. */
const storageLayer = SqliteStorage.layerConfig.pipe(
  Layer.catchAll((e) =>
    Layer.fail(e._tag === "StorageError" ? e : new InvalidInput({ reason: `CONVERGE_STORAGE_KEY: ${e.message}` }))
  )
)

/**
 * The identity of an existing profile, to sign a new device into its inbox: the root key stays
 * in that profile's database (read in this process only), the new profile never holds it.
 */
const approverOf = (dir: string, server: string) =>
  Effect.gen(function*() {
    const argument = `--same-inbox-as ${dir}`
    if (!fs.existsSync(files(dir).profile) || !fs.existsSync(files(dir).database)) {
      return yield* new UsageError({ argument, reason: "no profile in this folder", hint: "name the folder of the inbox's first profile" })
    }
    const context = yield* Layer.build(Identity.layer().pipe(
      Layer.provide(storageLayer),
      Layer.provide(openSqlite(files(dir).database)),
      Layer.provide(deliveryLayer(server)),
      Layer.provide(TsMlsCrypto.layer())
    ))
    const approver = Context.get(context, Identity)
    if (Option.isNone(approver.rootSecretKey)) {
      return yield* new UsageError({
        argument,
        reason: "that profile does not hold its inbox's root key (it was itself added with --same-inbox-as)",
        hint: "name the inbox's first profile"
      })
    }
    return approver
  })

const isUnreachable = (e: unknown): e is { readonly _tag: "DeliveryError"; readonly detail: string } =>
  typeof e === "object" && e !== null && (e as { _tag?: unknown })._tag === "DeliveryError" &&
  (e as { retryable?: unknown }).retryable === true

/**
 * A step that needs the server, bounded by `NETWORK_BOUND`. Not reaching the server (refused,
 * dropped, no answer) becomes `Unreachable` naming it; every other error passes through.
 */
export const reach = (server: string) => <A, E, R>(step: Effect.Effect<A, E, R>) =>
  step.pipe(
    Effect.timeoutFail({
      duration: NETWORK_BOUND,
      onTimeout: () => new Unreachable({ server, detail: `no answer within ${Duration.format(NETWORK_BOUND)}` })
    }),
    Effect.catchAll((e) => Effect.fail(isUnreachable(e) ? new Unreachable({ server, detail: e.detail }) : e))
  )

/**
 * Creates a profile all or nothing: the folder is assembled under a temporary name beside it
 * and renamed into place only once the inbox is registered, so a failed `init` leaves nothing.
 */
export const initProfile = (dir: string, server: string, sameInboxAs?: string) =>
  Effect.gen(function*() {
    const target = path.resolve(dir)
    const argument = `--profile ${dir}`
    if (fs.existsSync(files(target).profile)) {
      return yield* new UsageError({ argument, reason: "this folder already holds a profile", hint: "choose another --profile folder" })
    }
    if (fs.existsSync(target) && fs.readdirSync(target).length > 0) {
      return yield* new UsageError({ argument, reason: "the folder exists and is not empty", hint: "choose a new or empty folder" })
    }
    const parent = path.dirname(target)
    if (!fs.existsSync(parent)) {
      return yield* new UsageError({ argument, reason: `the folder ${parent} does not exist`, hint: `create it first: mkdir -p ${parent}` })
    }
    const staging = yield* Effect.acquireRelease(
      Effect.try({
        try: () => fs.mkdtempSync(path.join(parent, `.${path.basename(target)}.init-`)),
        catch: (e) => new UsageError({ argument, reason: `cannot create a folder in ${parent}: ${errorText(e)}` })
      }),
      (staging) => Effect.sync(() => fs.rmSync(staging, { recursive: true, force: true }))
    )
    // mkdtemp makes the folder 0700; the files in it are the owner's alone too.
    fs.writeFileSync(files(staging).profile, Schema.encodeSync(ProfileJson)(ProfileFile.make({ server })) + "\n", {
      mode: 0o600
    })
    // A second device of an existing inbox: that inbox's first profile signs it in.
    const joinInbox = sameInboxAs === undefined ? undefined : yield* Effect.map(
      reach(server)(approverOf(path.resolve(sameInboxAs), server)),
      (approver) => ({ inboxId: approver.inboxId, approve: approver.approveInstallation })
    )
    // Registers the inbox; the database is closed again before the folder moves.
    const inboxId = yield* Effect.map(Client, (client) => client.inboxId).pipe(
      Effect.provide(clientLayer(staging, server, joinInbox === undefined ? {} : { joinInbox })),
      reach(server)
    )
    yield* Effect.try({
      try: () => {
        if (fs.existsSync(target)) fs.rmdirSync(target)
        fs.renameSync(staging, target)
        // The inbox is registered: its folder's name must survive a power loss too.
        syncToDisk(files(target).profile)
        syncToDisk(path.dirname(target))
      },
      catch: (e) => new UsageError({ argument, reason: `cannot create the profile folder: ${errorText(e)}` })
    })
    return inboxId
  }).pipe(Effect.scoped)

/** fsync a file or folder; a platform that cannot sync a folder (Windows) leaves it to the OS, as SQLite does. */
const syncToDisk = (file: string) => {
  let fd: number | undefined
  try {
    fd = fs.openSync(file, "r")
    fs.fsyncSync(fd)
  } catch {
    // Best effort, as above.
  } finally {
    if (fd !== undefined) fs.closeSync(fd)
  }
}
