// Node.js check of the baton API over real gRPC (@grpc/grpc-js + @grpc/proto-loader):
//
//   S4 late events: a runner appends progress as fast as it can while another client
//      cancels the task; every subscriber sees gapless seqs ending with exactly one
//      `final` and its stream closes with OK; late appends are rejected (TAPE_SEALED) or
//      dropped; cancelling a task that never started reaches a terminal state with final.
//   S5 double trigger: 64 concurrent CreateEntity with one dedup key -> one created:true,
//      63 created:false, one id.
//
// It starts its own server: $BATON_BIN serve --listen 127.0.0.1:<free port>
// --database-url sqlite:<tmpdir>/t.db (BATON_BIN defaults to <repo>/target/debug/baton),
// waits for it by retrying a call until a deadline, and stops it at the end. Machines come
// from $BATON_MACHINES, <repo>/examples/machines.toml, or the fallback copy in
// clients/testdata/machines.toml. Prints "N passed, M failed"; exits 1 on any failure.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');
const PROTO_ROOT = path.join(REPO, 'proto');
const BATON_BIN = process.env.BATON_BIN || path.join(REPO, 'target', 'debug', 'baton');
const READY_TIMEOUT_MS = Number(process.env.BATON_READY_TIMEOUT || 30) * 1000;
const SERVICE_CONFIG = fs.readFileSync(path.join(REPO, 'clients', 'service-config.json'), 'utf8');

function machinesPath() {
  if (process.env.BATON_MACHINES) return process.env.BATON_MACHINES;
  const example = path.join(REPO, 'examples', 'machines.toml');
  return fs.existsSync(example) ? example : path.join(REPO, 'clients', 'testdata', 'machines.toml');
}

// ---------------------------------------------------------------------------------------
// Proto loading and a promise-based client
// ---------------------------------------------------------------------------------------

const packageDefinition = protoLoader.loadSync('baton/v1/coordinator.proto', {
  includeDirs: [PROTO_ROOT],
  keepCase: true, // field names exactly as in the proto (entity_id, after_seq, ...)
  longs: Number, // uint64 seqs / tokens / versions as JS numbers (small in these tests)
  enums: String,
  defaults: true,
  oneofs: true, // StreamEventsResponse.item = 'event' | 'heartbeat'
});
const { Coordinator } = grpc.loadPackageDefinition(packageDefinition).baton.v1;

const CHANNEL_OPTIONS = {
  'grpc.service_config': SERVICE_CONFIG,
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 1000,
};

function newStub(addr) {
  return new Coordinator(addr, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
}

/** Call a unary method; rejects with the grpc error extended by decoded ErrorInfo. */
function call(stub, method, request, { timeoutMs = 30_000 } = {}) {
  return new Promise((resolve, reject) => {
    stub[method](request, { deadline: Date.now() + timeoutMs }, (err, resp) => {
      if (err) reject(withErrorInfo(err));
      else resolve(resp);
    });
  });
}

/** Start a StreamEvents call; `done` resolves with {events, heartbeats, status} when it closes. */
function subscribe(stub, namespace, entityId, afterSeq = 0) {
  const events = [];
  let heartbeats = 0;
  const stream = stub.StreamEvents({ namespace, entity_id: entityId, after_seq: afterSeq });
  const done = new Promise((resolve) => {
    stream.on('data', (msg) => {
      if (msg.item === 'event') events.push(msg.event);
      else heartbeats += 1;
    });
    stream.on('error', () => {}); // the final status arrives on 'status' either way
    stream.on('status', (status) => resolve({ events, heartbeats: () => heartbeats, status }));
  });
  return { stream, events, done, afterSeq };
}

// ---------------------------------------------------------------------------------------
// google.rpc.Status / ErrorInfo from the grpc-status-details-bin trailer (tiny decoder)
// ---------------------------------------------------------------------------------------

function* wireFields(buf) {
  let pos = 0;
  const varint = () => {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (pos >= buf.length) throw new Error('truncated varint');
      const b = buf[pos++];
      result |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return result;
      shift += 7n;
    }
  };
  while (pos < buf.length) {
    const tag = Number(varint());
    const no = tag >>> 3;
    const wt = tag & 7;
    if (wt === 0) yield { no, value: varint() };
    else if (wt === 2) {
      const len = Number(varint());
      yield { no, value: buf.subarray(pos, pos + len) };
      pos += len;
    } else if (wt === 1) pos += 8;
    else if (wt === 5) pos += 4;
    else throw new Error(`unsupported wire type ${wt}`);
  }
}

const ERROR_INFO_URL = 'type.googleapis.com/google.rpc.ErrorInfo';

/** Decode a serialized google.rpc.Status into {reason, domain, metadata} of its ErrorInfo. */
export function decodeErrorInfo(statusBytes) {
  let found = null;
  for (const f of wireFields(statusBytes)) {
    if (f.no !== 3) continue; // Status.details (repeated Any)
    let typeUrl = '';
    let value = Buffer.alloc(0);
    for (const a of wireFields(f.value)) {
      if (a.no === 1) typeUrl = a.value.toString('utf8');
      if (a.no === 2) value = a.value;
    }
    if (typeUrl !== ERROR_INFO_URL) continue;
    const info = { reason: '', domain: '', metadata: {} };
    for (const e of wireFields(value)) {
      if (e.no === 1) info.reason = e.value.toString('utf8');
      else if (e.no === 2) info.domain = e.value.toString('utf8');
      else if (e.no === 3) {
        let k = '';
        let v = '';
        for (const kv of wireFields(e.value)) {
          if (kv.no === 1) k = kv.value.toString('utf8');
          if (kv.no === 2) v = kv.value.toString('utf8');
        }
        info.metadata[k] = v;
      }
    }
    if (info.domain === 'baton') return info;
    found ??= info;
  }
  return found;
}

function withErrorInfo(err) {
  const raw = err.metadata?.get('grpc-status-details-bin')?.[0];
  const info = raw ? decodeErrorInfo(Buffer.from(raw)) : null;
  err.reason = info?.reason ?? null;
  err.errorMetadata = info?.metadata ?? {};
  err.codeName = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) ?? String(err.code);
  err.message = `${err.codeName}${err.reason ? ' ' + err.reason : ''}: ${err.details} ${JSON.stringify(err.errorMetadata)}`;
  return err;
}

// ---------------------------------------------------------------------------------------
// Machines file (TOML subset: [[a.b]] arrays of tables, [a] tables, key = string | number
// | boolean | array, comments, multi-line arrays) -> MachineSpec objects
// ---------------------------------------------------------------------------------------

function parseToml(text) {
  const root = {};
  let current = root;
  const lines = text.split(/\r?\n/);
  const tableAt = (dotted) => {
    let t = root;
    for (const part of dotted) {
      let v = t[part];
      if (Array.isArray(v)) v = v[v.length - 1];
      if (v === undefined) v = t[part] = {};
      t = v;
    }
    return t;
  };
  for (let i = 0; i < lines.length; i++) {
    let line = lines[i].trim();
    if (!line || line.startsWith('#')) continue;
    let m;
    if ((m = line.match(/^\[\[\s*([\w.-]+)\s*\]\]\s*(#.*)?$/))) {
      const parts = m[1].split('.');
      const parent = tableAt(parts.slice(0, -1));
      const name = parts[parts.length - 1];
      (parent[name] ??= []).push((current = {}));
      continue;
    }
    if ((m = line.match(/^\[\s*([\w.-]+)\s*\]\s*(#.*)?$/))) {
      current = tableAt(m[1].split('.'));
      continue;
    }
    if (!(m = line.match(/^([\w-]+)\s*=\s*(.*)$/))) throw new Error(`TOML line ${i + 1}: cannot parse ${line}`);
    const key = m[1];
    let src = m[2];
    let parsed;
    for (;;) {
      try {
        parsed = parseTomlValue(src, 0);
        break;
      } catch (e) {
        if (e.incomplete && i + 1 < lines.length) src += '\n' + lines[++i];
        else throw new Error(`TOML line ${i + 1}: ${e.message}`);
      }
    }
    const rest = src.slice(parsed.pos).trim();
    if (rest && !rest.startsWith('#')) throw new Error(`TOML line ${i + 1}: trailing ${rest}`);
    current[key] = parsed.value;
  }
  return root;
}

function parseTomlValue(s, pos) {
  const incomplete = (msg) => Object.assign(new Error(msg), { incomplete: true });
  const skip = () => {
    for (;;) {
      while (pos < s.length && /\s/.test(s[pos])) pos++;
      if (s[pos] === '#') while (pos < s.length && s[pos] !== '\n') pos++;
      else return;
    }
  };
  skip();
  if (pos >= s.length) throw incomplete('missing value');
  const c = s[pos];
  if (c === '"') {
    let end = pos + 1;
    while (end < s.length && s[end] !== '"') end += s[end] === '\\' ? 2 : 1;
    if (end >= s.length) throw new Error('unterminated string');
    return { value: JSON.parse(s.slice(pos, end + 1)), pos: end + 1 };
  }
  if (c === "'") {
    const end = s.indexOf("'", pos + 1);
    if (end < 0) throw new Error('unterminated string');
    return { value: s.slice(pos + 1, end), pos: end + 1 };
  }
  if (c === '[') {
    const out = [];
    pos++;
    for (;;) {
      skip();
      if (pos >= s.length) throw incomplete('unterminated array');
      if (s[pos] === ']') return { value: out, pos: pos + 1 };
      const item = parseTomlValue(s, pos);
      out.push(item.value);
      pos = item.pos;
      skip();
      if (pos >= s.length) throw incomplete('unterminated array');
      if (s[pos] === ',') pos++;
      else if (s[pos] !== ']') throw new Error(`unexpected ${s[pos]} in array`);
    }
  }
  const m = s.slice(pos).match(/^(true|false|[+-]?\d[\d_]*(\.\d+)?)/);
  if (!m) throw new Error(`unsupported value ${s.slice(pos, pos + 20)}`);
  const v = m[1] === 'true' ? true : m[1] === 'false' ? false : Number(m[1].replace(/_/g, ''));
  return { value: v, pos: pos + m[1].length };
}

const UNIT_SECONDS = {};
for (const [names, secs] of [
  [['nsec', 'ns'], 1e-9],
  [['usec', 'us'], 1e-6],
  [['msec', 'ms'], 1e-3],
  [['seconds', 'second', 'secs', 'sec', 's'], 1],
  [['minutes', 'minute', 'mins', 'min', 'm'], 60],
  [['hours', 'hour', 'hrs', 'hr', 'h'], 3600],
  [['days', 'day', 'd'], 86400],
  [['weeks', 'week', 'w'], 604800],
  [['months', 'month', 'M'], 2_630_016],
  [['years', 'year', 'y'], 31_557_600],
]) for (const n of names) UNIT_SECONDS[n] = secs;

/** humantime-style "72h", "1h 30m" -> google.protobuf.Duration object. */
function parseDuration(text) {
  const re = /\s*(\d+)\s*([A-Za-z]+)\s*/y;
  let total = 0;
  let m;
  let pos = 0;
  while (pos < text.length && (m = re.exec(text))) {
    if (!(m[2] in UNIT_SECONDS)) throw new Error(`bad duration ${text}`);
    total += Number(m[1]) * UNIT_SECONDS[m[2]];
    pos = re.lastIndex;
  }
  if (pos !== text.length || !text.trim()) throw new Error(`bad duration ${text}`);
  const seconds = Math.floor(total);
  return { seconds, nanos: Math.round((total - seconds) * 1e9) };
}

function loadMachines(file) {
  const doc = parseToml(fs.readFileSync(file, 'utf8'));
  return (doc.machine ?? []).map((m) => ({
    kind: m.kind,
    states: m.states ?? [],
    initial_state: m.initial_state ?? '',
    terminal_states: m.terminal_states ?? [],
    transitions: (m.transition ?? []).map((t) => ({
      name: t.name,
      from: t.from ?? [],
      to: t.to,
      stale_from: t.stale_from ?? [],
      stale_after: t.stale_after != null ? parseDuration(String(t.stale_after)) : null,
      noop_from: t.noop_from ?? [],
    })),
    field_rules: (m.field_rule ?? []).map((r) => ({ field: r.field, allowed_in: r.allowed_in ?? [] })),
  }));
}

/** Shortest list of transition names from `start` to any of `goals` (unconditional edges). */
function pathTo(spec, start, goals) {
  if (goals.includes(start)) return [];
  const seen = new Set([start]);
  const queue = [[start, []]];
  while (queue.length) {
    const [state, names] = queue.shift();
    for (const t of spec.transitions) {
      if (t.from.includes(state) && !seen.has(t.to)) {
        if (goals.includes(t.to)) return [...names, t.name];
        seen.add(t.to);
        queue.push([t.to, [...names, t.name]]);
      }
    }
  }
  throw new Error(`machine ${spec.kind}: no path from ${start} to ${goals}`);
}

// ---------------------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------------------

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

async function startServer() {
  if (!fs.existsSync(BATON_BIN)) throw new Error(`baton binary not found at ${BATON_BIN} (build it or set BATON_BIN)`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'baton-node-'));
  const port = await freePort();
  const addr = `127.0.0.1:${port}`;
  const logFile = path.join(dir, 'baton.log');
  const log = fs.openSync(logFile, 'w');
  const child = spawn(
    BATON_BIN,
    ['serve', '--listen', addr, '--database-url', `sqlite:${path.join(dir, 't.db')}`],
    { stdio: ['ignore', log, log], env: { RUST_LOG: 'info', ...process.env } },
  );
  fs.closeSync(log);
  let exited = null;
  child.on('exit', (code, signal) => (exited = { code, signal }));
  const server = {
    addr,
    dir,
    child,
    logTail: () => fs.readFileSync(logFile, 'utf8').split('\n').slice(-40).join('\n'),
    exited: () => exited,
    async stop() {
      if (exited) return exited;
      const gone = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const res = await gone;
      clearTimeout(t);
      return res;
    },
  };
  process.on('exit', () => {
    if (!exited) child.kill('SIGKILL');
  });

  // Readiness: retry a cheap call, each attempt with a short deadline, until the deadline.
  const stub = newStub(addr);
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let last = 'no answer';
  for (;;) {
    if (exited) throw new Error(`baton serve exited (${JSON.stringify(exited)}) before ready:\n${server.logTail()}`);
    try {
      await call(stub, 'GetLease', { namespace: 'readiness', key: 'probe' }, { timeoutMs: 1000 });
      break;
    } catch (err) {
      last = err.message;
      if (err.code !== grpc.status.UNAVAILABLE && err.code !== grpc.status.DEADLINE_EXCEEDED) {
        throw new Error(`readiness probe failed: ${last}`);
      }
    }
    if (Date.now() > deadline) {
      await server.stop();
      throw new Error(`baton serve at ${addr} not ready after ${READY_TIMEOUT_MS} ms (last: ${last}):\n${server.logTail()}`);
    }
    await sleep(50);
  }
  stub.close();
  return server;
}

// ---------------------------------------------------------------------------------------
// Assertions and the tiny runner
// ---------------------------------------------------------------------------------------

function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}

function assertTape(events, afterSeq, label) {
  const seqs = events.map((e) => e.seq);
  for (let i = 0; i < seqs.length; i++) {
    assert(seqs[i] === afterSeq + 1 + i, `${label}: seqs not gapless after ${afterSeq}: ${seqs.slice(Math.max(0, i - 3), i + 3)}`);
  }
  const finals = events.filter((e) => e.type === 'final').length;
  assert(finals === 1, `${label}: ${finals} final events`);
  assert(events.at(-1)?.type === 'final', `${label}: last event is ${events.at(-1)?.type}, not final`);
}

async function withTimeout(promise, ms, what) {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(t);
  }
}

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

function taskTransitions(spec) {
  const cancel =
    spec.transitions.find((t) => t.to === 'cancelled') ??
    spec.transitions.find((t) => t.noop_from.length && spec.terminal_states.includes(t.to));
  assert(cancel, `machine ${spec.kind} has no cancel transition`);
  return { cancel, toRunning: pathTo(spec, spec.initial_state, ['running']) };
}

const S4_ROUNDS = Number(process.env.S4_ROUNDS || 5);

test(`S4 late events (${S4_ROUNDS} rounds): cancel while runners append; one final, gapless, streams close OK`, async (ctx) => {
  for (let round = 1; round <= S4_ROUNDS; round++) {
    try {
      await s4Round(ctx);
    } catch (err) {
      err.message = `round ${round}: ${err.message}`;
      throw err;
    }
  }
});

async function s4Round(ctx) {
  const spec = ctx.spec('task');
  const { cancel, toRunning } = taskTransitions(spec);
  const { ns } = ctx;
  const runnerStub = ctx.stub();
  const cancellerStub = ctx.stub();
  const readerStub = ctx.stub();

  const { entity: task } = await call(runnerStub, 'CreateEntity', { namespace: ns, kind: spec.kind });
  for (const name of toRunning) {
    const r = await call(runnerStub, 'Transition', { namespace: ns, entity_id: task.id, transition: name });
    assert(r.applied, `${name} applied`);
  }
  const early = subscribe(readerStub, ns, task.id, 0);

  // Four runners append as fast as they can; three stop on TAPE_SEALED, one uses DROP.
  const appended = new Set(); // seqs acknowledged to runners
  const sealedErrors = [];
  const dropped = [];
  let stop = false;
  const runner = async (r) => {
    for (let i = 0; !stop; i++) {
      const events = Array.from({ length: 1 + (i % 3) }, (_, k) => ({
        type: 'progress',
        payload: Buffer.from(JSON.stringify({ runner: r, i, k })),
        content_type: 'application/json',
      }));
      try {
        const resp = await call(runnerStub, 'AppendEvents', {
          namespace: ns,
          entity_id: task.id,
          events,
          if_sealed: r === 0 ? 'IF_SEALED_DROP' : 'IF_SEALED_REJECT',
        });
        if (resp.dropped) {
          assert(resp.seqs.length === 0, 'dropped append has no seqs');
          dropped.push(resp.final_seq);
          return;
        }
        assert(resp.seqs.length === events.length, 'one seq per event');
        for (const s of resp.seqs) {
          assert(!appended.has(s), `seq ${s} handed out twice`);
          appended.add(s);
        }
      } catch (err) {
        if (err.reason === 'TAPE_SEALED') {
          assert(err.code === grpc.status.FAILED_PRECONDITION, `TAPE_SEALED is FAILED_PRECONDITION: ${err.message}`);
          sealedErrors.push(err);
          return;
        }
        throw err;
      }
    }
  };
  const runners = [0, 1, 2, 3].map(runner);

  // A subscriber joining mid-flight from the head it reads, another after the cancel.
  await sleep(150);
  const head = (await call(readerStub, 'GetEntity', { namespace: ns, id: task.id })).entity.last_seq;
  const middle = subscribe(readerStub, ns, task.id, head);
  const warmup = Date.now() + 10_000;
  while (appended.size < 50) {
    assert(Date.now() < warmup, `runners appended only ${appended.size} events in 10 s`);
    await sleep(10);
  }
  const cancelled = await call(cancellerStub, 'Transition', {
    namespace: ns,
    entity_id: task.id,
    transition: cancel.name,
    final_payload: Buffer.from('{"reason":"user cancelled"}'),
    final_content_type: 'application/json',
  });
  assert(cancelled.applied, 'cancel applied');
  const finalSeq = cancelled.seqs.at(-1);
  assert(cancelled.entity.sealed && cancelled.entity.last_seq === finalSeq, 'cancel sealed the tape at its last seq');
  const late = subscribe(readerStub, ns, task.id, 0);

  await withTimeout(Promise.all(runners), 15_000, 'runners to stop after the cancel');
  stop = true;
  for (const sub of [early, middle, late]) {
    const { status, events } = await withTimeout(sub.done, 15_000, `subscriber after ${sub.afterSeq} to close`);
    assert(status.code === grpc.status.OK, `stream after ${sub.afterSeq} closed with ${status.code} ${status.details}`);
    assertTape(events, sub.afterSeq, `subscriber after ${sub.afterSeq}`);
    assert(events.at(-1).seq === finalSeq, `subscriber's final is seq ${events.at(-1).seq}, cancel said ${finalSeq}`);
    assert(events.at(-1).state === cancel.to, `final state ${events.at(-1).state}`);
  }
  const tape = (await early.done).events;
  const progress = tape.filter((e) => e.type === 'progress').map((e) => e.seq);
  assert(progress.length === appended.size && progress.every((s) => appended.has(s)), `every acknowledged append is on the tape once (${progress.length} vs ${appended.size})`);
  assert([...appended].every((s) => s < finalSeq), 'no acknowledged event after final');
  assert(sealedErrors.length === 3, `three runners got TAPE_SEALED (${sealedErrors.length})`);
  for (const err of sealedErrors) {
    assert(err.errorMetadata.final_seq === String(finalSeq), `TAPE_SEALED names final_seq ${finalSeq}: ${err.message}`);
  }
  assert(dropped.length === 1 && dropped[0] === finalSeq, `the DROP runner was dropped with final_seq ${finalSeq}`);
  const after = (await call(readerStub, 'GetEntity', { namespace: ns, id: task.id })).entity;
  assert(after.sealed && after.last_seq === finalSeq && after.state === cancel.to, 'entity sealed at final');
  ctx.note(`${appended.size} progress events, final at seq ${finalSeq}`);
}

test('S4 cancel before start: a never-started task reaches a terminal state with final', async (ctx) => {
  const spec = ctx.spec('task');
  const { cancel } = taskTransitions(spec);
  const { ns } = ctx;
  const stub = ctx.stub();
  assert(cancel.from.includes(spec.initial_state), `cancel allowed from ${spec.initial_state}`);
  const { entity: task } = await call(stub, 'CreateEntity', { namespace: ns, kind: spec.kind });
  assert(task.state === spec.initial_state && task.last_seq === 0, 'fresh task');
  const waiting = subscribe(stub, ns, task.id, 0);
  await sleep(100);
  const r = await call(stub, 'Transition', { namespace: ns, entity_id: task.id, transition: cancel.name });
  assert(r.applied && spec.terminal_states.includes(r.entity.state) && r.entity.sealed, 'cancelled and sealed');
  for (const sub of [waiting, subscribe(stub, ns, task.id, 0)]) {
    const { status, events } = await withTimeout(sub.done, 15_000, 'stream to close');
    assert(status.code === grpc.status.OK, `stream closed with ${status.code} ${status.details}`);
    assertTape(events, 0, 'cancelled task');
    assert(events.at(-1).state === cancel.to, `final state ${events.at(-1).state}`);
  }
  const again = await call(stub, 'Transition', { namespace: ns, entity_id: task.id, transition: cancel.name });
  assert(!again.applied && again.seqs.length === 0, 'second cancel is a no-op');
});

test('S5 double trigger: 64 concurrent CreateEntity with one dedup key create one entity', async (ctx) => {
  const spec = ctx.spec('review_run');
  const { ns } = ctx;
  const stubs = Array.from({ length: 8 }, () => ctx.stub());
  const dedup = `worker-7:${randomBytes(8).toString('hex')}`;
  const results = await Promise.all(
    Array.from({ length: 64 }, (_, i) =>
      call(stubs[i % stubs.length], 'CreateEntity', { namespace: ns, kind: spec.kind, dedup_key: dedup, fields: { trigger: String(i) } }),
    ),
  );
  const created = results.filter((r) => r.created).length;
  assert(created === 1, `${created} created:true`);
  assert(results.filter((r) => !r.created).length === 63, '63 created:false');
  const ids = new Set(results.map((r) => r.entity.id));
  assert(ids.size === 1, `one id, got ${ids.size}`);
  assert(results.every((r) => r.entity.dedup_key === dedup && r.entity.kind === spec.kind), 'same dedup key and kind');
});

// ---------------------------------------------------------------------------------------

async function main() {
  const machines = loadMachines(machinesPath());
  console.log(`baton: ${BATON_BIN}\nmachines: ${machinesPath()}`);
  const server = await startServer();
  console.log(`server: ${server.addr} (${server.dir})`);
  let passed = 0;
  let failed = 0;
  const stubs = [];
  try {
    const setup = newStub(server.addr);
    stubs.push(setup);
    for (const t of tests) {
      const ns = `node-${randomBytes(6).toString('hex')}`;
      for (const spec of machines) await call(setup, 'DefineMachine', { namespace: ns, spec });
      const notes = [];
      const ctx = {
        ns,
        spec: (kind) => {
          const s = machines.find((m) => m.kind === kind);
          assert(s, `no machine of kind ${kind}`);
          return s;
        },
        stub: () => {
          const s = newStub(server.addr);
          stubs.push(s);
          return s;
        },
        note: (n) => notes.push(n),
      };
      const t0 = Date.now();
      try {
        await t.fn(ctx);
        passed++;
        console.log(`ok   ${t.name} (${Date.now() - t0} ms)${notes.length ? ' — ' + notes.join('; ') : ''}`);
      } catch (err) {
        failed++;
        console.log(`FAIL ${t.name}\n     ${err.stack ?? err}`);
      }
    }
    if (server.exited()) {
      failed++;
      console.log(`FAIL server died during the run:\n${server.logTail()}`);
    }
  } finally {
    for (const s of stubs) s.close();
    const exit = await server.stop();
    if (exit.code !== 0) console.log(`note: baton serve exited with ${JSON.stringify(exit)} on SIGTERM`);
    if (failed === 0) fs.rmSync(server.dir, { recursive: true, force: true });
    else console.log(`server log kept in ${server.dir}`);
  }
  console.log(`${passed} passed, ${failed} failed`);
  return failed === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err.stack ?? err);
    console.log(`0 passed, ${tests.length} failed`);
    process.exit(1);
  },
);
