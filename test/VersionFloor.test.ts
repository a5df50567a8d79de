/** Which installations an add takes in by version, as a table: no SQLite, no ts-mls. */
import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import type { InboxId, InstallationId } from "../src/domain/Ids.ts"
import { type OfferedInstallation, splitByVersion } from "../src/domain/VersionFloor.ts"
import * as SkippedInstallations from "../src/services/SkippedInstallations.ts"

const inbox = (c: string) => c.repeat(64) as InboxId
const [bob, carol] = [inbox("b"), inbox("c")]
const offer = (who: InboxId, device: string, protocolVersion: number): OfferedInstallation => ({
  inboxId: who,
  installationId: device.repeat(64) as InstallationId,
  protocolVersion
})
const phone = offer(bob, "1", 2)
const tablet = offer(bob, "2", 1)
const laptop = offer(bob, "3", 3)
const carolOld = offer(carol, "4", 1)
const carolOlder = offer(carol, "5", 0)

const devices = (os: ReadonlyArray<OfferedInstallation>) => os.map((o) => o.installationId)

describe("splitting an add by the group's minimum version", () => {
  const admitted: ReadonlyArray<readonly [string, number, ReadonlyArray<OfferedInstallation>, ReadonlyArray<InboxId>, ReadonlyArray<OfferedInstallation>, ReadonlyArray<OfferedInstallation>]> = [
    ["all new enough: all go in", 2, [phone, laptop], [bob], [phone, laptop], []],
    ["an old tablet stays out, the phone goes in", 2, [phone, tablet], [bob], [phone], [tablet]],
    ["at the minimum exactly is new enough", 3, [laptop, phone], [bob], [laptop], [phone]],
    ["devices of an inbox nobody asked for (own devices, a check) may all stay out", 2, [tablet, carolOld], [], [], [tablet, carolOld]],
    ["an asked inbox with nothing on offer (all its devices are in) is no refusal", 2, [tablet], [carol], [], [tablet]],
    ["a group of minimum 1 takes everything", 1, [tablet, phone, carolOld], [bob, carol], [tablet, phone, carolOld], []]
  ]
  for (const [story, required, offered, asked, inside, outside] of admitted) {
    it(story, () => {
      const split = Either.getOrThrow(splitByVersion(required, offered, new Set(asked)))
      expect(devices(split.admitted)).toEqual(devices(inside))
      expect(devices(split.tooOld)).toEqual(devices(outside))
    })
  }

  it("an asked inbox with no device new enough is refused, naming its newest version", () => {
    const refused = splitByVersion(2, [phone, carolOld, carolOlder], new Set([bob, carol]))
    expect(Either.isLeft(refused) && refused.left).toMatchObject({ _tag: "ProtocolVersionTooOld", required: 2, current: 1 })
  })
})

describe("waiting to try a left-out installation again", () => {
  const minute = 60_000_000_000n
  it("only groups whose minimum is above its version wait, and only for the retry wait", () => {
    const skipped = SkippedInstallations.make()
    skipped.skip([tablet], 0n)
    expect(skipped.waiting(tablet.installationId, 2, minute / 2n)).toBe(true)
    // A DM, or a group that still admits version 1, adds it meanwhile.
    expect(skipped.waiting(tablet.installationId, 1, minute / 2n)).toBe(false)
    expect(skipped.waiting(tablet.installationId, 2, minute)).toBe(false)
    expect(skipped.waiting(phone.installationId, 2, minute / 2n)).toBe(false)
  })

  const second = 1_000_000_000n
  it.each([
    { interval: 5n * second, failures: 1, wait: 5n * second },
    { interval: 5n * second, failures: 2, wait: 10n * second },
    { interval: 5n * second, failures: 4, wait: 40n * second },
    { interval: 5n * second, failures: 5, wait: minute },
    { interval: 5n * second, failures: 1_000, wait: minute },
    { interval: 0n, failures: 7, wait: 0n }
  ])("an unusable key package's $failures-th failure in a row waits $wait ns at a check interval of $interval ns", ({ failures, interval, wait }) => {
    expect(SkippedInstallations.unusableWaitNs(interval, failures)).toBe(wait)
  })

  it("an unusable installation waits for every group alike, longer at each failure in a row, and not at all once admitted", () => {
    const skipped = SkippedInstallations.make(5n * second)
    skipped.unusable([phone.installationId], 0n)
    expect(skipped.waiting(phone.installationId, 0, 4n * second)).toBe(true)
    expect(skipped.waiting(phone.installationId, 2, 5n * second)).toBe(false)
    skipped.unusable([phone.installationId], 5n * second)
    expect(skipped.waiting(phone.installationId, 0, 14n * second)).toBe(true)
    expect(skipped.waiting(phone.installationId, 0, 15n * second)).toBe(false)
    skipped.admitted([phone.installationId])
    expect(skipped.waiting(phone.installationId, 0, 15n * second - 1n)).toBe(false)
    // Its next failure starts again from one interval.
    skipped.unusable([phone.installationId], 20n * second)
    expect(skipped.waiting(phone.installationId, 0, 25n * second)).toBe(false)
  })
})
