#!/usr/bin/env node
// `npm test`: runs the uvu suites in test/ (TypeScript through tsx) and ends with one line,
// "N passed, N failed, N skipped", that CI reads. `npm test -- gpu` runs only the suites
// whose file name contains "gpu".
import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(join(root, 'package.json'));
const uvu = join(dirname(require.resolve('uvu')), '..', 'bin.js');
const only = process.argv[2];
const pattern = only ? `${only.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}[^/]*\\.test\\.ts$` : '\\.test\\.ts$';

const child = spawn(process.execPath, ['--expose-gc', '--import', 'tsx', uvu, 'test', pattern], {
  cwd: root,
  stdio: ['ignore', 'pipe', 'inherit'],
});
let output = '';
child.stdout.on('data', (chunk) => {
  output += chunk;
  process.stdout.write(chunk);
});
child.on('close', (code, signal) => {
  // uvu's summary: "Total: N", "Passed: N", "Skipped: N" (skipped tests are not in Total)
  const plain = output.replace(/\x1b\[[0-9;]*m/g, '');
  const count = (label) => Number(new RegExp(`${label}:\\s+(\\d+)`).exec(plain)?.[1] ?? NaN);
  const total = count('Total'), passed = count('Passed'), skipped = count('Skipped');
  if (Number.isNaN(total) || Number.isNaN(passed)) {
    console.log(`0 passed, 1 failed, 0 skipped`);
    console.error(`the test run ended without uvu's summary (exit ${code}${signal ? `, signal ${signal}` : ''})`);
    process.exit(1);
  }
  const failed = Math.max(total - passed, code === 0 ? 0 : 1);
  console.log(`${passed} passed, ${failed} failed, ${Number.isNaN(skipped) ? 0 : skipped} skipped`);
  process.exit(code === 0 && failed === 0 ? 0 : 1);
});
