// Timing rules: the retry policy of unary calls and the local clock of a lease.
import { status } from '@grpc/grpc-js';

/**
 * A call that ended with one of these may not have reached the server, or may have
 * committed without its answer arriving: retrying with the same request id returns the
 * first outcome if it committed and acts once if it did not.
 */
export const RETRY_CODES: ReadonlySet<status> = new Set([status.UNAVAILABLE, status.DEADLINE_EXCEEDED, status.CANCELLED]);

/**
 * How a unary call is retried after UNAVAILABLE, DEADLINE_EXCEEDED or CANCELLED. Every
 * attempt of a mutating call carries the same request id. Attempts stop at `maxAttempts`
 * or at the call's overall deadline (`timeoutMs`), whichever is first; `attemptTimeoutMs`
 * bounds one attempt. Backoff grows from `initialBackoffMs` by `multiplier` up to
 * `maxBackoffMs`, each wait drawn from [50 %, 100 %] of that (jitter).
 */
export interface RetryPolicy {
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  multiplier: number;
  attemptTimeoutMs?: number;
}

export const DEFAULT_RETRY: Readonly<RetryPolicy> = Object.freeze({
  maxAttempts: 5,
  initialBackoffMs: 100,
  maxBackoffMs: 2000,
  multiplier: 2,
});

export function retryPolicy(p: Partial<RetryPolicy> = {}): RetryPolicy {
  const policy = { ...DEFAULT_RETRY, ...p };
  if (!Number.isInteger(policy.maxAttempts) || policy.maxAttempts < 1) throw new TypeError('baton: retry.maxAttempts must be an integer >= 1');
  if (policy.initialBackoffMs < 0 || policy.maxBackoffMs < 0 || policy.multiplier < 1) {
    throw new TypeError('baton: retry backoffs must be >= 0 and multiplier >= 1');
  }
  if (policy.attemptTimeoutMs !== undefined && !(policy.attemptTimeoutMs > 0)) throw new TypeError('baton: retry.attemptTimeoutMs must be positive');
  return policy;
}

export function backoffMs(policy: RetryPolicy, attempt: number): number {
  const base = Math.min(policy.initialBackoffMs * policy.multiplier ** (attempt - 1), policy.maxBackoffMs);
  return base * (0.5 + Math.random() / 2);
}

/** Monotonic milliseconds. */
export const now = (): number => performance.now();

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * When a lease counts as lost, by the local monotonic clock only: the server grants or
 * extends a lease some time after the request was sent, so "sent + ttl" is never later
 * than the server's expiry.
 */
export class LeaseClock {
  expiresAt = 0;
  lastSent = 0;
  constructor(
    readonly ttlMs: number,
    readonly renewIntervalMs: number,
  ) {
    if (!(ttlMs > 0)) throw new TypeError('baton: a lease ttl must be positive');
    if (!(renewIntervalMs > 0 && renewIntervalMs < ttlMs)) throw new TypeError('baton: renewIntervalMs must be positive and shorter than the ttl');
  }
  granted(sentAt: number): void {
    this.expiresAt = Math.max(this.expiresAt, sentAt + this.ttlMs);
    this.lastSent = Math.max(this.lastSent, sentAt);
  }
  expired(at: number = now()): boolean {
    return at >= this.expiresAt;
  }
  nextRenewal(): number {
    return this.lastSent + this.renewIntervalMs;
  }
  retryPauseMs(): number {
    return Math.min(this.renewIntervalMs / 4, 250);
  }
}
