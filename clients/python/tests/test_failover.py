"""Failure behaviour through a TCP proxy: a stream whose replica is killed (-9) resumes
on the other replica with no gap and no duplicate, in the clients (also over TLS with a
token) and in `baton tail`;
a lease whose renewals are blackholed reports `lost` by its own clock, and its fence is
then refused."""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import subprocess
import threading
import time
import uuid
from typing import Any, Callable, List, Tuple

import pytest

import baton_client
from baton_client import AsyncClient, Client, pb
from conftest import CHANNEL_OPTIONS, Cluster, TwoReplicas
from harness import BATON_BIN, BatonServer, TcpProxy
from tls_helpers import Secured
from helpers import assert_sealed_tape, drive, lease_renews_and_fences, spec_of


@pytest.fixture
def replicas(cluster: Cluster) -> Any:
    r = TwoReplicas(cluster)
    yield r
    r.close()


PROGRESS_BEFORE, PROGRESS_AFTER = 5, 7


#: A client of the server at an address (host:port), with more keyword arguments.
Connect = Callable[..., Client]


def _plaintext(namespace: str) -> Connect:
    return lambda addr, **kw: Client(addr, namespace, **kw)


def _prepare(replicas: TwoReplicas, machine_specs: Any, connect: Connect) -> Tuple[pb.MachineSpec, str]:
    spec = spec_of(machine_specs, "task")
    with connect(replicas.a.addr) as writer:
        writer.apply_machines(machine_specs)
        task = writer.create_entity(spec.kind).entity
        writer.transition(task.id, "start")
        writer.append_events(task.id, [("progress", {"i": i}) for i in range(PROGRESS_BEFORE)])
    return spec, task.id


def _finish_on(server: BatonServer, spec: pb.MachineSpec, task_id: str, connect: Connect) -> None:
    with connect(server.addr) as writer:
        for i in range(PROGRESS_AFTER):
            writer.append_events(task_id, [("progress", {"i": PROGRESS_BEFORE + i})])
        drive(writer, spec, task_id, spec.terminal_states)


def _check(events: List[pb.Event], resumes: int) -> None:
    assert_sealed_tape(events)
    assert sum(e.type == "progress" for e in events) == PROGRESS_BEFORE + PROGRESS_AFTER
    # 1 start transition + progress + terminal transition + final
    assert len(events) == 1 + PROGRESS_BEFORE + PROGRESS_AFTER + 2
    assert resumes >= 1, "the stream never broke: the test did not test a failover"


def _read_through_failover(replicas: TwoReplicas, machine_specs: Any, connect: Connect, sig: int) -> baton_client.EventStream:
    """Read a tape through the proxy while its replica fails over (`sig`) and the tape is
    finished on the other; check it whole; the stream."""
    spec, task_id = _prepare(replicas, machine_specs, connect)
    out: "queue.Queue[Any]" = queue.Queue()
    with connect(replicas.proxy.addr, options=CHANNEL_OPTIONS) as reader:
        stream = reader.stream_events(task_id, give_up_after=20)

        def consume() -> None:
            try:
                for event in stream:
                    out.put(event)
                out.put(None)
            except Exception as err:
                out.put(err)

        threading.Thread(target=consume, daemon=True).start()
        events = [out.get(timeout=10) for _ in range(1 + PROGRESS_BEFORE)]
        assert [e.seq for e in events] == list(range(1, 2 + PROGRESS_BEFORE))
        b = replicas.fail_over(sig)
        _finish_on(b, spec, task_id, connect)
        while (item := out.get(timeout=30)) is not None:
            if isinstance(item, Exception):
                raise item
            events.append(item)
        _check(events, stream.resumes)
    return stream


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_sync_stream_resumes_on_the_other_replica_after_kill(
    replicas: TwoReplicas, namespace: str, machine_specs: Any, sig: int
) -> None:
    """SIGKILL: the connection just drops. SIGTERM: the replica drains and ends the stream
    with UNAVAILABLE / SHUTTING_DOWN, a baton answer that still means "resume"."""
    stream = _read_through_failover(replicas, machine_specs, _plaintext(namespace), sig)
    if sig == signal.SIGTERM:
        assert any(e is not None and e.reason == "SHUTTING_DOWN" for e in stream.ends), stream.ends


def test_stream_resumes_over_tls_with_a_token_after_kill(cluster: Cluster, secured: Secured, namespace: str, machine_specs: Any) -> None:
    """The same over TLS with a bearer token: the proxy passes the TLS bytes through, a
    replica is killed (-9) mid-stream, and the stream resumes with a new handshake and
    the token again (the server refuses a call without it)."""
    replicas = TwoReplicas(cluster, secured.args(), tls=True)

    def connect(addr: str, **kw: Any) -> Client:
        return Client(f"https://{addr}", namespace, **secured.client_kw("admin"), **kw)

    try:
        _read_through_failover(replicas, machine_specs, connect, signal.SIGKILL)
    finally:
        replicas.close()


def test_async_stream_resumes_on_the_other_replica_after_kill(replicas: TwoReplicas, namespace: str, machine_specs: Any) -> None:
    spec, task_id = _prepare(replicas, machine_specs, _plaintext(namespace))

    async def main() -> None:
        async with AsyncClient(replicas.proxy.addr, namespace, options=CHANNEL_OPTIONS) as reader:
            stream = reader.stream_events(task_id, give_up_after=20)
            events: List[pb.Event] = []
            seen_before = asyncio.Event()

            async def consume() -> None:
                async for event in stream:
                    events.append(event)
                    if len(events) == 1 + PROGRESS_BEFORE:
                        seen_before.set()

            task = asyncio.create_task(consume())
            await asyncio.wait_for(seen_before.wait(), 10)
            b = replicas.fail_over()
            await asyncio.to_thread(_finish_on, b, spec, task_id, _plaintext(namespace))
            await asyncio.wait_for(task, 30)
            _check(events, stream.resumes)

    asyncio.run(main())


def _lines(pipe: Any) -> "queue.Queue[Any]":
    """The lines of a pipe as a reader thread sees them, then None at its end."""
    out: "queue.Queue[Any]" = queue.Queue()

    def read() -> None:
        for raw in pipe:
            out.put(raw.decode())
        out.put(None)

    threading.Thread(target=read, daemon=True).start()
    return out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_cli_tail_resumes_on_the_other_replica(replicas: TwoReplicas, namespace: str, machine_specs: Any, sig: int) -> None:
    """`baton tail` (the CLI) through the proxy: its replica is killed (-9) or drains, it
    resumes on the other one after the last seq it printed, and exits 0 after `final`;
    its JSON lines are the whole tape, each event once."""
    spec, task_id = _prepare(replicas, machine_specs, _plaintext(namespace))
    cmd = [
        str(BATON_BIN), "tail", task_id, "--addr", replicas.proxy.addr, "--namespace", namespace,
        "--output", "json", "--give-up-after", "20s",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = _lines(proc.stdout), _lines(proc.stderr)

        def next_event(timeout: float) -> Any:
            line = stdout.get(timeout=timeout)
            assert line is not None, f"baton tail ended early: {proc.wait(5)}"
            return json.loads(line)

        events = [next_event(10) for _ in range(1 + PROGRESS_BEFORE)]
        assert [e["seq"] for e in events] == list(range(1, 2 + PROGRESS_BEFORE))
        b = replicas.fail_over(sig)
        _finish_on(b, spec, task_id, _plaintext(namespace))
        while events[-1]["type"] != "final":
            events.append(next_event(30))
        assert stdout.get(timeout=10) is None, "nothing after final"
        assert proc.wait(timeout=10) == 0
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "no gap, no duplicate"
        assert [e["type"] for e in events].count("final") == 1
        assert sum(e["type"] == "progress" for e in events) == PROGRESS_BEFORE + PROGRESS_AFTER
        assert len(events) == 1 + PROGRESS_BEFORE + PROGRESS_AFTER + 2
        notes = [json.loads(line) for line in iter(stderr.get, None)]
        assert notes, "the stream never broke: the test did not test a failover"
        assert all(n["resuming"]["after_seq"] == 1 + PROGRESS_BEFORE for n in notes), notes
        if sig == signal.SIGTERM:
            assert any(n["resuming"]["cause"]["reason"] == "SHUTTING_DOWN" for n in notes), notes
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


TTL, INTERVAL = 2.0, 0.5


def _lease_env(cluster: Cluster, namespace: str, machine_specs: Any) -> Tuple[TcpProxy, Client, str]:
    direct = Client(cluster.main.addr, namespace, options=CHANNEL_OPTIONS)
    direct.apply_machines(machine_specs)
    task = direct.create_entity("task").entity
    return TcpProxy(cluster.main.addr), direct, task.id


def _fence_is_refused(direct: Client, key: str, fence: pb.Fence, task_id: str) -> None:
    """After the server's own expiry (a waiting acquire is woken by it, no polling) the
    old fence is refused with LEASE_LOST naming the new holder."""
    other = direct.acquire_lease(key, "next-holder", ttl=10, wait=TTL * 3)
    assert other.acquired and other.lease.token > fence.token
    with pytest.raises(baton_client.LeaseLost) as ei:
        direct.append_events(task_id, [("progress", "stale")], fence=fence)
    assert not ei.value.local and ei.value.metadata["current_token"] == str(other.lease.token)
    assert direct.get_entity(task_id).last_seq == 0


def test_sync_lease_reports_lost_when_renewals_are_blackholed(cluster: Cluster, namespace: str, machine_specs: Any) -> None:
    proxy, direct, task_id = _lease_env(cluster, namespace, machine_specs)
    key = f"bh-{uuid.uuid4().hex[:8]}"
    callbacks: List[float] = []
    try:
        with Client(proxy.addr, namespace, options=CHANNEL_OPTIONS) as via:
            lease = via.lease(key, "holder", ttl=TTL, renew_interval=INTERVAL, on_lost=lambda _: callbacks.append(time.monotonic()))
            lease.acquire()
            assert not lease.lost
            proxy.blackhole()
            cut_at = time.monotonic()
            assert lease.wait_lost(TTL + 2 * INTERVAL), "lost never tripped"
            lost_at = time.monotonic()
            expiry = lease.expires_at_monotonic
            assert lease.lost and len(callbacks) == 1
            assert expiry <= lost_at <= expiry + INTERVAL, (expiry, lost_at)
            assert lost_at - cut_at <= TTL + INTERVAL, lost_at - cut_at
            with pytest.raises(baton_client.LeaseLost) as ei:
                lease.append_events(task_id, [("progress", "after lost")])
            assert ei.value.local
            _fence_is_refused(direct, key, lease.fence, task_id)
            assert not lease.release(timeout=0.5)
    finally:
        proxy.close()
        direct.close()


def test_async_lease_reports_lost_when_renewals_are_blackholed(cluster: Cluster, namespace: str, machine_specs: Any) -> None:
    proxy, direct, task_id = _lease_env(cluster, namespace, machine_specs)
    key = f"bh-{uuid.uuid4().hex[:8]}"

    async def main() -> pb.Fence:
        async with AsyncClient(proxy.addr, namespace, options=CHANNEL_OPTIONS) as via:
            fired = asyncio.Event()
            lease = via.lease(key, "holder", ttl=TTL, renew_interval=INTERVAL, on_lost=lambda _: fired.set())
            await lease.acquire()
            proxy.blackhole()
            cut_at = time.monotonic()
            await asyncio.wait_for(lease.wait_lost(), TTL + 2 * INTERVAL)
            lost_at = time.monotonic()
            assert fired.is_set() and lease.lost
            assert lease.expires_at_monotonic <= lost_at <= lease.expires_at_monotonic + INTERVAL
            assert lost_at - cut_at <= TTL + INTERVAL
            with pytest.raises(baton_client.LeaseLost) as ei:
                await lease.transition(task_id, "start")
            assert ei.value.local
            assert not await lease.release(timeout=0.5)
            return lease.fence

    try:
        fence = asyncio.run(main())
        _fence_is_refused(direct, key, fence, task_id)
    finally:
        proxy.close()
        direct.close()


def test_lease_renews_in_the_background_and_fences_writes(client: Client, machine_specs: Any) -> None:
    lease_renews_and_fences(client)
