#!/usr/bin/env node
// Install step. A published package with a matching prebuild compiles nothing; a git
// checkout (or --from-source / npm_config_build_from_source) builds the addon: with CUDA
// through cmake-js when nvcc is found (KVSQUASH_CUDA=auto|on|off), else CPU-only. A missing
// CUDA toolkit never fails the install; the last line says what was built.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(join(root, 'package.json'));
const log = (message) => console.log(`kvsquash: ${message}`);

function onPath(command) {
  return (process.env.PATH ?? '').split(delimiter).some((dir) => dir && existsSync(join(dir, command)));
}

function findNvcc() {
  if (process.env.CUDACXX && existsSync(process.env.CUDACXX)) return process.env.CUDACXX;
  if (onPath('nvcc')) return 'nvcc';
  for (const home of [process.env.CUDA_PATH, process.env.CUDA_HOME, '/usr/local/cuda']) {
    if (home && existsSync(join(home, 'bin', 'nvcc'))) return join(home, 'bin', 'nvcc');
  }
  return null;
}

function resolveBin(pkg, bin) {
  try {
    return join(dirname(require.resolve(`${pkg}/package.json`)), bin);
  } catch {
    return null;
  }
}

function run(command, args, env = process.env) {
  log(`$ ${[command, ...args].join(' ')}`);
  return spawnSync(command, args, { cwd: root, stdio: 'inherit', env }).status === 0;
}

function loadedBuild() {
  // a fresh process, so this one never holds a stale copy of the addon
  const probe = spawnSync(process.execPath, ['-e',
    `const a = require('node-gyp-build')(${JSON.stringify(root)}); console.log(a.cudaCompiled ? 'cuda' : 'cpu')`],
  { cwd: root, encoding: 'utf8' });
  return probe.status === 0 ? probe.stdout.trim() : null;
}

function cmakeJsAvailable() {
  return resolveBin('cmake-js', 'bin/cmake-js') !== null && onPath('cmake');
}

function buildWithCmakeJs(cudaMode, nvcc) {
  const cmakeJs = resolveBin('cmake-js', 'bin/cmake-js');
  const args = [cmakeJs, 'rebuild', `--CDKVSQUASH_CUDA=${cudaMode}`];
  if (process.env.KVSQUASH_CUDA_ARCHS) args.push(`--CDKVSQUASH_CUDA_ARCHS=${process.env.KVSQUASH_CUDA_ARCHS}`);
  const env = { ...process.env };
  if (nvcc && nvcc !== 'nvcc' && !env.CUDACXX) env.CUDACXX = nvcc;
  return run(process.execPath, args, env);
}

function buildWithNodeGyp() {
  const npmGyp = process.env.npm_config_node_gyp;
  if (npmGyp && existsSync(npmGyp)) return run(process.execPath, [npmGyp, 'rebuild']);
  const local = resolveBin('node-gyp', 'bin/node-gyp.js');
  if (local) return run(process.execPath, [local, 'rebuild']);
  // the copy npm bundles, when npm is not the one running us
  const bundled = join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  if (existsSync(bundled)) return run(process.execPath, [bundled, 'rebuild']);
  return onPath('node-gyp') && run('node-gyp', ['rebuild']);
}

function main() {
  if (process.env.KVSQUASH_SKIP_BUILD === '1') return log('KVSQUASH_SKIP_BUILD=1: nothing built');
  const fromSource = process.argv.includes('--from-source') || process.env.npm_config_build_from_source === 'true' ||
    existsSync(join(root, '.git'));
  if (!fromSource) {
    const flavour = loadedBuild();
    if (flavour) return log(`using the prebuilt addon (${flavour === 'cuda' ? 'CUDA + CPU' : 'CPU-only'})`);
    log('no prebuilt addon loads here: building from source');
  }

  const mode = (process.env.KVSQUASH_CUDA ?? 'auto').toLowerCase();
  if (!['auto', 'on', 'off'].includes(mode)) throw new Error(`KVSQUASH_CUDA must be auto, on or off, got ${mode}`);
  const nvcc = mode === 'off' ? null : findNvcc();
  if (mode === 'on' && !nvcc) throw new Error('KVSQUASH_CUDA=on but nvcc was not found (set CUDACXX or CUDA_PATH)');
  const cmake = cmakeJsAvailable();
  if (nvcc && !cmake) log(`CUDA compiler found (${nvcc}), but ${resolveBin('cmake-js', 'bin/cmake-js') ? 'cmake' : 'cmake-js'} is missing: the CUDA build needs both`);
  else if (mode === 'auto') log(nvcc ? `CUDA compiler found (${nvcc}): building with CUDA` : 'no CUDA compiler found: building CPU-only');
  let built = cmake && buildWithCmakeJs(nvcc ? 'on' : 'off', nvcc);
  if (!built && cmake && nvcc && mode === 'auto') {
    log('the CUDA build failed (see above): falling back to a CPU-only build');
    built = buildWithCmakeJs('off', null);
  }
  if (!built && mode !== 'on') {
    log('building CPU-only with node-gyp');
    built = buildWithNodeGyp();
  }
  if (!built) throw new Error('could not build the native addon (see the compiler output above)');
  const flavour = loadedBuild();
  if (!flavour) throw new Error('the addon was built but does not load');
  log(`built ${flavour === 'cuda' ? 'with CUDA kernels (plus the CPU reference)' : 'CPU-only'} into build/Release/kvsquash.node`);
}

try {
  main();
} catch (error) {
  console.error(`kvsquash: install failed: ${error instanceof Error ? error.message : error}`);
  process.exit(1);
}
