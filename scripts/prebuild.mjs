#!/usr/bin/env node
// `npm run prebuild -- cuda|cpu`: prebuilds/<platform>-<arch>/kvsquash.node via prebuildify
// (Node-API, stripped) and scripts/prebuild-shim.mjs. Without an argument it does nothing:
// npm runs a "prebuild" script implicitly before "build", and that must not rebuild.
import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const flavour = process.argv[2];
if (!flavour) process.exit(0);
if (flavour !== 'cuda' && flavour !== 'cpu') {
  console.error(`usage: npm run prebuild -- cuda|cpu (got ${flavour})`);
  process.exit(2);
}
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(join(root, 'package.json'));
const prebuildify = join(dirname(require.resolve('prebuildify/package.json')), 'bin.js');
const result = spawnSync(process.execPath, [prebuildify, '--napi', '--strip', '--node-gyp', join(root, 'scripts', 'prebuild-shim.mjs')], {
  cwd: root, stdio: 'inherit', env: { ...process.env, KVSQUASH_PREBUILD_FLAVOUR: flavour },
});
if (result.status !== 0) process.exit(result.status ?? 1);
const file = join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'kvsquash.node');
console.log(`kvsquash: ${flavour} prebuild ${file}: ${statSync(file).size} bytes`);
