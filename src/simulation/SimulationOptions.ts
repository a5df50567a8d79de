/** What one simulated run is asked to do: the plan's parameters and the runner's own settings. */
import type { Duration, Effect, LogLevel } from "effect"
import type { TestDelivery } from "../testing.ts"
import type * as Plan from "./Plan.ts"
import type { World } from "./World.ts"

export interface Options extends Plan.Params {
  /** An operation that takes longer than this is a violation (it hung). Default 30 seconds. */
  readonly opTimeout?: Duration.DurationInput
  /** Rounds of "everyone syncs and publishes" before quiescence is declared missed. Default 8. */
  readonly maxQuiescenceRounds?: number
  /** Engine logs at or above this level go into the trace. Default `Warning` (`Debug` shows every skip). */
  readonly logLevel?: LogLevel.LogLevel
  /** The delivery service under test (always the store-backed one): memory (default), sqlite or rpc. */
  readonly delivery?: TestDelivery
  /**
   * The clients' periodic installation check, instead of the profile's (`full`: every sync).
   * A long one leaves new and revoked devices to immediate join (the batched identity changes).
   */
  readonly installationCheckInterval?: Duration.DurationInput
  /**
   * Runs after quiescence, before the invariants are checked. For tests of the checks
   * themselves: damage the world and see the right invariant fire.
   */
  readonly beforeChecks?: (world: World) => Effect.Effect<void>
}
