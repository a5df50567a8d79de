/**
 * Requests nested too deep (an attack-round finding): a `limit` of 5,000 nested arrays made the
 * RPC server overflow the stack while formatting its `ParseError`; the WebSocket closed (1005)
 * with every call on it, an HTTP POST got an empty 500. Now the scan in `boundedRequestIds`
 * refuses such a request before it is parsed, with a typed `InvalidRequest` under its id.
 */
import { describe, expect, it } from "@effect/vitest"
import { RpcSerialization } from "@effect/rpc"
import type { Rpc } from "@effect/rpc"
import { Effect, Either, Schema } from "effect"
import { DeliveryRpcs } from "../src/domain/DeliveryRpcs.ts"
import { serve } from "../src/layers/DeliveryServer.ts"
import { makeDepthScanner, nestingDepth } from "../src/layers/JsonDepth.ts"
import { boundedRequestIds, MAX_REQUEST_DEPTH } from "../src/layers/RpcRequestIds.ts"
import { DeliveryService } from "../src/index.ts"
import { overWebSocket } from "./support/RawWebSocket.ts"
import { postNdjson } from "./support/NdjsonPost.ts"

const groupId = "0".repeat(32)
const request = (id: string, tag: string, payload: unknown, headers: unknown = []) =>
  JSON.stringify({ _tag: "Request", id, tag, payload, headers })
const query = (id: string) => request(id, "queryGroupMessages", { query: { groupId, afterSequenceId: "0" } })

/** A query whose `limit` is `arrays` nested arrays: the message is `arrays + 3` levels deep. */
const nestedQuery = (id: string, arrays: number) =>
  request(id, "queryGroupMessages", { query: { groupId, afterSequenceId: "0", limit: null } })
    .replace("null", "[".repeat(arrays) + "]".repeat(arrays))
/** Levels the envelope adds around `limit`: message, payload, query. */
const ENVELOPE = 3

const refusedTooDeep = (requestId: string) => ({
  _tag: "Exit",
  requestId,
  exit: { _tag: "Failure", cause: { _tag: "Fail", error: { _tag: "DeliveryError", reason: "InvalidRequest", retryable: false } } }
})

const post = postNdjson
const lines = (text: string): Array<any> => text.split("\n").filter((line) => line !== "").map((line) => JSON.parse(line))

describe("the nesting scan", () => {
  const bound = MAX_REQUEST_DEPTH
  const cases: ReadonlyArray<readonly [string, string, number]> = [
    ["a number", "1", 0],
    ["an empty object", "{}", 1],
    ["an array in an object", `{"a":[1,2]}`, 2],
    ["siblings do not add up", `[[1],[2],{"a":{}}]`, 3],
    ["brackets inside a string do not count", `{"a":"[[[{{{"}`, 1],
    ["closing brackets inside a string do not count", `[["]]]]"],[1]]`, 2],
    ["an escaped quote does not end a string", `{"a":"\\"[[[["}`, 1],
    ["an escaped backslash before a quote ends the string", `["\\\\",[[1]]]`, 3],
    ["escaped backslashes then an escaped quote", `["\\\\\\"[[",[1]]`, 2],
    ["past an escaped quote, escapes still pair up", `{"a":"\\"[[\\\\\\"]]\\\\","b":[[1]]}`, 3],
    ["a unicode escape is just characters", `["\\u005b\\u005b",{}]`, 2],
    ["exactly at the bound", "[".repeat(bound) + "]".repeat(bound), bound],
    ["one over the bound", "[".repeat(bound + 1) + "]".repeat(bound + 1), bound + 1],
    ["objects count as arrays do", `{"a":`.repeat(bound + 1) + "1" + "}".repeat(bound + 1), bound + 1]
  ]

  it.each(cases)("%s", (_name, text, depth) => {
    expect(nestingDepth(text)).toBe(depth)
    // The text is JSON, and its real depth is what the scan says.
    expect(() => JSON.parse(text)).not.toThrow()
  })

  it("stops counting one past its limit", () => {
    expect(nestingDepth("[".repeat(10_000), bound)).toBe(bound + 1)
    expect(nestingDepth("[".repeat(bound), bound)).toBe(bound)
  })

  it("framed (ndjson): one depth per line, a line may span pieces, and a newline starts afresh", () => {
    const scan = makeDepthScanner(true, bound)
    expect(scan(`[[1]]\n{"a":"[[[`)).toEqual([2])
    // The string begun in the first piece goes on, with an escaped quote split across pieces.
    expect(scan(`\\`)).toEqual([])
    expect(scan(`"[[["}\n[`)).toEqual([1])
    expect(scan(`]\n`)).toEqual([1])
    // A piece ending on an escaped backslash: the next piece's quote closes the string.
    expect(scan(`["a\\\\`)).toEqual([])
    expect(scan(`",[1]]\n`)).toEqual([2])
    // An unclosed string or bracket does not leak into the next line.
    expect(scan(`["abc\n[1]\n`)).toEqual([1, 1])
    expect(scan("[".repeat(bound + 5) + "\n{}\n")).toEqual([bound + 1, 1])
  })

  it("unframed (json): every piece is one message", () => {
    const scan = makeDepthScanner(false, bound)
    expect(scan(`{"a":"[`)).toEqual([1])
    expect(scan(`[[]]`)).toEqual([2])
  })

  it("the deepest real request is far under the bound", () => {
    const update = request("1", "publishIdentityUpdate", {
      update: { inboxId: "a", sequence: 1, previousHash: "", action: { _tag: "CreateInbox", rootPublicKey: "k" }, signature: "s" }
    }, [["x-converge-auth", "{\"installationId\":\"i\"}"]])
    expect(nestingDepth(update)).toBe(4)
  })
})

describe("the stand-in for a request too deep", () => {
  it("no RPC's payload schema takes its payload, so no handler runs for it", () => {
    for (const [tag, rpc] of DeliveryRpcs.requests) {
      const payload = (rpc as unknown as Rpc.AnyWithProps).payloadSchema
      expect(Either.isLeft(Schema.decodeUnknownEither(payload as Schema.Schema<unknown, unknown>)(null)), tag).toBe(true)
    }
  })

  it("the server's answer under its id becomes a typed InvalidRequest; other answers pass as they are", () => {
    const parser = boundedRequestIds(RpcSerialization.json).unsafeMake()
    expect(parser.decode(nestedQuery("007", 100))).toEqual([
      { _tag: "Request", id: "007", tag: "queryGroupMessages", payload: null, headers: [] }
    ])
    const die = (requestId: string) => ({ _tag: "Exit", requestId, exit: { _tag: "Failure", cause: { _tag: "Die", defect: "x" } } })
    // The server writes "007" as "7".
    expect(JSON.parse(parser.encode(die("8")) as string)).toEqual(die("8"))
    expect(JSON.parse(parser.encode(die("7")) as string)).toMatchObject(refusedTooDeep("7"))
    expect(JSON.parse(parser.encode(die("7")) as string)).toEqual(die("7"))
  })

  it("a message too deep that cannot be answered under an id is a protocol defect", () => {
    const decode = (frame: string) => boundedRequestIds(RpcSerialization.json).unsafeMake().decode(frame)
    const deep = "[".repeat(100) + "]".repeat(100)
    expect(() => decode(`{"_tag":"Interrupt","requestId":"1","x":${deep}}`)).toThrow(/nested more than 64 levels/)
    expect(() => decode(`{"_tag":"Request","id":${deep},"tag":"queryGroupMessages","payload":{},"headers":[]}`))
      .toThrow(/nested more than 64 levels/)
  })
})

describe("deeply nested values", () => {
  const subscription = request("1", "subscribeGroupMessages", { filters: [{ groupId, afterSequenceId: "0" }] })

  it.scopedLive("over WebSocket, the bad call fails alone and the connection goes on", () =>
    Effect.gen(function*() {
      const { url } = yield* serve({ port: 0 }).pipe(Effect.provide(DeliveryService.layerMemory))
      const answer = yield* Effect.promise(() =>
        overWebSocket(url, [subscription, nestedQuery("2", 5000), query("3")], (m) => m.some((x) => x.requestId === "3"), 5_000)
      )
      expect(answer.closeCode).toBeUndefined()
      expect(answer.messages.find((x) => x.requestId === "2")).toMatchObject(refusedTooDeep("2"))
      expect(JSON.stringify(answer.messages)).toContain(`nested more than ${MAX_REQUEST_DEPTH} levels deep`)
      expect(answer.messages.find((x) => x.requestId === "3")).toMatchObject({ _tag: "Exit", exit: { _tag: "Success" } })
      // The subscription lives on: no exit for it, and no defect that would end every call.
      expect(answer.messages.filter((x) => x.requestId === "1" && x._tag === "Exit")).toEqual([])
      expect(answer.messages.filter((x) => x._tag === "Defect")).toEqual([])
    }))

  it.scopedLive("over HTTP, an answer under the request's id instead of an empty 500", () =>
    Effect.gen(function*() {
      const { url } = yield* serve({ port: 0 }).pipe(Effect.provide(DeliveryService.layerMemory))
      const answer = yield* Effect.promise(() => post(url, [query("1"), nestedQuery("2", 5000), query("3")].join("\n") + "\n"))
      expect(answer.status).toBe(200)
      const byId = new Map(lines(answer.text).map((x) => [x.requestId, x]))
      expect(byId.get("2")).toMatchObject(refusedTooDeep("2"))
      expect(byId.get("1")).toMatchObject({ exit: { _tag: "Success" } })
      expect(byId.get("3")).toMatchObject({ exit: { _tag: "Success" } })
    }))

  it.scopedLive("a request exactly at the bound reaches the RPC server, one level deeper is refused", () =>
    Effect.gen(function*() {
      const { url } = yield* serve({ port: 0 }).pipe(Effect.provide(DeliveryService.layerMemory))
      const atBound = nestedQuery("1", MAX_REQUEST_DEPTH - ENVELOPE)
      expect(nestingDepth(atBound)).toBe(MAX_REQUEST_DEPTH)
      const [passed] = lines((yield* Effect.promise(() => post(url, atBound + "\n"))).text)
      // Not a number where one belongs: the RPC server's own shape defect, under the id.
      expect(passed).toMatchObject({ requestId: "1", exit: { _tag: "Failure", cause: { _tag: "Die" } } })
      const [refused] = lines((yield* Effect.promise(() => post(url, nestedQuery("1", MAX_REQUEST_DEPTH - ENVELOPE + 1) + "\n"))).text)
      expect(refused).toMatchObject(refusedTooDeep("1"))
    }))

  it.scopedLive("a 1 MiB request nested half a million levels deep is refused as fast as a small one", () =>
    Effect.gen(function*() {
      const { url } = yield* serve({ port: 0 }).pipe(Effect.provide(DeliveryService.layerMemory))
      const huge = nestedQuery("1", 512 * 1024)
      const answer = yield* Effect.promise(() => post(url, huge + "\n"))
      expect(lines(answer.text)).toMatchObject([refusedTooDeep("1")])
      expect(answer.millis).toBeLessThan(2_000)
    }))
})
