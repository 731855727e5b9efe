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
  RequestIdReused,
  TapeSealed,
  Unavailable,
  VersionMismatch,
  loadMachines,
} from 'baton-client';
import { Forwarder, makeCerts } from './tls.mjs';
import { CHANNEL_OPTIONS, Cluster, MACHINES, TcpProxy, assertSealedTape, drive, newNamespace, pathTo, tape, within } from './harness.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const execFileP = promisify(execFile);
const machines = loadMachines(MACHINES);
let madeCerts = null;
let certsDir = null;
/** Certificates for the TLS tests, made once per run (and removed at its end). */
const certs = () => (madeCerts ??= makeCerts((certsDir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-certs-')))));
after(() => {
  if (certsDir) fs.rmSync(certsDir, { recursive: true, force: true });
});
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

    for (const signal of ['SIGKILL', 'SIGTERM']) t(`a stream resumes on the other replica after ${signal}, no gap, no duplicate`, async () => {
      const url = backend === 'postgres' ? cluster.url : cluster.freshSqliteUrl();
      const a = await cluster.replica(url);
      let b = backend === 'postgres' ? await cluster.replica(url) : null;
      const proxy = await TcpProxy.create(a.addr);
      try {
        const writerA = client(a.addr);
        await writerA.applyMachines(machines);
        const task = (await writerA.createEntity('task')).entity;
        await writerA.transition(task.id, 'start');
        await writerA.appendEvents(task.id, Array.from({ length: 5 }, (_, i) => ['progress', { i }]));
        writerA.close();

        const reader = client(proxy.addr);
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
        if (!b) b = await cluster.replica(url);
        proxy.setUpstream(b.addr);
        const writerB = client(b.addr);
        for (let i = 5; i < 12; i++) await writerB.appendEvents(task.id, [['progress', { i }]]);
        await drive(writerB, spec('task'), task.id, spec('task').terminal_states);
        await within(30_000, reading, 'resumed stream to end');
        assertSealedTape(assert, events);
        assert.equal(events.filter((e) => e.type === 'progress').length, 12);
        assert.equal(events.length, 1 + 12 + 2);
        assert.ok(stream.resumes >= 1, 'the stream never broke: the test did not test a failover');
        if (signal === 'SIGTERM') {
          // A draining replica ends its streams with UNAVAILABLE / SHUTTING_DOWN: a baton answer that means "resume".
          assert.ok(stream.ends.some((e) => e?.reason === 'SHUTTING_DOWN'), stream.ends.map(String).join('; '));
        }
      } finally {
        proxy.close();
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
      const task = (await c.createEntity('task')).entity;
      const key = `task:${task.id}`;
      const lease = await c.lease(key, 'worker', 1.5, { renewIntervalMs: 300 }).acquire();
      // Two TTLs pass: only renewals keep it alive.
      const outcome = await Promise.race([lease.waitLost().then(() => 'lost'), new Promise((r) => setTimeout(() => r('alive'), 3000))]);
      assert.equal(outcome, 'alive', String(lease.lostCause));
      assert.ok(lease.renewals >= 6, `${lease.renewals} renewals`);
      assert.equal((await c.getLease(key)).lease.token, lease.token);
      const r = await lease.transition(task.id, 'start', { events: [['progress', 'mine']] });
      assert.ok(r.applied && r.seqs.length === 2);
      assert.equal(await lease.release(), true);
      assert.equal((await c.getLease(key)).lease, null);
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

    t('the README example runs as pasted', async () => {
      const readme = fs.readFileSync(path.join(HERE, 'node_modules', 'baton-client', 'README.md'), 'utf8');
      const blocks = [...readme.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]);
      assert.ok(blocks.length >= 1, 'the README has no js example');
      const readmeNs = newNamespace();
      for (const [i, code] of blocks.entries()) {
        const file = path.join(HERE, `readme-${backend}-${i}.mjs`);
        fs.writeFileSync(file, code);
        const { stdout } = await execFileP(process.execPath, [file], {
          cwd: HERE,
          env: { ...process.env, BATON_ADDR: cluster.main.addr, BATON_NAMESPACE: readmeNs },
          timeout: 60_000,
        });
        assert.deepEqual(stdout.trim().split('\n'), [
          'not allowed from done',
          '1 baton.transition reviewing',
          '2 progress ',
          '3 baton.transition done',
          '4 final done',
        ]);
      }
    });

    t('token, https:// and mTLS options as seen on the wire by a forwarder', async () => {
      const plain = await Forwarder.create(cluster.main.addr);
      const tls = await Forwarder.create(cluster.main.addr, { certs: certs() });
      const mtls = await Forwarder.create(cluster.main.addr, { certs: certs(), mtls: true });
      const failFast = { timeoutMs: 3000, retry: { maxAttempts: 2, initialBackoffMs: 50 } };
      const calls = async (c) => {
        const task = (await c.createEntity('task')).entity;
        await c.transition(task.id, 'cancel');
        assert.deepEqual((await tape(c, task.id)).map((e) => e.type), ['baton.transition', 'final']);
      };
      try {
        await calls(client(`http://127.0.0.1:${plain.port}`, { token: 's3cret-token' }));
        assert.deepEqual(plain.seen, [['CreateEntity', 'Bearer s3cret-token'], ['Transition', 'Bearer s3cret-token'], ['StreamEvents', 'Bearer s3cret-token']]);
        await client(`127.0.0.1:${plain.port}`).getLease('k');
        assert.deepEqual(plain.seen.at(-1), ['GetLease', null]);

        await calls(client(`https://127.0.0.1:${tls.port}`, { caFile: certs().ca, token: 't' }));
        assert.equal(tls.seen.length, 3);
        assert.equal(tls.seen[0][1], 'Bearer t');
        await assert.rejects(client(`127.0.0.1:${tls.port}`, failFast).getLease('k'), Unavailable);
        await assert.rejects(client(`https://127.0.0.1:${tls.port}`, failFast).getLease('k'), Unavailable);

        await calls(client(`https://127.0.0.1:${mtls.port}`, { caFile: certs().ca, certFile: certs().client, keyFile: certs().clientKey }));
        await assert.rejects(client(`https://127.0.0.1:${mtls.port}`, { caFile: certs().ca, ...failFast }).getLease('k'), Unavailable);
        assert.equal(tls.seen.length, 3);
        assert.equal(mtls.seen.length, 3);
      } finally {
        for (const f of [plain, tls, mtls]) f.close();
      }
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
