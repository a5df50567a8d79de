#!/usr/bin/env bash
# Uses converge as an outside project would: packs the package, installs the tarball into a
# fresh project holding examples/, type-checks them with strict tsc (NodeNext), runs the
# in-memory example with plain node, then the network example against the tarball's own
# `converge serve`.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/converge-consumer-XXXXXX")"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== npm pack (builds dist/ with prepare)"
tarball="$(cd "$repo" && npm pack --silent --pack-destination "$work" | tail -n 1)"
wanted="file:../$tarball"
actual="$(node -p "require('$repo/examples/package.json').dependencies.converge")"
if [ "$actual" != "$wanted" ]; then
  echo "error: examples/package.json depends on converge as $actual, the tarball is $tarball: make it \"$wanted\"" >&2
  exit 1
fi
echo "   $tarball: $(tar -tzf "$work/$tarball" | wc -l) files"
if tar -tzf "$work/$tarball" | grep -E '^package/(src|test|bench|scripts|\.ci|examples)/' >/dev/null; then
  echo "error: the tarball ships sources or tests:" >&2
  tar -tzf "$work/$tarball" | grep -E '^package/(src|test|bench|scripts|\.ci|examples)/' | head >&2
  exit 1
fi

echo "== install the tarball into a fresh project"
mkdir "$work/examples"
cp "$repo"/examples/*.ts "$repo/examples/package.json" "$repo/examples/tsconfig.json" "$work/examples/"
cd "$work/examples"
npm install --no-audit --no-fund --loglevel=error

echo "== strict tsc (NodeNext)"
npx tsc -p .

echo "== node dist/two-clients.js"
node dist/two-clients.js

echo "== converge serve (the tarball's bin) + node dist/serve-client.js"
./node_modules/.bin/converge serve --port 0 --db "$work/ds.sqlite" > "$work/serve.log" 2>&1 &
server_pid=$!
url=""
for _ in $(seq 1 100); do
  url="$(grep -o 'http://[0-9.:]*' "$work/serve.log" | head -n 1 || true)"
  if [ -n "$url" ]; then break; fi
  if ! kill -0 "$server_pid" 2>/dev/null; then cat "$work/serve.log" >&2; exit 1; fi
  sleep 0.2
done
if [ -z "$url" ]; then echo "error: converge serve printed no URL:" >&2; cat "$work/serve.log" >&2; exit 1; fi
CONVERGE_SERVER="$url" node dist/serve-client.js
echo "consumer check: ok"
