// A minimal OTLP/HTTP JSON receiver for trying out CONVERGE_OTLP_URL without a collector:
//   node scripts/otlp-dump.mjs [port]      (default 4318)
// Prints one line per span (service command, name, duration, status, parent) and per metric
// data point. Not a collector: no protobuf, no storage.
import * as http from "node:http"

const port = Number(process.argv[2] ?? 4318)
const attr = (attributes, key) => attributes?.find((a) => a.key === key)?.value?.stringValue

const spans = (body) => {
  for (const rs of body.resourceSpans ?? []) {
    const command = attr(rs.resource?.attributes, "converge.command") ?? "?"
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        const ms = (Number(BigInt(s.endTimeUnixNano) - BigInt(s.startTimeUnixNano)) / 1e6).toFixed(1)
        const status = s.status?.code === 2 ? "error" : "ok"
        console.log(`span   ${command.padEnd(14)} ${s.name.padEnd(34)} ${ms.padStart(8)} ms  ${status}${s.parentSpanId ? "" : "  (root)"}`)
      }
    }
  }
}

const metrics = (body) => {
  for (const rm of body.resourceMetrics ?? []) {
    for (const sm of rm.scopeMetrics ?? []) {
      for (const m of sm.metrics ?? []) {
        const points = m.sum?.dataPoints ?? m.gauge?.dataPoints ?? m.histogram?.dataPoints ?? []
        for (const p of points) console.log(`metric ${m.name} ${p.asInt ?? p.asDouble ?? `count=${p.count}`}`)
      }
    }
  }
}

http.createServer((req, res) => {
  let text = ""
  req.on("data", (chunk) => (text += chunk))
  req.on("end", () => {
    try {
      const body = JSON.parse(text || "{}")
      if (req.url === "/v1/traces") spans(body)
      if (req.url === "/v1/metrics") metrics(body)
    } catch (e) {
      console.error(`otlp-dump: ${req.url}: ${e.message}`)
    }
    res.writeHead(200, { "content-type": "application/json" }).end("{}")
  })
}).listen(port, "127.0.0.1", () => console.error(`otlp-dump listening on http://127.0.0.1:${port}`))
