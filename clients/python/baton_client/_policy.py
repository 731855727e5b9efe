"""Timing rules shared by the sync and asyncio clients: the retry policy of unary calls
and the local clock of a lease."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Optional

import grpc

# A call that ended with one of these may not have reached the server, or may have
# committed without its answer arriving. Retrying with the same request id returns the
# first outcome if it committed and acts once if it did not.
RETRY_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


@dataclass(frozen=True)
class RetryPolicy:
    """How a unary call is retried after UNAVAILABLE, DEADLINE_EXCEEDED or CANCELLED.

    Every attempt of a mutating call carries the *same* request id. Attempts stop at
    ``max_attempts`` or at the call's overall deadline (``timeout``), whichever is first.
    ``attempt_timeout`` bounds one attempt (default: the rest of the overall deadline).
    Backoff grows from ``initial_backoff`` by ``multiplier`` up to ``max_backoff``, each
    wait drawn uniformly from [50 %, 100 %] of that (jitter).
    """

    max_attempts: int = 5
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    attempt_timeout: Optional[float] = None

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("baton: RetryPolicy.max_attempts must be >= 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("baton: RetryPolicy backoffs must be >= 0 and multiplier >= 1")
        if self.attempt_timeout is not None and self.attempt_timeout <= 0:
            raise ValueError("baton: RetryPolicy.attempt_timeout must be positive")

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.initial_backoff * self.multiplier ** (attempt - 1), self.max_backoff)
        return base * (0.5 + random.random() / 2)


DEFAULT_RETRY = RetryPolicy()


class Deadline:
    """An overall deadline by the monotonic clock (None: no deadline)."""

    def __init__(self, timeout: Optional[float]) -> None:
        self.at = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> Optional[float]:
        return None if self.at is None else self.at - time.monotonic()

    def attempt_timeout(self, policy: RetryPolicy) -> Optional[float]:
        left = self.remaining()
        if policy.attempt_timeout is None:
            return left
        return policy.attempt_timeout if left is None else min(left, policy.attempt_timeout)

    def expired(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0


class LeaseClock:
    """When a lease counts as lost, by the local monotonic clock only.

    The server grants or extends a lease at some moment after the request was sent, so
    "sent + ttl" is never later than the server's expiry: once that moment passes without
    a newer successful renewal, the holder must assume another may hold the key.
    """

    def __init__(self, ttl: float, renew_interval: float) -> None:
        if ttl <= 0:
            raise ValueError("baton: a lease ttl must be positive")
        if not 0 < renew_interval < ttl:
            raise ValueError("baton: renew_interval must be positive and shorter than the ttl")
        self.ttl = ttl
        self.renew_interval = renew_interval
        self.expires_at = 0.0  # monotonic
        self.last_sent = 0.0

    def granted(self, sent_at: float) -> None:
        """An acquire or renew sent at ``sent_at`` succeeded."""
        self.expires_at = max(self.expires_at, sent_at + self.ttl)
        self.last_sent = max(self.last_sent, sent_at)

    def expired(self, now: Optional[float] = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.expires_at

    def next_renewal(self) -> float:
        return self.last_sent + self.renew_interval

    def retry_pause(self) -> float:
        """Wait before retrying a renewal that failed with transport trouble."""
        return min(self.renew_interval / 4, 0.25)


def lease_intervals(ttl: float, renew_interval: Optional[float]) -> float:
    return renew_interval if renew_interval is not None else ttl / 3
