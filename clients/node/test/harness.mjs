// Test harness: real `baton serve` processes, a Postgres database per run, and a TCP proxy
// that can switch upstreams, blackhole traffic or cut a response. No mocks of baton.
//
//   BATON_BIN          server binary (required: run-tests.sh sets it)
//   BATON_MACHINES     machines TOML file (required: run-tests.sh sets it)
//   BATON_TEST_PG_URL  admin URL of a Postgres that may CREATE DATABASE
//                      (default postgres://postgres@127.0.0.1:5432/test)
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import pg from 'pg';

export const BATON_BIN = process.env.BATON_BIN;
export const MACHINES = process.env.BATON_MACHINES;
const PG_ADMIN_URL = process.env.BATON_TEST_PG_URL || 'postgres://postgres@127.0.0.1:5432/test';
const READY_TIMEOUT_MS = Number(process.env.BATON_READY_TIMEOUT || 30) * 1000;

export const CHANNEL_OPTIONS = {
  'grpc.initial_reconnect_backoff_ms': 100,
  'grpc.min_reconnect_backoff_ms': 100,
  'grpc.max_reconnect_backoff_ms': 500,
};

const children = new Set();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

/** One `baton serve --listen 127.0.0.1:0`; the address comes from its JSON `baton serving` log line. */
export class BatonServer {
  /** `args`: more flags (TLS, tokens). */
  constructor(databaseUrl, logPath, args = []) {
    this.databaseUrl = databaseUrl;
    this.logPath = logPath;
    this.args = args;
    this.addr = '';
    this.child = null;
    this.exited = null;
  }

  async start() {
    if (!BATON_BIN || !fs.existsSync(BATON_BIN)) throw new Error(`baton binary not found at ${BATON_BIN}: set BATON_BIN`);
    const child = spawn(
      BATON_BIN,
      ['serve', '--listen', '127.0.0.1:0', '--log-format', 'json', '--database-url', this.databaseUrl, '--heartbeat', '1s', '--drain', '2s', ...this.args],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    this.child = child;
    children.add(child);
    const log = fs.createWriteStream(this.logPath, { flags: 'a' });
    const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    exited.then((e) => {
      this.exited = e;
      children.delete(child);
    });
    this.exitPromise = exited;
    const ready = new Promise((resolve, reject) => {
      const lines = readline.createInterface({ input: child.stderr });
      lines.on('line', (line) => {
        log.write(line + '\n');
        if (this.addr) return;
        try {
          const fields = JSON.parse(line).fields ?? {};
          if (fields.message === 'baton serving') {
            this.addr = fields.addr;
            resolve();
          }
        } catch {
          /* not JSON */
        }
      });
      lines.on('close', () => {
        log.end();
        reject(new Error(`baton serve exited before serving:\n${this.logTail()}`));
      });
    });
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`baton serve did not report 'baton serving' in ${READY_TIMEOUT_MS} ms`)), READY_TIMEOUT_MS);
    });
    try {
      await Promise.race([ready, timeout]);
    } catch (err) {
      await this.stop('SIGKILL');
      throw err;
    } finally {
      clearTimeout(timer);
    }
    return this;
  }

  logTail(n = 30) {
    try {
      return fs.readFileSync(this.logPath, 'utf8').split('\n').slice(-n).join('\n');
    } catch {
      return '(no log)';
    }
  }

  alive() {
    return this.child !== null && this.exited === null;
  }

  async stop(signal = 'SIGTERM') {
    if (!this.child) return null;
    if (this.exited === null) {
      this.child.kill(signal);
      const t = setTimeout(() => this.child?.kill('SIGKILL'), 10_000);
      await this.exitPromise;
      clearTimeout(t);
    }
    this.child = null;
    return this.exited;
  }

  kill() {
    return this.stop('SIGKILL');
  }
}

/** A fresh database on the shared Postgres, dropped at the end. */
export class Postgres {
  static async create() {
    const admin = new URL(PG_ADMIN_URL);
    if (!['127.0.0.1', 'localhost', '[::1]'].includes(admin.hostname)) throw new Error(`BATON_TEST_PG_URL must be a loopback address, not ${admin.hostname}`);
    const name = `baton_client_${randomBytes(6).toString('hex')}`;
    const client = new pg.Client({ connectionString: PG_ADMIN_URL });
    try {
      await client.connect();
    } catch (err) {
      throw new Error(`Postgres at ${PG_ADMIN_URL} is unreachable (${err.message}); start it or set BATON_TEST_PG_URL`);
    }
    try {
      await client.query(`CREATE DATABASE "${name}"`);
    } finally {
      await client.end();
    }
    const url = new URL(PG_ADMIN_URL);
    url.pathname = `/${name}`;
    return Object.assign(new Postgres(), { name, url: url.toString() });
  }

  async drop() {
    const client = new pg.Client({ connectionString: PG_ADMIN_URL });
    await client.connect();
    try {
      await client.query(`DROP DATABASE IF EXISTS "${this.name}" WITH (FORCE)`);
    } finally {
      await client.end();
    }
  }
}

/** The servers of one backend: `main` serves the whole run; `replica()` starts another
 * on the same database (a second replica on Postgres, a successor on SQLite). */
export class Cluster {
  static async create(backend) {
    const c = new Cluster();
    c.backend = backend;
    c.dir = fs.mkdtempSync(path.join(os.tmpdir(), `baton-node-${backend}-`));
    c.pg = backend === 'postgres' ? await Postgres.create() : null;
    c.url = c.pg ? c.pg.url : `sqlite:${path.join(c.dir, 'baton.db')}`;
    c.servers = [];
    c.main = await c.replica();
    return c;
  }

  async replica(url = this.url, args = []) {
    const srv = new BatonServer(url, path.join(this.dir, `baton-${this.servers.length}.log`), args);
    this.servers.push(srv);
    return srv.start();
  }

  freshSqliteUrl() {
    return `sqlite:${path.join(this.dir, `own-${randomBytes(4).toString('hex')}.db`)}`;
  }

  /** A database for servers of their own: the same one on Postgres (replicas share it),
   * a fresh file on SQLite (one server per file). */
  ownUrl() {
    return this.pg ? this.url : this.freshSqliteUrl();
  }

  async close() {
    const died = this.main.alive() ? null : this.main.logTail();
    for (const s of this.servers) await s.stop();
    if (this.pg) await this.pg.drop();
    if (!died) fs.rmSync(this.dir, { recursive: true, force: true });
    return died;
  }
}

/** Splits the server's HTTP/2 byte stream into whole frames (9-byte header + body). */
class FrameSplitter {
  buf = Buffer.alloc(0);
  feed(data) {
    this.buf = Buffer.concat([this.buf, data]);
    const out = [];
    while (this.buf.length >= 9) {
      const size = 9 + this.buf.readUIntBE(0, 3);
      if (this.buf.length < size) break;
      out.push(this.buf.subarray(0, size));
      this.buf = this.buf.subarray(size);
    }
    return out;
  }
}

/** A loopback TCP proxy: `upstream` can be switched (new connections go there);
 * `blackhole()` swallows every byte both ways, keeping connections open; `cutNextResponse()`
 * drops the server's next response and resets that connection. With `tls` the bytes are
 * TLS records, passed on as they come; without, the server's are cut at HTTP/2 frames (for
 * `cutNextResponse()`). */
export class TcpProxy {
  static async create(upstream, { tls = false } = {}) {
    const p = new TcpProxy();
    p.upstream = upstream;
    p.tls = tls;
    p.blackholed = false;
    p.cutArmed = false;
    p.cuts = 0;
    p.sockets = new Set();
    p.server = net.createServer((client) => p.accept(client));
    await new Promise((resolve) => p.server.listen(0, '127.0.0.1', resolve));
    p.addr = `127.0.0.1:${p.server.address().port}`;
    return p;
  }

  accept(client) {
    const [host, port] = [this.upstream.slice(0, this.upstream.lastIndexOf(':')), Number(this.upstream.slice(this.upstream.lastIndexOf(':') + 1))];
    const server = net.connect(port, host);
    this.sockets.add(client);
    this.sockets.add(server);
    const frames = new FrameSplitter();
    const closeBoth = () => {
      client.destroy();
      server.destroy();
      this.sockets.delete(client);
      this.sockets.delete(server);
    };
    client.on('data', (d) => {
      if (!this.blackholed) server.write(d);
    });
    server.on('data', (d) => {
      if (this.blackholed) return;
      if (this.tls) {
        client.write(d);
        return;
      }
      for (const frame of frames.feed(d)) {
        const type = frame[3];
        const stream = frame.readUInt32BE(5) & 0x7fffffff;
        if (this.cutArmed && (type === 0 || type === 1) && stream) {
          this.cutArmed = false;
          this.cuts++;
          client.resetAndDestroy();
          server.destroy();
          return;
        }
        client.write(frame);
      }
    });
    client.on('error', closeBoth);
    server.on('error', closeBoth);
    client.on('close', closeBoth);
    server.on('close', closeBoth);
  }

  setUpstream(upstream) {
    this.upstream = upstream;
  }

  blackhole(on = true) {
    this.blackholed = on;
  }

  cutNextResponse() {
    if (this.tls) throw new Error('cutNextResponse needs plaintext HTTP/2, not TLS');
    this.cutArmed = true;
  }

  close() {
    this.server.close();
    for (const s of this.sockets) s.destroy();
  }
}

/** Shortest list of transition names from `start` to any of `goals` (unconditional edges). */
export function pathTo(spec, start, goals) {
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

export async function drive(client, spec, id, goals) {
  let entity = await client.getEntity(id);
  for (const name of pathTo(spec, entity.state, goals)) {
    const r = await client.transition(id, name);
    if (!r.applied) throw new Error(`${name} not applied on ${id}`);
    entity = r.entity;
  }
  return entity;
}

export async function tape(client, id, afterSeq = 0) {
  const out = [];
  for await (const e of client.streamEvents(id, { afterSeq })) out.push(e);
  return out;
}

export function assertSealedTape(assert, events, afterSeq = 0) {
  assert.deepEqual(events.map((e) => e.seq), Array.from({ length: events.length }, (_, i) => afterSeq + 1 + i), 'gapless, no duplicates');
  assert.equal(events.filter((e) => e.type === 'final').length, 1, 'exactly one final');
  assert.equal(events.at(-1).type, 'final', 'final is last');
}

export const newNamespace = () => `n-${randomBytes(6).toString('hex')}`;

/** Resolve when `promise` does, fail after `ms`. */
export async function within(ms, promise, what) {
  let t;
  try {
    return await Promise.race([promise, new Promise((_, reject) => (t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)))]);
  } finally {
    clearTimeout(t);
  }
}
