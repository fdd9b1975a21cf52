#!/usr/bin/env node
// Stands in for node-gyp when prebuildify calls `<shim> rebuild --target=V --devdir=DIR
// --arch=A --release`: a Node-API build needs neither the target's headers nor a download,
// so those flags are dropped. KVSQUASH_PREBUILD_FLAVOUR picks the build:
//   cuda: cmake-js with CUDA (static cudart; KVSQUASH_CUDA_ARCHS, default SASS 80/86/89/90 + PTX)
//   cpu:  node-gyp over binding.gyp, against node's own headers when they are installed
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(join(root, 'package.json'));
const args = process.argv.slice(2);
const arch = args.find((a) => a.startsWith('--arch='));
const debug = args.includes('--debug');
const run = (command, argv) => spawnSync(command, argv, { cwd: root, stdio: 'inherit' }).status ?? 1;

let status;
if (process.env.KVSQUASH_PREBUILD_FLAVOUR === 'cuda') {
  const cmakeJs = join(dirname(require.resolve('cmake-js/package.json')), 'bin', 'cmake-js');
  const archs = process.env.KVSQUASH_CUDA_ARCHS ? [`--CDKVSQUASH_CUDA_ARCHS=${process.env.KVSQUASH_CUDA_ARCHS}`] : [];
  status = run(process.execPath, [cmakeJs, 'rebuild', '--CDKVSQUASH_CUDA=on', ...archs, ...(arch ? [arch] : []), ...(debug ? ['--debug'] : [])]);
} else {
  const bundled = join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  const nodeGyp = process.env.npm_config_node_gyp && existsSync(process.env.npm_config_node_gyp) ? process.env.npm_config_node_gyp : bundled;
  const prefix = join(dirname(process.execPath), '..');
  const nodedir = existsSync(join(prefix, 'include', 'node', 'node_api.h')) ? [`--nodedir=${prefix}`] : [];
  status = run(process.execPath, [nodeGyp, 'rebuild', ...nodedir, ...(arch ? [arch] : []), debug ? '--debug' : '--release']);
}
process.exit(status);
