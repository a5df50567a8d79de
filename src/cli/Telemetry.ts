/**
 * OpenTelemetry for the command line: with `CONVERGE_OTLP_URL` (or the standard
 * `OTEL_EXPORTER_OTLP_ENDPOINT`) set to an OTLP/HTTP collector, e.g. `http://127.0.0.1:4318`,
 * every span the engine and the server open (`Conversation.send`, `Publisher.resolve`,
 * `Client.syncAll`, `Identity.register`, the RPC calls, ...) and every Effect `Metric` are
 * exported as OTLP JSON, and flushed when the command ends. Unset, nothing is loaded.
 */
import { Config, Effect, Layer, Option } from "effect"

export const otlpUrl = Config.string("CONVERGE_OTLP_URL").pipe(
  Config.orElse(() => Config.string("OTEL_EXPORTER_OTLP_ENDPOINT")),
  Config.option
)

export const layer = (command: string): Layer.Layer<never> =>
  Layer.unwrapEffect(Effect.gen(function*() {
    const url = yield* otlpUrl.pipe(Effect.orElseSucceed(() => Option.none<string>()))
    // Nobody reads the spans: not making them (nor their stack traces) saves a few percent of CPU.
    if (Option.isNone(url)) return Layer.setTracerEnabled(false)
    // Loaded only when asked for: an exporter is not part of a command's start-up otherwise.
    const [Otlp, FetchHttpClient] = yield* Effect.promise(() =>
      Promise.all([import("@effect/opentelemetry/Otlp"), import("@effect/platform/FetchHttpClient")])
    )
    return Otlp.layerJson({
      baseUrl: url.value,
      resource: { serviceName: "converge", serviceVersion: "0.1.0", attributes: { "converge.command": command } },
      shutdownTimeout: "2 seconds"
    }).pipe(Layer.provide(FetchHttpClient.layer))
  }))
