/** A raw ndjson POST to a Converge server's RPC endpoint: its status, its body, and how long it took. */
export const postNdjson = async (url: string, body: string) => {
  const started = performance.now()
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/ndjson" },
    body,
    signal: AbortSignal.timeout(60_000)
  })
  const text = await response.text()
  return { status: response.status, text, millis: performance.now() - started }
}
