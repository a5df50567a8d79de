/**
 * A malicious member, as the simulation plays it: it takes a member's stored MLS state and
 * builds, outside the engine, a commit Converge never sends (a GroupContextExtensions commit
 * that slips in an extension besides the settings, or a ReInit suspending the group). Every
 * honest member must skip it. (Settings changes the policy forbids are played by the
 * governance operations.)
 * ts-mls is used directly here on purpose: the attacker does not go through `MlsCrypto`.
 */
import { Effect } from "effect"
import {
  type ClientState,
  createCommit,
  encodeMlsMessage,
  getCiphersuiteFromName,
  getCiphersuiteImpl,
  type Proposal
} from "ts-mls"
import { defaultClientConfig } from "ts-mls/clientConfig.js"
import { utf8 } from "../domain/Bytes.ts"
import { decodeStoredState } from "../layers/TsMlsStoredState.ts"

export type ForgedCommit = "foreignExtension" | "reinit"

/** The group-context extension holding a group's metadata (see `layers/TsMlsExtensions.ts`). */
const METADATA_EXTENSION = 0xf0c0

const suite = getCiphersuiteImpl(getCiphersuiteFromName("MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"))

const proposalOf = (variant: ForgedCommit, state: ClientState): Proposal =>
  variant === "foreignExtension"
    ? {
      proposalType: "group_context_extensions",
      groupContextExtensions: {
        extensions: [
          ...state.groupContext.extensions.filter((e) => e.extensionType === METADATA_EXTENSION),
          { extensionType: 0xff01, extensionData: utf8("slipped in") }
        ]
      }
    }
    : {
      proposalType: "reinit",
      reinit: {
        groupId: state.groupContext.groupId,
        version: "mls10",
        cipherSuite: state.groupContext.cipherSuite,
        extensions: []
      }
    }

/** The MLS bytes of a forbidden commit built from a member's serialized state, or undefined. */
export const forgeCommit = (serializedState: Uint8Array, variant: ForgedCommit) =>
  Effect.promise(async () => {
    const decoded = decodeStoredState(serializedState, 0)
    if (decoded === undefined) return undefined
    const state = { ...decoded[0], clientConfig: defaultClientConfig } as ClientState
    const result = await createCommit(
      { state, cipherSuite: await suite },
      { extraProposals: [proposalOf(variant, state)], ratchetTreeExtension: true }
    ).catch(() => undefined)
    return result === undefined ? undefined : encodeMlsMessage(result.commit)
  })
