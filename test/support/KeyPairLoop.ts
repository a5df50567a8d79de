/**
 * Run as a child process by `test/KeyGenerationLiveness.test.ts`: generates `argv[2]` HPKE key pairs
 * with the node:crypto ciphersuite (as a client sealing welcomes and path secrets does), then prints
 * "done". A process that deadlocks never prints it.
 */
import { nodeCiphersuite } from "../../src/layers/NodeCiphersuite.ts"

const count = Number(process.argv[2] ?? "100000")
for (let i = 0; i < count; i++) await nodeCiphersuite.hpke.generateKeyPair()
console.log("done")
