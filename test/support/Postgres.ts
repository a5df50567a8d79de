/**
 * Postgres for tests. The database comes from `CONVERGE_TEST_PG_URL` (default: the one
 * `.ci/postgres.sh` sets up). Every suite works in a fresh schema of its own, created when its
 * layer is built and dropped when it is released, so suites can share the database and reruns
 * start clean.
 *
 * ```ts
 * const pg = Postgres.layer("conformance")            // PgClient + SqlClient in a fresh schema
 * const schema = Postgres.layerSchema("multi")        // several pools on one schema:
 * const client = Postgres.layerClient                 //   Layer.fresh(client) per pool
 * ```
 *
 * Locally, a suite whose database does not answer is skipped; in CI (`CI` set) it fails.
 */
import type { SqlClient, SqlError } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Context, Duration, Effect, Layer, Redacted } from "effect"
import * as net from "node:net"

export const DEFAULT_URL = "postgres://converge:converge@127.0.0.1:5432/converge_test"

export const url: string = process.env.CONVERGE_TEST_PG_URL ?? DEFAULT_URL

/** CI must run the Postgres suites: an unreachable database is a failure there, not a skip. */
export const required: boolean = process.env.CI !== undefined && process.env.CI !== "" && process.env.CI !== "false"

/** Whether something accepts TCP connections at the database's host and port. */
export const reachable = (target: string = url, timeoutMs = 2000): Promise<boolean> =>
  new Promise((resolve) => {
    const parsed = new URL(target)
    const socket = net.connect({ host: parsed.hostname || "127.0.0.1", port: Number(parsed.port || 5432) })
    const done = (ok: boolean) => {
      socket.destroy()
      resolve(ok)
    }
    socket.setTimeout(timeoutMs, () => done(false))
    socket.once("connect", () => done(true))
    socket.once("error", () => done(false))
  })

/** The schema a suite works in. */
export class TestSchema extends Context.Tag("test/Postgres/TestSchema")<TestSchema, { readonly name: string }>() {}

/** The database URL with `search_path` set to `schema` for every connection of a pool. */
export const urlForSchema = (schema: string, base: string = url): string => {
  const parsed = new URL(base)
  parsed.searchParams.set("options", `-c search_path=${schema}`)
  return parsed.toString()
}

const clientConfig = (target: string) => ({
  url: Redacted.make(target),
  connectTimeout: Duration.seconds(5),
  applicationName: "converge-test"
})

/**
 * A fresh schema named after `label` (plus a random suffix), created on build and dropped,
 * with everything in it, on release.
 */
export const layerSchema = (label: string): Layer.Layer<TestSchema, SqlError.SqlError> =>
  Layer.scoped(
    TestSchema,
    Effect.gen(function*() {
      const suffix = crypto.getRandomValues(new Uint32Array(2)).reduce((s, n) => s + n.toString(36), "")
      const name = `t_${label.toLowerCase().replace(/[^a-z0-9]+/g, "_").slice(0, 30)}_${suffix}`
      const admin = Context.get(yield* Layer.build(PgClient.layer(clientConfig(url))), PgClient.PgClient)
      yield* admin`CREATE SCHEMA ${admin(name)}`
      yield* Effect.addFinalizer(() =>
        Effect.ignore(admin`DROP SCHEMA IF EXISTS ${admin(name)} CASCADE`.pipe(Effect.timeout("10 seconds")))
      )
      return { name }
    })
  )

/**
 * A new pool (PgClient and SqlClient) whose connections work in the suite's schema. Its
 * connections (the LISTEN one too) carry `applicationName`, so a test can find them in
 * `pg_stat_activity`.
 */
export const layerClientWith = (
  options: { readonly applicationName?: string } = {}
): Layer.Layer<PgClient.PgClient | SqlClient.SqlClient, SqlError.SqlError, TestSchema> =>
  Layer.unwrapEffect(
    Effect.map(TestSchema, (schema) =>
      PgClient.layer({
        ...clientConfig(urlForSchema(schema.name)),
        ...(options.applicationName === undefined ? {} : { applicationName: options.applicationName })
      }))
  )

/** A new pool (PgClient and SqlClient) whose connections work in the suite's schema. */
export const layerClient: Layer.Layer<PgClient.PgClient | SqlClient.SqlClient, SqlError.SqlError, TestSchema> =
  layerClientWith()

/** A pool in a fresh schema: what one suite needs. */
export const layer = (
  label: string
): Layer.Layer<PgClient.PgClient | SqlClient.SqlClient | TestSchema, SqlError.SqlError> =>
  layerClient.pipe(Layer.provideMerge(layerSchema(label)))
