/**
 * Second attack round on the XMTP V3 face: MLS bytes that take long to decode. A group message
 * is decoded whole with ts-mls (`MlsInspect.inspectGroupMessage`); a PublicMessage commit of
 * 520,000 empty proposal references is 1,040,044 bytes (under the 1 MiB bound) and takes ts-mls
 * ~0.4 s; 7 of them fit a request (8 MiB) and are all decoded, in one go, before an 8th, invalid
 * one refuses the request (nothing stored, so it may be sent again as it is). gzip (grpc-js takes
 * it) sends it in a few kilobytes.
 */
import * as Grpc from "@grpc/grpc-js"
import { expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import * as zlib from "node:zlib"
import { codecs, encode, MLS_API } from "../src/xmtp/Proto.ts"
import { call, refusal, Xmtp } from "./support/XmtpHarness.ts"
import * as XmtpHarness from "./support/XmtpHarness.ts"
import { watchLoop } from "./support/LoopHold.ts"
import { hostileCommit, hostileWelcome } from "./support/HostileMls.ts"

layer(XmtpHarness.layer(), { excludeTestServices: true })("XMTP attack 2: MLS bytes that are slow to decode", (it) => {
  it.scoped("a gzip-compressed SendGroupMessages of 7 such commits and one invalid message is refused without holding the event loop for seconds", () =>
    Effect.gen(function*() {
      const { mls, port } = yield* Xmtp
      const data = hostileCommit(520_000)
      const request = {
        messages: [...Array.from({ length: 7 }, () => XmtpHarness.groupInput(data)), XmtpHarness.groupInput(hostileWelcome(1))]
      }
      const wire = zlib.gzipSync(encode(codecs.sendGroupMessagesRequest, request)).length
      // A client that compresses its requests (grpc-js servers take gzip).
      const gzipClient = yield* Effect.acquireRelease(
        Effect.sync(() => new (Grpc.makeClientConstructor(MLS_API, "MlsApi"))(`127.0.0.1:${port}`, Grpc.credentials.createInsecure(), {
          "grpc.default_compression_algorithm": 2,
          "grpc.use_local_subchannel_pool": 1
        }) as any),
        (c) => Effect.sync(() => c.close())
      )
      const loop = watchLoop()
      const start = performance.now()
      let probeMs = 0
      const probe = Effect.gen(function*() {
        yield* Effect.sleep("20 millis")
        const t = performance.now()
        yield* call(mls, "QueryGroupMessages", { groupId: XmtpHarness.newGroupId() })
        probeMs = Math.round(performance.now() - t)
      })
      const [answer] = yield* Effect.all([refusal(gzipClient, "SendGroupMessages", request), probe], { concurrency: "unbounded" })
      const held = loop.stop()
      const report = {
        wireBytes: wire,
        decodedBytes: data.length * 7,
        wallMs: Math.round(performance.now() - start),
        ...held,
        trivialCallMs: probeMs,
        answer
      }
      console.log(JSON.stringify(report))
      expect(answer.code).toBe(3)
      // Before: the loop held 3.1-4.4 s. The bound leaves room for a loaded CI host.
      expect(report.maxHeldCpuMs).toBeLessThan(400)
    }), { timeout: 60_000 })
})
