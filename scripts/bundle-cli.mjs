// Bundles the `converge` command into dist/bin.js (+ dist/cli-chunks/): Node would otherwise
// load every module behind the `effect` and `@effect/*` barrels (about 1,000 files, 1.5 s) on
// each start. Code only `serve` needs lands in its own chunks, loaded by a dynamic import.
// Native addons and optional native accelerators stay external (resolved from node_modules).
import * as esbuild from "esbuild"

await esbuild.build({
  entryPoints: { bin: "src/bin.ts" },
  outdir: "dist",
  chunkNames: "cli-chunks/[name]-[hash]",
  bundle: true,
  splitting: true,
  format: "esm",
  platform: "node",
  target: "node20",
  external: ["better-sqlite3", "pg-native", "bufferutil", "utf-8-validate", "msgpackr-extract", "@grpc/grpc-js", "@xmtp/proto"],
  // Bundled CommonJS packages call `require` for Node built-ins.
  banner: { js: "import { createRequire as __convergeRequire } from 'node:module'; const require = __convergeRequire(import.meta.url);" },
  legalComments: "none",
  logLevel: "warning"
})
