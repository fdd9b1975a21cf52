// The C ABI without Node: compiles test/abi/abi_check.c as C against kvsquash.h and links it
// with the core and the CPU kernels (no addon, no CUDA), then runs it. Skipped without gcc/g++.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { test } from 'uvu';
import * as assert from 'uvu/assert';

const root = fileURLToPath(new URL('..', import.meta.url));
const hasCompilers = ['gcc', 'g++'].every((cc) => spawnSync(cc, ['--version']).status === 0);
const maybe = hasCompilers ? test : test.skip;

maybe('kvsquash.h compiles as C and the core runs attention without Node', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvsquash-abi-'));
  try {
    const include = ['-I', join(root, 'csrc/include'), '-I', join(root, 'csrc')];
    const cObject = join(dir, 'abi_check.o');
    const compileC = spawnSync('gcc', ['-std=c99', '-Wall', '-Wextra', '-Werror', ...include, '-c', join(root, 'test/abi/abi_check.c'), '-o', cObject], { encoding: 'utf8' });
    assert.is(compileC.status, 0, compileC.stderr);
    const sources = ['csrc/core', 'csrc/cpu'].flatMap((sub) =>
      readdirSync(join(root, sub)).filter((f) => f.endsWith('.cc')).map((f) => join(root, sub, f)));
    const binary = join(dir, 'abi_check');
    const link = spawnSync('g++', ['-std=c++17', '-O1', ...include, cObject, ...sources, '-pthread', '-lm', '-o', binary], { encoding: 'utf8' });
    assert.is(link.status, 0, link.stderr);
    const run = spawnSync(binary, [], { encoding: 'utf8' });
    assert.is(run.stdout.trim(), 'ok', run.stdout + run.stderr);
    assert.is(run.status, 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
