// Durations and machines TOML files -> MachineSpec messages.
import fs from 'node:fs';
import type { Duration } from './gen/google/protobuf/Duration';
import type { MachineSpec } from './gen/baton/v1/MachineSpec';

const UNIT_SECONDS: Record<string, number> = {};
for (const [names, secs] of [
  [['nsec', 'ns'], 1e-9],
  [['usec', 'us', 'µs'], 1e-6],
  [['msec', 'ms'], 1e-3],
  [['seconds', 'second', 'secs', 'sec', 's'], 1],
  [['minutes', 'minute', 'mins', 'min', 'm'], 60],
  [['hours', 'hour', 'hrs', 'hr', 'h'], 3600],
  [['days', 'day', 'd'], 86400],
  [['weeks', 'week', 'w'], 604800],
  [['months', 'month', 'M'], 2_630_016],
  [['years', 'year', 'y'], 31_557_600],
] as const) {
  for (const n of names) UNIT_SECONDS[n] = secs;
}

/** Seconds, or a humantime-style string ("72h", "1h 30m", "500ms"). */
export type DurationLike = number | string;

/** A duration in seconds. */
export function parseDuration(value: DurationLike): number {
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value < 0) throw new TypeError(`baton: invalid duration ${value}`);
    return value;
  }
  if (typeof value !== 'string' || !value.trim()) throw new TypeError(`baton: invalid duration ${JSON.stringify(value)}`);
  const re = /\s*(\d+)\s*([A-Za-zµ]+)\s*/y;
  let total = 0;
  let pos = 0;
  let m: RegExpExecArray | null;
  while (pos < value.length && (m = re.exec(value))) {
    if (!(m[2] in UNIT_SECONDS)) throw new TypeError(`baton: invalid duration ${JSON.stringify(value)}`);
    total += Number(m[1]) * UNIT_SECONDS[m[2]];
    pos = re.lastIndex;
  }
  if (pos !== value.length) throw new TypeError(`baton: invalid duration ${JSON.stringify(value)}`);
  return total;
}

export function duration(value: DurationLike): Duration {
  const total = parseDuration(value);
  const seconds = Math.floor(total);
  return { seconds, nanos: Math.round((total - seconds) * 1e9) };
}

// --- a TOML subset: [[a.b]] arrays of tables, [a] tables, key = string | number | boolean |
// array, comments, multi-line arrays --------------------------------------------------------

type Toml = { [key: string]: unknown };

class IncompleteError extends Error {}

function parseTomlValue(s: string, pos: number): { value: unknown; pos: number } {
  const skip = (): void => {
    for (;;) {
      while (pos < s.length && /\s/.test(s[pos])) pos++;
      if (s[pos] === '#') while (pos < s.length && s[pos] !== '\n') pos++;
      else return;
    }
  };
  skip();
  if (pos >= s.length) throw new IncompleteError('missing value');
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
    const out: unknown[] = [];
    pos++;
    for (;;) {
      skip();
      if (pos >= s.length) throw new IncompleteError('unterminated array');
      if (s[pos] === ']') return { value: out, pos: pos + 1 };
      const item = parseTomlValue(s, pos);
      out.push(item.value);
      pos = item.pos;
      skip();
      if (pos >= s.length) throw new IncompleteError('unterminated array');
      if (s[pos] === ',') pos++;
      else if (s[pos] !== ']') throw new Error(`unexpected ${s[pos]} in array`);
    }
  }
  const m = /^(true|false|[+-]?\d[\d_]*(\.\d+)?)/.exec(s.slice(pos));
  if (!m) throw new Error(`unsupported value ${s.slice(pos, pos + 20)}`);
  const v = m[1] === 'true' ? true : m[1] === 'false' ? false : Number(m[1].replace(/_/g, ''));
  return { value: v, pos: pos + m[1].length };
}

export function parseToml(text: string): Toml {
  const root: Toml = {};
  let current: Toml = root;
  const lines = text.split(/\r?\n/);
  const tableAt = (dotted: string[]): Toml => {
    let t = root;
    for (const part of dotted) {
      let v = t[part];
      if (Array.isArray(v)) v = v[v.length - 1];
      if (v === undefined) v = t[part] = {};
      t = v as Toml;
    }
    return t;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (!line || line.startsWith('#')) continue;
    let m: RegExpMatchArray | null;
    if ((m = line.match(/^\[\[\s*([\w.-]+)\s*\]\]\s*(#.*)?$/))) {
      const parts = m[1].split('.');
      const parent = tableAt(parts.slice(0, -1));
      const name = parts[parts.length - 1];
      current = {};
      ((parent[name] ??= []) as Toml[]).push(current);
      continue;
    }
    if ((m = line.match(/^\[\s*([\w.-]+)\s*\]\s*(#.*)?$/))) {
      current = tableAt(m[1].split('.'));
      continue;
    }
    if (!(m = line.match(/^([\w-]+)\s*=\s*(.*)$/))) throw new Error(`TOML line ${i + 1}: cannot parse ${line}`);
    const key = m[1];
    let src = m[2];
    let parsed: { value: unknown; pos: number };
    for (;;) {
      try {
        parsed = parseTomlValue(src, 0);
        break;
      } catch (e) {
        if (e instanceof IncompleteError && i + 1 < lines.length) src += '\n' + lines[++i];
        else throw new Error(`TOML line ${i + 1}: ${(e as Error).message}`);
      }
    }
    const rest = src.slice(parsed.pos).trim();
    if (rest && !rest.startsWith('#')) throw new Error(`TOML line ${i + 1}: trailing ${rest}`);
    current[key] = parsed.value;
  }
  return root;
}

const DOC_KEYS = ['description', 'doc', 'comment'];

function checkKeys(what: string, table: Toml, allowed: string[]): void {
  const unknown = Object.keys(table).filter((k) => !allowed.includes(k) && !DOC_KEYS.includes(k));
  if (unknown.length) throw new TypeError(`${what}: unknown keys ${JSON.stringify(unknown.sort())} (allowed: ${JSON.stringify(allowed)})`);
}

const strings = (v: unknown): string[] => (Array.isArray(v) ? v.map(String) : []);

/** One `[[machine]]` table as a MachineSpec; unknown keys are an error (a typo must not drop a guard). */
export function machineSpecFromTable(m: Toml): MachineSpec {
  const kind = String(m.kind ?? '?');
  checkKeys(`machine ${kind}`, m, [
    'kind',
    'states',
    'initial_state',
    'terminal_states',
    'transition',
    'field_rule',
    'timeout',
    'retain_after_final',
    'dedup',
  ]);
  if (m.kind === undefined) throw new TypeError("machine: missing key 'kind'");
  const dedup = m.dedup === undefined ? 'forever' : String(m.dedup);
  if (!(dedup in DEDUP)) throw new TypeError(`machine ${kind}: dedup must be one of ${JSON.stringify(Object.keys(DEDUP))}, got ${JSON.stringify(m.dedup)}`);
  return {
    kind,
    states: strings(m.states),
    initial_state: String(m.initial_state ?? ''),
    terminal_states: strings(m.terminal_states),
    transitions: ((m.transition ?? []) as Toml[]).map((t) => {
      checkKeys(`machine ${kind} transition ${String(t.name)}`, t, ['name', 'from', 'to', 'stale_from', 'stale_after', 'noop_from']);
      return {
        name: String(t.name),
        from: strings(t.from),
        to: String(t.to),
        stale_from: strings(t.stale_from),
        stale_after: t.stale_after != null ? duration(t.stale_after as DurationLike) : null,
        noop_from: strings(t.noop_from),
      };
    }),
    field_rules: ((m.field_rule ?? []) as Toml[]).map((r) => {
      checkKeys(`machine ${kind} field_rule ${String(r.field)}`, r, ['field', 'allowed_in']);
      return { field: String(r.field), allowed_in: strings(r.allowed_in) };
    }),
    timeouts: ((m.timeout ?? []) as Toml[]).map((t) => {
      checkKeys(`machine ${kind} timeout ${String(t.state)}`, t, ['state', 'after', 'idle', 'transition']);
      return {
        state: String(t.state),
        after: duration(t.after as DurationLike),
        idle: t.idle === true,
        transition: String(t.transition),
      };
    }),
    retain_after_final: m.retain_after_final != null ? duration(m.retain_after_final as DurationLike) : null,
    dedup: DEDUP[dedup],
  };
}

/** `dedup` in a machines file, as the proto enum. */
const DEDUP: Record<string, 'DEDUP_POLICY_FOREVER' | 'DEDUP_POLICY_WHILE_ACTIVE'> = {
  forever: 'DEDUP_POLICY_FOREVER',
  while_active: 'DEDUP_POLICY_WHILE_ACTIVE',
};

/** The `[[machine]]` tables of a TOML file (a path, or TOML text containing a newline). */
export function loadMachines(source: string): MachineSpec[] {
  const text = source.includes('\n') ? source : fs.readFileSync(source, 'utf8');
  const doc = parseToml(text);
  checkKeys('machines file', doc, ['machine']);
  return ((doc.machine ?? []) as Toml[]).map(machineSpecFromTable);
}
