"""The asyncio client (``grpc.aio``): :class:`AsyncClient`, :class:`AsyncLease`,
:class:`AsyncEventStream` -- the surface of :mod:`baton_client.client`, awaitable."""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType
from typing import (
    Any,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Type,
    TypeVar,
    Union,
)

import grpc
import grpc.aio
from google.protobuf.message import Message

from baton_client import _requests as rq
from baton_client._errors import BatonError, LeaseLost, LeaseNotAcquired, from_rpc_error, local_lease_lost
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
from baton_client.client import _RETRY_REASONS, DEFAULT_TIMEOUT, _with_wait

log = logging.getLogger("baton_client")

Resp = TypeVar("Resp", bound=Message)
LostCallback = Callable[["AsyncLease"], Union[None, Awaitable[None]]]


class AsyncClient:
    """The asyncio twin of :class:`baton_client.Client`: same constructor, same methods,
    each a coroutine. Create it inside a running event loop."""

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
            self.channel: grpc.aio.Channel = grpc.aio.insecure_channel(self.target.address, options=opts)
        else:
            self.channel = grpc.aio.secure_channel(self.target.address, creds, options=opts)
        self._unaries: Dict[str, Any] = {}
        self._stream = self.channel.unary_stream(
            rq.STREAM_PATH,
            request_serializer=pb.StreamEventsRequest.SerializeToString,
            response_deserializer=pb.StreamEventsResponse.FromString,
        )

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.close()

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

    async def _once(self, call: "Call[Resp]", timeout: Optional[float]) -> Resp:
        try:
            resp: Resp = await self._callable(call)(call.request, timeout=timeout, metadata=self._metadata)
            return resp
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, request_id=call.request_id) from None

    async def _unary(self, call: "Call[Resp]", timeout: Optional[float] = None) -> Resp:
        """See ``Client._unary``: the same retry rule, awaiting."""
        policy = self.retry
        deadline = Deadline(self.timeout if timeout is None else timeout)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._once(call, deadline.attempt_timeout(policy))
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
                await asyncio.sleep(pause)

    # -- leases ---------------------------------------------------------------------------

    def lease(
        self,
        key: str,
        holder: str,
        ttl: DurationLike,
        *,
        wait: DurationLike = 0,
        renew_interval: Optional[float] = None,
        on_lost: Optional[LostCallback] = None,
    ) -> "AsyncLease":
        """``async with client.lease(...) as lease:`` -- see :class:`AsyncLease`."""
        return AsyncLease(self, key, holder, ttl, wait=wait, renew_interval=renew_interval, on_lost=on_lost)

    async def acquire_lease(
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
        return await self._unary(call, _with_wait(self.timeout, timeout, wait))

    async def renew_lease(
        self, key: str, token: int, ttl: DurationLike, *, request_id: Optional[str] = None, timeout: Optional[float] = None
    ) -> pb.RenewLeaseResponse:
        return await self._unary(rq.renew(self.namespace, key, token, ttl, request_id), timeout)

    async def release_lease(
        self, key: str, token: int, *, request_id: Optional[str] = None, timeout: Optional[float] = None
    ) -> pb.ReleaseLeaseResponse:
        return await self._unary(rq.release(self.namespace, key, token, request_id), timeout)

    async def get_lease(self, key: str, *, timeout: Optional[float] = None) -> pb.GetLeaseResponse:
        return await self._unary(rq.get_lease(self.namespace, key), timeout)

    # -- machines -------------------------------------------------------------------------

    async def define_machine(self, spec: SpecLike, *, timeout: Optional[float] = None) -> pb.DefineMachineResponse:
        return await self._unary(rq.define_machine(self.namespace, spec), timeout)

    async def apply_machines(self, source: Union[PathLike, Sequence[SpecLike]]) -> List[pb.DefineMachineResponse]:
        specs: Sequence[SpecLike] = load_machines(source) if isinstance(source, str) or hasattr(source, "__fspath__") else source
        return [await self.define_machine(spec) for spec in specs]

    async def get_machine(self, kind: str, *, timeout: Optional[float] = None) -> pb.Machine:
        return (await self._unary(rq.get_machine(self.namespace, kind), timeout)).machine

    # -- entities -------------------------------------------------------------------------

    async def create_entity(
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
        return await self._unary(call, timeout)

    async def get_entity(self, entity_id: str, *, timeout: Optional[float] = None) -> pb.Entity:
        return (await self._unary(rq.get_entity(self.namespace, entity_id), timeout)).entity

    async def list_entities(
        self,
        kind: str,
        *,
        states: Sequence[str] = (),
        has_fields: Sequence[str] = (),
        missing_fields: Sequence[str] = (),
        page_size: int = 0,
        timeout: Optional[float] = None,
    ) -> AsyncIterator[pb.Entity]:
        token = ""
        while True:
            call = rq.list_entities(self.namespace, kind, states, has_fields, missing_fields, page_size, token)
            resp = await self._unary(call, timeout)
            for entity in resp.entities:
                yield entity
            token = resp.next_page_token
            if not token:
                return

    async def transition(
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
        return await self._unary(call, timeout)

    # -- tape -----------------------------------------------------------------------------

    async def append_events(
        self,
        entity_id: str,
        events: Sequence[EventLike],
        *,
        fence: Optional[FenceLike] = None,
        if_sealed: Optional[str] = None,
        request_id: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> pb.AppendEventsResponse:
        call = rq.append_events(self.namespace, entity_id, events, fence, if_sealed, request_id)
        return await self._unary(call, timeout)

    def stream_events(self, entity_id: str, after_seq: int = 0, *, give_up_after: float = 60.0) -> "AsyncEventStream":
        """``async for event in client.stream_events(id):`` -- see :class:`AsyncEventStream`."""
        return AsyncEventStream(self, entity_id, after_seq, give_up_after)


class AsyncLease:
    """The asyncio twin of :class:`baton_client.Lease`: renewed by a task; ``lost`` trips
    by the local monotonic clock or on LEASE_LOST; ``await lease.wait_lost()``;
    ``on_lost`` callbacks may be coroutines."""

    def __init__(
        self,
        client: AsyncClient,
        key: str,
        holder: str,
        ttl: DurationLike,
        *,
        wait: DurationLike = 0,
        renew_interval: Optional[float] = None,
        on_lost: Optional[LostCallback] = None,
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
        self._lost = asyncio.Event()
        self._callbacks: List[LostCallback] = [on_lost] if on_lost else []
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: Optional["asyncio.Task[None]"] = None
        self._expiry_timer: Optional[asyncio.TimerHandle] = None

    async def acquire(self) -> "AsyncLease":
        if self.lease is not None:
            raise RuntimeError(f"baton: lease {self.key!r} already acquired")
        sent = time.monotonic()
        resp = await self._client.acquire_lease(self.key, self.holder, self.ttl, wait=self.wait)
        if not resp.acquired:
            current = resp.lease if resp.HasField("lease") else None
            raise LeaseNotAcquired(
                self.key, self.holder, current.holder if current else None, current.token if current else None
            )
        self.lease = resp.lease
        self._granted(sent)
        self._task = asyncio.get_running_loop().create_task(self._renew_loop())
        return self

    async def __aenter__(self) -> "AsyncLease":
        return await self.acquire()

    async def __aexit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.release()

    @property
    def token(self) -> int:
        if self.lease is None:
            raise RuntimeError(f"baton: lease {self.key!r} not acquired")
        return self.lease.token

    @property
    def fence(self) -> pb.Fence:
        return pb.Fence(key=self.key, token=self.token)

    @property
    def lost(self) -> bool:
        if not self._lost.is_set() and self.lease is not None and self._clock.expired():
            self._trip(None)
        return self._lost.is_set()

    @property
    def expires_at_monotonic(self) -> float:
        return self._clock.expires_at

    async def wait_lost(self) -> None:
        """Return once the lease is lost."""
        await self._lost.wait()

    def on_lost(self, callback: LostCallback) -> None:
        if self._lost.is_set():
            self._run_callback(callback)
        else:
            self._callbacks.append(callback)

    def check(self) -> None:
        if self.lost:
            raise local_lease_lost(self.key, self.token, self._why())

    def _why(self) -> str:
        return str(self.lost_cause) if self.lost_cause else "no renewal succeeded before its local expiry"

    def _granted(self, sent: float) -> None:
        self._clock.granted(sent)
        # A timer at the local expiry trips `lost` even while a renewal is still in flight
        # or the loop is parked: the event and callbacks fire on time, not on next read.
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        loop = asyncio.get_running_loop()
        delay = self._clock.expires_at - time.monotonic()
        self._expiry_timer = loop.call_later(max(delay, 0), self._expiry_check)

    def _expiry_check(self) -> None:
        if self._clock.expired():
            self._trip(None)

    def _trip(self, cause: Optional[BaseException]) -> None:
        if self._lost.is_set():
            return
        self.lost_cause = cause
        self._wake.set()
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        log.warning("baton_client: lease %r token %s lost: %s", self.key, self.lease.token if self.lease else 0, self._why())
        callbacks, self._callbacks = self._callbacks, []
        self._lost.set()  # before the callbacks run, so that they read lost == True
        for cb in callbacks:
            self._run_callback(cb)

    def _run_callback(self, cb: LostCallback) -> None:
        try:
            result = cb(self)
            if asyncio.iscoroutine(result):
                asyncio.get_running_loop().create_task(result)
        except Exception:
            log.exception("baton_client: on_lost callback of lease %r failed", self.key)

    async def _renew_loop(self) -> None:
        clock = self._clock
        next_attempt = clock.next_renewal()
        while not self._stopping and not self._lost.is_set():
            now = time.monotonic()
            if clock.expired(now):
                self._trip(None)
                return
            if now < next_attempt:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), next_attempt - now)
                except asyncio.TimeoutError:
                    pass
                continue
            sent = time.monotonic()
            call = rq.renew(self._client.namespace, self.key, self.token, self.ttl, None)
            try:
                resp = await self._client._once(call, clock.expires_at - sent)
            except BatonError as err:
                if err.code in RETRY_CODES and (not err.is_baton or err.reason in _RETRY_REASONS):
                    log.info("baton_client: renewing lease %r failed, retrying: %s", self.key, err)
                    next_attempt = time.monotonic() + clock.retry_pause()
                    continue
                self._trip(err)
                return
            if self._lost.is_set():
                return
            self._granted(sent)
            self.lease = resp.lease
            self.renewals += 1
            next_attempt = clock.next_renewal()

    async def release(self, timeout: float = 5.0) -> bool:
        self._stopping = True
        self._wake.set()
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self.lease is None or isinstance(self.lost_cause, LeaseLost):
            return False
        try:
            return (await self._client.release_lease(self.key, self.token, timeout=timeout)).released
        except BatonError as err:
            log.warning("baton_client: releasing lease %r failed (it expires by its TTL): %s", self.key, err)
            return False

    async def _fenced(self, fn: Callable[[], Awaitable[Resp]]) -> Resp:
        self.check()
        try:
            return await fn()
        except LeaseLost as err:
            self._trip(err)
            raise

    async def transition(self, entity_id: str, transition: str, **kw: Any) -> pb.TransitionResponse:
        return await self._fenced(lambda: self._client.transition(entity_id, transition, fence=self.fence, **kw))

    async def append_events(self, entity_id: str, events: Sequence[EventLike], **kw: Any) -> pb.AppendEventsResponse:
        return await self._fenced(lambda: self._client.append_events(entity_id, events, fence=self.fence, **kw))

    async def create_entity(self, kind: str, **kw: Any) -> pb.CreateEntityResponse:
        return await self._fenced(lambda: self._client.create_entity(kind, fence=self.fence, **kw))


class AsyncEventStream(AsyncIterator[pb.Event]):
    """The asyncio twin of :class:`baton_client.EventStream`: the same resume rule."""

    def __init__(self, client: AsyncClient, entity_id: str, after_seq: int, give_up_after: float) -> None:
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

    def __aiter__(self) -> "AsyncEventStream":
        return self

    async def __aenter__(self) -> "AsyncEventStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._state.done = True
        self._cancel()

    def _cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def __anext__(self) -> pb.Event:
        st = self._state
        while not st.done:
            if self._call is None:
                req = rq.stream_request(self._client.namespace, st.entity_id, st.last_seq)
                self._call = self._client._stream(req, metadata=self._client._metadata)
            try:
                item = await self._call.read()
            except grpc.aio.AioRpcError as rpc:
                self._call = None
                await asyncio.sleep(st.failed(from_rpc_error(rpc)))
                continue
            if item is grpc.aio.EOF:
                self._call = None
                if await self._ended_at_final():
                    st.done = True
                    break
                await asyncio.sleep(st.failed(None))
                continue
            event = st.item(item)
            if event is not None:
                if st.done:
                    self._cancel()
                return event
        raise StopAsyncIteration

    async def _ended_at_final(self) -> bool:
        try:
            entity = await self._client.get_entity(self._state.entity_id)
        except BatonError as err:
            if err.is_baton and err.reason not in _RETRY_REASONS:
                raise
            return False
        return entity.sealed and entity.last_seq <= self._state.last_seq


__all__ = ["AsyncClient", "AsyncLease", "AsyncEventStream"]
