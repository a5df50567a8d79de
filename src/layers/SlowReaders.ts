/**
 * Readers that do not read: an answer for a client waits until the client has taken what came
 * before it (an HTTP response's buffer drained, a WebSocket holding at most
 * `MAX_UNREAD_SOCKET_BYTES` unread), and a reader that stays behind for the slow-reader timeout
 * is cut off. Used by `ServerLimits.guardProtocol` around every answer.
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
  close(code?: number, reason?: string): void
  /** `ws`'s: drops the connection at once (a close frame would wait behind what is unread). */
  terminate?(): void
}

/**
 * Bytes a WebSocket may hold unread before its answers wait for the reader and its new
 * requests are refused: a few answers' worth (a page is at most about 5.4 MiB as JSON). `ws`
 * buffers whatever it is given, so without this a client that sends small queries and never
 * reads made the server hold every answer (1.3 GiB for 120 queries of 150 bytes).
 */
export const MAX_UNREAD_SOCKET_BYTES = 16 * 1024 * 1024

const OPEN = 1

/**
 * Waits until `socket` holds at most `MAX_UNREAD_SOCKET_BYTES` unread (true), or closes it after
 * `timeoutMillis` (false). `ws` has no drain event of its own: polled while behind, which only
 * a reader that is behind costs. True is room for one answer: it is written before the next is
 * checked (`guardProtocol` gives a socket's answers turns), or they all pass on an empty socket.
 */
export const socketDrained = (socket: BufferedSocket, timeoutMillis: number, refusals: Refusals): Effect.Effect<boolean> =>
  Effect.suspend(() => {
    if (socket.bufferedAmount <= MAX_UNREAD_SOCKET_BYTES || socket.readyState !== OPEN) return Effect.succeed(socket.readyState === OPEN)
    return Effect.sleep(POLL_MILLIS).pipe(
      Effect.repeat({ until: () => socket.bufferedAmount <= MAX_UNREAD_SOCKET_BYTES || socket.readyState !== OPEN }),
      // The RPC server sends an exit from a fiber that cannot be interrupted: the timeout would
      // wait for the wait it ends, i.e. for the reader it is meant to cut off.
      Effect.interruptible,
      Effect.timeoutOption(timeoutMillis),
      Effect.map(Option.match({
        onSome: () => socket.readyState === OPEN,
        onNone: () => {
          refusals.note("slowReader", `a WebSocket unread for ${timeoutMillis} ms`)
          // A close frame would queue behind what the reader does not take: dropped at once.
          if (socket.terminate !== undefined) socket.terminate()
          else socket.close(1013, "the reader did not keep up")
          return false
        }
      }))
    )
  })

const POLL_MILLIS = 20

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
    // As for a WebSocket: else the timeout waits for the drain it is meant to give up on.
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
