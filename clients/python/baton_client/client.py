"""The synchronous client: :class:`Client`, :class:`Lease`, :class:`EventStream`."""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Type,
    TypeVar,
    Union,
)

import grpc
from google.protobuf.message import Message

from baton_client import _requests as rq
from baton_client._errors import (
    BatonError,
    LeaseLost,
    LeaseNotAcquired,
    Reason,
    from_rpc_error,
    local_lease_lost,
)
from baton_client._gen import coordinator_pb2 as pb
from baton_client._machines import DurationLike, load_machines, parse_duration
from baton_client._options import (
    ChannelOptions,
    PathLike,
    ServiceConfig,
    call_metadata,
    channel_credentials,
    channel_options,
    check_namespace,
    parse_target,
)
from baton_client._policy import DEFAULT_RETRY, RETRY_CODES, Deadline, LeaseClock, RetryPolicy, lease_intervals
from baton_client._requests import Call, EventLike, FenceLike, SpecLike
from baton_client._stream import StreamState

log = logging.getLogger("baton_client")

Resp = TypeVar("Resp", bound=Message)

DEFAULT_TIMEOUT = 30.0


class Client:
    """A baton client bound to one namespace.

    ``target``: ``host:port`` or ``http://host:port`` (plaintext), ``https://host[:port]``
    (TLS, verified against ``ca_file`` or the system roots; ``cert_file`` + ``key_file``
    for mTLS). ``token`` is sent as ``authorization: Bearer <token>`` on every call.
    ``service_config`` defaults to the packaged copy of ``clients/service-config.json``
    (``False`` for none). ``timeout`` is the overall deadline of each unary call in
    seconds, retries included; ``retry`` says how UNAVAILABLE, DEADLINE_EXCEEDED and
    CANCELLED are retried (mutating calls keep their request id across attempts).
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        namespace: str = "default",
        *,
        token: Optional[str] = None,
        ca_file: Optional[PathLike] = None,
        cert_file: Optional[PathLike] = None,
        key_file: Optional[PathLike] = None,
        service_config: ServiceConfig = None,
        options: ChannelOptions = (),
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> None:
        self.namespace = check_namespace(namespace)
        self.target = parse_target(target)
        self.timeout = timeout
        self.retry = retry
        self._metadata = call_metadata(token)
        creds = channel_credentials(self.target, ca_file, cert_file, key_file)
        opts = channel_options(service_config, options)
        if creds is None:
            self.channel: grpc.Channel = grpc.insecure_channel(self.target.address, options=opts)
        else:
            self.channel = grpc.secure_channel(self.target.address, creds, options=opts)
        self._unaries: Dict[str, Any] = {}
        self._stream = self.channel.unary_stream(
            rq.STREAM_PATH,
            request_serializer=pb.StreamEventsRequest.SerializeToString,
            response_deserializer=pb.StreamEventsResponse.FromString,
        )

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------

    def _callable(self, call: "Call[Resp]") -> Any:
        fn = self._unaries.get(call.method)
        if fn is None:
            fn = self.channel.unary_unary(
                call.path,
                request_serializer=type(call.request).SerializeToString,
                response_deserializer=call.response_type.FromString,
            )
            self._unaries[call.method] = fn
        return fn

    def _once(self, call: "Call[Resp]", timeout: Optional[float]) -> Resp:
        try:
            resp: Resp = self._callable(call)(call.request, timeout=timeout, metadata=self._metadata)
            return resp
        except grpc.RpcError as err:
            raise from_rpc_error(err, request_id=call.request_id) from None

    def _unary(self, call: "Call[Resp]", timeout: Optional[float] = None) -> Resp:
        """One call, retried on UNAVAILABLE / DEADLINE_EXCEEDED / CANCELLED with the same
        request, within ``timeout`` overall (the client's default when None)."""
        policy = self.retry
        deadline = Deadline(self.timeout if timeout is None else timeout)
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._once(call, deadline.attempt_timeout(policy))
            except BatonError as err:
                if err.code not in RETRY_CODES or (err.is_baton and err.reason not in _RETRY_REASONS):
                    raise
                pause = policy.backoff(attempt)
                left = deadline.remaining()
                if attempt >= policy.max_attempts or (left is not None and left <= pause):
                    err.maybe_committed = call.mutating
                    err.attempts = attempt
                    raise
                log.debug("baton_client: %s attempt %d failed (%s), retrying", call.method, attempt, err)
                time.sleep(pause)

    # -- leases ---------------------------------------------------------------------------

    def lease(
        self,
        key: str,
        holder: str,
        ttl: DurationLike,
        *,
        wait: DurationLike = 0,
        renew_interval: Optional[float] = None,
        on_lost: Optional[Callable[["Lease"], None]] = None,
    ) -> "Lease":
        """A self-renewing lease; ``with client.lease(...) as lease:`` acquires it (raises
        :class:`LeaseNotAcquired` when another holder keeps it) and releases it on exit."""
        return Lease(self, key, holder, ttl, wait=wait, renew_interval=renew_interval, on_lost=on_lost)

    def acquire_lease(
        self,
        key: str,
        holder: str,
        ttl: DurationLike,
        *,
        wait: DurationLike = 0,
        request_id: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> pb.AcquireLeaseResponse:
        call = rq.acquire(self.namespace, key, holder, ttl, wait, request_id)
        return self._unary(call, _with_wait(self.timeout, timeout, wait))

    def renew_lease(
        self, key: str, token: int, ttl: DurationLike, *, request_id: Optional[str] = None, timeout: Optional[float] = None
    ) -> pb.RenewLeaseResponse:
        return self._unary(rq.renew(self.namespace, key, token, ttl, request_id), timeout)

    def release_lease(
        self, key: str, token: int, *, request_id: Optional[str] = None, timeout: Optional[float] = None
    ) -> pb.ReleaseLeaseResponse:
        return self._unary(rq.release(self.namespace, key, token, request_id), timeout)

    def get_lease(self, key: str, *, timeout: Optional[float] = None) -> pb.GetLeaseResponse:
        return self._unary(rq.get_lease(self.namespace, key), timeout)

    # -- machines -------------------------------------------------------------------------

    def define_machine(self, spec: SpecLike, *, timeout: Optional[float] = None) -> pb.DefineMachineResponse:
        return self._unary(rq.define_machine(self.namespace, spec), timeout)

    def apply_machines(self, source: Union[PathLike, Sequence[SpecLike]]) -> List[pb.DefineMachineResponse]:
        """Define every machine of a TOML file (a path) or of a list of specs."""
        specs: Sequence[SpecLike] = load_machines(source) if isinstance(source, str) or hasattr(source, "__fspath__") else source
        return [self.define_machine(spec) for spec in specs]

    def get_machine(self, kind: str, *, timeout: Optional[float] = None) -> pb.Machine:
        return self._unary(rq.get_machine(self.namespace, kind), timeout).machine

    # -- entities -------------------------------------------------------------------------

    def create_entity(
        self,
        kind: str,
        *,
        id: str = "",
        dedup_key: str = "",
        fields: Optional[Mapping[str, str]] = None,
        fence: Optional[FenceLike] = None,
        request_id: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> pb.CreateEntityResponse:
        call = rq.create_entity(self.namespace, kind, id, dedup_key, fields, fence, request_id)
        return self._unary(call, timeout)

    def get_entity(self, entity_id: str, *, timeout: Optional[float] = None) -> pb.Entity:
        return self._unary(rq.get_entity(self.namespace, entity_id), timeout).entity

    def list_entities(
        self,
        kind: str,
        *,
        states: Sequence[str] = (),
        has_fields: Sequence[str] = (),
        missing_fields: Sequence[str] = (),
        page_size: int = 0,
        timeout: Optional[float] = None,
    ) -> Iterator[pb.Entity]:
        """Every matching entity, following page tokens."""
        token = ""
        while True:
            call = rq.list_entities(self.namespace, kind, states, has_fields, missing_fields, page_size, token)
            resp = self._unary(call, timeout)
            yield from resp.entities
            token = resp.next_page_token
            if not token:
                return

    def transition(
        self,
        entity_id: str,
        transition: str,
        *,
        expect_version: Optional[int] = None,
        fence: Optional[FenceLike] = None,
        set_fields: Optional[Mapping[str, str]] = None,
        clear_fields: Sequence[str] = (),
        events: Sequence[EventLike] = (),
        final_payload: Any = None,
        final_content_type: str = "",
        request_id: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> pb.TransitionResponse:
        call = rq.transition(
            self.namespace, entity_id, transition, expect_version, fence, set_fields, clear_fields,
            events, final_payload, final_content_type, request_id,
        )  # fmt: skip
        return self._unary(call, timeout)

    # -- tape -----------------------------------------------------------------------------

    def append_events(
        self,
        entity_id: str,
        events: Sequence[EventLike],
        *,
        fence: Optional[FenceLike] = None,
        if_sealed: Optional[str] = None,
        request_id: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> pb.AppendEventsResponse:
        """AppendEvents; ``if_sealed`` is "reject" (default) or "drop"."""
        call = rq.append_events(self.namespace, entity_id, events, fence, if_sealed, request_id)
        return self._unary(call, timeout)

    def stream_events(self, entity_id: str, after_seq: int = 0, *, give_up_after: float = 60.0) -> "EventStream":
        """The tape's events after ``after_seq``, live, ending after ``final``; resumes by
        itself on any end that is not a baton answer (see :class:`EventStream`)."""
        return EventStream(self, entity_id, after_seq, give_up_after)


_RETRY_REASONS = frozenset({Reason.SHUTTING_DOWN.value, Reason.DATABASE_UNAVAILABLE.value})


def _with_wait(default: Optional[float], timeout: Optional[float], wait: DurationLike) -> Optional[float]:
    """An acquire that may wait gets the wait on top of the default deadline."""
    if timeout is not None or default is None or not wait:
        return timeout
    return default + parse_duration(wait).total_seconds()


class Lease:
    """A lease renewed in the background, whose ``lost`` trips by the local clock.

    ``lost`` becomes True as soon as the local monotonic time passes "the moment the last
    successful acquire/renew was *sent* + ttl" (the earliest the server may have let it
    expire), or when the server answers LEASE_LOST. Then ``on_lost`` callbacks run,
    :meth:`wait_lost` returns, and the fenced writes made through this object
    (:meth:`transition`, :meth:`append_events`, :meth:`create_entity`) raise
    :class:`LeaseLost` without sending anything.
    """

    def __init__(
        self,
        client: Client,
        key: str,
        holder: str,
        ttl: DurationLike,
        *,
        wait: DurationLike = 0,
        renew_interval: Optional[float] = None,
        on_lost: Optional[Callable[["Lease"], None]] = None,
    ) -> None:
        self._client = client
        self.key = key
        self.holder = holder
        self.ttl = ttl
        self.wait = wait
        ttl_s = parse_duration(ttl).total_seconds()
        self._clock = LeaseClock(ttl_s, lease_intervals(ttl_s, renew_interval))
        self.lease: Optional[pb.Lease] = None
        self.renewals = 0
        self.lost_cause: Optional[BaseException] = None
        self._tripped = False
        self._lost = threading.Event()
        self._callbacks: List[Callable[["Lease"], None]] = [on_lost] if on_lost else []
        self._cv = threading.Condition()
        self._stopping = False
        self._next_attempt = 0.0
        self._thread: Optional[threading.Thread] = None

    # -- acquiring ------------------------------------------------------------------------

    def acquire(self) -> "Lease":
        """Acquire (waiting up to ``wait``), then start renewing."""
        if self.lease is not None:
            raise RuntimeError(f"baton: lease {self.key!r} already acquired")
        sent = time.monotonic()
        resp = self._client.acquire_lease(self.key, self.holder, self.ttl, wait=self.wait)
        if not resp.acquired:
            current = resp.lease if resp.HasField("lease") else None
            raise LeaseNotAcquired(
                self.key, self.holder, current.holder if current else None, current.token if current else None
            )
        self.lease = resp.lease
        self._clock.granted(sent)
        self._next_attempt = self._clock.next_renewal()
        self._thread = threading.Thread(target=self._renew_loop, name=f"baton-lease-{self.key}", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.release()

    # -- state ----------------------------------------------------------------------------

    @property
    def token(self) -> int:
        if self.lease is None:
            raise RuntimeError(f"baton: lease {self.key!r} not acquired")
        return self.lease.token

    @property
    def fence(self) -> pb.Fence:
        """The ``Fence`` of this lease, for writes made outside this object."""
        return pb.Fence(key=self.key, token=self.token)

    @property
    def lost(self) -> bool:
        if not self._tripped and self.lease is not None and self._clock.expired():
            self._trip(None)
        return self._tripped

    @property
    def expires_at_monotonic(self) -> float:
        """The local expiry (``time.monotonic()`` scale)."""
        return self._clock.expires_at

    def wait_lost(self, timeout: Optional[float] = None) -> bool:
        """Block until the lease is lost (True) or ``timeout`` passes (False)."""
        return self._lost.wait(timeout)

    def on_lost(self, callback: Callable[["Lease"], None]) -> None:
        """Call ``callback(lease)`` once when the lease is lost (at once if it is)."""
        with self._cv:
            if not self._tripped:
                self._callbacks.append(callback)
                return
        callback(self)

    def check(self) -> None:
        """Raise :class:`LeaseLost` if the lease is lost."""
        if self.lost:
            raise local_lease_lost(self.key, self.token, self._why())

    def _why(self) -> str:
        return str(self.lost_cause) if self.lost_cause else "no renewal succeeded before its local expiry"

    def _trip(self, cause: Optional[BaseException]) -> None:
        with self._cv:
            if self._tripped:
                return
            self._tripped = True
            self.lost_cause = cause
            callbacks, self._callbacks = self._callbacks, []
            self._cv.notify_all()
        log.warning("baton_client: lease %r token %s lost: %s", self.key, self.lease.token if self.lease else 0, self._why())
        for cb in callbacks:
            try:
                cb(self)
            except Exception:
                log.exception("baton_client: on_lost callback of lease %r failed", self.key)
        self._lost.set()  # after the callbacks: wait_lost() returns once they ran

    # -- renewing -------------------------------------------------------------------------

    def _renew_loop(self) -> None:
        clock = self._clock
        while True:
            with self._cv:
                while True:
                    if self._stopping or self._tripped:
                        return
                    now = time.monotonic()
                    if clock.expired(now):
                        break
                    if now >= self._next_attempt:
                        break
                    self._cv.wait(min(self._next_attempt, clock.expires_at) - now)
            sent = time.monotonic()
            if clock.expired(sent):
                self._trip(None)
                return
            call = rq.renew(self._client.namespace, self.key, self.token, self.ttl, None)
            try:
                # One attempt, bounded by the local expiry: a renewal that cannot finish
                # before then is no use, and the loop retries transport trouble itself.
                resp = self._client._once(call, clock.expires_at - sent)
            except BatonError as err:
                if err.code in RETRY_CODES and (not err.is_baton or err.reason in _RETRY_REASONS):
                    log.info("baton_client: renewing lease %r failed, retrying: %s", self.key, err)
                    self._next_attempt = time.monotonic() + clock.retry_pause()
                    continue
                self._trip(err)
                return
            with self._cv:
                clock.granted(sent)
                self.lease = resp.lease
                self.renewals += 1
                self._next_attempt = clock.next_renewal()

    def release(self, timeout: float = 5.0) -> bool:
        """Stop renewing and release the lease; the server's ``released``.

        Transport errors are logged, not raised: an unreleased lease expires by its TTL.
        """
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.lease is None or isinstance(self.lost_cause, LeaseLost):
            return False
        try:
            return self._client.release_lease(self.key, self.token, timeout=timeout).released
        except BatonError as err:
            log.warning("baton_client: releasing lease %r failed (it expires by its TTL): %s", self.key, err)
            return False

    # -- fenced writes ----------------------------------------------------------------------

    def _fenced(self, fn: Callable[[], Resp]) -> Resp:
        self.check()
        try:
            return fn()
        except LeaseLost as err:
            self._trip(err)
            raise

    def transition(self, entity_id: str, transition: str, **kw: Any) -> pb.TransitionResponse:
        """``Client.transition`` fenced with this lease."""
        return self._fenced(lambda: self._client.transition(entity_id, transition, fence=self.fence, **kw))

    def append_events(self, entity_id: str, events: Sequence[EventLike], **kw: Any) -> pb.AppendEventsResponse:
        """``Client.append_events`` fenced with this lease."""
        return self._fenced(lambda: self._client.append_events(entity_id, events, fence=self.fence, **kw))

    def create_entity(self, kind: str, **kw: Any) -> pb.CreateEntityResponse:
        """``Client.create_entity`` fenced with this lease."""
        return self._fenced(lambda: self._client.create_entity(kind, fence=self.fence, **kw))


class EventStream(Iterator[pb.Event]):
    """Iterates a tape's events in seq order, exactly once each, and stops after ``final``.

    Any end of the underlying stream that carries no baton ErrorInfo (UNAVAILABLE,
    UNKNOWN "Stream removed", INTERNAL RST_STREAM, CANCELLED by the transport, a clean end
    without ``final``, ...) and a baton SHUTTING_DOWN error resume it with ``after_seq``
    = the last seq received (``last_seq``), with backoff; ``resumes`` counts them. It gives
    up after ``give_up_after`` seconds without an event. A baton error (NOT_FOUND,
    INVALID_ARGUMENT, ...) is raised. ``close()`` cancels it.
    """

    def __init__(self, client: Client, entity_id: str, after_seq: int, give_up_after: float) -> None:
        self._client = client
        self._state = StreamState(entity_id, after_seq, give_up_after)
        self._call: Any = None

    @property
    def last_seq(self) -> int:
        return self._state.last_seq

    @property
    def resumes(self) -> int:
        return self._state.resumes

    @property
    def heartbeats(self) -> int:
        return self._state.heartbeats

    @property
    def ends(self) -> List[Optional[BatonError]]:
        """Why the underlying stream ended before each resume, most recent last (at most
        32; None for a clean end without ``final``)."""
        return list(self._state.ends)

    def __iter__(self) -> "EventStream":
        return self

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._state.done = True
        self._cancel()

    def _cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def __next__(self) -> pb.Event:
        st = self._state
        while not st.done:
            if self._call is None:
                req = rq.stream_request(self._client.namespace, st.entity_id, st.last_seq)
                self._call = self._client._stream(req, metadata=self._client._metadata)
            try:
                item = next(self._call)
            except StopIteration:
                self._call = None
                if self._ended_at_final():
                    st.done = True
                    break
                time.sleep(st.failed(None))
                continue
            except grpc.RpcError as rpc:
                self._call = None
                err = from_rpc_error(rpc)
                time.sleep(st.failed(err))  # raises when the error is an answer
                continue
            event = st.item(item)
            if event is not None:
                if st.done:
                    self._cancel()
                return event
        raise StopIteration

    def _ended_at_final(self) -> bool:
        """After a clean end without ``final``: is the tape sealed at or before our cursor?"""
        try:
            entity = self._client.get_entity(self._state.entity_id)
        except BatonError as err:
            if err.is_baton and err.reason not in _RETRY_REASONS:
                raise
            return False
        return entity.sealed and entity.last_seq <= self._state.last_seq


__all__ = ["Client", "Lease", "EventStream", "DEFAULT_TIMEOUT"]
