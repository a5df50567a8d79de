/**
 * The message invariants of one group: which installations may hold each message (none from an
 * epoch they were not in, before they joined or after their removal, history aside), and which
 * must (every member from its epoch to where it landed).
 */
import { Option, Schema } from "effect"
import { MembershipChangeJson } from "../domain/Content.ts"
import type { StoredMessage } from "../domain/Stored.ts"
import type { CheckContext } from "./CheckContext.ts"
import { type GroupFacts, joinedBy } from "./GroupFacts.ts"
import { short } from "./ServerView.ts"

/**
 * Each installation's messages: in the topic's order, none twice, none unpublished, and none of
 * an epoch it was not in, from before it joined or after its removal. Returns each one's rows by id.
 */
export const checkHeldMessages = (ctx: CheckContext, facts: GroupFacts) => {
  const { clients, heldBySibling, name, violate } = ctx
  const { claimed, held, inForce, joins, label, mayHaveJoined, memberThroughout } = facts
  const idAtSequence = new Map<bigint, { readonly id: string; readonly c: number }>()
  const rowsById = new Map<number, Map<string, StoredMessage>>()
  for (const [c, view] of held) {
    const self = clients.get(c)!
    const byId = new Map<string, StoredMessage>()
    rowsById.set(c, byId)
    const texts = new Map<string, number>()
    let lastSequence = 0n
    // Where this installation recorded its own removal (commit sequences).
    const removals = view.messages.flatMap((m) => {
      if (m.kind !== "membershipChange" || m.sequenceId === null) return []
      const change = Schema.decodeUnknownOption(MembershipChangeJson)(m.content)
      return Option.isSome(change) && change.value.removedInboxes.includes(self.inboxId) ? [m.sequenceId] : []
    })
    for (const m of view.messages) {
      byId.set(m.id, m)
      if (m.kind === "text" && !m.deleted) texts.set(m.content, (texts.get(m.content) ?? 0) + 1)
      if (m.deliveryStatus === "unpublished") {
        violate("stuck-unpublished", `${name(c)}: ${label} message "${m.content}" is still unpublished`)
      }
      if (m.sequenceId === null) continue
      if (m.sequenceId <= lastSequence) {
        violate("order", `${name(c)}: ${label} lists sequence ${m.sequenceId} after ${lastSequence}`)
      }
      lastSequence = m.sequenceId > lastSequence ? m.sequenceId : lastSequence
      const first = idAtSequence.get(m.sequenceId)
      if (first === undefined) idAtSequence.set(m.sequenceId, { id: m.id, c })
      else if (first.id !== m.id) {
        violate(
          "order",
          `${label}: sequence ${m.sequenceId} is message ${short(first.id)} at ${name(first.c)} but ${short(m.id)} at ${name(c)}`
        )
      }
      // Nobody may hold a message of an epoch it was not in, or one sent after its removal.
      const own = m.senderInstallationId === self.installationId
      if (m.kind === "text" && !own) {
        const claim = claimed.get(m.sequenceId)
        const position = inForce.get(m.sequenceId)
        if (claim === undefined || position === undefined) {
          violate("phantom-message", `${name(c)}: ${label} holds "${m.content}" at sequence ${m.sequenceId}, which is not a message of this group`)
          continue
        }
        if (!memberThroughout(self.inboxId, claim.epoch, position)) {
          violate(
            "read-after-removal",
            `${name(c)}: ${label} holds "${m.content}" (epoch ${claim.epoch}, sequence ${m.sequenceId}, epoch in force ${position}) but its inbox was not a member throughout`
          )
          continue
        }
        // Read before this device really joined (a forged welcome lets nobody in), by another of its
        // inbox: it came with the history (a device below the group's minimum never joins, yet gets it).
        if (joinedBy(joins.get(c), claim.epoch) === undefined && heldBySibling(m.id, self.installationId)) continue
        const join = joinedBy(mayHaveJoined.get(c), claim.epoch)
        if (join === undefined) {
          violate(
            "read-before-join",
            `${name(c)}: ${label} holds "${m.content}" (epoch ${claim.epoch}, sequence ${m.sequenceId}) but joined only later (${
              (mayHaveJoined.get(c) ?? []).map((j) => `at epoch ${j.epoch} by sequence ${j.sequence}`).join(", ") || "no welcome"
            })`
          )
          continue
        }
        const removedSince = removals.find((r) => r > join.sequence && r < m.sequenceId!)
        if (removedSince !== undefined) {
          violate(
            "read-after-removal",
            `${name(c)}: ${label} holds "${m.content}" (sequence ${m.sequenceId}) sent after its removal at sequence ${removedSince}`
          )
        }
      }
    }
    for (const [text, n] of texts) {
      if (n > 1) violate("stored-twice", `${name(c)}: ${label} stores "${text}" ${n} times`)
    }
  }
  return rowsById
}

/**
 * Every published message reaches every installation that was in the group from its epoch to
 * where it landed; a failed one reaches nobody.
 */
export const checkDelivery = (ctx: CheckContext, facts: GroupFacts, rowsById: ReadonlyMap<number, ReadonlyMap<string, StoredMessage>>) => {
  const { clients, name, revokedAt, violate, world } = ctx
  const { claimed, held, inForce, joins, label, memberThroughout } = facts
  // Every published message reaches every installation that was in the group from its
  // epoch to where it landed; a failed one reaches nobody.
  for (const [c, view] of held) {
    const self = clients.get(c)!
    for (const m of view.messages) {
      if (m.kind !== "text" || m.senderInstallationId !== self.installationId) continue
      if (m.deliveryStatus === "failed") {
        for (const [other, byId] of rowsById) {
          if (other !== c && byId.has(m.id)) {
            violate("failed-but-delivered", `${label}: "${m.content}" failed at its sender ${name(c)} but ${name(other)} stores it`)
          }
        }
        continue
      }
      if (m.deliveryStatus !== "published" || m.sequenceId === null) continue
      const claim = claimed.get(m.sequenceId)
      const position = inForce.get(m.sequenceId)
      if (claim === undefined || position === undefined || claim.kind !== "application") {
        violate("phantom-message", `${name(c)}: its "${m.content}" in ${label} is marked published at sequence ${m.sequenceId}, which is not its message`)
        continue
      }
      if (claim.epoch > position) {
        violate("future-epoch-message", `${label}: "${m.content}" claims epoch ${claim.epoch} but landed where epoch ${position} is in force`)
        continue
      }
      if (position - claim.epoch > BigInt(world.maxPastEpochs)) {
        violate(
          "undecryptable-send",
          `${label}: "${m.content}" by ${name(c)} was encrypted at epoch ${claim.epoch} but landed at epoch ${position}: older than maxPastEpochs (${world.maxPastEpochs})`
        )
        continue
      }
      for (const [other, otherClient] of clients) {
        if (other === c) continue
        const join = joinedBy(joins.get(other), claim.epoch)
        if (join === undefined || !memberThroughout(otherClient.inboxId, join.epoch, position)) continue
        const revoked = revokedAt(other)
        // A revoked device is removed by some commit after its revocation: what landed
        // before the revocation was surely still for it, if it had joined by then. From
        // its revocation on, the delivery service no longer serves it its welcomes.
        // Nor does it owe what lies past the epoch it had reached when it was cut off (a
        // re-add it had not read yet when revoked).
        const reached = held.get(other)?.row.epoch
        if (
          revoked !== undefined &&
          (m.sentAtNs >= revoked || reached === undefined || claim.epoch > reached)
        ) continue
        const got = rowsById.get(other)?.get(m.id)
        if (got === undefined) {
          violate(
            "lost-message",
            `${label}: "${m.content}" by ${name(c)} (epoch ${claim.epoch}, sequence ${m.sequenceId}) is missing at ${name(other)}, in the group from epoch ${join.epoch} throughout`
          )
        } else if (got.sequenceId !== m.sequenceId) {
          violate("order", `${label}: "${m.content}" is at sequence ${got.sequenceId} at ${name(other)}, ${m.sequenceId} at its sender`)
        }
      }
    }
  }
}
