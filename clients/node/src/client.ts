// The client: Client, Lease, EventStream.
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

import {
  BatonError,
  LeaseLost,
  LeaseNotAcquired,
  Reason,
  Unavailable,
  fromGrpcError,
  localLeaseLost,
} from './errors';
import { DurationLike, duration, loadMachines, parseDuration } from './machines';
import {
  ServiceConfig,
  TlsOptions,
  Target,
  callMetadata,
  channelCredentials,
  channelOptions,
  checkNamespace,
  parseTarget,
} from './options';
import { LeaseClock, RETRY_CODES, RetryPolicy, backoffMs, now, retryPolicy, sleep } from './policy';
import type { ProtoGrpcType } from './gen/coordinator';
import type { CoordinatorClient } from './gen/baton/v1/Coordinator';
import type { AcquireLeaseResponse__Output as AcquireLeaseResponse } from './gen/baton/v1/AcquireLeaseResponse';
import type { AppendEventsResponse__Output as AppendEventsResponse } from './gen/baton/v1/AppendEventsResponse';
import type { CreateEntityResponse__Output as CreateEntityResponse } from './gen/baton/v1/CreateEntityResponse';
import type { DefineMachineResponse__Output as DefineMachineResponse } from './gen/baton/v1/DefineMachineResponse';
import type { Entity__Output as Entity } from './gen/baton/v1/Entity';
import type { Event__Output as Event } from './gen/baton/v1/Event';
import type { EventInput } from './gen/baton/v1/EventInput';
import type { Fence } from './gen/baton/v1/Fence';
import type { GetLeaseResponse__Output as GetLeaseResponse } from './gen/baton/v1/GetLeaseResponse';
import type { Lease__Output as LeaseMessage } from './gen/baton/v1/Lease';
import type { ListEntitiesResponse__Output as ListEntitiesResponse } from './gen/baton/v1/ListEntitiesResponse';
import type { Machine__Output as Machine } from './gen/baton/v1/Machine';
import type { MachineSpec } from './gen/baton/v1/MachineSpec';
import type { ReleaseLeaseResponse__Output as ReleaseLeaseResponse } from './gen/baton/v1/ReleaseLeaseResponse';
import type { RenewLeaseResponse__Output as RenewLeaseResponse } from './gen/baton/v1/RenewLeaseResponse';
import type { StreamEventsResponse__Output as StreamEventsResponse } from './gen/baton/v1/StreamEventsResponse';
import type { TransitionResponse__Output as TransitionResponse } from './gen/baton/v1/TransitionResponse';

/** Where the packaged proto lives (shipped inside the npm package). */
export const PROTO_DIR = path.resolve(__dirname, '..', 'proto');

let coordinatorCtor: ProtoGrpcType['baton']['v1']['Coordinator'] | null = null;

function coordinator(): ProtoGrpcType['baton']['v1']['Coordinator'] {
  if (!coordinatorCtor) {
    const def = protoLoader.loadSync('baton/v1/coordinator.proto', {
      includeDirs: [PROTO_DIR],
      keepCase: true,
      longs: Number,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    coordinatorCtor = (grpc.loadPackageDefinition(def) as unknown as ProtoGrpcType).baton.v1.Coordinator;
  }
  return coordinatorCtor;
}

export const DEFAULT_TIMEOUT_MS = 30_000;

/** An event to append: a type, `[type, payload, contentType?]`, or `{type, payload?, contentType?}`.
 * Payloads: Uint8Array as is, a string as UTF-8 text, anything else as JSON. */
export type EventLike = string | [string, unknown?, string?] | { type: string; payload?: unknown; contentType?: string };
export type FenceLike = Fence | { key: string; token: number };

export interface ClientOptions extends TlsOptions {
  /** Namespace of every call (default "default"). */
  namespace?: string;
  /** Sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** Default: the packaged copy of clients/service-config.json; false for none. */
  serviceConfig?: ServiceConfig;
  /** Extra @grpc/grpc-js channel options. */
  channelOptions?: grpc.ChannelOptions;
  /** Overall deadline of each unary call, retries included (default 30 s). */
  timeoutMs?: number;
  /** How UNAVAILABLE / DEADLINE_EXCEEDED / CANCELLED are retried (same request id). */
  retry?: Partial<RetryPolicy>;
}

export interface CallOptions {
  timeoutMs?: number;
}
export interface MutatingOptions extends CallOptions {
  /** Idempotency key; generated when absent. Give the same one to learn a call's outcome. */
  requestId?: string;
}

interface Call {
  method: string;
  request: object;
  requestId: string | null;
}

function payloadOf(value: unknown): [Buffer, string] {
  if (value === undefined || value === null) return [Buffer.alloc(0), ''];
  if (value instanceof Uint8Array) return [Buffer.from(value), ''];
  if (typeof value === 'string') return [Buffer.from(value, 'utf8'), 'text/plain; charset=utf-8'];
  return [Buffer.from(JSON.stringify(value), 'utf8'), 'application/json'];
}

export function eventInput(ev: EventLike): EventInput {
  let type: string;
  let value: unknown;
  let ctype: string | undefined;
  if (typeof ev === 'string') type = ev;
  else if (Array.isArray(ev)) [type, value, ctype] = ev;
  else if (ev && typeof ev === 'object' && typeof ev.type === 'string') ({ type, payload: value, contentType: ctype } = ev);
  else throw new TypeError(`baton: cannot make an event of ${JSON.stringify(ev)}`);
  const [payload, defaultType] = payloadOf(value);
  return { type, payload, content_type: ctype ?? defaultType };
}

function rid(requestId: string | undefined): string {
  if (requestId === undefined) return randomUUID();
  if (typeof requestId !== 'string' || Buffer.byteLength(requestId) < 1 || Buffer.byteLength(requestId) > 128) {
    throw new TypeError('baton: requestId must be a string of 1..128 bytes');
  }
  return requestId;
}

const RETRY_REASONS: ReadonlySet<string> = new Set([Reason.SHUTTING_DOWN, Reason.DATABASE_UNAVAILABLE]);

const retryable = (err: BatonError): boolean => RETRY_CODES.has(err.code) && (!err.isBaton || RETRY_REASONS.has(err.reason ?? ''));

/**
 * A baton client bound to one namespace.
 *
 * `target`: `host:port` or `http://host:port` (plaintext), `https://host[:port]` (TLS,
 * verified against `caFile` or the system roots; `certFile` + `keyFile` for mTLS).
 * Mutating calls carry a request id and are retried with that same id after UNAVAILABLE,
 * DEADLINE_EXCEEDED or CANCELLED, because such a call may have committed.
 */
export class Client {
  readonly namespace: string;
  readonly target: Target;
  readonly timeoutMs: number;
  readonly retry: RetryPolicy;
  /** The generated @grpc/grpc-js stub, for anything the wrapper does not cover. */
  readonly stub: CoordinatorClient;
  private readonly metadata: grpc.Metadata;

  constructor(target = '127.0.0.1:50051', options: ClientOptions = {}) {
    this.namespace = checkNamespace(options.namespace ?? 'default');
    this.target = parseTarget(target);
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.retry = retryPolicy(options.retry);
    this.metadata = callMetadata(options.token);
    const creds = channelCredentials(this.target, options);
    const Ctor = coordinator();
    this.stub = new Ctor(this.target.address, creds, channelOptions(options.serviceConfig, options.channelOptions ?? {}));
  }

  close(): void {
    this.stub.close();
  }

  // -- plumbing --------------------------------------------------------------------------

  /** One attempt of a unary call. */
  once<T>(call: Call, timeoutMs: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const fn = (this.stub as unknown as Record<string, Function>)[call.method].bind(this.stub);
      fn(call.request, this.metadata, { deadline: Date.now() + Math.max(timeoutMs, 1) }, (err: unknown, resp: T) => {
        if (err) reject(fromGrpcError(err, call.requestId));
        else resolve(resp);
      });
    });
  }

  /** A unary call, retried on UNAVAILABLE / DEADLINE_EXCEEDED / CANCELLED with the same request. */
  async unary<T>(call: Call, timeoutMs?: number): Promise<T> {
    const policy = this.retry;
    const deadline = now() + (timeoutMs ?? this.timeoutMs);
    for (let attempt = 1; ; attempt++) {
      const left = deadline - now();
      try {
        return await this.once<T>(call, policy.attemptTimeoutMs ? Math.min(left, policy.attemptTimeoutMs) : left);
      } catch (e) {
        const err = e as BatonError;
        if (!(err instanceof BatonError) || !retryable(err)) throw err;
        const pause = backoffMs(policy, attempt);
        if (attempt >= policy.maxAttempts || deadline - now() <= pause) {
          err.maybeCommitted = call.requestId !== null;
          err.attempts = attempt;
          err.refreshMessage();
          throw err;
        }
        await sleep(pause);
      }
    }
  }

  private ns<T extends object>(req: T): T & { namespace: string } {
    return { namespace: this.namespace, ...req };
  }

  private mutating(method: string, req: object, requestId: string | undefined): Call {
    const id = rid(requestId);
    return { method, request: { ...this.ns(req), request_id: id }, requestId: id };
  }

  private read(method: string, req: object): Call {
    return { method, request: this.ns(req), requestId: null };
  }

  // -- leases ----------------------------------------------------------------------------

  /** A self-renewing lease; `await lease.acquire()` (see Lease). */
  lease(key: string, holder: string, ttl: DurationLike, options: LeaseOptions = {}): Lease {
    return new Lease(this, key, holder, ttl, options);
  }

  acquireLease(key: string, holder: string, ttl: DurationLike, options: MutatingOptions & { wait?: DurationLike } = {}): Promise<AcquireLeaseResponse> {
    const wait = options.wait ?? 0;
    const req: Record<string, unknown> = { key, holder, ttl: duration(ttl) };
    if (wait) req.wait = duration(wait);
    // An acquire that may wait gets the wait on top of the default deadline.
    const timeout = options.timeoutMs ?? this.timeoutMs + parseDuration(wait) * 1000;
    return this.unary(this.mutating('AcquireLease', req, options.requestId), timeout);
  }

  renewLease(key: string, token: number, ttl: DurationLike, options: MutatingOptions = {}): Promise<RenewLeaseResponse> {
    return this.unary(this.mutating('RenewLease', { key, token, ttl: duration(ttl) }, options.requestId), options.timeoutMs);
  }

  releaseLease(key: string, token: number, options: MutatingOptions = {}): Promise<ReleaseLeaseResponse> {
    return this.unary(this.mutating('ReleaseLease', { key, token }, options.requestId), options.timeoutMs);
  }

  getLease(key: string, options: CallOptions = {}): Promise<GetLeaseResponse> {
    return this.unary(this.read('GetLease', { key }), options.timeoutMs);
  }

  // -- machines --------------------------------------------------------------------------

  defineMachine(spec: MachineSpec, options: CallOptions = {}): Promise<DefineMachineResponse> {
    // Idempotent by design (the same spec again is `changed: false`); the request has no id.
    return this.unary(this.read('DefineMachine', { spec }), options.timeoutMs);
  }

  /** Define every machine of a TOML file (a path) or of a list of specs. */
  async applyMachines(source: string | MachineSpec[]): Promise<DefineMachineResponse[]> {
    const specs = typeof source === 'string' ? loadMachines(source) : source;
    const out: DefineMachineResponse[] = [];
    for (const spec of specs) out.push(await this.defineMachine(spec));
    return out;
  }

  async getMachine(kind: string, options: CallOptions = {}): Promise<Machine> {
    const resp = await this.unary<{ machine: Machine }>(this.read('GetMachine', { kind }), options.timeoutMs);
    return resp.machine;
  }

  // -- entities --------------------------------------------------------------------------

  createEntity(
    kind: string,
    options: MutatingOptions & { id?: string; dedupKey?: string; fields?: Record<string, string>; fence?: FenceLike } = {},
  ): Promise<CreateEntityResponse> {
    const req = { kind, id: options.id ?? '', dedup_key: options.dedupKey ?? '', fields: options.fields ?? {}, fence: options.fence ?? null };
    return this.unary(this.mutating('CreateEntity', req, options.requestId), options.timeoutMs);
  }

  async getEntity(id: string, options: CallOptions = {}): Promise<Entity> {
    const resp = await this.unary<{ entity: Entity }>(this.read('GetEntity', { id }), options.timeoutMs);
    return resp.entity;
  }

  /** Every matching entity, following page tokens. */
  async *listEntities(
    kind: string,
    options: CallOptions & { states?: string[]; hasFields?: string[]; missingFields?: string[]; pageSize?: number } = {},
  ): AsyncGenerator<Entity> {
    let token = '';
    for (;;) {
      const req = {
        kind,
        states: options.states ?? [],
        has_fields: options.hasFields ?? [],
        missing_fields: options.missingFields ?? [],
        page_size: options.pageSize ?? 0,
        page_token: token,
      };
      const resp = await this.unary<ListEntitiesResponse>(this.read('ListEntities', req), options.timeoutMs);
      yield* resp.entities;
      token = resp.next_page_token;
      if (!token) return;
    }
  }

  transition(id: string, transition: string, options: TransitionOptions = {}): Promise<TransitionResponse> {
    const [finalPayload, finalType] = payloadOf(options.finalPayload);
    const req: Record<string, unknown> = {
      entity_id: id,
      transition,
      fence: options.fence ?? null,
      set_fields: options.setFields ?? {},
      clear_fields: options.clearFields ?? [],
      events: (options.events ?? []).map(eventInput),
      final_payload: finalPayload,
      final_content_type: options.finalContentType ?? (finalPayload.length ? finalType : ''),
    };
    if (options.expectVersion !== undefined) req.expect_version = options.expectVersion;
    return this.unary(this.mutating('Transition', req, options.requestId), options.timeoutMs);
  }

  // -- tape ------------------------------------------------------------------------------

  /** AppendEvents; `ifSealed` is "reject" (default) or "drop". */
  appendEvents(id: string, events: EventLike[], options: MutatingOptions & { fence?: FenceLike; ifSealed?: 'reject' | 'drop' } = {}): Promise<AppendEventsResponse> {
    if (!Array.isArray(events)) throw new TypeError('baton: events must be an array of events, e.g. [["progress", "50%"]]');
    const modes = { reject: 'IF_SEALED_REJECT', drop: 'IF_SEALED_DROP' } as const;
    if (options.ifSealed !== undefined && !(options.ifSealed in modes)) {
      throw new TypeError(`baton: ifSealed must be "reject" or "drop", not ${JSON.stringify(options.ifSealed)}`);
    }
    const req = {
      entity_id: id,
      events: events.map(eventInput),
      fence: options.fence ?? null,
      if_sealed: options.ifSealed ? modes[options.ifSealed] : 'IF_SEALED_UNSPECIFIED',
    };
    return this.unary(this.mutating('AppendEvents', req, options.requestId), options.timeoutMs);
  }

  /** The tape's events after `afterSeq`, live, ending after `final`; resumes by itself (see EventStream). */
  streamEvents(id: string, options: { afterSeq?: number; giveUpAfterMs?: number } = {}): EventStream {
    return new EventStream(this, id, options.afterSeq ?? 0, options.giveUpAfterMs ?? 60_000);
  }

  /** @internal one raw StreamEvents call. */
  openStream(id: string, afterSeq: number): grpc.ClientReadableStream<StreamEventsResponse> {
    return this.stub.StreamEvents({ namespace: this.namespace, entity_id: id, after_seq: afterSeq }, this.metadata);
  }
}

export interface TransitionOptions extends MutatingOptions {
  expectVersion?: number;
  fence?: FenceLike;
  setFields?: Record<string, string>;
  clearFields?: string[];
  events?: EventLike[];
  finalPayload?: unknown;
  finalContentType?: string;
}

export interface LeaseOptions {
  /** How long to wait for a held key (seconds or "5s"). */
  wait?: DurationLike;
  /** Renewal period in ms (default: a third of the ttl). */
  renewIntervalMs?: number;
  /** Called once when the lease is lost. */
  onLost?: (lease: Lease) => void;
}

/**
 * A lease renewed in the background whose `lost` trips by the local monotonic clock:
 * as soon as "the moment the last successful acquire/renew was *sent* + ttl" passes (the
 * earliest the server may have let it expire), or when the server answers LEASE_LOST.
 * Then `onLost` callbacks run, `waitLost()` resolves, and the fenced writes made through
 * this object (`transition`, `appendEvents`, `createEntity`) throw LeaseLost without
 * sending anything.
 */
export class Lease {
  lease: LeaseMessage | null = null;
  renewals = 0;
  lostCause: Error | null = null;
  private readonly clock: LeaseClock;
  private readonly callbacks: Array<(lease: Lease) => void> = [];
  private tripped = false;
  private stopping = false;
  private wakeTimer: NodeJS.Timeout | null = null;
  private expiryTimer: NodeJS.Timeout | null = null;
  private wake: (() => void) | null = null;
  private loop: Promise<void> | null = null;
  private readonly lostPromise: Promise<void>;
  private resolveLost!: () => void;

  constructor(
    private readonly client: Client,
    readonly key: string,
    readonly holder: string,
    readonly ttl: DurationLike,
    private readonly options: LeaseOptions = {},
  ) {
    const ttlMs = parseDuration(ttl) * 1000;
    this.clock = new LeaseClock(ttlMs, options.renewIntervalMs ?? ttlMs / 3);
    if (options.onLost) this.callbacks.push(options.onLost);
    this.lostPromise = new Promise((resolve) => (this.resolveLost = resolve));
  }

  /** Acquire (waiting up to `wait`), then renew in the background. */
  async acquire(): Promise<this> {
    if (this.lease) throw new Error(`baton: lease ${JSON.stringify(this.key)} already acquired`);
    const sent = now();
    const resp = await this.client.acquireLease(this.key, this.holder, this.ttl, { wait: this.options.wait });
    if (!resp.acquired) throw new LeaseNotAcquired(this.key, this.holder, resp.lease?.holder ?? null, resp.lease?.token ?? null);
    this.lease = resp.lease;
    this.granted(sent);
    this.loop = this.renewLoop();
    return this;
  }

  get token(): number {
    if (!this.lease) throw new Error(`baton: lease ${JSON.stringify(this.key)} not acquired`);
    return this.lease.token;
  }

  /** The Fence of this lease, for writes made outside this object. */
  get fence(): Fence {
    return { key: this.key, token: this.token };
  }

  get lost(): boolean {
    if (!this.tripped && this.lease && this.clock.expired()) this.trip(null);
    return this.tripped;
  }

  /** The local expiry, on the performance.now() scale. */
  get expiresAt(): number {
    return this.clock.expiresAt;
  }

  /** Resolves once the lease is lost (after the onLost callbacks ran). */
  waitLost(): Promise<void> {
    return this.lostPromise;
  }

  onLost(callback: (lease: Lease) => void): void {
    if (this.tripped) callback(this);
    else this.callbacks.push(callback);
  }

  /** Throw LeaseLost if the lease is lost. */
  check(): void {
    if (this.lost) throw localLeaseLost(this.key, this.token, this.why());
  }

  private why(): string {
    return this.lostCause ? this.lostCause.message : 'no renewal succeeded before its local expiry';
  }

  private granted(sent: number): void {
    this.clock.granted(sent);
    // A timer at the local expiry trips `lost` on time, even while a renewal is in flight.
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    this.expiryTimer = setTimeout(() => this.lost, Math.max(this.clock.expiresAt - now(), 0) + 1);
    this.expiryTimer.unref();
  }

  private trip(cause: Error | null): void {
    if (this.tripped) return;
    this.tripped = true;
    this.lostCause = cause;
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    this.wake?.();
    for (const cb of this.callbacks.splice(0)) {
      try {
        cb(this);
      } catch (err) {
        process.emitWarning(`baton: onLost callback of lease ${this.key} failed: ${err}`);
      }
    }
    this.resolveLost();
  }

  private pause(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      this.wake = resolve;
      this.wakeTimer = setTimeout(resolve, Math.max(ms, 0));
      this.wakeTimer.unref();
    }).then(() => {
      if (this.wakeTimer) clearTimeout(this.wakeTimer);
      this.wake = null;
    });
  }

  private async renewLoop(): Promise<void> {
    const clock = this.clock;
    let next = clock.nextRenewal();
    while (!this.stopping && !this.tripped) {
      const t = now();
      if (clock.expired(t)) {
        this.trip(null);
        return;
      }
      if (t < next) {
        await this.pause(next - t);
        continue;
      }
      const sent = now();
      const call = {
        method: 'RenewLease',
        request: { namespace: this.client.namespace, key: this.key, token: this.token, ttl: duration(this.ttl), request_id: randomUUID() },
        requestId: null,
      };
      try {
        // One attempt bounded by the local expiry; the loop retries transport trouble.
        const resp = await this.client.once<RenewLeaseResponse>(call, clock.expiresAt - sent);
        if (this.tripped) return;
        this.granted(sent);
        this.lease = resp.lease;
        this.renewals++;
        next = clock.nextRenewal();
      } catch (e) {
        const err = e as BatonError;
        if (err instanceof BatonError && retryable(err)) {
          next = now() + clock.retryPauseMs();
          continue;
        }
        this.trip(err instanceof Error ? err : new Error(String(err)));
        return;
      }
    }
  }

  /** Stop renewing and release; the server's `released`. Transport errors are swallowed:
   * an unreleased lease expires by its TTL. */
  async release(timeoutMs = 5000): Promise<boolean> {
    this.stopping = true;
    this.wake?.();
    if (this.expiryTimer) clearTimeout(this.expiryTimer);
    await this.loop;
    if (!this.lease || this.lostCause instanceof LeaseLost) return false;
    try {
      return (await this.client.releaseLease(this.key, this.token, { timeoutMs })).released;
    } catch {
      return false;
    }
  }

  private async fenced<T>(fn: () => Promise<T>): Promise<T> {
    this.check();
    try {
      return await fn();
    } catch (err) {
      if (err instanceof LeaseLost) this.trip(err);
      throw err;
    }
  }

  /** Client.transition fenced with this lease. */
  transition(id: string, transition: string, options: Omit<TransitionOptions, 'fence'> = {}): Promise<TransitionResponse> {
    return this.fenced(() => this.client.transition(id, transition, { ...options, fence: this.fence }));
  }

  /** Client.appendEvents fenced with this lease. */
  appendEvents(id: string, events: EventLike[], options: Omit<Parameters<Client['appendEvents']>[2] & object, 'fence'> = {}): Promise<AppendEventsResponse> {
    return this.fenced(() => this.client.appendEvents(id, events, { ...options, fence: this.fence }));
  }

  /** Client.createEntity fenced with this lease. */
  createEntity(kind: string, options: Omit<Parameters<Client['createEntity']>[1] & object, 'fence'> = {}): Promise<CreateEntityResponse> {
    return this.fenced(() => this.client.createEntity(kind, { ...options, fence: this.fence }));
  }
}

const INITIAL_BACKOFF_MS = 50;
const MAX_BACKOFF_MS = 2000;

/**
 * Iterates a tape's events in seq order, exactly once each, and ends after `final`.
 * Any end of the underlying stream that carries no baton ErrorInfo (UNAVAILABLE, UNKNOWN
 * "Stream removed", INTERNAL RST_STREAM, CANCELLED by the transport, a clean end without
 * `final`, ...) and a baton SHUTTING_DOWN or DATABASE_UNAVAILABLE error resume it with
 * `after_seq` = the last seq received (`lastSeq`), with backoff; `resumes` counts them. It gives up after
 * `giveUpAfterMs` without an event. A baton error (NOT_FOUND, INVALID_ARGUMENT, ...) is
 * thrown. `close()` cancels it.
 */
export class EventStream implements AsyncIterable<Event> {
  lastSeq: number;
  resumes = 0;
  heartbeats = 0;
  /** Why the underlying stream ended before each resume, most recent last (at most 32; null for a clean end without `final`). */
  readonly ends: Array<BatonError | null> = [];
  private done = false;
  private call: grpc.ClientReadableStream<StreamEventsResponse> | null = null;

  constructor(
    private readonly client: Client,
    readonly entityId: string,
    afterSeq: number,
    readonly giveUpAfterMs: number,
  ) {
    if (!Number.isInteger(afterSeq) || afterSeq < 0) throw new TypeError('baton: afterSeq must be an integer >= 0');
    this.lastSeq = afterSeq;
  }

  close(): void {
    this.done = true;
    this.call?.cancel();
    this.call = null;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Event> {
    let failingSince: number | null = null;
    let backoff = INITIAL_BACKOFF_MS;
    const failed = async (err: BatonError | null): Promise<void> => {
      this.ends.push(err);
      if (this.ends.length > 32) this.ends.shift();
      // A draining replica or an unreachable database ends a stream without answering it:
      // resume, as after any transport end (resuming from the last seq is always safe).
      if (err && err.isBaton && !RETRY_REASONS.has(err.reason ?? '')) {
        this.done = true;
        throw err;
      }
      const t = now();
      if (failingSince === null) failingSince = t;
      else if (t - failingSince > this.giveUpAfterMs) {
        this.done = true;
        throw err ?? new Unavailable(grpc.status.UNAVAILABLE, `stream of ${this.entityId} keeps ending without events after seq ${this.lastSeq}`);
      }
      this.resumes++;
      await sleep(backoff * (0.5 + Math.random() / 2));
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    };
    try {
      while (!this.done) {
        const call = this.client.openStream(this.entityId, this.lastSeq);
        this.call = call;
        let ended: BatonError | null = null;
        try {
          for await (const msg of call as AsyncIterable<StreamEventsResponse>) {
            if (msg.item !== 'event' || !msg.event) {
              this.heartbeats++;
              continue;
            }
            const event = msg.event;
            if (event.seq <= this.lastSeq) continue; // never deliver a seq twice
            this.lastSeq = event.seq;
            failingSince = null;
            backoff = INITIAL_BACKOFF_MS;
            if (event.type === 'final') this.done = true;
            yield event;
            if (this.done) return;
          }
        } catch (e) {
          if (this.done) return; // closed by the caller
          ended = fromGrpcError(e);
        } finally {
          this.call = null;
        }
        if (ended) {
          await failed(ended);
          continue;
        }
        if (this.done) return;
        if (await this.endedAtFinal()) return;
        await failed(null);
      }
    } finally {
      this.done = true;
      this.call?.cancel();
    }
  }

  /** After a clean end without `final`: is the tape sealed at or before our cursor? */
  private async endedAtFinal(): Promise<boolean> {
    try {
      const entity = await this.client.getEntity(this.entityId);
      return entity.sealed && entity.last_seq <= this.lastSeq;
    } catch (e) {
      const err = e as BatonError;
      if (err instanceof BatonError && err.isBaton && !RETRY_REASONS.has(err.reason ?? '')) throw err;
      return false;
    }
  }
}
