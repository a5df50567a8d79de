/**
 * How the simulation judges an operation's outcome: done, a typed error it may meet under
 * faults, a crash, abandoned with its crashed client, or a violation (an unexpected error type,
 * a defect, or an operation that hung).
 */
import { Cause, Data, Exit, Option } from "effect"
import { simulatedCrashOf } from "../testing.ts"

/** An operation whose group was never created: nothing to do. */
export class Skipped extends Data.TaggedError("Skipped")<{ readonly reason: string }> {
  override get message() {
    return this.reason
  }
}

export class Hung extends Data.TaggedError("Hung")<{ readonly after: string }> {
  override get message() {
    return `no result after ${this.after}`
  }
}

/** Typed errors an operation may legitimately meet under faults. */
const expectedErrors = new Set([
  "DeliveryError",
  "IntentFailed",
  "GroupInactive",
  "InvalidInput",
  "NotAMember",
  "KeyPackageUnavailable",
  "ConversationNotFound",
  // Removing the group's last super admin (its creator, unless it named another) or its leaving.
  "PermissionDenied",
  // A rename whose ifMatch a concurrent change overtook.
  "MetadataConflict",
  // Deleting what a concurrent deletion took already (or what this installation does not hold).
  "MessageAlreadyDeleted",
  "MessageNotFound",
  "Skipped"
])

export type Verdict =
  | { readonly kind: "ok"; readonly text: string }
  | { readonly kind: "expected"; readonly text: string }
  | { readonly kind: "crash"; readonly text: string }
  | { readonly kind: "abandoned"; readonly text: string }
  | { readonly kind: "violation"; readonly invariant: string; readonly text: string }

export const firstLine = (s: string) => s.split("\n")[0] ?? s

/**
 * `olderVersion`: the version of the acting installation when it is of an earlier build. A group's
 * minimum may pause it: `ProtocolVersionTooOld` naming its own version is then an expected
 * refusal. Any other (and from anyone else) is a violation: every inbox keeps a device of the
 * run's version, so no add is refused for age.
 */
const isOwnPause = (error: { readonly _tag?: string }, olderVersion: number | undefined) => {
  if (error._tag !== "ProtocolVersionTooOld" || olderVersion === undefined) return false
  const { current, required } = error as { readonly current?: number; readonly required?: number }
  return current === olderVersion && required !== undefined && required > current
}

export const judge = (exit: Exit.Exit<string, unknown>, options: { readonly olderVersion?: number | undefined } = {}): Verdict => {
  if (Exit.isSuccess(exit)) return { kind: "ok", text: exit.value }
  const crash = simulatedCrashOf(exit.cause)
  if (crash !== undefined) return { kind: "crash", text: `crashed at ${crash.point}` }
  const failure = Cause.failureOption(exit.cause)
  if (Option.isSome(failure)) {
    const error = failure.value as { readonly _tag?: string; readonly message?: string }
    const tag = error._tag ?? "unknown"
    if (tag === "Hung") return { kind: "violation", invariant: "hung", text: `hung: ${error.message}` }
    if (expectedErrors.has(tag) || isOwnPause(error, options.olderVersion)) return { kind: "expected", text: `${tag}: ${firstLine(error.message ?? "")}` }
    return { kind: "violation", invariant: "unexpected-error", text: `unexpected ${tag}: ${error.message ?? String(error)}` }
  }
  if (Cause.isInterruptedOnly(exit.cause)) return { kind: "abandoned", text: "abandoned: its client crashed" }
  return { kind: "violation", invariant: "defect", text: `defect: ${Cause.pretty(exit.cause)}` }
}
