/**
 * The RPC client's ndjson framing (`boundedNdjson`): what a server's HTTP answer decodes to,
 * however its bytes are cut into chunks, and where a line too long for the client ends it.
 */
import { describe, expect, it } from "@effect/vitest"
import { AnswerTooDeep, MAX_ANSWER_DEPTH } from "../src/layers/RpcAnswerDepth.ts"
import { AnswerTooLarge, boundedNdjson } from "../src/layers/RpcNdjson.ts"

const bytes = (text: string) => new TextEncoder().encode(text)

/** Every message `chunks` decode to, in order. */
const decodeAll = (maxLineChars: number, chunks: ReadonlyArray<Uint8Array | string>) => {
  const parser = boundedNdjson(maxLineChars).unsafeMake()
  return chunks.flatMap((chunk) => parser.decode(chunk))
}

describe("boundedNdjson", () => {
  const answers = [
    { _tag: "Exit", requestId: "1", exit: { _tag: "Success", value: { text: "grüße, 你好 👋" } } },
    { _tag: "Chunk", requestId: "2", values: [1, 2, 3] },
    { _tag: "Pong" }
  ]
  const wire = bytes(answers.map((a) => JSON.stringify(a) + "\n").join(""))

  it("reads the same messages whatever the chunking, characters split between chunks included", () => {
    for (const size of [1, 2, 3, 7, 64, wire.length]) {
      const chunks: Array<Uint8Array> = []
      for (let at = 0; at < wire.length; at += size) chunks.push(wire.subarray(at, at + size))
      expect(decodeAll(1_000, chunks)).toEqual(answers)
    }
  })

  it("holds an unfinished line until its newline, and skips empty lines", () => {
    const parser = boundedNdjson(1_000).unsafeMake()
    expect(parser.decode('{"_tag":"Po')).toEqual([])
    expect(parser.decode('ng"}\n\n{"_tag":')).toEqual([{ _tag: "Pong" }])
    expect(parser.decode('"Pong"}\n')).toEqual([{ _tag: "Pong" }])
  })

  it("takes a line of exactly the bound and refuses one character more, within a chunk or across chunks", () => {
    const line = (chars: number) => JSON.stringify({ _tag: "Pong", pad: "x".repeat(chars - 24) })
    expect(line(100)).toHaveLength(100)
    expect(decodeAll(100, [line(100) + "\n"])).toHaveLength(1)
    expect(() => decodeAll(100, [line(101) + "\n"])).toThrow(AnswerTooLarge)
    const long = line(101)
    expect(() => decodeAll(100, [long.slice(0, 60), long.slice(60)])).toThrow(AnswerTooLarge)
    // Known too long before its newline comes: the client stops holding it.
    expect(() => decodeAll(100, ["x".repeat(60), "x".repeat(60)])).toThrow(/over 100 characters/)
  })

  it("starts afresh after a refused line: the next answer on the same parser is read", () => {
    const parser = boundedNdjson(50).unsafeMake()
    expect(() => parser.decode("y".repeat(80))).toThrow(AnswerTooLarge)
    expect(parser.decode('{"_tag":"Pong"}\n')).toEqual([{ _tag: "Pong" }])
  })

  it("takes a line nested exactly to the depth bound and refuses one level more, before parsing it; the next answer is read", () => {
    // message, exit, value, then `arrays` arrays.
    const line = (arrays: number) =>
      JSON.stringify({ _tag: "Exit", requestId: "1", exit: { _tag: "Success", value: null } })
        .replace("null", "[".repeat(arrays) + "]".repeat(arrays))
    expect(decodeAll(1_000, [line(MAX_ANSWER_DEPTH - 2) + "\n"])).toHaveLength(1)
    const parser = boundedNdjson(2_000_000).unsafeMake()
    expect(() => parser.decode(line(MAX_ANSWER_DEPTH - 1) + "\n")).toThrow(AnswerTooDeep)
    // Half a million levels, split across chunks: refused as soon as its line is whole.
    const deep = line(500_000)
    expect(parser.decode(deep.slice(0, 300_000))).toEqual([])
    expect(() => parser.decode(deep.slice(300_000) + "\n")).toThrow(/nested more than 64 levels deep/)
    expect(parser.decode('{"_tag":"Pong"}\n')).toEqual([{ _tag: "Pong" }])
  })

  it("encodes as @effect/rpc's ndjson does: one JSON line per message", () => {
    const parser = boundedNdjson(1_000).unsafeMake()
    expect(parser.encode({ _tag: "Ping" })).toBe('{"_tag":"Ping"}\n')
    expect(decodeAll(1_000, [parser.encode([{ _tag: "Ping" }, { _tag: "Pong" }]) as string])).toEqual([
      { _tag: "Ping" },
      { _tag: "Pong" }
    ])
  })

  // @effect/rpc's framing searched everything held from the start on every chunk: this 8 MiB line
  // in 4 KiB chunks took it 7.6 s of CPU here (38 ms this way). Each character is looked at once.
  it("reads a long line sent in small chunks in linear time", () => {
    const parser = boundedNdjson(16 * 1024 * 1024).unsafeMake()
    const chunk = "x".repeat(4096)
    const started = performance.now()
    parser.decode('{"_tag":"Pong","pad":"')
    for (let i = 0; i < 2048; i++) expect(parser.decode(chunk)).toEqual([])
    const [message] = parser.decode('"}\n') as Array<{ readonly pad: string }>
    expect(message!.pad).toHaveLength(8 * 1024 * 1024)
    expect(performance.now() - started).toBeLessThan(1_000)
  })
})
