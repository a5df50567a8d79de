/**
 * Joining groups from welcomes. The welcome topic of this installation is read from its
 * cursor; each welcome is checked (every member a current installation of its inbox) and
 * joined with the group cursor at the commit that added us. A duplicate is ignored; a bad
 * welcome is logged and skipped without losing the others.
 */
import { Clock, Effect, Option, Schema } from "effect"
import { CryptoError } from "../domain/Errors.ts"
import { dmPeer, type GroupId } from "../domain/Ids.ts"
import { GroupRow } from "../domain/Rows.ts"
import { WelcomePayloadJson } from "../domain/Wire.ts"
import type { WelcomeMessageEnvelope } from "../domain/Wire.ts"
import { type EngineEnv, groupTopic, welcomeTopic } from "./Engine.ts"

export const make = (env: EngineEnv) => {
  const { crypto, ds, identity, storage } = env
  const topic = welcomeTopic(identity.installationId)

  /** Joins one welcome; returns the group id if a group was joined (or re-joined). */
  const join = (envelope: WelcomeMessageEnvelope) =>
    Effect.gen(function*() {
      const payload = yield* Schema.decodeUnknown(WelcomePayloadJson)(new TextDecoder().decode(envelope.payload)).pipe(
        Effect.mapError(() => new CryptoError({ reason: "Malformed", detail: "welcome payload does not decode" }))
      )
      const existing = yield* storage.groups.get(payload.groupId)
      if (Option.isSome(existing) && existing.value.membership_state !== "inactive") return undefined
      const state = yield* crypto.joinFromWelcome(payload.welcome, yield* identity.keyPackages)
      const view = crypto.view(state)
      if (view.groupId !== payload.groupId) {
        return yield* new CryptoError({ reason: "Malformed", detail: "welcome names another group than its metadata" })
      }
      if (payload.dmId !== undefined) {
        // A DM names both inboxes; nobody else may be in it.
        const peer = dmPeer(payload.dmId, identity.inboxId)
        const stranger = view.members.find((m) => m.inboxId !== identity.inboxId && m.inboxId !== peer)
        if (peer === undefined || stranger !== undefined) {
          return yield* new CryptoError({ reason: "Malformed", detail: `welcome to DM ${payload.dmId} has other members` })
        }
      }
      for (const leaf of view.members) {
        if (!(yield* identity.isValidLeaf(leaf))) {
          return yield* new CryptoError({
            reason: "Unauthenticated",
            detail: `member ${leaf.installationId} is not a current installation of inbox ${leaf.inboxId}`
          })
        }
      }
      const now = yield* Clock.currentTimeNanos
      yield* storage.transaction(Effect.gen(function*() {
        if (Option.isSome(existing)) {
          yield* storage.groups.saveState(payload.groupId, { epoch: view.epoch, mlsState: crypto.serialize(state) })
          yield* storage.groups.setMembership(payload.groupId, "active")
        } else {
          yield* storage.groups.insert(GroupRow.make({
            id: payload.groupId,
            kind: payload.dmId === undefined ? "group" : "dm",
            dm_id: payload.dmId ?? null,
            membership_state: "active",
            epoch: view.epoch,
            mls_state: crypto.serialize(state),
            maybe_forked: false,
            fork_details: null,
            name: null,
            description: null,
            added_by_inbox_id: null,
            created_at_ns: now,
            last_message_ns: envelope.serverTimeNs
          }))
        }
        yield* storage.cursors.advance(groupTopic(payload.groupId), payload.commitSequenceId)
        yield* storage.cursors.advance(topic, envelope.sequenceId)
      }))
      return payload.groupId
    })

  /** Reads the welcome topic to its end; returns the groups joined. */
  const syncWelcomes = Effect.gen(function*() {
    const joined: Array<GroupId> = []
    let skipped = 0
    while (true) {
      const cursor = yield* storage.cursors.get(topic)
      const page = yield* ds.queryWelcomeMessages({
        installationId: identity.installationId,
        afterSequenceId: cursor,
        limit: env.options.pageSize
      })
      for (const envelope of page.items) {
        const result = yield* join(envelope).pipe(
          Effect.catchTags({
            CryptoError: (e) =>
              Effect.logWarning(`skipping welcome ${envelope.sequenceId}: ${e.message}`).pipe(
                Effect.tap(() => skipped++),
                Effect.as(undefined)
              ),
            InvalidIdentityUpdate: (e) =>
              Effect.logWarning(`skipping welcome ${envelope.sequenceId}: ${e.message}`).pipe(
                Effect.tap(() => skipped++),
                Effect.as(undefined)
              )
          })
        )
        if (result !== undefined) joined.push(result)
        yield* storage.cursors.advance(topic, envelope.sequenceId)
      }
      if (page.next === undefined) return { joined, skipped }
    }
  }).pipe(Effect.withSpan("Welcomes.sync"))

  return { syncWelcomes }
}
