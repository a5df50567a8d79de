/**
 * How deeply JSON text nests, read off its brackets before anything parses it. `JSON.parse`
 * itself copes with any depth, but much that walks a parsed value recurses (effect's
 * formatting of a value for a `ParseError` among them): a 10 KB request nested 5,000 arrays
 * deep overflowed the stack inside the RPC server. One linear pass, no allocation per byte.
 */

const OPEN_BRACE = 0x7b
const CLOSE_BRACE = 0x7d
const OPEN_BRACKET = 0x5b
const CLOSE_BRACKET = 0x5d
const QUOTE = 0x22
const BACKSLASH = 0x5c

/** Where a scan stands between two pieces of one message. */
interface ScanState {
  depth: number
  deepest: number
  inString: boolean
  /** The last piece ended inside a string on an unpaired backslash. */
  escaped: boolean
}

const fresh = (): ScanState => ({ depth: 0, deepest: 0, inString: false, escaped: false })

/** Backslashes right before `at`, back to `from`: an odd run escapes the character at `at`. */
const backslashesBefore = (text: string, from: number, at: number): number => {
  let i = at
  while (i > from && text.charCodeAt(i - 1) === BACKSLASH) i--
  return at - i
}

/**
 * The end of the string `i` is inside (the index of its closing quote), or `to` if it goes on
 * past `to`. Strings are most of a request's bytes (base64 payloads): `indexOf` crosses them
 * far faster than a loop would. Past an escaped quote the rest is walked a character at a
 * time: a string of many escaped quotes would otherwise cost a call for each.
 */
const stringEnd = (text: string, i: number, to: number): number => {
  const quote = text.indexOf("\"", i)
  if (quote === -1 || quote >= to) return to
  if (backslashesBefore(text, i, quote) % 2 === 0) return quote
  let escaped = false
  for (let j = quote + 1; j < to; j++) {
    const c = text.charCodeAt(j)
    if (escaped) escaped = false
    else if (c === BACKSLASH) escaped = true
    else if (c === QUOTE) return j
  }
  return to
}

/** Leaves `state` inside a string that goes on past `to` (which is after its `start`). */
const openString = (state: ScanState, text: string, start: number, to: number): void => {
  state.inString = true
  state.escaped = backslashesBefore(text, start, to) % 2 === 1
}

/**
 * Advances `state` over `text[from, to)`. Brackets inside strings do not count, nor does a
 * quote after an unpaired backslash. Past `limit` the rest is skipped: the message is refused anyway.
 */
const scan = (state: ScanState, text: string, from: number, to: number, limit: number): void => {
  if (from >= to) return
  let { depth, deepest } = state
  let i = from
  if (state.inString) {
    // A backslash that ended the previous piece escapes this piece's first character.
    const start = state.escaped ? i + 1 : i
    const end = stringEnd(text, start, to)
    state.inString = false
    if (end === to) openString(state, text, start, to)
    i = end + 1
  }
  for (; i < to && deepest <= limit; i++) {
    const c = text.charCodeAt(i)
    if (c === QUOTE) {
      const end = stringEnd(text, i + 1, to)
      if (end === to) openString(state, text, i + 1, to)
      i = end
    } else if (c === OPEN_BRACE || c === OPEN_BRACKET) {
      if (++depth > deepest) deepest = depth
    } else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) {
      depth--
    }
  }
  state.depth = depth
  state.deepest = deepest
}

/**
 * The nesting depth of one JSON text (`{}` and `[]` each count one level; `1` is 0,
 * `{"a":[1]}` is 2); past `limit`, `limit + 1`.
 */
export const nestingDepth = (text: string, limit = Number.POSITIVE_INFINITY): number => {
  const state = fresh()
  scan(state, text, 0, text.length, limit)
  return state.deepest
}

/**
 * A scanner for the text a decoder is given, one piece at a time; it answers the depth of each
 * message the piece completes, in order (past `limit`, `limit + 1`). `framed` (ndjson): a
 * newline ends a message, as the ndjson decoder splits on every one (a raw newline inside a
 * string is no JSON), and a message may span pieces. Otherwise every piece is one message.
 */
export const makeDepthScanner = (framed: boolean, limit: number) => {
  let state = fresh()
  return (text: string): Array<number> => {
    if (!framed) return [nestingDepth(text, limit)]
    const depths: Array<number> = []
    let start = 0
    for (let end = text.indexOf("\n", start); end !== -1; end = text.indexOf("\n", start)) {
      scan(state, text, start, end, limit)
      depths.push(state.deepest)
      state = fresh()
      start = end + 1
    }
    scan(state, text, start, text.length, limit)
    return depths
  }
}
