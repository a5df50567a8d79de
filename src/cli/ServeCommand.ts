/**
 * `converge serve`: its options and limits. The server itself (`Serve.ts`) is loaded only when
 * this command runs.
 */
import { Command, HelpDoc, Options, ValidationError } from "@effect/cli"
import { Config, Effect, FiberRef, Logger, LogLevel } from "effect"
import { DEFAULT_SERVE_LIMITS } from "./ServeLimits.ts"

/** Whether the command line set `--log-level` (@effect/cli's built-in option, valid on every command). */
export const explicitLogLevel = FiberRef.unsafeMake(false)

const port = Options.integer("port").pipe(
  Options.withDescription("TCP port to listen on, 0 picks a free one; default 5555 (env CONVERGE_PORT)"),
  Options.withFallbackConfig(Config.integer("CONVERGE_PORT")),
  Options.withDefault(5555),
  Options.mapEffect((n) =>
    n >= 0 && n <= 65535
      ? Effect.succeed(n)
      : Effect.fail(ValidationError.invalidValue(HelpDoc.p(`--port ${n}: a port is a number from 0 to 65535`)))
  )
)

/** A positive integer option of `serve` with its default and what it bounds. */
const limit = (name: string, fallback: number, description: string) =>
  Options.integer(name).pipe(Options.withDefault(fallback), Options.withDescription(description))

const defaults = DEFAULT_SERVE_LIMITS

export const serve = Command.make(
  "serve",
  {
    port,
    host: Options.text("host").pipe(
      Options.withDescription("interface to listen on, 0.0.0.0 for all; default 127.0.0.1 (env CONVERGE_HOST)"),
      Options.withFallbackConfig(Config.string("CONVERGE_HOST")),
      Options.withDefault("127.0.0.1")
    ),
    db: Options.file("db").pipe(
      Options.withDescription("SQLite file of the delivery service, created if missing; default ./converge-ds.sqlite (env CONVERGE_DB)"),
      Options.withFallbackConfig(Config.string("CONVERGE_DB")),
      Options.withDefault("./converge-ds.sqlite")
    ),
    metricsPort: Options.integer("metrics-port").pipe(
      Options.withDescription("serve Prometheus metrics on GET /metrics of this port; default off (env CONVERGE_METRICS_PORT)"),
      Options.withFallbackConfig(Config.integer("CONVERGE_METRICS_PORT")),
      Options.optional
    ),
    xmtpPort: Options.integer("xmtp-port").pipe(
      Options.withDescription("also serve XMTP's V3 gRPC API (MlsApi, IdentityApi; h2c) on this port, same database; default off (env CONVERGE_XMTP_PORT)"),
      Options.withFallbackConfig(Config.integer("CONVERGE_XMTP_PORT")),
      Options.optional
    ),
    postgres: Options.text("postgres").pipe(
      Options.withDescription("store in Postgres at this URL instead of SQLite (env CONVERGE_POSTGRES)"),
      Options.withFallbackConfig(Config.string("CONVERGE_POSTGRES")),
      Options.optional
    ),
    maxBodyBytes: limit("max-body-bytes", defaults.maxBodyBytes, "largest HTTP body and WebSocket message"),
    maxConnections: limit("max-connections", defaults.maxConnections, "open connections; more get 503"),
    maxInFlight: limit("max-in-flight", defaults.maxInFlight, "calls running at once per connection"),
    maxSubscriptions: limit("max-subscriptions", defaults.maxSubscriptions, "subscriptions per connection"),
    maxSubscribedTopics: limit(
      "max-subscribed-topics",
      defaults.maxSubscribedTopics,
      "topics all subscriptions follow together, server-wide (each face)"
    ),
    maxIdentityEntries: limit("max-identity-entries", defaults.maxIdentityEntries, "identity-log entries per answer"),
    headersTimeout: limit("headers-timeout", defaults.headersTimeout, "seconds to receive request headers"),
    requestTimeout: limit("request-timeout", defaults.requestTimeout, "seconds to receive a whole request"),
    keepAliveTimeout: limit("keep-alive-timeout", defaults.keepAliveTimeout, "seconds an idle HTTP connection stays"),
    idleTimeout: limit("idle-timeout", defaults.idleTimeout, "seconds a silent WebSocket stays"),
    slowReaderTimeout: limit("slow-reader-timeout", defaults.slowReaderTimeout, "seconds an unread HTTP stream stays")
  },
  // Loaded only here: the server, its stores and drivers (pg) are not part of any client command's start-up.
  // Info by default, so refusals show; `--log-level` (before or after the command) overrides it.
  (options) =>
    Effect.promise(() => import("./Serve.ts")).pipe(
      Effect.flatMap((Serve) =>
        Effect.flatMap(FiberRef.get(explicitLogLevel), (explicit) =>
          explicit ? Serve.serve(options) : Serve.serve(options).pipe(Logger.withMinimumLogLevel(LogLevel.Info)))
      )
    )
).pipe(Command.withDescription("run a delivery service (SQLite by default, or Postgres)"))
