/**
 * Readers that do not read: an answer on an HTTP stream waits until the client has taken what
 * came before it, and is cut off after the slow-reader timeout; a WebSocket holding more than
 * `MAX_UNREAD_SOCKET_BYTES` unread gets its reads' answers refused instead of held. Used by
 * `ServerLimits.guardProtocol` around every answer.
 */
import { Effect, Option } from "effect"
import type * as Http from "node:http"

/** Where a cut-off is noted (`ServerLimits`' refusals, logged by class). */
interface Refusals {
  readonly note: (kind: string, detail: string) => void
}

/** What a WebSocket client's connection tells of its reader: how much it has not taken yet. */
export interface BufferedSocket {
  readonly bufferedAmount: number
  readonly readyState: number
}

/**
 * Bytes a WebSocket may hold unread before its reads' answers and its new requests are
 * refused: a few answers' worth (a page is at most about 5.4 MiB as JSON). `ws`
 * buffers whatever it is given, so without this a client that sends small queries and never
 * reads made the server hold every answer (1.3 GiB for 120 queries of 150 bytes).
 */
export const MAX_UNREAD_SOCKET_BYTES = 16 * 1024 * 1024

/**
 * Bytes a WebSocket may hold unread before it is dropped: past `MAX_UNREAD_SOCKET_BYTES` only
 * refusals (about 250 bytes each) and writes' answers are written, and a client that went on
 * sending while it read nothing grew the server by 930 MiB in 20 s. An honest client does not
 * send 70,000 requests without reading an answer.
 */
export const MAX_REFUSING_SOCKET_BYTES = 2 * MAX_UNREAD_SOCKET_BYTES

const OPEN = 1

/**
 * What becomes of an answer for a WebSocket client, decided in its turn (a socket's answers take
 * turns from this check to their write): written; or, while the socket holds more than
 * `MAX_UNREAD_SOCKET_BYTES` unread, replaced by a retryable refusal if it is a read's (dropped at
 * once, not held for the reader); or nothing, the socket being gone. An answer that waited held
 * its memory: 8 connections of 60 queries each, never read, grew the server by 902 MiB. A write's
 * answer (small) is written whatever the socket holds: the write is done, and losing its answer
 * would make its client try it again. A reader that takes nothing is cut off by `UntakenAnswers`.
 */
export const socketTurn = (socket: BufferedSocket, replaceable: boolean): "write" | "replace" | "gone" =>
  socket.readyState !== OPEN
    ? "gone"
    : socket.bufferedAmount <= MAX_UNREAD_SOCKET_BYTES || !replaceable
    ? "write"
    : "replace"

/**
 * Waits until `response` can take more (true), or cuts it off after `timeoutMillis` (false).
 * A response already gone is false too. A pipelined response waits for its turn on the
 * connection first: until then Node buffers whatever it is given, with no back-pressure.
 */
export const drained = (response: Http.ServerResponse, timeoutMillis: number, refusals: Refusals): Effect.Effect<boolean> =>
  Effect.async<void>((resume) => {
    // A queued response is not told when its connection goes.
    const connection = response.req.socket
    const gone = () => response.destroyed || connection.destroyed
    const ready = () => gone() || (response.socket !== null && !response.writableNeedDrain)
    if (ready()) return resume(Effect.void)
    const stopListening = () => {
      response.off("socket", check)
      response.off("drain", check)
      response.off("close", check)
      connection.off("close", check)
    }
    const check = () => {
      if (!ready()) return
      stopListening()
      resume(Effect.void)
    }
    response.on("socket", check)
    response.on("drain", check)
    response.on("close", check)
    connection.on("close", check)
    return Effect.sync(stopListening)
  }).pipe(
    // The RPC server sends an exit from a fiber that cannot be interrupted: the timeout would
    // wait for the drain it is meant to give up on.
    Effect.interruptible,
    Effect.timeoutOption(timeoutMillis),
    Effect.map(Option.match({
      onSome: () => !response.destroyed && !response.req.socket.destroyed,
      onNone: () => {
        refusals.note("slowReader", `an HTTP stream unread for ${timeoutMillis} ms`)
        response.destroy()
        return false
      }
    }))
  )
