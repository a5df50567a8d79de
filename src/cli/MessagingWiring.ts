/**
 * The messaging commands (`MessagingCommands.ts`) built over this command line's session helpers,
 * once, for the `group`, `send` and root commands that use them.
 */
import type { ConfigError } from "effect"
import type { ConvergeError } from "../domain/Errors.ts"
import type { Unreachable, UsageError } from "./Errors.ts"
import * as MessagingCommands from "./MessagingCommands.ts"
import { reach } from "./Profile.ts"
import { change, findConversation, resolveMembers, type Session, withClient } from "./Session.ts"
import { conversationArg, profile } from "./SharedOptions.ts"

export const messaging = MessagingCommands.make<Session, ConvergeError | UsageError | ConfigError.ConfigError | Unreachable>({
  profile,
  conversationArg,
  withClient,
  findConversation,
  conversations: (session: Session) => session.client.conversations(),
  resolveMembers,
  change,
  reach: (session, effect) => reach(session.server)(effect)
})
