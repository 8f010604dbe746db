// Bundles the browser entries into dist/ (one IIFE script each) with the pinned esbuild.
// Usage: node build.mjs   (run by tests/peers_support.py; prints one JSON line describing what it wrote)
import { build } from 'esbuild'
import { mkdirSync, renameSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const entries = { segment: 'segment-browser.mjs', rudder: 'rudder-browser.mjs' }
mkdirSync(join(here, 'dist'), { recursive: true })
const written = {}
for (const [name, entry] of Object.entries(entries)) {
  const out = join(here, 'dist', `${name}.js`)
  const partial = `${out}.${process.pid}.tmp`
  await build({
    entryPoints: [join(here, entry)],
    outfile: partial,
    bundle: true,
    format: 'iife',
    platform: 'browser',
    target: ['chrome110'],
    define: { 'process.env.NODE_ENV': '"production"' },
    legalComments: 'none',
    logLevel: 'warning',
  })
  renameSync(partial, out) // atomic: a reader sees the old bundle or the new one, never half of one
  written[name] = { file: out, bytes: statSync(out).size }
}
console.log(JSON.stringify(written))
