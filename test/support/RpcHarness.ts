/**
 * Runs any delivery service behind a real `DeliveryServer` on a random loopback port and
 * hands back the network client for it, so a suite written against the port runs over RPC:
 *
 * ```ts
 * deliveryConformance("rpc (memory)", rpcLayer(DeliveryService.layerMemory))
 * ```
 *
 * Everything (server, connections) lives as long as the scope or layer that built it.
 * Clients retry and time out on the real clock: run such tests with `it.live` / `it.scopedLive`.
 */
import type { ServeError } from "@effect/platform/HttpServerError"
import { Context, Effect, Layer, Schedule, type Scope } from "effect"
import * as net from "node:net"
import { type BoundAddress, serve } from "../../src/layers/DeliveryServer.ts"
import type { RpcDeliveryOptions } from "../../src/layers/RpcDeliveryService.ts"
import { DeliveryService } from "../../src/index.ts"

export type ClientOptions = Omit<RpcDeliveryOptions, "url">

/** Quick retries and reconnects, so tests that cut connections do not wait long. */
export const fastClientOptions: ClientOptions = {
  timeout: "5 seconds",
  retrySchedule: Schedule.exponential("20 millis").pipe(Schedule.intersect(Schedule.recurs(5))),
  resubscribeSchedule: Schedule.exponential("20 millis").pipe(Schedule.either(Schedule.spaced("200 millis"))),
  reconnectSchedule: Schedule.exponential("20 millis").pipe(Schedule.either(Schedule.spaced("200 millis")))
}

/**
 * Serves the delivery service built by `serviceLayer` on 127.0.0.1 (random port) in the
 * current scope. Returns the address and a way to make client layers for it.
 */
export const startRpcServer = <E>(
  serviceLayer: Layer.Layer<DeliveryService, E>
): Effect.Effect<BoundAddress, E | ServeError, Scope.Scope> =>
  Effect.gen(function*() {
    const service = yield* Layer.build(serviceLayer)
    return yield* serve({ port: 0, host: "127.0.0.1" }).pipe(Effect.provide(service))
  })

/** A client layer for a server at `url`. */
export const clientLayer = (url: string, options: ClientOptions = fastClientOptions): Layer.Layer<DeliveryService> =>
  DeliveryService.layerRpc({ ...fastClientOptions, ...options, url })

/**
 * Given a delivery service layer, a layer of the same port reached over the network: it
 * starts a server over `serviceLayer` on a random loopback port and connects a client to it.
 */
export const rpcLayer = <E>(
  serviceLayer: Layer.Layer<DeliveryService, E>,
  options: ClientOptions = fastClientOptions
): Layer.Layer<DeliveryService, E | ServeError> =>
  Layer.unwrapScoped(Effect.map(startRpcServer(serviceLayer), (address) => clientLayer(address.url, options)))

/** The same, as an effect: the client service itself, built in the current scope. */
export const rpcService = <E>(
  serviceLayer: Layer.Layer<DeliveryService, E>,
  options: ClientOptions = fastClientOptions
): Effect.Effect<DeliveryService["Type"], E | ServeError, Scope.Scope> =>
  Effect.map(Layer.build(rpcLayer(serviceLayer, options)), Context.get(DeliveryService))

// ---- connection cuts ----

export interface CuttableProxy {
  /** The proxy's port on 127.0.0.1. */
  readonly port: number
  /** Rewrites a server URL to go through the proxy. */
  readonly url: (serverUrl: string) => string
  /** Destroys every connection open through the proxy now (both sides, abruptly). */
  readonly cut: Effect.Effect<number>
  /** While refusing, new connections are destroyed as soon as they arrive. */
  readonly refuse: (on: boolean) => Effect.Effect<void>
  /** How many connections the proxy accepted so far. */
  readonly accepted: Effect.Effect<number>
}

/** A TCP proxy on a random loopback port in front of `targetPort`, whose connections a test can cut. */
export const cuttableProxy = (targetPort: number): Effect.Effect<CuttableProxy, never, Scope.Scope> =>
  Effect.gen(function*() {
    const open = new Set<net.Socket>()
    let refusing = false
    let accepted = 0
    const server = net.createServer((downstream) => {
      accepted += 1
      if (refusing) {
        downstream.destroy()
        return
      }
      const upstream = net.connect(targetPort, "127.0.0.1")
      open.add(downstream)
      open.add(upstream)
      const close = () => {
        open.delete(downstream)
        open.delete(upstream)
        downstream.destroy()
        upstream.destroy()
      }
      downstream.on("error", close).on("close", close)
      upstream.on("error", close).on("close", close)
      downstream.pipe(upstream)
      upstream.pipe(downstream)
    })
    const port = yield* Effect.acquireRelease(
      Effect.async<number>((resume) => {
        server.listen(0, "127.0.0.1", () => resume(Effect.succeed((server.address() as net.AddressInfo).port)))
      }),
      () =>
        Effect.async<void>((resume) => {
          for (const socket of open) socket.destroy()
          server.close(() => resume(Effect.void))
        })
    )
    return {
      port,
      url: (serverUrl) => serverUrl.replace(/:\d+\//, `:${port}/`),
      cut: Effect.sync(() => {
        const n = open.size
        for (const socket of open) socket.destroy()
        open.clear()
        return n
      }),
      refuse: (on) =>
        Effect.sync(() => {
          refusing = on
        }),
      accepted: Effect.sync(() => accepted)
    }
  })
