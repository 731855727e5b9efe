// Typed errors: one class per baton ErrorInfo reason, decoded from the status trailer.
import { Metadata, status } from '@grpc/grpc-js';

export const ERROR_DOMAIN = 'baton';

/** The stable `reason` of a baton `google.rpc.ErrorInfo` (domain "baton"). */
export enum Reason {
  INVALID_ARGUMENT = 'INVALID_ARGUMENT',
  FIELD_NOT_ALLOWED = 'FIELD_NOT_ALLOWED',
  REQUEST_ID_REUSED = 'REQUEST_ID_REUSED',
  INVALID_TRANSITION = 'INVALID_TRANSITION',
  LEASE_LOST = 'LEASE_LOST',
  TAPE_SEALED = 'TAPE_SEALED',
  STATE_IN_USE = 'STATE_IN_USE',
  MACHINE_CHANGED = 'MACHINE_CHANGED',
  VERSION_MISMATCH = 'VERSION_MISMATCH',
  ENTITY_NOT_FOUND = 'ENTITY_NOT_FOUND',
  MACHINE_NOT_FOUND = 'MACHINE_NOT_FOUND',
  ENTITY_EXISTS = 'ENTITY_EXISTS',
  CURSOR_EXPIRED = 'CURSOR_EXPIRED',
  UNAUTHENTICATED = 'UNAUTHENTICATED',
  PERMISSION_DENIED = 'PERMISSION_DENIED',
  DATABASE_UNAVAILABLE = 'DATABASE_UNAVAILABLE',
  SHUTTING_DOWN = 'SHUTTING_DOWN',
  INTERNAL = 'INTERNAL',
}

export interface ErrorInit {
  reason?: string | null;
  metadata?: Record<string, string>;
  domain?: string | null;
  requestId?: string | null;
  maybeCommitted?: boolean;
  attempts?: number;
}

/**
 * A failed baton call. `code` is the gRPC status; `reason` and `metadata` come from the
 * ErrorInfo of domain "baton" (null and {} when the call ended without one: a transport
 * failure, a proxy, a deadline). `maybeCommitted` is true when a *mutating* call ended
 * UNAVAILABLE, DEADLINE_EXCEEDED or CANCELLED after every retry: it may have committed;
 * call it again with the same `requestId` to learn its outcome.
 */
export class BatonError extends Error {
  readonly code: status;
  readonly details: string;
  readonly reason: string | null;
  readonly metadata: Record<string, string>;
  readonly domain: string | null;
  requestId: string | null;
  maybeCommitted: boolean;
  attempts: number;

  constructor(code: status, details: string, init: ErrorInit = {}) {
    super(details);
    this.name = new.target.name;
    this.code = code;
    this.details = details;
    this.reason = init.reason ?? null;
    this.metadata = { ...(init.metadata ?? {}) };
    this.domain = init.domain ?? null;
    this.requestId = init.requestId ?? null;
    this.maybeCommitted = init.maybeCommitted ?? false;
    this.attempts = init.attempts ?? 1;
    this.refreshMessage();
  }

  /** True when the server answered with a baton ErrorInfo (a definite answer). */
  get isBaton(): boolean {
    return this.domain === ERROR_DOMAIN && this.reason !== null;
  }

  get codeName(): string {
    return status[this.code] ?? String(this.code);
  }

  /** Recompute `message` after `maybeCommitted` / `attempts` changed. */
  refreshMessage(): void {
    let text = this.codeName;
    if (this.reason) text += ` ${this.reason}`;
    if (this.details) text += `: ${this.details}`;
    if (Object.keys(this.metadata).length) text += ` ${JSON.stringify(this.metadata)}`;
    if (this.maybeCommitted) {
      text += ` (may have committed after ${this.attempts} attempt(s): call again with requestId ${JSON.stringify(this.requestId)} to learn the outcome)`;
    }
    this.message = text;
  }
}

export class InvalidArgument extends BatonError {}
export class FieldNotAllowed extends InvalidArgument {}
export class RequestIdReused extends InvalidArgument {}
export class InvalidTransition extends BatonError {
  get currentState(): string | undefined {
    return this.metadata.current_state;
  }
}
/** LEASE_LOST from the server (`local` false) or refused locally by a lost Lease (`local` true: nothing was sent). */
export class LeaseLost extends BatonError {
  local = false;
}
export class TapeSealed extends BatonError {}
export class StateInUse extends BatonError {}
export class MachineChanged extends BatonError {}
export class VersionMismatch extends BatonError {}
export class NotFound extends BatonError {}
export class EntityNotFound extends NotFound {}
export class MachineNotFound extends NotFound {}
export class EntityExists extends BatonError {}
export class CursorExpired extends BatonError {}
/** No token, or one the server does not know or that expired (and no client certificate it knows). */
export class Unauthenticated extends BatonError {}
/** The caller's grant does not cover the call: `namespace` is outside it, or `needsRole` is above the caller's role. */
export class PermissionDenied extends BatonError {
  get namespace(): string | undefined {
    return this.metadata.namespace;
  }
  get needsRole(): string | undefined {
    return this.metadata.needs_role;
  }
}
export class Unavailable extends BatonError {}
export class DatabaseUnavailable extends Unavailable {}
export class ShuttingDown extends Unavailable {}
export class DeadlineExceeded extends BatonError {}
export class Cancelled extends BatonError {}
export class Internal extends BatonError {}

type ErrorClass = new (code: status, details: string, init?: ErrorInit) => BatonError;

const BY_REASON: Record<string, ErrorClass> = {
  INVALID_ARGUMENT: InvalidArgument,
  FIELD_NOT_ALLOWED: FieldNotAllowed,
  REQUEST_ID_REUSED: RequestIdReused,
  INVALID_TRANSITION: InvalidTransition,
  LEASE_LOST: LeaseLost,
  TAPE_SEALED: TapeSealed,
  STATE_IN_USE: StateInUse,
  MACHINE_CHANGED: MachineChanged,
  VERSION_MISMATCH: VersionMismatch,
  ENTITY_NOT_FOUND: EntityNotFound,
  MACHINE_NOT_FOUND: MachineNotFound,
  ENTITY_EXISTS: EntityExists,
  CURSOR_EXPIRED: CursorExpired,
  UNAUTHENTICATED: Unauthenticated,
  PERMISSION_DENIED: PermissionDenied,
  DATABASE_UNAVAILABLE: DatabaseUnavailable,
  SHUTTING_DOWN: ShuttingDown,
  INTERNAL: Internal,
};

const BY_CODE: Partial<Record<status, ErrorClass>> = {
  [status.INVALID_ARGUMENT]: InvalidArgument,
  [status.NOT_FOUND]: NotFound,
  [status.UNAUTHENTICATED]: Unauthenticated,
  [status.PERMISSION_DENIED]: PermissionDenied,
  [status.UNAVAILABLE]: Unavailable,
  [status.DEADLINE_EXCEEDED]: DeadlineExceeded,
  [status.CANCELLED]: Cancelled,
  [status.INTERNAL]: Internal,
};

// --- google.rpc.Status / ErrorInfo, decoded from the wire format (tiny decoder) -----------

interface Field {
  no: number;
  value: bigint | Buffer;
}

function* wireFields(buf: Buffer): Generator<Field> {
  let pos = 0;
  const varint = (): bigint => {
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
      if (pos + len > buf.length) throw new Error('truncated field');
      yield { no, value: buf.subarray(pos, pos + len) };
      pos += len;
    } else if (wt === 1) pos += 8;
    else if (wt === 5) pos += 4;
    else throw new Error(`unsupported wire type ${wt}`);
  }
}

const ERROR_INFO_URL = 'type.googleapis.com/google.rpc.ErrorInfo';

export interface ErrorInfo {
  reason: string;
  domain: string;
  metadata: Record<string, string>;
}

/** The ErrorInfo in a serialized google.rpc.Status (preferring domain "baton"), or null. */
export function decodeErrorInfo(statusBytes: Buffer): ErrorInfo | null {
  let found: ErrorInfo | null = null;
  try {
    for (const f of wireFields(statusBytes)) {
      if (f.no !== 3 || !Buffer.isBuffer(f.value)) continue; // Status.details: repeated Any
      let typeUrl = '';
      let value: Buffer = Buffer.alloc(0);
      for (const a of wireFields(f.value)) {
        if (a.no === 1 && Buffer.isBuffer(a.value)) typeUrl = a.value.toString('utf8');
        if (a.no === 2 && Buffer.isBuffer(a.value)) value = a.value;
      }
      if (typeUrl !== ERROR_INFO_URL) continue;
      const info: ErrorInfo = { reason: '', domain: '', metadata: {} };
      for (const e of wireFields(value)) {
        if (!Buffer.isBuffer(e.value)) continue;
        if (e.no === 1) info.reason = e.value.toString('utf8');
        else if (e.no === 2) info.domain = e.value.toString('utf8');
        else if (e.no === 3) {
          let k = '';
          let v = '';
          for (const kv of wireFields(e.value)) {
            if (kv.no === 1 && Buffer.isBuffer(kv.value)) k = kv.value.toString('utf8');
            if (kv.no === 2 && Buffer.isBuffer(kv.value)) v = kv.value.toString('utf8');
          }
          info.metadata[k] = v;
        }
      }
      if (info.domain === ERROR_DOMAIN) return info;
      found ??= info;
    }
  } catch {
    return null; // a malformed trailer leaves the plain status
  }
  return found;
}

/** The error class for a status code and ErrorInfo. */
export function errorClass(code: status, reason: string | null, domain: string | null): ErrorClass {
  if (domain === ERROR_DOMAIN && reason !== null && reason in BY_REASON) return BY_REASON[reason];
  return BY_CODE[code] ?? BatonError;
}

interface GrpcLikeError {
  code?: number;
  details?: string;
  message?: string;
  metadata?: Metadata;
}

/** A typed BatonError from a failed @grpc/grpc-js call. */
export function fromGrpcError(err: unknown, requestId: string | null = null): BatonError {
  if (err instanceof BatonError) return err;
  const e = (err ?? {}) as GrpcLikeError;
  const code = typeof e.code === 'number' ? (e.code as status) : status.UNKNOWN;
  const raw = e.metadata instanceof Metadata ? e.metadata.get('grpc-status-details-bin')[0] : undefined;
  const info = raw ? decodeErrorInfo(Buffer.isBuffer(raw) ? raw : Buffer.from(raw)) : null;
  const cls = errorClass(code, info?.reason || null, info?.domain || null);
  return new cls(code, e.details ?? e.message ?? '', {
    reason: info?.reason || null,
    metadata: info?.metadata ?? {},
    domain: info?.domain || null,
    requestId,
  });
}

/** The error a lost Lease raises instead of sending a fenced write. */
export function localLeaseLost(key: string, token: number, why: string): LeaseLost {
  const err = new LeaseLost(status.FAILED_PRECONDITION, `lease ${JSON.stringify(key)} token ${token} lost by the local clock (${why}); nothing was sent`, {
    reason: Reason.LEASE_LOST,
    metadata: { key, token: String(token) },
  });
  err.local = true;
  return err;
}

/** `lease(...).acquire()` could not acquire the key: another holder has it. */
export class LeaseNotAcquired extends Error {
  constructor(
    readonly key: string,
    readonly holder: string,
    readonly currentHolder: string | null,
    readonly currentToken: number | null,
  ) {
    super(
      `lease ${JSON.stringify(key)} not acquired by ${JSON.stringify(holder)}: ` +
        (currentHolder ? `held by ${JSON.stringify(currentHolder)} (token ${currentToken})` : 'held by another holder'),
    );
    this.name = 'LeaseNotAcquired';
  }
}
