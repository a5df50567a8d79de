/**
 * The extensions Converge puts in ts-mls's groups and leaves: a group's metadata in its context
 * (the only context extension that may change after creation) and each leaf's protocol version.
 */
import { type Capabilities, defaultCapabilities, type Extension, type Proposal } from "ts-mls"
import { extensionsEqual } from "ts-mls/extension.js"

/**
 * The GroupContext extension carrying a group's metadata (from RFC 9420's private-use range).
 * Every key package lists it in its capabilities, as RFC 9420 requires of members of a group
 * whose context has it.
 */
export const METADATA_EXTENSION = 0xf0c0

/** The leaf node extension advertising the installation's protocol version (4 bytes, big-endian). */
export const PROTOCOL_VERSION_EXTENSION = 0xf0c1

export const capabilities = (): Capabilities => {
  const defaults = defaultCapabilities()
  return { ...defaults, extensions: [...defaults.extensions, METADATA_EXTENSION, PROTOCOL_VERSION_EXTENSION] }
}

export const protocolVersionExtension = (version: number): Extension => {
  const data = new Uint8Array(4)
  new DataView(data.buffer).setUint32(0, version)
  return { extensionType: PROTOCOL_VERSION_EXTENSION, extensionData: data }
}

/** The version a leaf advertises, if it advertises a well-formed one. */
export const protocolVersionIn = (extensions: ReadonlyArray<Extension>): number | undefined => {
  const data = extensions.find((e) => e.extensionType === PROTOCOL_VERSION_EXTENSION)?.extensionData
  if (data?.length !== 4) return undefined
  return new DataView(data.buffer, data.byteOffset, 4).getUint32(0)
}

// ---- the governed context: only the metadata extension may change after creation -----

export const metadataIn = (extensions: ReadonlyArray<Extension>): Uint8Array | undefined =>
  extensions.find((e) => e.extensionType === METADATA_EXTENSION)?.extensionData

export const otherExtensions = (extensions: ReadonlyArray<Extension>): Array<Extension> =>
  extensions.filter((e) => e.extensionType !== METADATA_EXTENSION)

/** The context extensions with the metadata replaced, everything else kept as it was. */
export const withMetadata = (extensions: ReadonlyArray<Extension>, metadata: Uint8Array): Array<Extension> => [
  ...otherExtensions(extensions),
  { extensionType: METADATA_EXTENSION, extensionData: metadata }
]

/**
 * Why a received commit's GroupContextExtensions proposal is refused, if it is: it may replace
 * the metadata extension only, alone (one per commit), and never beside a Remove (ts-mls #742
 * breaks receivers on that combination; refusing it keeps every member on the same side).
 */
export const contextChangeProblem = (current: ReadonlyArray<Extension>, proposals: ReadonlyArray<Proposal>) => {
  const changes = proposals.flatMap((p) => p.proposalType === "group_context_extensions" ? [p] : [])
  if (changes.length === 0) return undefined
  if (changes.length > 1) return "more than one GroupContextExtensions proposal"
  if (proposals.some((p) => p.proposalType === "remove")) return "GroupContextExtensions beside a Remove (ts-mls #742)"
  const next = changes[0]!.groupContextExtensions.extensions
  if (!extensionsEqual(otherExtensions(next), otherExtensions(current))) {
    return "GroupContextExtensions changes more than the metadata extension"
  }
  if (metadataIn(next) === undefined) return "GroupContextExtensions drops the metadata extension"
  return undefined
}
