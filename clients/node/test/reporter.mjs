// node:test reporter: one line per test, failures with their error, and the closing line
// "N passed, M failed" (counting tests, not suites).
export default async function* reporter(source) {
  let passed = 0;
  let failed = 0;
  let skipped = 0;
  for await (const { type, data } of source) {
    if (type !== 'test:pass' && type !== 'test:fail') continue;
    if (data.details?.type === 'suite') {
      if (type === 'test:fail' && data.details?.error?.failureType !== 'subtestsFailed') {
        failed++;
        yield `FAIL ${data.name} (suite): ${data.details.error?.cause?.stack ?? data.details.error?.message}\n`;
      }
      continue;
    }
    const name = `${data.name} (${Math.round(data.details?.duration_ms ?? 0)} ms)`;
    if (type === 'test:pass') {
      if (data.skip || data.todo) {
        skipped++;
        yield `skip ${name}\n`;
      } else {
        passed++;
        yield `ok   ${name}\n`;
      }
    } else {
      failed++;
      const err = data.details?.error;
      yield `FAIL ${name}\n     ${(err?.cause?.stack ?? err?.stack ?? String(err)).split('\n').join('\n     ')}\n`;
    }
  }
  yield `${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}\n`;
}
