/** What a simulation run knows while it runs: the network, its clients, and what happened. */
import type { ConversationId, GroupId, InboxId, MessageId } from "../domain/Ids.ts"
import type { TestClient, TestNetwork } from "../testing.ts"
import type { Installation } from "./Plan.ts"
import type { Violation } from "./Report.ts"

/** A message whose `send` (or `sendOptimistic`) returned its id. */
export interface SentMessage {
  readonly op: number
  /** The sending installation. */
  readonly c: number
  /** The group it was sent to, or undefined for a DM. */
  readonly g: number | undefined
  /** The DM it was sent on, if it was. */
  readonly dm: ConversationId | undefined
  readonly text: string
  readonly id: MessageId
  /** `send` succeeded: the sender was told the message is sent. */
  readonly confirmed: boolean
}

export interface World {
  readonly net: TestNetwork
  /** Every installation the plan uses, by index (see `Plan.installations`). */
  readonly installs: ReadonlyArray<Installation>
  /** Clients by installation index; undefined until the installation has booted. */
  readonly clients: Array<TestClient | undefined>
  /** Inbox ids by inbox index (known from the start: each inbox's first installation). */
  readonly inboxIds: ReadonlyArray<InboxId>
  /** Group ids by creation index (`g0`, `g1`, ...); undefined while not created. */
  readonly groups: Array<GroupId | undefined>
  /** Which installation created each group (its first member). */
  readonly creators: Array<number | undefined>
  readonly sent: Array<SentMessage>
  /**
   * Per installation: digests (sha256 hex) of the forged welcomes the run put on its topic, so
   * the checks do not take them for real invitations.
   */
  readonly forgedWelcomes: Map<number, Set<string>>
  /** Per group (by creation index): every inbox a member asked to have in it (creator included). */
  readonly invited: Map<number, Set<InboxId>>
  /**
   * Per group (by creation index): every inbox someone asked to remove, or that asked to leave.
   * One that is a member again was out for a while: a welcome brought it back at a later epoch,
   * past whatever it could not read meanwhile.
   */
  readonly removed: Map<number, Set<InboxId>>
  /** Per group: inboxes someone asked, through the API, to make super admin (the creator aside). */
  readonly promoted: Map<number, Set<InboxId>>
  /** Digests (sha256 hex) of the policy-breaking commits the run forged (every member skips them). */
  readonly forgedCommits: Set<string>
  /** Groups someone asked to rename (their name is then no longer their label). */
  readonly renamed: Set<number>
  /** What the checks found left out of a group for being below its minimum version ("g1: c3b"). */
  readonly leftOutBelowMinimum: Array<string>
  readonly violations: Array<Violation>
  /** Engine option the checks need: how many past epochs still decrypt. */
  readonly maxPastEpochs: number
}

/** The name of an installation in traces (`c3`, or `c3b` for inbox c3's second device). */
export const clientName = (c: number, world?: Pick<World, "installs">) => world?.installs[c]?.name ?? `c${c}`

/** The booted clients, with their installation index. */
export const booted = (world: Pick<World, "clients">): Array<readonly [number, TestClient]> =>
  world.clients.flatMap((client, c) => (client === undefined ? [] : [[c, client] as const]))
