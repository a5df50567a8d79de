/** What a simulation run knows while it runs: the network, its clients, and what happened. */
import type { GroupId, MessageId } from "../domain/Ids.ts"
import type { TestClient, TestNetwork } from "../testing.ts"
import type { Violation } from "./Report.ts"

/** A message whose `send` (or `sendOptimistic`) returned its id. */
export interface SentMessage {
  readonly op: number
  readonly c: number
  readonly g: number
  readonly text: string
  readonly id: MessageId
  /** `send` succeeded: the sender was told the message is sent. */
  readonly confirmed: boolean
}

export interface World {
  readonly net: TestNetwork
  readonly clients: ReadonlyArray<TestClient>
  /** Group ids by creation index (`g0`, `g1`, ...); undefined while not created. */
  readonly groups: Array<GroupId | undefined>
  /** Who created each group (its first member). */
  readonly creators: Array<number | undefined>
  readonly sent: Array<SentMessage>
  readonly violations: Array<Violation>
  /** Engine option the checks need: how many past epochs still decrypt. */
  readonly maxPastEpochs: number
}

export const clientName = (c: number) => `c${c}`
