import { Effect } from "effect"
import { randomBytes } from "node:crypto"
import { sha256Hex, toHex } from "../src/domain/Bytes.ts"
import { installationIdOf } from "../src/domain/IdentityLog.ts"
import type { GroupId, InboxId } from "../src/domain/Ids.ts"
import { MlsCrypto } from "../src/services/MlsCrypto.ts"
const main = Effect.gen(function*() {
  const crypto = yield* MlsCrypto
  const inst = yield* Effect.forEach(Array.from({ length: 10 }), () => Effect.gen(function*() {
    const keys = yield* crypto.generateSignatureKeyPair
    const identity = { inboxId: sha256Hex(randomBytes(32)) as InboxId, installationId: installationIdOf(keys.publicKey) }
    return { identity, keyPackage: yield* crypto.generateKeyPackage(identity, keys) }
  }))
  let a = yield* crypto.createGroup(toHex(randomBytes(16)) as GroupId, inst[0]!.keyPackage)
  const r = yield* crypto.createCommit(a, { add: inst.slice(1).map((i) => i.keyPackage.publicPackage) })
  a = r.staged
  let b = yield* crypto.joinFromWelcome(r.welcome!, [inst[1]!.keyPackage])
  const mode = process.argv[2]
  const t0 = performance.now()
  if (mode === "commit") for (let i = 0; i < 60; i++) { const c = yield* crypto.createCommit(a, {}); a = c.staged; b = (yield* crypto.process(b, c.commit)).state }
  if (mode === "deser") { const s = crypto.serialize(a); for (let i = 0; i < 1000; i++) yield* crypto.deserialize(s) }
  console.log(mode, performance.now() - t0)
}).pipe(Effect.provide(MlsCrypto.layer()))
Effect.runPromise(main)
