/**
 * When commits reach the disk. Every commit survives a crash of the process when it returns;
 * the question is what a power loss may undo. The rule that matters: nothing leaves the device
 * ahead of the record it depends on (a write-ahead record undone after its message went out
 * would have the message sent again with the same key and nonce). By default the client's
 * storage commits with synchronous=NORMAL and syncs the WAL file before every request that
 * writes to the delivery service (`Storage.flush`), but welcomes: they follow their commit,
 * which left from a synced disk with everything they carry but the commit's sequence id (which
 * reading the topic again gives back); `durability: "commit"` syncs every commit.
 * The delivery service's SQLite store syncs every append (an acknowledged id must not go to
 * another message). SQLite reopens a WAL database with synchronous=NORMAL, so each store sets
 * its level on the connection it is given, however it was opened.
 */
import { SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import * as SqlDeliveryStore from "../src/layers/SqlDeliveryStore.ts"
import * as SqliteStorage from "../src/layers/SqliteStorage.ts"
import type { DeliveryService } from "../src/services/DeliveryService.ts"
import { Storage } from "../src/services/Storage.ts"
import { type DiskImage, type TestClient, TestNetwork } from "../src/testing.ts"

const synchronousLevel = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const rows = yield* sql<{ readonly synchronous: number }>`PRAGMA synchronous`
  return rows[0]?.synchronous
})

/** A database file that has been opened once (so it is in WAL mode), and its directory. */
const walFile = Effect.acquireRelease(
  Effect.gen(function*() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "converge-durability-"))
    const filename = path.join(dir, "db.sqlite")
    yield* synchronousLevel.pipe(Effect.provide(SqliteClient.layer({ filename })), Effect.orDie)
    return { dir, filename }
  }),
  ({ dir }) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
).pipe(Effect.map(({ filename }) => filename))

const NORMAL = 1
const FULL = 2

type Delivery = Context.Tag.Service<DeliveryService>

/** A storage on a reopened WAL file, with the level it commits at. */
const storageOn = (filename: string, layer: Layer.Layer<Storage, unknown, SqlClient.SqlClient>) =>
  Effect.gen(function*() {
    const context = yield* Layer.build(layer.pipe(Layer.provideMerge(SqliteClient.layer({ filename }))))
    const level = yield* synchronousLevel.pipe(Effect.provide(context))
    return { storage: Context.get(context, Storage), level }
  })

/** A write to the client's storage (a cursor moves). */
const someWrite = (storage: Context.Tag.Service<Storage>, n: bigint) => storage.cursors.set("durability-test", n)

/**
 * The client's view of the delivery service, which records every request that writes while its
 * storage holds writes a power loss could undo, and every welcome sent before any commit of this
 * client left from a synced disk (welcomes follow their commit and are not flushed for).
 */
const refusingUnflushed = (
  storageOf: () => Context.Tag.Service<Storage> | undefined,
  writes: Array<string>,
  ahead: Array<string>
) =>
(ds: Delivery): Delivery => {
  let groupSendFlushed = false
  const checked = <A, E>(name: string, request: Effect.Effect<A, E>) =>
    Effect.gen(function*() {
      const storage = storageOf()
      if (storage !== undefined) {
        writes.push(name)
        const unflushed = yield* Effect.orDie(storage.unflushedWrites)
        if (unflushed > 0) ahead.push(`${name}: ${unflushed} unflushed`)
        else if (name.startsWith("sendGroupMessage")) groupSendFlushed = true
      }
      return yield* request
    })
  return {
    ...ds,
    sendGroupMessages: (messages) => checked("sendGroupMessages", ds.sendGroupMessages(messages)),
    sendGroupMessagesIf: (messages, at) => checked("sendGroupMessagesIf", ds.sendGroupMessagesIf(messages, at)),
    // Welcomes carry what their commit wrote ahead, on disk before the commit went out (checked
    // above); the confirmation written since may still be unsynced (the power-loss story below).
    sendWelcomeMessages: (messages) =>
      Effect.sync(() => {
        if (storageOf() === undefined) return
        writes.push("sendWelcomeMessages")
        if (!groupSendFlushed) ahead.push("sendWelcomeMessages: before any commit left from a synced disk")
      }).pipe(Effect.zipRight(ds.sendWelcomeMessages(messages))),
    uploadKeyPackage: (upload) => checked("uploadKeyPackage", ds.uploadKeyPackage(upload)),
    publishIdentityUpdate: (update) => checked("publishIdentityUpdate", ds.publishIdentityUpdate(update))
  }
}

describe("durability of commits", () => {
  it.scoped("a reopened WAL database alone would commit with synchronous=NORMAL", () =>
    Effect.gen(function*() {
      const filename = yield* walFile
      expect(yield* synchronousLevel.pipe(Effect.provide(SqliteClient.layer({ filename })))).toBe(NORMAL)
    }))

  it.scoped("by default the client's storage commits unsynced, and flush leaves nothing a power loss could undo", () =>
    Effect.gen(function*() {
      const filename = yield* walFile
      const { level, storage } = yield* storageOn(filename, SqliteStorage.layer)
      expect(level).toBe(NORMAL)
      // Opening (migrations) is synced before the storage is handed out.
      expect(yield* storage.unflushedWrites).toBe(0)
      yield* someWrite(storage, 1n)
      yield* storage.transaction(someWrite(storage, 2n))
      expect(yield* storage.unflushedWrites).toBe(2)
      yield* storage.flush
      expect(yield* storage.unflushedWrites).toBe(0)
      // Nothing new: a second flush has nothing to do, and the data reads back.
      yield* storage.flush
      expect(yield* storage.cursors.get("durability-test")).toBe(2n)
    }))

  it.scoped("with durability \"commit\", every commit is synced before it returns", () =>
    Effect.gen(function*() {
      const filename = yield* walFile
      const { level, storage } = yield* storageOn(filename, SqliteStorage.layerWith({ durability: "commit" }))
      expect(level).toBe(FULL)
      yield* someWrite(storage, 1n)
      expect(yield* storage.unflushedWrites).toBe(0)
    }))

  it.scoped("the delivery service's SQLite store commits with synchronous=FULL on a reopened database", () =>
    Effect.gen(function*() {
      const filename = yield* walFile
      const level = yield* synchronousLevel.pipe(
        Effect.provide(SqlDeliveryStore.layerSqlite.pipe(Layer.provideMerge(SqliteClient.layer({ filename }))))
      )
      expect(level).toBe(FULL)
    }))

  it.live("nothing leaves a client ahead of its record: every request that writes finds its storage flushed, welcomes after their commit", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      const writes: Array<string> = []
      const ahead: Array<string> = []
      const storages = new Map<string, Context.Tag.Service<Storage>>()
      const watched = (name: string) => ({ wrapDelivery: refusingUnflushed(() => storages.get(name), writes, ahead) })
      const alice = yield* net.client("alice", watched("alice"))
      const bob = yield* net.client("bob", watched("bob"))
      const carol = yield* net.client("carol", watched("carol"))
      for (const [name, client] of [["alice", alice], ["bob", bob], ["carol", carol]] as const) {
        storages.set(name, yield* net.storage(client))
      }

      // A group with Bob (a commit and a welcome), messages sent and queued, a key update,
      // Carol added; Bob and Carol join (each uses a key package, so each uploads a new one).
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll
      yield* group.send("hello")
      for (const text of ["one", "two", "three"]) yield* group.sendOptimistic(text)
      yield* group.publishPending
      yield* group.updateKeys
      yield* group.addMembers([carol.inboxId])
      yield* carol.syncAll
      yield* (yield* bob.conversation(group.id)).send("hi all")
      yield* Effect.all([alice.syncAll, carol.syncAll])

      // Alice signs in a phone, then revokes it: identity updates from her side.
      const phone = yield* net.client("alice-phone", { sameInboxAs: alice })
      yield* alice.revokeInstallation(phone.installationId)

      // Every publish after a read goes on the condition (a plain send only after 8 refusals in a row).
      expect(new Set(writes)).toEqual(
        new Set(["sendGroupMessagesIf", "sendWelcomeMessages", "uploadKeyPackage", "publishIdentityUpdate"])
      )
      expect(ahead).toEqual([])
    })))

  it.live("a power loss right after a commit's welcomes left undoes only its confirmation: confirmed and welcomed again, the newcomer joins once", () =>
    Effect.scoped(Effect.gen(function*() {
      const net = yield* TestNetwork.make
      let watched: TestClient | undefined
      let atLastSend: DiskImage | undefined
      const unflushedAtWelcomes: Array<number> = []
      const alice = yield* net.client("alice", {
        wrapDelivery: (ds) => ({
          ...ds,
          // What the disk holds as each message leaves (nothing unflushed: `durableImage` checks).
          sendGroupMessagesIf: (messages, ifTopicEndsAt) =>
            Effect.gen(function*() {
              if (watched !== undefined) atLastSend = yield* net.durableImage(watched)
              return yield* ds.sendGroupMessagesIf(messages, ifTopicEndsAt)
            }),
          sendWelcomeMessages: (messages) =>
            Effect.tap(ds.sendWelcomeMessages(messages), () =>
              watched === undefined ? Effect.void : net.storage(watched).pipe(
                Effect.flatMap((storage) => Effect.orDie(storage.unflushedWrites)),
                Effect.map((unflushed) => unflushedAtWelcomes.push(unflushed))
              ))
        })
      })
      const [bob, carol] = yield* Effect.all([net.client("bob"), net.client("carol")])
      const group = yield* alice.createGroup([bob.inboxId])
      yield* bob.syncAll

      // Alice adds Carol; the commit goes out from a synced disk, the welcome right after the
      // confirmation was written, before anything synced it. Then the power goes.
      watched = alice
      yield* group.addMembers([carol.inboxId])
      expect(unflushedAtWelcomes.length).toBe(1)
      expect(unflushedAtWelcomes[0]).toBeGreaterThan(0)
      yield* net.powerLoss(alice, atLastSend!)
      watched = undefined

      // Back up, Alice's disk has the commit written ahead but not confirmed: Carol is not a member yet.
      const [published] = yield* (yield* net.storage(alice)).intents.byState(["Published"])
      expect(published?.postCommit?.installationIds).toEqual([carol.installationId])
      expect((yield* (yield* alice.conversation(group.id)).members).map((m) => m.inboxId)).not.toContain(carol.inboxId)

      // Carol joins from the welcome that left before the power loss; Alice confirms the commit
      // from the topic again and sends the welcome again, which Carol takes as the group she has.
      expect((yield* carol.syncAll).joined).toBe(1)
      yield* alice.syncAll
      expect((yield* net.inspect.welcomes(carol.installationId)).length).toBe(2)
      const again = yield* carol.syncAll
      // Taken as the group she has (its sequence id is not past her cursor), not refused as unreadable.
      expect([again.joined, again.skipped]).toEqual([0, 0])
      expect((yield* carol.conversations()).filter((c) => c.id === group.id).length).toBe(1)

      // Everyone is in the same epoch: each reads the others.
      yield* (yield* alice.conversation(group.id)).send("the lights are back")
      yield* (yield* carol.conversation(group.id)).send("hello from Carol")
      yield* Effect.all([alice.syncAll, bob.syncAll, carol.syncAll])
      for (const client of [alice, bob, carol]) {
        const read = yield* (yield* client.conversation(group.id)).messages()
        expect(read.filter((m) => m.kind === "text").map((m) => m.text).sort()).toEqual(["hello from Carol", "the lights are back"])
      }
      expect((yield* (yield* alice.conversation(group.id)).members).map((m) => m.inboxId).sort())
        .toEqual([alice.inboxId, bob.inboxId, carol.inboxId].sort())
    })))

  it.scoped("flush inside a transaction is a defect: its own writes would count as flushed before they commit", () =>
    Effect.gen(function*() {
      const filename = yield* walFile
      const { storage } = yield* storageOn(filename, SqliteStorage.layer)
      const exit = yield* storage.transaction(Effect.zipRight(someWrite(storage, 1n), storage.flush)).pipe(Effect.exit)
      expect(exit._tag === "Failure" && exit.cause._tag === "Die").toBe(true)
      // Nothing was taken for flushed: the write (rolled back with the transaction) left no mark.
      yield* someWrite(storage, 2n)
      expect(yield* storage.unflushedWrites).toBeGreaterThan(0)
      yield* storage.flush
      expect(yield* storage.unflushedWrites).toBe(0)
    }))
})
