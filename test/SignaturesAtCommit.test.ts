/**
 * A catch-up page is read while its signatures are still being checked beside it (on the thread
 * pool); the page's transaction waits for those checks last, just before it ends. A forgery in
 * the middle of a page must still read exactly as it reads one message at a time: refused alone,
 * the messages around it kept, nothing of the provisional reading stored.
 */
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import type { Conversation } from "../src/services/Client.ts"
import { groupWithMallory, postForgedPage } from "./support/Forgery.ts"

const texts = (conversation: Conversation) =>
  conversation.messages().pipe(Effect.map((messages) => messages.filter((m) => m.kind === "text").map((m) => m.text)))

describe("Signatures checked while the page is written", () => {
  it.scoped("a member's forgery amid a catch-up page is refused alone; the texts around it land and the group reads on", () =>
    Effect.gen(function*() {
      const setup = yield* groupWithMallory
      const { alice, bob, group } = setup

      // Bob is away. Mallory reads Alice's first text, so she knows the key of Alice's next one,
      // and posts her own text under it, in Alice's name, before Alice writes again.
      yield* postForgedPage(setup)

      // One page, one run of four application messages: the forgery is read before its check is
      // done, and uses the key Alice's next text needs; the page must not keep that reading.
      const summary = yield* bob.syncAll
      expect(summary.messages).toBe(3)
      expect(summary.skippedBy).toEqual({ unprocessable: 1 })
      const atBob = yield* bob.conversation(group.id)
      expect(yield* texts(atBob)).toEqual(["lunch at noon?", "I booked a table", "see you there"])
      const senders = (yield* atBob.messages()).filter((m) => m.kind === "text").map((m) => m.senderInboxId)
      expect(senders).toEqual([alice.inboxId, alice.inboxId, alice.inboxId])

      // The state the page stored is the honest one: Bob reads what comes next, and is read.
      yield* group.send("still there?")
      yield* bob.syncAll
      yield* atBob.send("yes")
      yield* alice.syncAll
      expect((yield* texts(group)).slice(-2)).toEqual(["still there?", "yes"])
      expect(yield* texts(atBob)).not.toContain("lunch is cancelled")
    }))
})
