/** One uvu test per row of a bad-input table: each call must reject with its KvsquashError code. */
import type { Test } from 'uvu';
import * as assert from 'uvu/assert';

import { KvsquashError } from '../../lib/index.js';

export function badInputTests(test: Test, table: [string, () => Promise<unknown>, string][]): void {
  for (const [label, run, code] of table) {
    test(`bad input: ${label} -> ${code}`, async () => {
      try {
        await run();
        assert.unreachable('accepted');
      } catch (error) {
        assert.instance(error, KvsquashError, String(error));
        assert.is((error as KvsquashError).code, code, (error as Error).message);
      }
    });
  }
}
