// The TypeScript client against real `baton serve` processes, on SQLite and on Postgres.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import {
  Client,
  EntityExists,
  EntityNotFound,
  InvalidArgument,
  InvalidTransition,
  LeaseLost,
  LeaseNotAcquired,
  PermissionDenied,
  RequestIdReused,
  TapeSealed,
  Unauthenticated,
  Unavailable,
  VersionMismatch,
  loadMachines,
} from 'baton-client';
import { Secured } from './tls.mjs';
import { CHANNEL_OPTIONS, Cluster, MACHINES, TcpProxy, assertSealedTape, drive, newNamespace, pathTo, tape, within } from './harness.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const execFileP = promisify(execFile);
const machines = loadMachines(MACHINES);
let madeSecured = null;
let securedDir = null;
/** Certificates and a tokens file for the TLS tests, made once per run (and removed at its end). */
const secured = () => (madeSecured ??= new Secured((securedDir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-secured-')))));
after(() => {
  if (securedDir) fs.rmSync(securedDir, { recursive: true, force: true });
});
/** A client that cannot connect must say so within this long (default timeout and retries). */
const FAILS_WITHIN_MS = 10_000;

/** The error `promise` rejects with, which must be a `cls`, within FAILS_WITHIN_MS. */
async function failsWithin(promise, cls) {
  let err;
  await within(FAILS_WITHIN_MS, assert.rejects(promise, (e) => ((err = e), e instanceof cls)), `a ${cls.name}`);
  return err;
}
const spec = (kind) => {
  const s = machines.find((m) => m.kind === kind);
  assert.ok(s, `no machine of kind ${kind}`);
  return s;
};

for (const backend of ['sqlite', 'postgres']) {
  describe(backend, () => {
    let cluster;
    const clients = [];
    let ns;
    /** A client (own channel) in the suite's namespace. */
    const client = (addr = cluster.main.addr, options = {}) => {
      const c = new Client(addr, { namespace: ns, channelOptions: CHANNEL_OPTIONS, ...options });
      clients.push(c);
      return c;
    };
    const t = (name, fn) => it(`${name} [${backend}]`, fn);

    before(async () => {
      cluster = await Cluster.create(backend);
      ns = newNamespace();
      await client().applyMachines(machines);
    });
    after(async () => {
      for (const c of clients) c.close();
      const died = await cluster.close();
      assert.equal(died, null, `baton serve died during the run:\n${died}`);
    });

    t('typed errors carry the reason and metadata', async () => {
      const c = client();
      const task = (await c.createEntity('task')).entity;
      await assert.rejects(c.transition(task.id, 'no_such_transition'), (e) => e instanceof InvalidArgument && e.metadata.field === 'transition');
      await assert.rejects(c.getEntity('no-such-entity'), EntityNotFound);
      await assert.rejects(
        c.transition(task.id, 'start', { expectVersion: task.version + 5 }),
        (e) => e instanceof VersionMismatch && e.metadata.version === String(task.version) && e.metadata.current_state === 'pending',
      );
      await assert.rejects(c.createEntity('task', { id: task.id }), EntityExists);
      await assert.rejects(c.transition(task.id, 'succeed'), (e) => e instanceof InvalidTransition && e.currentState === 'pending' && e.isBaton);
      await c.transition(task.id, 'cancel');
      await assert.rejects(c.appendEvents(task.id, [['progress', 'late']]), (e) => e instanceof TapeSealed && e.metadata.final_seq === '2');
      const dropped = await c.appendEvents(task.id, [['progress', 'late']], { ifSealed: 'drop' });
      assert.ok(dropped.dropped && dropped.seqs.length === 0 && dropped.final_seq === 2);
    });

    t('request ids make retries return the first outcome', async () => {
      const c = client();
      const first = await c.createEntity('task', { requestId: `rid-${ns}-1` });
      const again = await c.createEntity('task', { requestId: `rid-${ns}-1` });
      assert.equal(again.entity.id, first.entity.id);
      const a = await c.appendEvents(first.entity.id, [['progress', 'once']], { requestId: `rid-${ns}-2` });
      const b = await c.appendEvents(first.entity.id, [['progress', 'once']], { requestId: `rid-${ns}-2` });
      assert.deepEqual(b.seqs, a.seqs);
      assert.equal((await c.getEntity(first.entity.id)).last_seq, 1);
      await assert.rejects(c.appendEvents(first.entity.id, [['progress', 'other']], { requestId: `rid-${ns}-2` }), RequestIdReused);
      await c.appendEvents(first.entity.id, ['progress']);
      await c.appendEvents(first.entity.id, ['progress']);
      assert.equal((await c.getEntity(first.entity.id)).last_seq, 3, 'fresh ids: two appends are two');
    });

    t('a write whose answer is lost is retried with the same request id', async () => {
      const direct = client();
      const task = (await direct.createEntity('task')).entity;
      const proxy = await TcpProxy.create(cluster.main.addr);
      // No service config: gRPC's own UNAVAILABLE retry would hide whether the wrapper retries.
      const via = client(proxy.addr, { serviceConfig: false });
      try {
        await via.getEntity(task.id);
        proxy.cutNextResponse();
        const resp = await via.appendEvents(task.id, [['progress', 'exactly once']]);
        assert.equal(proxy.cuts, 1);
        assert.deepEqual(resp.seqs, [1]);
        assert.equal((await direct.getEntity(task.id)).last_seq, 1, 'the retry did not append again');

        proxy.cutNextResponse();
        const moved = await via.transition(task.id, 'start');
        assert.ok(proxy.cuts === 2 && moved.applied && moved.entity.state === 'running');

        const once = client(proxy.addr, { serviceConfig: false, retry: { maxAttempts: 1 } });
        await once.getEntity(task.id);
        proxy.cutNextResponse();
        let err;
        await assert.rejects(once.appendEvents(task.id, [['progress', 'maybe']]), (e) => ((err = e), e instanceof Unavailable));
        assert.ok(err.maybeCommitted && err.requestId && /may have committed/.test(err.message), err.message);
        assert.equal((await direct.getEntity(task.id)).last_seq, 3, 'it did commit');
        const again = await once.appendEvents(task.id, [['progress', 'maybe']], { requestId: err.requestId });
        assert.deepEqual(again.seqs, [3]);
        assert.equal((await direct.getEntity(task.id)).last_seq, 3);
      } finally {
        proxy.close();
      }
    });

    t('a stream tails live and ends after final', async () => {
      const c = client();
      const task = (await c.createEntity('task')).entity;
      const stream = c.streamEvents(task.id);
      const reading = tape2(stream);
      for (let i = 0; i < 20; i++) await c.appendEvents(task.id, [['progress', { i }]]);
      await drive(c, spec('task'), task.id, spec('task').terminal_states);
      const events = await within(30_000, reading, 'stream to end');
      assertSealedTape(assert, events);
      assert.equal(events.filter((e) => e.type === 'progress').length, 20);
      assert.equal(stream.resumes, 0);
      assertSealedTape(assert, await tape(c, task.id, 5), 5);
      assert.deepEqual(await tape(c, task.id, events.at(-1).seq), [], 'a cursor at final ends at once');
      await assert.rejects(tape(c, task.id, events.at(-1).seq + 1), InvalidArgument);
    });

    /** Read a tape through a proxy while its replica fails over (`signal`) and the tape is
     * finished on the other replica; check it whole; the stream. `connect(addr)` makes the
     * clients; `args` and `tls` are the servers' flags and whether they serve TLS. */
    const readThroughFailover = async (signal, { connect = (addr) => client(addr), args = [], tls = false } = {}) => {
      const url = cluster.ownUrl();
      const a = await cluster.replica(url, args);
      let b = backend === 'postgres' ? await cluster.replica(url, args) : null;
      const proxy = await TcpProxy.create(a.addr, { tls });
      try {
        const writerA = connect(a.addr);
        await writerA.applyMachines(machines);
        const task = (await writerA.createEntity('task')).entity;
        await writerA.transition(task.id, 'start');
        await writerA.appendEvents(task.id, Array.from({ length: 5 }, (_, i) => ['progress', { i }]));
        writerA.close();

        const reader = connect(proxy.addr);
        const stream = reader.streamEvents(task.id, { giveUpAfterMs: 20_000 });
        const events = [];
        let sawBefore;
        const before6 = new Promise((resolve) => (sawBefore = resolve));
        const reading = (async () => {
          for await (const e of stream) {
            events.push(e);
            if (events.length === 6) sawBefore();
          }
        })();
        await within(10_000, before6, 'first six events');
        await a.stop(signal);
        if (!b) b = await cluster.replica(url, args);
        proxy.setUpstream(b.addr);
        const writerB = connect(b.addr);
        for (let i = 5; i < 12; i++) await writerB.appendEvents(task.id, [['progress', { i }]]);
        await drive(writerB, spec('task'), task.id, spec('task').terminal_states);
        await within(30_000, reading, 'resumed stream to end');
        assertSealedTape(assert, events);
        assert.equal(events.filter((e) => e.type === 'progress').length, 12);
        assert.equal(events.length, 1 + 12 + 2);
        assert.ok(stream.resumes >= 1, 'the stream never broke: the test did not test a failover');
        return stream;
      } finally {
        proxy.close();
        // Each replica holds Postgres connections, and the shared server has only so many.
        await Promise.all([a.stop(), b?.stop()]);
      }
    };

    for (const signal of ['SIGKILL', 'SIGTERM']) t(`a stream resumes on the other replica after ${signal}, no gap, no duplicate`, async () => {
      const stream = await readThroughFailover(signal);
      if (signal === 'SIGTERM') {
        // A draining replica ends its streams with UNAVAILABLE / SHUTTING_DOWN: a baton answer that means "resume".
        assert.ok(stream.ends.some((e) => e?.reason === 'SHUTTING_DOWN'), stream.ends.map(String).join('; '));
      }
    });

    t('a lease whose renewals are blackholed reports lost by its own clock; its fence is refused', async () => {
      const TTL = 2;
      const INTERVAL_MS = 500;
      const direct = client();
      const task = (await direct.createEntity('task')).entity;
      const proxy = await TcpProxy.create(cluster.main.addr);
      const via = client(proxy.addr);
      const key = `bh-${task.id}`;
      try {
        let callbacks = 0;
        const lease = via.lease(key, 'holder', TTL, { renewIntervalMs: INTERVAL_MS, onLost: () => callbacks++ });
        await lease.acquire();
        assert.equal(lease.lost, false);
        proxy.blackhole();
        const cutAt = performance.now();
        await within(TTL * 1000 + 2 * INTERVAL_MS, lease.waitLost(), 'lost to trip');
        const lostAt = performance.now();
        assert.ok(lease.lost && callbacks === 1);
        assert.ok(lease.expiresAt <= lostAt && lostAt <= lease.expiresAt + INTERVAL_MS, `${lease.expiresAt} ${lostAt}`);
        assert.ok(lostAt - cutAt <= TTL * 1000 + INTERVAL_MS, `${lostAt - cutAt} ms`);
        await assert.rejects(lease.appendEvents(task.id, [['progress', 'after lost']]), (e) => e instanceof LeaseLost && e.local);
        // After the server's own expiry (a waiting acquire is woken by it, no polling) the
        // old fence is refused with LEASE_LOST naming the new holder.
        const other = await direct.acquireLease(key, 'next-holder', 10, { wait: TTL * 3 });
        assert.ok(other.acquired && other.lease.token > lease.token);
        await assert.rejects(
          direct.appendEvents(task.id, [['progress', 'stale']], { fence: lease.fence }),
          (e) => e instanceof LeaseLost && !e.local && e.metadata.current_token === String(other.lease.token),
        );
        assert.equal((await direct.getEntity(task.id)).last_seq, 0);
        assert.equal(await lease.release(500), false);
      } finally {
        proxy.close();
      }
    });

    t('a lease renews in the background and fences writes', async () => {
      const c = client();
      const key = await leaseRenewsAndFences(c);
      await assert.rejects(
        (async () => {
          const holder = await c.lease(key, 'owner', 10).acquire();
          try {
            await c.lease(key, 'intruder', 10).acquire();
          } finally {
            await holder.release();
          }
        })(),
        (e) => e instanceof LeaseNotAcquired && e.currentHolder === 'owner',
      );
    });

    /** Runs the README's js blocks that `pick` selects, each as pasted with `env`; their
     * outputs, as lines. */
    const readmeBlocks = async (pick, env) => {
      const readme = fs.readFileSync(path.join(HERE, 'node_modules', 'baton-client', 'README.md'), 'utf8');
      const blocks = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]).filter(pick);
      assert.ok(blocks.length >= 1, 'the README has no such js example');
      const outputs = [];
      for (const [i, code] of blocks.entries()) {
        const file = path.join(HERE, `readme-${backend}-${i}.mjs`);
        fs.writeFileSync(file, code);
        const { stdout } = await execFileP(process.execPath, [file], { cwd: HERE, env: { ...process.env, ...env }, timeout: 60_000 });
        outputs.push(stdout.trim().split('\n'));
      }
      return outputs;
    };
    /** The TLS example reads BATON_TOKEN; the main one runs against a plaintext server. */
    const usesToken = (code) => code.includes('BATON_TOKEN');

    t('the README example runs as pasted', async () => {
      const outputs = await readmeBlocks((code) => !usesToken(code), { BATON_ADDR: cluster.main.addr, BATON_NAMESPACE: newNamespace() });
      for (const lines of outputs) {
        assert.deepEqual(lines, ['not allowed from done', '1 baton.transition reviewing', '2 progress ', '3 baton.transition done', '4 final done']);
      }
    });

    // TLS, mTLS and tokens against real secured servers of this backend: `tls` (TLS and a
    // tokens file) and `mtls` (also requires a client certificate). A call that succeeds
    // proves its token went with it: the server refuses calls without one.
    describe('TLS and tokens', () => {
      let tlsAddr;
      let mtlsAddr;
      /** A client of `addr` over TLS with the named token (null: none) and, with `cert`, the client certificate. */
      const https = (addr, token = 'writer', { cert = false, ...options } = {}) =>
        client(`https://${addr}`, { ...secured().clientOptions(token, { cert }), ...options });
      const roundTrip = async (c) => {
        const task = (await c.createEntity('task')).entity;
        await c.transition(task.id, 'start');
        await c.appendEvents(task.id, [['progress', 'over tls']]);
        await c.transition(task.id, 'succeed', { finalPayload: 'ok' });
        const events = await tape(c, task.id);
        assert.deepEqual(events.map((e) => [e.seq, e.type]), [[1, 'baton.transition'], [2, 'progress'], [3, 'baton.transition'], [4, 'final']]);
      };

      before(async () => {
        tlsAddr = (await cluster.replica(cluster.ownUrl(), secured().args())).addr;
        mtlsAddr = (await cluster.replica(cluster.ownUrl(), secured().args({ mtls: true }))).addr;
        await https(tlsAddr, 'admin').applyMachines(machines);
        await https(mtlsAddr, 'admin', { cert: true }).applyMachines(machines);
      });

      t("the README's TLS example runs as pasted", async () => {
        const env = { BATON_ADDR: `https://${tlsAddr}`, BATON_TOKEN: secured().tokens.writer, BATON_CA_FILE: secured().certs.ca, BATON_NAMESPACE: newNamespace() };
        for (const lines of await readmeBlocks(usesToken, env)) assert.deepEqual(lines, ['holding deploy/prod', 'not allowed in another-team']);
      });

      t('https:// with caFile and a token: create, transition, stream round trip', async () => {
        await roundTrip(https(tlsAddr));
      });

      t('mTLS: the client certificate stands for the caller without a token; no certificate fails at once', async () => {
        await roundTrip(https(mtlsAddr, null, { cert: true }));
        const elsewhere = newNamespace().replace(/^n-/, 'u-');
        const denied = await failsWithin(https(mtlsAddr, null, { cert: true, namespace: elsewhere }).getLease('k'), PermissionDenied);
        assert.equal(denied.namespace, elsewhere);
        const noCert = await failsWithin(https(mtlsAddr, 'admin').getLease('k'), Unavailable);
        assert.equal(noCert.isBaton, false);
      });

      t('a missing or wrong token is Unauthenticated, on calls and streams', async () => {
        const task = (await https(tlsAddr).createEntity('task')).entity;
        for (const token of [undefined, 'bt_not-a-token']) {
          const c = client(`https://${tlsAddr}`, { caFile: secured().certs.ca, token });
          const err = await failsWithin(c.getEntity(task.id), Unauthenticated);
          assert.ok(err.codeName === 'UNAUTHENTICATED' && err.reason === 'UNAUTHENTICATED' && err.isBaton, err.message);
          // The server's message tells whether a token came: without one the client sends no authorization header.
          assert.equal(err.details.includes('no credentials'), token === undefined, err.details);
          await failsWithin(c.transition(task.id, 'start'), Unauthenticated);
          await failsWithin(tape(c, task.id), Unauthenticated);
        }
        assert.equal((await https(tlsAddr).getEntity(task.id)).version, 1, 'nothing was written');
      });

      t('a grant is held to its namespaces and role: PermissionDenied names them', async () => {
        const elsewhere = newNamespace().replace(/^n-/, 'u-');
        const other = https(tlsAddr, 'writer', { namespace: elsewhere });
        const err = await failsWithin(other.createEntity('task'), PermissionDenied);
        assert.ok(err.codeName === 'PERMISSION_DENIED' && err.isBaton && err.namespace === elsewhere && err.needsRole === undefined, err.message);
        await failsWithin(tape(other, 'any'), PermissionDenied);
        const reader = https(tlsAddr, 'reader');
        const low = await failsWithin(reader.createEntity('task'), PermissionDenied);
        assert.deepEqual([low.namespace, low.needsRole], [ns, 'write']);
        assert.equal((await reader.getLease('k')).lease, null, 'reads are allowed');
      });

      t('a plaintext or untrusting client against the TLS port fails within seconds', async () => {
        const token = secured().tokens.writer;
        for (const target of [`http://${tlsAddr}`, `https://${tlsAddr}`]) {
          const err = await failsWithin(client(target, { token, channelOptions: {} }).getLease('k'), Unavailable);
          assert.equal(err.isBaton, false, target);
        }
      });

      t('a lease renews over TLS with a token', async () => {
        // Each renewal carries the token: without it the server would refuse it and the lease would be lost.
        await leaseRenewsAndFences(https(tlsAddr));
      });

      t('a stream resumes over TLS with a token after SIGKILL of its replica', async () => {
        // The proxy passes the TLS bytes through; the resumed stream makes a new handshake and sends the token again.
        await readThroughFailover('SIGKILL', { connect: (addr) => https(addr, 'admin'), args: secured().args(), tls: true });
      });
    });

    const S4_ROUNDS = 3;
    t(`S4 late events (${S4_ROUNDS} rounds): cancel while runners append; one final, gapless, streams end`, async () => {
      for (let round = 1; round <= S4_ROUNDS; round++) await s4Round(client);
    });

    t('S4 cancel before start: a never-started task reaches a terminal state with final', async () => {
      const c = client();
      const task = (await c.createEntity('task')).entity;
      const waiting = tape2(c.streamEvents(task.id));
      const r = await c.transition(task.id, 'cancel');
      assert.ok(r.applied && r.entity.sealed && spec('task').terminal_states.includes(r.entity.state));
      for (const events of [await within(15_000, waiting, 'stream'), await tape(c, task.id)]) {
        assertSealedTape(assert, events);
        assert.equal(events.at(-1).state, 'cancelled');
      }
      const again = await c.transition(task.id, 'cancel');
      assert.ok(!again.applied && again.seqs.length === 0, 'second cancel is a no-op');
    });

    t('S5 double trigger: 64 concurrent CreateEntity with one dedup key create one entity', async () => {
      const cs = Array.from({ length: 8 }, () => client());
      const dedup = `worker-7:${newNamespace()}`;
      const results = await Promise.all(
        Array.from({ length: 64 }, (_, i) => cs[i % 8].createEntity('review_run', { dedupKey: dedup, fields: { trigger: String(i) } })),
      );
      assert.equal(results.filter((r) => r.created).length, 1);
      assert.equal(results.filter((r) => !r.created).length, 63);
      assert.equal(new Set(results.map((r) => r.entity.id)).size, 1);
      const listed = [];
      for await (const e of cs[0].listEntities('review_run')) if (e.dedup_key === dedup) listed.push(e.id);
      assert.deepEqual(listed, [results[0].entity.id]);
    });
  });
}

/** A lease (TTL 1.5 s, renewed every 300 ms) lives through two TTLs on renewals alone,
 * fences a transition, and is released; its key. */
async function leaseRenewsAndFences(c) {
  const task = (await c.createEntity('task')).entity;
  const key = `task:${task.id}`;
  const lease = await c.lease(key, 'worker', 1.5, { renewIntervalMs: 300 }).acquire();
  const outcome = await Promise.race([lease.waitLost().then(() => 'lost'), new Promise((r) => setTimeout(() => r('alive'), 3000))]);
  assert.equal(outcome, 'alive', String(lease.lostCause));
  assert.ok(lease.renewals >= 6, `${lease.renewals} renewals`);
  assert.equal((await c.getLease(key)).lease.token, lease.token);
  const r = await lease.transition(task.id, 'start', { events: [['progress', 'mine']] });
  assert.ok(r.applied && r.seqs.length === 2);
  assert.equal(await lease.release(), true);
  assert.equal((await c.getLease(key)).lease, null);
  return key;
}

/** Collect a stream's events. */
async function tape2(stream) {
  const out = [];
  for await (const e of stream) out.push(e);
  return out;
}

async function s4Round(client) {
  const runnerC = client();
  const cancellerC = client();
  const readerC = client();
  const s = spec('task');
  const task = (await runnerC.createEntity('task')).entity;
  for (const name of pathTo(s, s.initial_state, ['running'])) await runnerC.transition(task.id, name);
  const early = tape2(readerC.streamEvents(task.id));

  const appended = new Set();
  const sealedErrors = [];
  const dropped = [];
  let firstFifty;
  const fifty = new Promise((resolve) => (firstFifty = resolve));
  const runner = async (r) => {
    for (let i = 0; ; i++) {
      const events = Array.from({ length: 1 + (i % 3) }, (_, k) => ['progress', { runner: r, i, k }]);
      try {
        const resp = await runnerC.appendEvents(task.id, events, { ifSealed: r === 0 ? 'drop' : 'reject' });
        if (resp.dropped) {
          assert.equal(resp.seqs.length, 0);
          dropped.push(resp.final_seq);
          return;
        }
        assert.equal(resp.seqs.length, events.length);
        for (const seq of resp.seqs) {
          assert.ok(!appended.has(seq), `seq ${seq} handed out twice`);
          appended.add(seq);
        }
        if (appended.size >= 50) firstFifty();
      } catch (err) {
        if (err instanceof TapeSealed) {
          sealedErrors.push(err);
          return;
        }
        throw err;
      }
    }
  };
  const runners = [0, 1, 2, 3].map(runner);
  await within(10_000, fifty, 'runners to append 50 events');
  const head = (await readerC.getEntity(task.id)).last_seq;
  const middle = tape2(readerC.streamEvents(task.id, { afterSeq: head }));
  const cancelled = await cancellerC.transition(task.id, 'cancel', { finalPayload: { reason: 'user cancelled' } });
  assert.ok(cancelled.applied);
  const finalSeq = cancelled.seqs.at(-1);
  assert.ok(cancelled.entity.sealed && cancelled.entity.last_seq === finalSeq);
  const late = tape2(readerC.streamEvents(task.id));
  await within(15_000, Promise.all(runners), 'runners to stop');
  for (const [sub, afterSeq] of [[early, 0], [middle, head], [late, 0]]) {
    const events = await within(15_000, sub, `subscriber after ${afterSeq}`);
    assertSealedTape(assert, events, afterSeq);
    assert.equal(events.at(-1).seq, finalSeq);
    assert.equal(events.at(-1).state, 'cancelled');
  }
  const progress = (await early).filter((e) => e.type === 'progress').map((e) => e.seq);
  assert.equal(progress.length, appended.size);
  assert.ok(progress.every((seq) => appended.has(seq) && seq < finalSeq));
  assert.equal(sealedErrors.length, 3);
  for (const err of sealedErrors) assert.equal(err.metadata.final_seq, String(finalSeq));
  assert.deepEqual(dropped, [finalSeq]);
}
