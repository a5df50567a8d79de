/**
 * How the CLI prints: aligned tables with headers, JSON for scripts, colour only on a terminal
 * without `NO_COLOR`. Results go to stdout; notes, warnings and errors to stderr.
 */
import { Console, Effect, Option, Schema } from "effect"
import { MembershipChangeJson } from "../domain/Content.ts"
import type { Message } from "../domain/Model.ts"

/** Colour on stdout/stderr only for a terminal, and never with `NO_COLOR` set (https://no-color.org). */
export const colourEnabled = (stream: NodeJS.WriteStream) =>
  stream.isTTY === true && (process.env["NO_COLOR"] ?? "") === "" && process.env["TERM"] !== "dumb"

const ANSI = /\x1b\[[0-9;]*m/g
export const stripAnsi = (text: string) => text.replace(ANSI, "")

/** Rows under a header, each column as wide as its widest cell; the last column is not padded. */
export const table = (headers: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>) => {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)))
  const line = (cells: ReadonlyArray<string>) =>
    cells.map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i]!))).join("  ").trimEnd()
  return [line(headers), ...rows.map(line)].join("\n")
}

/** JSON with bigints (server timestamps) as decimal strings. */
export const json = (value: unknown) =>
  Console.log(JSON.stringify(value, (_, v: unknown) => (typeof v === "bigint" ? v.toString() : v), 2))

/** A note for the person at the terminal, never mixed into the results a script reads. */
export const note = (text: string) => Effect.sync(() => process.stderr.write(`${text}\n`))

/** The server's timestamp; one out of Date's range (a broken or hostile server) is shown raw. */
export const time = (ns: bigint) => {
  const date = new Date(Number(ns / 1_000_000n))
  return Number.isFinite(date.getTime()) ? date.toISOString() : `${ns}ns`
}

/** What a message says: its text, or for a membership change who was added and removed. */
export const messageText = (m: Message, name: (inboxId: string) => string) => {
  if (m.deleted) return "(deleted)"
  const direct = m.groupContext === null ? "" : `(direct, in group ${m.groupContext}) `
  if (m.content !== null) return `${direct}[${m.content.type}] ${m.text}`
  if (direct !== "") return `${direct}${m.text}`
  if (m.kind === "membershipChange") {
    const change = Schema.decodeOption(MembershipChangeJson)(m.text)
    if (Option.isSome(change)) {
      const parts = [
        ...change.value.addedInboxes.map((i) => `+${name(i)}`),
        ...change.value.removedInboxes.map((i) => `-${name(i)}`)
      ]
      return `* changed members: ${parts.join(" ")}`
    }
  }
  return m.text
}

/** One message as a line (used by `watch`). */
export const formatMessage = (m: Message, name: (inboxId: string) => string = (i) => i) => {
  const status = m.deliveryStatus === "published" ? "" : `  (${m.deliveryStatus})`
  return `${time(m.sentAtNs)}  ${name(m.senderInboxId)}  ${messageText(m, name)}${status}`
}

/** A message as JSON: every field, the time also as ISO text. */
export const messageJson = (m: Message) => ({
  id: m.id,
  conversationId: m.conversationId,
  sender: m.senderInboxId,
  kind: m.kind,
  text: m.text,
  groupContext: m.groupContext,
  contentType: m.content?.type ?? null,
  deleted: m.deleted,
  sentAtNs: m.sentAtNs,
  sentAt: time(m.sentAtNs),
  deliveryStatus: m.deliveryStatus
})
