/**
 * Installations coming and going during a run: a further device of an inbox boots (registering
 * itself with the inbox's signature), and an inbox revokes one of its devices with its root key.
 */
import { Effect, Option } from "effect"
import * as IdentityLog from "../domain/IdentityLog.ts"
import type { ClientActions } from "./ClientActions.ts"
import type { RunState } from "./RunState.ts"

export const make = (s: RunState, { clientOf }: Pick<ClientActions, "clientOf">) => {
  /** Boots installation `d` as a further device of `inbox` (registering it on first boot). */
  const bootDevice = (d: number, inbox: number) =>
    Effect.gen(function*() {
      const first = yield* clientOf(inbox)
      const version = s.installs[d]?.protocolVersion
      const client = yield* s.net.client(s.clientName(d), {
        ...s.clientOptions,
        sameInboxAs: first,
        ...(version === undefined ? {} : { protocolVersion: version })
      })
      s.clients[d] = client
      return `ok: registered`
    })

  /** Publishes a RevokeInstallation of `d`, signed with its inbox's root key. */
  const revokeDevice = (d: number) =>
    Effect.gen(function*() {
      const device = yield* clientOf(d)
      const root = yield* clientOf(s.installs[d]!.inbox)
      const [log] = yield* s.net.delivery.getIdentityUpdates([{ inboxId: device.inboxId, afterSequence: 0 }])
      const state = IdentityLog.replay((log?.updates ?? []).map((u) => u.update))
      if (state._tag === "Left" || Option.isNone(state.right)) {
        return yield* Effect.dieMessage(`inbox of ${s.clientName(d)} has no valid identity log`)
      }
      const update = IdentityLog.signUpdate(root.rootSecretKey!, device.inboxId, state.right.value, {
        _tag: "RevokeInstallation",
        installationId: device.installationId
      })
      const envelope = yield* s.net.delivery.publishIdentityUpdate(update)
      s.counters.revocations++
      return `ok: identity update ${envelope.sequenceId}`
    })

  return { bootDevice, revokeDevice }
}
