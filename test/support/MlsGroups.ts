/** Groups of MlsCrypto members for the tests that drive the service directly (no engine). */
import { randomBytes } from "node:crypto"
import { expect } from "@effect/vitest"
import { Effect } from "effect"
import { fromUtf8, sha256Hex, toHex, utf8 } from "../../src/domain/Bytes.ts"
import type { CryptoError } from "../../src/domain/Errors.ts"
import type { GroupId, InboxId } from "../../src/domain/Ids.ts"
import { installationIdOf } from "../../src/domain/IdentityLog.ts"
import type { KeyPackageBundle, LeafIdentity, MlsCrypto, MlsGroupState } from "../../src/services/MlsCrypto.ts"

export type Crypto = MlsCrypto["Type"]

export interface Installation {
  readonly identity: LeafIdentity
  readonly keyPackage: KeyPackageBundle
}

export const newGroupId = (): GroupId => toHex(randomBytes(16)) as GroupId

export const newInstallation = (crypto: Crypto, inboxId: InboxId = sha256Hex(randomBytes(32)) as InboxId) =>
  Effect.gen(function*() {
    const keys = yield* crypto.generateSignatureKeyPair
    const identity = { inboxId, installationId: installationIdOf(keys.publicKey) }
    return { identity, keyPackage: yield* crypto.generateKeyPackage(identity, keys) } satisfies Installation
  })

/** One member's view of a group: its installation and current state. */
export interface Member extends Installation {
  state: MlsGroupState
}

export const expectReason = (error: CryptoError, reason: CryptoError["reason"]) => {
  expect(error._tag).toBe("CryptoError")
  expect(error.reason, error.detail).toBe(reason)
}

/** Sends `text` from `from`, has each of `to` decrypt it, and checks the sender it reports. */
export const exchange = (crypto: Crypto, text: string, from: Member, to: ReadonlyArray<Member>) =>
  Effect.gen(function*() {
    const sent = yield* crypto.encrypt(from.state, utf8(text))
    from.state = sent.state
    for (const member of to) {
      const processed = yield* crypto.process(member.state, sent.message)
      if (processed.kind !== "application") throw new Error("expected an application message")
      expect(fromUtf8(processed.plaintext)).toBe(text)
      expect(processed.sender.inboxId).toBe(from.identity.inboxId)
      expect(processed.sender.installationId).toBe(from.identity.installationId)
      expect(processed.sender.leafIndex).toBe(crypto.view(from.state).ownLeafIndex)
      member.state = processed.state
    }
    return sent.message
  })

/** Alice creates a group and adds the others in one commit; everyone joins from the welcome. */
export const setUpGroup = (crypto: Crypto, size: number) =>
  Effect.gen(function*() {
    const installations = yield* Effect.forEach(Array.from({ length: size }), () => newInstallation(crypto))
    const [creator, ...others] = installations as [Installation, ...Array<Installation>]
    const alice: Member = { ...creator, state: yield* crypto.createGroup(newGroupId(), creator.keyPackage) }
    if (others.length === 0) return [alice]
    const { staged, welcome } = yield* crypto.createCommit(alice.state, {
      add: others.map((o) => o.keyPackage.publicPackage)
    })
    alice.state = staged
    const joined = yield* Effect.forEach(others, (o) =>
      crypto.joinFromWelcome(welcome!, [o.keyPackage]).pipe(Effect.map((state): Member => ({ ...o, state }))))
    return [alice, ...joined]
  })
