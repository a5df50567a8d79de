/**
 * Answers a reader does not take: each answer written to a connection must be taken (handed
 * whole to the kernel, i.e. the reader made room for it) within the slow-reader timeout, or the
 * connection is dropped. The waits of `SlowReaders` cut a reader off only once it is so far
 * behind that an answer has to wait (a WebSocket over `MAX_UNREAD_SOCKET_BYTES`, a stream
 * response's buffer full): a reader that stopped a little short of that was never cut, and each
 * such connection held up to 16 MiB for good (1,024 of them, 16 GiB). The same rule as the XMTP
 * face's, where an answer not taken within the timeout has its stream reset.
 *
 * Node counts a write done when the kernel took all of it, so what a reader has taken is known
 * only at that grain: a reader slower than an answer's size per timeout (5.4 MB per 30 s, about
 * 180 KB/s, for the largest page) is cut off too.
 */
import type * as Net from "node:net"

/** Bytes of `socket`'s output the kernel has taken: what was written, less what is still queued. */
const takenBytes = (socket: Net.Socket) => socket.bytesWritten - socket.writableLength

const SHARED_ENTRY_MILLIS = 1000
/** An entry this large takes no more answers: each large answer gets its own time (`forgetTaken`). */
const SHARED_ENTRY_BYTES = 1024 * 1024

interface Watched {
  /**
   * Answers not yet known to be taken, oldest first: taken once `takenBytes` reaches `end`.
   * Answers written within a second of each other share an entry (the first one's deadline) until
   * it holds 1 MiB, so a busy stream to a reader a little behind holds at most one entry per
   * second of the timeout, or per MiB it holds unread.
   */
  readonly pending: Array<{ readonly start: number; end: number; deadline: number }>
  timer: ReturnType<typeof setTimeout> | undefined
}

export interface UntakenAnswers {
  /** An answer was just handed to `socket`: it must be taken within the timeout. */
  readonly written: (socket: Net.Socket) => void
}

/** `stuck` is told of a connection whose answer was not taken in time, before it is destroyed. */
export const make = (timeoutMillis: number, stuck: (untakenBytes: number) => void): UntakenAnswers => {
  const watched = new WeakMap<Net.Socket, Watched>()

  /**
   * Forgets the answers taken. The one now oldest gets the timeout from here if that is later:
   * its time runs from when the reader reached it, not from its write. Counted from the write,
   * three pages asked at once had to be taken together within one timeout, and an honest reader
   * taking each page in 1.1 s of a 1.5 s timeout was cut off after the second.
   */
  const forgetTaken = (socket: Net.Socket, w: Watched) => {
    const taken = takenBytes(socket)
    const before = w.pending.length
    while (w.pending.length > 0 && w.pending[0]!.end <= taken) w.pending.shift()
    const oldest = w.pending[0]
    if (w.pending.length < before && oldest !== undefined) {
      oldest.deadline = Math.max(oldest.deadline, Date.now() + timeoutMillis)
    }
  }

  const check = (socket: Net.Socket, w: Watched) => {
    w.timer = undefined
    if (socket.destroyed) return
    forgetTaken(socket, w)
    const oldest = w.pending[0]
    if (oldest === undefined) return
    const now = Date.now()
    if (now < oldest.deadline) {
      w.timer = setTimeout(() => check(socket, w), oldest.deadline - now).unref()
      return
    }
    stuck(socket.writableLength)
    socket.destroy()
  }

  const written = (socket: Net.Socket) => {
    // Taken at once (the common case): nothing to watch.
    if (socket.writableLength === 0 || socket.destroyed) return
    let w = watched.get(socket)
    if (w === undefined) {
      const created: Watched = { pending: [], timer: undefined }
      socket.once("close", () => clearTimeout(created.timer))
      watched.set(socket, created)
      w = created
    }
    forgetTaken(socket, w)
    // Everything handed over so far, this answer included.
    const end = socket.bytesWritten
    const deadline = Date.now() + timeoutMillis
    const newest = w.pending[w.pending.length - 1]
    const shared = newest !== undefined && deadline - newest.deadline < SHARED_ENTRY_MILLIS &&
      newest.end - newest.start < SHARED_ENTRY_BYTES
    if (shared) newest.end = end
    else w.pending.push({ start: newest?.end ?? end - socket.writableLength, end, deadline })
    if (w.timer === undefined) {
      const watching = w
      watching.timer = setTimeout(() => check(socket, watching), timeoutMillis).unref()
    }
  }

  return { written }
}
