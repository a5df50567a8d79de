/**
 * Vitest's global setup: `dist/` rebuilt once, before any test file runs, when a source file
 * is newer. Test files run in parallel workers; each rebuilding on its own (`npm run build`
 * empties `dist/` first) could remove the build another file's CLI run was using.
 */
import { ensureBuilt } from "./Cli.ts"

export default function setup() {
  ensureBuilt()
}
