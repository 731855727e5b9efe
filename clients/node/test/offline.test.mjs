// What needs no server: the installed package itself, its type declarations, option checks.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import * as baton from 'baton-client';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = process.env.BATON_REPO;
const PKG = path.join(HERE, 'node_modules', 'baton-client');

describe('package', () => {
  it('is the packed tarball installed in this project, with the proto and service config inside', () => {
    const require = createRequire(import.meta.url);
    assert.equal(path.dirname(path.dirname(require.resolve('baton-client'))), fs.realpathSync(PKG));
    assert.equal(typeof require('baton-client').Client, 'function', 'CommonJS require works too');
    assert.equal(fs.readFileSync(path.join(PKG, 'proto/baton/v1/coordinator.proto'), 'utf8'), fs.readFileSync(path.join(REPO, 'proto/baton/v1/coordinator.proto'), 'utf8'));
    assert.deepEqual(JSON.parse(fs.readFileSync(baton.SERVICE_CONFIG_PATH, 'utf8')), JSON.parse(fs.readFileSync(path.join(REPO, 'clients/service-config.json'), 'utf8')));
    assert.ok(fs.existsSync(path.join(PKG, 'dist/index.d.ts')));
    assert.ok(!fs.existsSync(path.join(PKG, 'src')), 'sources stay out of the package');
  });

  it('type declarations compile a strict TypeScript user', () => {
    const file = path.join(HERE, 'user.ts');
    fs.writeFileSync(
      file,
      `import { Client, LeaseLost, Event, TransitionResponse } from 'baton-client';
export async function main(c: Client): Promise<number> {
  const lease = await c.lease('k', 'me', 30, { onLost: (l) => console.log(l.key) }).acquire();
  const r: TransitionResponse = await lease.transition('e', 'start', { events: [['progress', { pct: 50 }]] });
  try { await lease.appendEvents('e', ['progress']); } catch (e) { if (e instanceof LeaseLost && e.local) return -1; }
  await lease.release();
  let last = 0;
  for await (const ev of c.streamEvents('e', { afterSeq: 0 })) { const e: Event = ev; last = e.seq; }
  return last + r.seqs.length;
}
`,
    );
    const out = execFileSync(process.execPath, [process.env.BATON_TSC, '--noEmit', '--strict', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--types', 'node', file], {
      cwd: HERE,
      encoding: 'utf8',
    });
    assert.equal(out, '');
  });
});

describe('options', () => {
  it('parses targets', () => {
    const cases = [
      ['127.0.0.1:50051', '127.0.0.1:50051', false],
      ['http://localhost:8080', 'localhost:8080', false],
      ['https://baton.example:8443', 'baton.example:8443', true],
      ['https://baton.example', 'baton.example:443', true],
      ['[::1]:50051', '[::1]:50051', false],
      ['HTTPS://h:1/', 'h:1', true],
    ];
    for (const [target, address, secure] of cases) assert.deepEqual(baton.parseTarget(target), { address, secure }, target);
  });

  it('gives clear errors for bad input', () => {
    const bad = [
      [() => new baton.Client(''), /non-empty/],
      [() => new baton.Client('localhost'), /needs a port/],
      [() => new baton.Client('grpc://h:1'), /unsupported target/],
      [() => new baton.Client('http://h:1/path'), /only a host and a port/],
      [() => new baton.Client('h:notaport'), /invalid (host or )?port/],
      [() => new baton.Client('127.0.0.1:1', { namespace: 'Bad Namespace' }), /namespace/],
      [() => new baton.Client('127.0.0.1:1', { caFile: '/x/ca.pem' }), /https:\/\//],
      [() => new baton.Client('https://127.0.0.1:1', { certFile: '/x/c.pem' }), /both certFile and keyFile/],
      [() => new baton.Client('https://127.0.0.1:1', { caFile: '/no/such/ca.pem' }), /cannot read caFile/],
      [() => new baton.Client('127.0.0.1:1', { token: 'has space' }), /token/],
      [() => new baton.Client('127.0.0.1:1', { retry: { maxAttempts: 0 } }), /maxAttempts/],
    ];
    for (const [fn, re] of bad) assert.throws(fn, re);
    const c = new baton.Client('127.0.0.1:1');
    assert.throws(() => c.appendEvents('e', ['progress'], { ifSealed: 'ignore' }), /ifSealed/);
    assert.throws(() => c.appendEvents('e', 'progress'), /array of events/);
    assert.throws(() => c.transition('e', 'start', { requestId: 'x'.repeat(129) }), /requestId/);
    assert.throws(() => c.lease('k', 'me', 1, { renewIntervalMs: 2000 }), /renewIntervalMs/);
    assert.throws(() => baton.parseDuration('1 fortnight'), /invalid duration/);
    c.close();
  });

  it('reads machines TOML and refuses typos', () => {
    const specs = baton.loadMachines(process.env.BATON_MACHINES);
    assert.deepEqual(new Set(specs.map((s) => s.kind)), new Set(['agent_session', 'workflow_run', 'task', 'review_run']));
    assert.throws(() => baton.loadMachines('[[machine]]\nkind="k"\n[[machine.transition]]\nname="t"\nto="x"\nstale_afer="1h"\n'), /stale_afer/);
    assert.equal(baton.parseDuration('1h 30m'), 5400);
    const [timed] = baton.loadMachines(
      '[[machine]]\nkind = "run"\nretain_after_final = "30days"\ndedup = "while_active"\n' +
        '[[machine.timeout]]\nstate = "a"\nafter = "1h"\nidle = true\ntransition = "go"\n',
    );
    assert.deepEqual(timed.retain_after_final, { seconds: 30 * 86400, nanos: 0 });
    assert.equal(timed.dedup, 'DEDUP_POLICY_WHILE_ACTIVE');
    assert.deepEqual(timed.timeouts, [{ state: 'a', after: { seconds: 3600, nanos: 0 }, idle: true, transition: 'go' }]);
    assert.throws(() => baton.loadMachines('[[machine]]\nkind = "k"\ndedup = "sometimes"\n'), /dedup/);
    assert.throws(() => baton.loadMachines('[[machine]]\nkind = "k"\n[[machine.timeout]]\nstate = "a"\naftr = "1h"\n'), /aftr/);
  });
});

describe('errors', () => {
  // google.rpc.Status { code: 9, details: [Any(ErrorInfo)] } in protobuf wire format.
  const field = (no, bytes) => Buffer.concat([Buffer.from([(no << 3) | 2, bytes.length]), bytes]);
  const status = (reason, domain, key, value) => {
    const info = Buffer.concat([field(1, Buffer.from(reason)), field(2, Buffer.from(domain)), field(3, Buffer.concat([field(1, Buffer.from(key)), field(2, Buffer.from(value))]))]);
    const any = Buffer.concat([field(1, Buffer.from('type.googleapis.com/google.rpc.ErrorInfo')), field(2, info)]);
    return Buffer.concat([Buffer.from([0x08, 9]), field(3, any)]);
  };
  const grpcError = (code, bytes) => {
    const md = new (createRequire(import.meta.url)('@grpc/grpc-js').Metadata)();
    if (bytes) md.set('grpc-status-details-bin', bytes);
    return { code, details: 'm', metadata: md };
  };

  it('follow the reason of a baton ErrorInfo', () => {
    for (const [reason, cls] of [
      ['INVALID_TRANSITION', baton.InvalidTransition],
      ['LEASE_LOST', baton.LeaseLost],
      ['TAPE_SEALED', baton.TapeSealed],
      ['VERSION_MISMATCH', baton.VersionMismatch],
      ['SHUTTING_DOWN', baton.ShuttingDown],
      ['UNAUTHENTICATED', baton.Unauthenticated],
      ['PERMISSION_DENIED', baton.PermissionDenied],
    ]) {
      const err = baton.fromGrpcError(grpcError(9, status(reason, 'baton', 'version', '3')));
      assert.ok(err instanceof cls && err.reason === reason && err.metadata.version === '3' && err.isBaton, reason);
    }
  });

  it('without a baton ErrorInfo are transport errors by code', () => {
    const foreign = baton.fromGrpcError(grpcError(14, status('LEASE_LOST', 'example.com', 'k', 'v')));
    assert.ok(foreign instanceof baton.Unavailable && !foreign.isBaton);
    const bare = baton.fromGrpcError(grpcError(13, null));
    assert.ok(bare instanceof baton.Internal && bare.reason === null);
    const garbage = baton.fromGrpcError(grpcError(2, Buffer.from([0xff, 0xff])));
    assert.ok(garbage.constructor === baton.BatonError && garbage.reason === null);
    // A proxy in front of baton may refuse credentials itself: still the typed error.
    const proxy = baton.fromGrpcError(grpcError(16, null));
    assert.ok(proxy instanceof baton.Unauthenticated && !proxy.isBaton);
    const denied = baton.fromGrpcError(grpcError(7, status('PERMISSION_DENIED', 'baton', 'namespace', 'b')));
    assert.ok(denied instanceof baton.PermissionDenied && denied.namespace === 'b' && denied.needsRole === undefined);
  });
});
