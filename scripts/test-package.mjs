#!/usr/bin/env node
// `npm run test:package`: what users of the published package meet. Packs the tarball
// (making a CPU prebuild first when prebuilds/ has none), installs it into empty projects with
// and without --ignore-scripts, runs test/package/smoke.mjs under Node (main thread and a
// worker), Bun and Deno (from their npm packages), forces a source build, runs publint and
// reports sizes. Ends with "N passed, N failed".
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const work = mkdtempSync(join(tmpdir(), 'kvsquash-package-'));
const results = [];
const check = (name, ok, detail = '') => {
  results.push(ok);
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${detail ? `: ${detail}` : ''}`);
};
const sh = (command, args, options = {}) => spawnSync(command, args, { encoding: 'utf8', ...options });
// installs see a user's environment: CUDA auto-detection, not CI's KVSQUASH_CUDA=on
const npm = (args, cwd, env = {}) => sh('npm', args, { cwd, env: { ...process.env, KVSQUASH_CUDA: 'auto', ...env } });

try {
  const prebuild = join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'kvsquash.node');
  if (!existsSync(prebuild)) {
    console.log('no prebuild yet: making the CPU one (npm run prebuild -- cpu)');
    execFileSync(process.execPath, [join(root, 'scripts', 'prebuild.mjs'), 'cpu'], { cwd: root, stdio: 'inherit' });
  }
  const packed = npm(['pack', '--json', '--pack-destination', work], root);
  const info = JSON.parse(packed.stdout.slice(packed.stdout.indexOf('[')))[0];
  const tarball = join(work, info.filename);
  const files = new Set(info.files.map((f) => f.path));
  const needed = ['dist/index.js', 'dist/index.d.ts', `prebuilds/${process.platform}-${process.arch}/kvsquash.node`, 'csrc/include/kvsquash.h',
    'cuda/attention.cu', 'binding.gyp', 'CMakeLists.txt', 'scripts/install.mjs', 'package.json', 'README.md'];
  const missing = needed.filter((f) => !files.has(f));
  check('tarball holds dist, prebuilds, sources and build files', missing.length === 0, missing.length ? `missing ${missing.join(', ')}` : `${files.size} files`);
  console.log(`     sizes: tarball ${statSync(tarball).size} bytes (unpacked ${info.unpackedSize}), ${prebuild.slice(root.length + 1)} ${statSync(prebuild).size} bytes`);

  const smoke = (command, args, cwd, label) => {
    const run = sh(command, args, { cwd, timeout: 120_000 });
    const line = run.stdout.trim().split('\n').pop() ?? '';
    let parsed = null;
    try { parsed = JSON.parse(line); } catch { /* reported below */ }
    const ok = run.status === 0 && parsed !== null && parsed.mergedLengths?.[0] === 16 && parsed.clusteredLengths?.[0] === 22 &&
      (parsed.cuda.available || parsed.cuda.reason.length > 0);
    check(`smoke: ${label}`, ok, parsed ? `${parsed.runtime} ${parsed.thread}, cuda ${parsed.cuda.available ? 'available' : `unavailable (${parsed.cuda.reason})`}` : (run.stderr || run.stdout).slice(-400));
    return parsed;
  };
  const project = (name, installArgs) => {
    const dir = join(work, name);
    mkdirSync(dir);
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name, private: true, type: 'module' }));
    copyFileSync(join(root, 'test', 'package', 'smoke.mjs'), join(dir, 'smoke.mjs'));
    const install = npm(['install', tarball, '--foreground-scripts', ...installArgs], dir);
    check(`npm install ${installArgs.join(' ') || '(with scripts)'}`, install.status === 0, install.status === 0 ? '' : install.stderr.slice(-400));
    return { dir, output: install.stdout };
  };

  const quiet = project('ignore-scripts', ['--ignore-scripts']);
  check('no build/ after --ignore-scripts: the prebuild is what loads', !existsSync(join(quiet.dir, 'node_modules', 'kvsquash', 'build')));
  smoke(process.execPath, ['smoke.mjs'], quiet.dir, 'node');
  smoke(process.execPath, ['smoke.mjs', '--worker'], quiet.dir, 'node worker_threads');

  const tools = join(work, 'tools');
  mkdirSync(tools);
  writeFileSync(join(tools, 'package.json'), JSON.stringify({ name: 'tools', private: true }));
  const gotTools = npm(['install', 'bun@1', 'deno@2', '--ignore-scripts'], tools);
  check('bun and deno from npm', gotTools.status === 0, gotTools.status === 0 ? '' : gotTools.stderr.slice(-300));
  const platformDir = (scope, prefix) => {
    const base = join(tools, 'node_modules', scope);
    return existsSync(base) ? readdirSync(base).filter((d) => d.startsWith(prefix)).map((d) => join(base, d)) : [];
  };
  const bun = platformDir('@oven', `bun-${process.platform}-${process.arch === 'x64' ? 'x64' : 'aarch64'}`).map((d) => join(d, 'bin', 'bun')).find(existsSync);
  const deno = platformDir('@deno', `${process.platform}-${process.arch === 'x64' ? 'x64' : 'arm64'}`).map((d) => join(d, 'deno')).find(existsSync);
  if (bun) smoke(bun, ['smoke.mjs'], quiet.dir, 'bun'); else check('bun binary found', false);
  if (deno) smoke(deno, ['run', '-A', 'smoke.mjs'], quiet.dir, 'deno'); else check('deno binary found', false);

  const scripted = project('with-scripts', []);
  check('install with scripts compiles nothing when the prebuild loads', /using the prebuilt addon/.test(scripted.output) && !existsSync(join(scripted.dir, 'node_modules', 'kvsquash', 'build')));
  smoke(process.execPath, ['smoke.mjs'], scripted.dir, 'node (installed with scripts)');
  const rebuilt = npm(['rebuild', 'kvsquash', '--foreground-scripts'], scripted.dir, { npm_config_build_from_source: 'true' });
  check('npm_config_build_from_source forces a (CPU) source build and says so', rebuilt.status === 0 && /kvsquash: built CPU-only/.test(rebuilt.stdout), rebuilt.stdout.split('\n').filter((l) => l.startsWith('kvsquash:')).join(' | '));
  smoke(process.execPath, ['smoke.mjs'], scripted.dir, 'node (source build)');

  // the published declarations, as a TypeScript user compiles against them
  copyFileSync(join(root, 'test', 'package', 'types.test-d.ts'), join(quiet.dir, 'types.test-d.ts'));
  const tsc = sh(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '--noEmit', '--strict', '--target', 'es2022',
    '--module', 'nodenext', '--moduleResolution', 'nodenext', '--lib', 'es2022,esnext.disposable', '--typeRoots', join(root, 'node_modules', '@types'),
    '--types', 'node', 'types.test-d.ts'], { cwd: quiet.dir });
  check('type declarations: good calls compile, every @ts-expect-error is an error', tsc.status === 0, tsc.stdout.slice(0, 600));

  const lint = sh(process.execPath, [join(root, 'node_modules', 'publint', 'src', 'cli.js'), root], { cwd: root });
  check('publint', lint.status === 0 && /All good/.test(lint.stdout), lint.stdout.trim().split('\n').pop());
} finally {
  rmSync(work, { recursive: true, force: true });
}
const failed = results.filter((ok) => !ok).length;
console.log(`${results.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
