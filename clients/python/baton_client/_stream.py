"""The resume rule of event streams, shared by the sync and asyncio iterators."""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from typing import Deque, Optional

import grpc

from baton_client._errors import BatonError, Reason, Unavailable
from baton_client._gen import coordinator_pb2 as pb

log = logging.getLogger("baton_client")

INITIAL_BACKOFF = 0.05
MAX_BACKOFF = 2.0


#: Baton errors that end a stream without answering it: a draining replica, an unreachable
#: database. Resuming from the last seq is safe after these as after any transport end.
RESUME_REASONS = frozenset({Reason.SHUTTING_DOWN.value, Reason.DATABASE_UNAVAILABLE.value})


def resumable(err: BatonError) -> bool:
    """Resume after any end that is not a baton answer, and after SHUTTING_DOWN or
    DATABASE_UNAVAILABLE."""
    return not err.is_baton or err.reason in RESUME_REASONS


class StreamState:
    """Cursor, counters and backoff of one resuming event stream."""

    def __init__(self, entity_id: str, after_seq: int, give_up_after: float) -> None:
        if after_seq < 0:
            raise ValueError("baton: after_seq must be >= 0")
        self.entity_id = entity_id
        self.last_seq = after_seq
        self.give_up_after = give_up_after
        self.resumes = 0
        self.heartbeats = 0
        self.done = False
        # Why the underlying stream ended, for the most recent ends (None: cleanly).
        self.ends: Deque[Optional[BatonError]] = deque(maxlen=32)
        self._failing_since: Optional[float] = None
        self._backoff = INITIAL_BACKOFF

    def item(self, item: pb.StreamEventsResponse) -> Optional[pb.Event]:
        """The event to deliver from one stream message, or None (heartbeat, repeat)."""
        if item.WhichOneof("item") != "event":
            self.heartbeats += 1
            return None
        event = item.event
        if event.seq <= self.last_seq:
            return None  # never deliver a seq twice
        self.last_seq = event.seq
        self._failing_since = None
        self._backoff = INITIAL_BACKOFF
        if event.type == "final":
            self.done = True
        return event

    def failed(self, err: Optional[BatonError]) -> float:
        """The stream ended without ``final`` (``err`` None: cleanly). Raise when it must
        not resume; otherwise count a resume and return the pause before it."""
        self.ends.append(err)
        if err is not None and not resumable(err):
            self.done = True
            raise err
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since > self.give_up_after:
            self.done = True
            if err is None:
                err = Unavailable(
                    grpc.StatusCode.UNAVAILABLE,
                    f"stream of {self.entity_id!r} keeps ending without events after seq {self.last_seq}",
                )
            raise err
        self.resumes += 1
        pause = self._backoff * (0.5 + random.random() / 2)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        log.info(
            "baton_client: stream of %r ended (%s); resuming after seq %d",
            self.entity_id,
            err if err is not None else "OK without final",
            self.last_seq,
        )
        return pause
