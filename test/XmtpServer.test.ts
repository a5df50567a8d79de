/**
 * The XMTP V3 face of `converge serve`, over real gRPC: what an XMTP client relies on from
 * node-go (paging, cursors, subscriptions, dedupe, newest message, commit log) and what the
 * server refuses (forged identity updates, malformed MLS, batches past the limits). The
 * official SDK runs the same server in `npm run test:xmtp`.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Chunk, Clock, Duration, Effect, Fiber, Stream } from "effect"
import * as Net from "node:net"
import { inboxIdOf } from "../src/xmtp/Associations.ts"
import {
  call,
  groupInput,
  ids,
  newGroupId,
  newInstallation,
  newWallet,
  nowNs,
  privateMessage,
  refusal,
  registration,
  signUpdate,
  subscribe,
  Xmtp
} from "./support/XmtpHarness.ts"
import * as XmtpHarness from "./support/XmtpHarness.ts"

const INVALID_ARGUMENT = 3

/** Alice's client sends `count` application messages to a new group, one call each. */
const groupWith = (count: number) =>
  Effect.gen(function*() {
    const { mls } = yield* Xmtp
    const group = newGroupId()
    for (let i = 1; i <= count; i++) {
      yield* call(mls, "SendGroupMessages", { messages: [groupInput(privateMessage(group, "application", `m${i}`))] })
    }
    return group
  })

const query = (group: Uint8Array, paging: Record<string, unknown>) =>
  Effect.flatMap(Xmtp, ({ mls }) => call(mls, "QueryGroupMessages", { groupId: group, pagingInfo: paging }))

layer(XmtpHarness.layer())("The XMTP V3 face", (it) => {
  describe("group messages page as node-go pages them", () => {
    it.effect("newest first unless ascending; ascending reads above the cursor, descending below it", () =>
      Effect.gen(function*() {
        const group = yield* groupWith(5)
        expect(ids((yield* query(group, {})).messages)).toEqual([5, 4, 3, 2, 1])
        expect(ids((yield* query(group, { direction: 1 })).messages)).toEqual([1, 2, 3, 4, 5])
        expect(ids((yield* query(group, { direction: 1, idCursor: 3 })).messages)).toEqual([4, 5])
        expect(ids((yield* query(group, { direction: 2, idCursor: 4, limit: 2 })).messages)).toEqual([3, 2])
      }))

    it.effect("a full page names its last id as the cursor; the last, short page names 0", () =>
      Effect.gen(function*() {
        const group = yield* groupWith(5)
        const first = yield* query(group, { direction: 1, limit: 2 })
        expect([ids(first.messages), first.pagingInfo.idCursor.toString()]).toEqual([[1, 2], "2"])
        const second = yield* query(group, { direction: 1, limit: 2, idCursor: 2 })
        expect([ids(second.messages), second.pagingInfo.idCursor.toString()]).toEqual([[3, 4], "4"])
        const last = yield* query(group, { direction: 1, limit: 2, idCursor: 4 })
        expect([ids(last.messages), last.pagingInfo.idCursor.toString()]).toEqual([[5], "0"])
      }))

    it.effect("a limit above 100 (or none) means 100", () =>
      Effect.gen(function*() {
        const group = yield* groupWith(1)
        expect((yield* query(group, { limit: 5000 })).pagingInfo.limit).toBe(100)
        expect((yield* query(group, {})).pagingInfo.limit).toBe(100)
      }))

    it.effect("the server reads the group id and whether it is a commit from the MLS message", () =>
      Effect.gen(function*() {
        const { mls } = yield* Xmtp
        const group = newGroupId()
        const commit = privateMessage(group, "commit", "c")
        const text = privateMessage(group, "application", "t")
        yield* call(mls, "SendGroupMessages", { messages: [groupInput(commit), groupInput(text)] })
        const [first, second] = (yield* query(group, { direction: 1 })).messages
        expect([first.v1.isCommit, second.v1.isCommit]).toEqual([true, false])
        expect(Buffer.from(first.v1.groupId)).toEqual(Buffer.from(group))
        expect(Buffer.from(second.v1.data)).toEqual(Buffer.from(text))
      }))

    it.effect("the same message sent twice is stored once", () =>
      Effect.gen(function*() {
        const { mls } = yield* Xmtp
        const group = newGroupId()
        const input = groupInput(privateMessage(group, "application", "once"))
        yield* call(mls, "SendGroupMessages", { messages: [input] })
        yield* call(mls, "SendGroupMessages", { messages: [input] })
        expect(ids((yield* query(group, {})).messages)).toEqual([1])
      }))

    it.effect("GetNewestGroupMessage answers per group, in order, with content only when asked", () =>
      Effect.gen(function*() {
        const { mls } = yield* Xmtp
        const busy = yield* groupWith(3)
        const quiet = newGroupId()
        const withContent = yield* call(mls, "GetNewestGroupMessage", { groupIds: [busy, quiet], includeContent: true })
        expect(withContent.responses.map((r: any) => r.groupMessage?.v1.id.toString())).toEqual(["3", undefined])
        expect(withContent.responses[0].groupMessage.v1.data.length).toBeGreaterThan(0)
        const bare = yield* call(mls, "GetNewestGroupMessage", { groupIds: [busy], includeContent: false })
        expect(bare.responses[0].groupMessage.v1.data.length).toBe(0)
      }))
  })

  describe("subscriptions", () => {
    it.scoped("send headers at once, replay above the cursor, then go live with no gap and no duplicate", () =>
      Effect.gen(function*() {
        const { mls } = yield* Xmtp
        const group = yield* groupWith(4)
        const sub = yield* subscribe(mls, "SubscribeGroupMessages", { filters: [{ groupId: group, idCursor: 2 }] })
        yield* sub.headers
        const received = yield* sub.messages.pipe(Stream.take(8), Stream.runCollect, Effect.fork)
        // Sent while the replay may still be running: each arrives once, in order.
        for (let i = 5; i <= 10; i++) {
          yield* call(mls, "SendGroupMessages", { messages: [groupInput(privateMessage(group, "application", `live${i}`))] })
        }
        expect(ids(Chunk.toArray(yield* Fiber.join(received)))).toEqual([3, 4, 5, 6, 7, 8, 9, 10])
      }))

    it.scoped("headers come before any message, on a topic with nothing in it", () =>
      Effect.gen(function*() {
        const { mls } = yield* Xmtp
        const sub = yield* subscribe(mls, "SubscribeWelcomeMessages", { filters: [{ installationKey: newGroupId(), idCursor: 0 }] })
        yield* sub.headers.pipe(Effect.timeout("5 seconds"))
      }))
  })

  describe("welcomes and the commit log", () => {
    it.effect("a welcome is served to its installation as sent, with its id", () =>
      Effect.gen(function*() {
        const { mls } = yield* Xmtp
        const installationKey = newGroupId()
        const welcome = {
          installationKey,
          data: new Uint8Array([1, 2, 3]),
          hpkePublicKey: new Uint8Array([9, 9]),
          wrapperAlgorithm: 2,
          welcomeMetadata: new Uint8Array([7])
        }
        yield* call(mls, "SendWelcomeMessages", { messages: [{ v1: welcome }] })
        const page = yield* call(mls, "QueryWelcomeMessages", { installationKey, pagingInfo: { direction: 1 } })
        const [served] = page.messages
        expect(served.v1.id.toString()).toBe("1")
        expect([served.v1.wrapperAlgorithm, [...served.v1.welcomeMetadata], [...served.v1.hpkePublicKey]]).toEqual([2, [7], [9, 9]])
      }))

    it.effect("commit-log entries come back ascending with their sequence ids; descending is refused", () =>
      Effect.gen(function*() {
        const { mls } = yield* Xmtp
        const groupId = newGroupId()
        const entry = (n: number) => ({
          groupId,
          serializedCommitLogEntry: new Uint8Array([n]),
          signature: { bytes: new Uint8Array(64), publicKey: new Uint8Array(32) }
        })
        yield* call(mls, "BatchPublishCommitLog", { requests: [entry(1), entry(2)] })
        const answer = yield* call(mls, "BatchQueryCommitLog", { requests: [{ groupId, pagingInfo: { idCursor: 0 } }] })
        expect(answer.responses[0].commitLogEntries.map((e: any) => [e.sequenceId.toString(), e.serializedCommitLogEntry[0]]))
          .toEqual([["1", 1], ["2", 2]])
        const descending = yield* refusal(mls, "BatchQueryCommitLog", { requests: [{ groupId, pagingInfo: { direction: 2 } }] })
        expect(descending.code).toBe(INVALID_ARGUMENT)
      }))
  })

  describe("refusals change nothing", () => {
    it.effect("a batch where one message is not MLS stores none of it", () =>
      Effect.gen(function*() {
        const { mls } = yield* Xmtp
        const group = newGroupId()
        const refused = yield* refusal(mls, "SendGroupMessages", {
          messages: [groupInput(privateMessage(group, "application", "fine")), groupInput(new Uint8Array([1, 2, 3]))]
        })
        expect(refused.code).toBe(INVALID_ARGUMENT)
        expect(refused.details).toMatch(/invalid group message/)
        expect((yield* query(group, {})).messages).toEqual([])
      }))

    it.effect("the Converge face's bounds: 51 messages in a send, a message over 1 MiB, 11 commit-log entries", () =>
      Effect.gen(function*() {
        const { mls } = yield* Xmtp
        const group = newGroupId()
        const many = Array.from({ length: 51 }, (_, i) => groupInput(privateMessage(group, "application", `b${i}`)))
        expect((yield* refusal(mls, "SendGroupMessages", { messages: many })).details).toMatch(/51 items exceed the limit of 50/)
        const huge = groupInput(privateMessage(group, "application", "x".repeat(1024 * 1024)))
        expect((yield* refusal(mls, "SendGroupMessages", { messages: [huge] })).details).toMatch(/over the limit/)
        const entry = { groupId: group, serializedCommitLogEntry: new Uint8Array([1]), signature: { bytes: new Uint8Array(64), publicKey: new Uint8Array(32) } }
        expect((yield* refusal(mls, "BatchPublishCommitLog", { requests: Array(11).fill(entry) })).code).toBe(INVALID_ARGUMENT)
        expect((yield* query(group, {})).messages).toEqual([])
      }))
  })

  describe("identity updates are verified by replaying the inbox's log", () => {
    it.effect("a wallet creates its inbox with an installation; its address then names the inbox", () =>
      Effect.gen(function*() {
        const { identity } = yield* Xmtp
        const wallet = newWallet()
        const { inboxId, update } = registration(wallet, newInstallation())
        yield* call(identity, "PublishIdentityUpdate", { identityUpdate: update })
        const found = yield* call(identity, "GetInboxIds", { requests: [{ identifier: wallet.address, identifierKind: 1 }] })
        expect(found.responses[0].inboxId).toBe(inboxId)
        const log = yield* call(identity, "GetIdentityUpdates", { requests: [{ inboxId, sequenceId: 0 }] })
        expect(log.responses[0].updates.map((u: any) => u.sequenceId.toString())).toEqual(["1"])
      }))

    it.effect("a replayed update, a squatted address and a second installation-added-by-installation are refused", () =>
      Effect.gen(function*() {
        const { identity } = yield* Xmtp
        const alice = newWallet()
        const phone = newInstallation()
        const { inboxId, update } = registration(alice, phone)
        yield* call(identity, "PublishIdentityUpdate", { identityUpdate: update })
        expect((yield* refusal(identity, "PublishIdentityUpdate", { identityUpdate: update })).details).toMatch(/already created/)

        const mallory = newWallet()
        const squat = registration({ address: alice.address, sign: mallory.sign }, newInstallation(), 1n)
        expect((yield* refusal(identity, "PublishIdentityUpdate", { identityUpdate: squat.update })).details)
          .toMatch(/not signed by the initial identifier/)

        const laptop = newInstallation()
        const add = { newMemberIdentifier: { installationPublicKey: laptop.publicKey } }
        const byPhone = signUpdate({ inboxId, clientTimestampNs: nowNs(), actions: [{ add }] }, (text) => [{
          add: {
            ...add,
            existingMemberSignature: { installationKey: { bytes: phone.sign(text), publicKey: phone.publicKey } },
            newMemberSignature: { installationKey: { bytes: laptop.sign(text), publicKey: laptop.publicKey } }
          }
        }])
        expect((yield* refusal(identity, "PublishIdentityUpdate", { identityUpdate: byPhone })).details)
          .toMatch(/an installation cannot add an installation/)
        const log = yield* call(identity, "GetIdentityUpdates", { requests: [{ inboxId, sequenceId: 0 }] })
        expect(log.responses[0].updates.length).toBe(1)
        const nobody = yield* call(identity, "GetInboxIds", { requests: [{ identifier: mallory.address, identifierKind: 1 }] })
        expect(nobody.responses[0].inboxId).toBeUndefined()
      }))

    it.effect("the wallet adds a second installation; the recovery address revokes it", () =>
      Effect.gen(function*() {
        const { identity } = yield* Xmtp
        const alice = newWallet()
        const { inboxId, update } = registration(alice, newInstallation())
        yield* call(identity, "PublishIdentityUpdate", { identityUpdate: update })
        const laptop = newInstallation()
        const member = { installationPublicKey: laptop.publicKey }
        const added = signUpdate({ inboxId, clientTimestampNs: nowNs(), actions: [{ add: { newMemberIdentifier: member } }] }, (text) => [{
          add: {
            newMemberIdentifier: member,
            existingMemberSignature: { erc191: { bytes: alice.sign(text) } },
            newMemberSignature: { installationKey: { bytes: laptop.sign(text), publicKey: laptop.publicKey } }
          }
        }])
        yield* call(identity, "PublishIdentityUpdate", { identityUpdate: added })
        const revoked = signUpdate({ inboxId, clientTimestampNs: nowNs(), actions: [{ revoke: { memberToRevoke: member } }] }, (text) => [{
          revoke: { memberToRevoke: member, recoveryIdentifierSignature: { erc191: { bytes: alice.sign(text) } } }
        }])
        yield* call(identity, "PublishIdentityUpdate", { identityUpdate: revoked })
        const log = yield* call(identity, "GetIdentityUpdates", { requests: [{ inboxId, sequenceId: 1 }] })
        expect(log.responses[0].updates.map((u: any) => u.sequenceId.toString())).toEqual(["2", "3"])
      }))

    it.effect("a smart-contract wallet signature is refused with the reason", () =>
      Effect.gen(function*() {
        const { identity } = yield* Xmtp
        const wallet = newWallet()
        const scw = {
          inboxId: inboxIdOf(wallet.address, 0n),
          clientTimestampNs: nowNs(),
          actions: [{
            createInbox: {
              initialIdentifier: wallet.address,
              nonce: "0",
              initialIdentifierKind: 1,
              initialIdentifierSignature: { erc6492: { accountId: `eip155:1:${wallet.address}`, blockNumber: "1", signature: new Uint8Array(65) } }
            }
          }]
        }
        const refused = yield* refusal(identity, "PublishIdentityUpdate", { identityUpdate: scw })
        expect([refused.code, refused.details]).toEqual([INVALID_ARGUMENT, expect.stringMatching(/smart-contract wallet.*no chain/)])
      }))
  })
})

layer(XmtpHarness.layer({ maxSubscriptionsPerConnection: 1, maxIdentityEntries: 2 }))("The XMTP V3 face's answer bounds", (it) => {
  it.effect("an identity answer carries at most --max-identity-entries; the client asks on from its cursor", () =>
    Effect.gen(function*() {
      const { identity } = yield* Xmtp
      const alice = newWallet()
      const { inboxId, update } = registration(alice, newInstallation())
      yield* call(identity, "PublishIdentityUpdate", { identityUpdate: update })
      for (let i = 0; i < 2; i++) {
        const laptop = newInstallation()
        const member = { installationPublicKey: laptop.publicKey }
        yield* call(identity, "PublishIdentityUpdate", {
          identityUpdate: signUpdate({ inboxId, clientTimestampNs: nowNs(), actions: [{ add: { newMemberIdentifier: member } }] }, (text) => [{
            add: {
              newMemberIdentifier: member,
              existingMemberSignature: { erc191: { bytes: alice.sign(text) } },
              newMemberSignature: { installationKey: { bytes: laptop.sign(text), publicKey: laptop.publicKey } }
            }
          }])
        })
      }
      const sequences = (answer: any) => answer.responses.map((r: any) => r.updates.map((u: any) => u.sequenceId.toString()))
      const both = yield* call(identity, "GetIdentityUpdates", { requests: [{ inboxId, sequenceId: 0 }, { inboxId, sequenceId: 0 }] })
      expect(sequences(both)).toEqual([["1", "2"], []])
      expect(sequences(yield* call(identity, "GetIdentityUpdates", { requests: [{ inboxId, sequenceId: 2 }] }))).toEqual([["3"]])
    }))

  it.effect("the newest messages with content are refused past 4 MiB, and served without it", () =>
    Effect.gen(function*() {
      const { mls } = yield* Xmtp
      const groups = Array.from({ length: 5 }, () => newGroupId())
      for (const group of groups) {
        yield* call(mls, "SendGroupMessages", { messages: [groupInput(privateMessage(group, "application", "x".repeat(1_000_000)))] })
      }
      const refused = yield* refusal(mls, "GetNewestGroupMessage", { groupIds: groups, includeContent: true })
      expect([refused.code, refused.details]).toEqual([8, expect.stringMatching(/ask for fewer groups/)])
      const bare = yield* call(mls, "GetNewestGroupMessage", { groupIds: groups, includeContent: false })
      expect(bare.responses.map((r: any) => r.groupMessage.v1.id.toString())).toEqual(["1", "1", "1", "1", "1"])
    }))

  it.scoped("a connection past its subscription limit gets RESOURCE_EXHAUSTED", () =>
    Effect.gen(function*() {
      const { mls } = yield* Xmtp
      const first = yield* subscribe(mls, "SubscribeGroupMessages", { filters: [{ groupId: newGroupId(), idCursor: 0 }] })
      yield* first.headers
      const second = yield* subscribe(mls, "SubscribeGroupMessages", { filters: [{ groupId: newGroupId(), idCursor: 0 }] })
      const error = yield* second.messages.pipe(Stream.runDrain, Effect.flip)
      expect([error.code, error.details]).toEqual([8, "more than 1 subscriptions on this connection"])
      // The limit is per connection: another connection subscribes.
      const other = yield* XmtpHarness.otherConnection
      const third = yield* subscribe(other, "SubscribeGroupMessages", { filters: [{ groupId: newGroupId(), idCursor: 0 }] })
      yield* third.headers.pipe(Effect.timeout("5 seconds"))
    }))
})


layer(XmtpHarness.layer({ maxConnections: 2, headersTimeoutMillis: 1500 }))("The XMTP V3 face's connection bounds", (it) => {
  /** A raw TCP connection to the server: whether it is closed within `millis`. */
  const closedWithin = (port: number, millis: number) =>
    Effect.async<boolean>((resume) => {
      const socket = Net.connect({ host: "127.0.0.1", port })
      const timer = setTimeout(() => resume(Effect.succeed(false)), millis)
      socket.on("error", () => {})
      socket.once("close", () => {
        clearTimeout(timer)
        resume(Effect.succeed(true))
      })
      return Effect.sync(() => {
        clearTimeout(timer)
        socket.destroy()
      })
    })

  it.effect("connections past --max-connections are closed at once; silent ones after --headers-timeout", () =>
    Effect.gen(function*() {
      const { port } = yield* Xmtp
      const [a, b, c] = yield* Effect.all([
        Effect.timed(closedWithin(port, 4000)),
        Effect.timed(closedWithin(port, 4000)),
        // Opened once the two silent ones hold both places.
        Effect.delay(Effect.timed(closedWithin(port, 500)), "300 millis")
      ], { concurrency: 3 })
      expect(c[1]).toBe(true)
      expect([a[1], b[1]]).toEqual([true, true])
      expect(Math.min(Duration.toMillis(a[0]), Duration.toMillis(b[0]))).toBeGreaterThan(1000)
      // Real time: the server's timeouts are real ones.
    }).pipe(Effect.withClock(Clock.make())))
})
