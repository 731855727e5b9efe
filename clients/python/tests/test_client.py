"""The wrapper against a real server: typed errors, request ids and the retry with the
same request id, live streams, and the asyncio client's matching surface."""

from __future__ import annotations

import asyncio
import inspect
import json
import queue
import threading
from typing import Any, List

import grpc
import pytest

import baton_client
from baton_client import AsyncClient, Client, RetryPolicy, pb
from conftest import CHANNEL_OPTIONS, Cluster
from harness import TcpProxy
from helpers import assert_sealed_tape, drive, spec_of, tape


def test_typed_errors_carry_reason_and_metadata(client: Client, machine_specs: Any) -> None:
    spec = spec_of(machine_specs, "task")
    task = client.create_entity(spec.kind).entity

    with pytest.raises(baton_client.InvalidArgument) as ia:
        client.transition(task.id, "no_such_transition")
    assert ia.value.code == grpc.StatusCode.INVALID_ARGUMENT and ia.value.metadata["field"] == "transition"

    with pytest.raises(baton_client.EntityNotFound):
        client.get_entity("no-such-entity")

    start = next(t for t in spec.transitions if spec.initial_state in list(getattr(t, "from")))
    with pytest.raises(baton_client.VersionMismatch) as vm:
        client.transition(task.id, start.name, expect_version=task.version + 5)
    assert vm.value.code == grpc.StatusCode.ABORTED
    assert vm.value.metadata["version"] == str(task.version)
    assert vm.value.metadata["current_state"] == spec.initial_state

    with pytest.raises(baton_client.EntityExists):
        client.create_entity(spec.kind, id=task.id)

    with pytest.raises(baton_client.InvalidTransition) as it:
        client.transition(task.id, "succeed")
    assert it.value.current_state == spec.initial_state and it.value.is_baton


def test_sealed_tape_rejects_or_drops(client: Client, machine_specs: Any) -> None:
    spec = spec_of(machine_specs, "task")
    task = client.create_entity(spec.kind).entity
    sealed = drive(client, spec, task.id, spec.terminal_states)
    assert sealed.sealed
    with pytest.raises(baton_client.TapeSealed) as ts:
        client.append_events(task.id, [("progress", "late")])
    assert ts.value.metadata["final_seq"] == str(sealed.last_seq)
    dropped = client.append_events(task.id, [("progress", "late")], if_sealed="drop")
    assert dropped.dropped and list(dropped.seqs) == [] and dropped.final_seq == sealed.last_seq
    assert client.get_entity(task.id).last_seq == sealed.last_seq
    assert_sealed_tape(tape(client, task.id))


def test_request_ids_make_retries_return_the_first_outcome(client: Client, machine_specs: Any) -> None:
    spec = spec_of(machine_specs, "task")
    first = client.create_entity(spec.kind, request_id="rid-create-1")
    again = client.create_entity(spec.kind, request_id="rid-create-1")
    assert first.created and again.created and again.entity.id == first.entity.id

    ev = client.append_events(first.entity.id, [("progress", "once")], request_id="rid-append-1")
    ev2 = client.append_events(first.entity.id, [("progress", "once")], request_id="rid-append-1")
    assert list(ev2.seqs) == list(ev.seqs) == [1]
    assert client.get_entity(first.entity.id).last_seq == 1

    with pytest.raises(baton_client.RequestIdReused):
        client.create_entity(spec.kind, request_id="rid-append-1")
    with pytest.raises(baton_client.RequestIdReused):
        client.append_events(first.entity.id, [("progress", "other")], request_id="rid-append-1")

    # Without an explicit id every call gets a fresh one: two appends are two appends.
    client.append_events(first.entity.id, [("progress", "a")])
    client.append_events(first.entity.id, [("progress", "a")])
    assert client.get_entity(first.entity.id).last_seq == 3


def test_a_write_whose_answer_is_lost_is_retried_with_the_same_request_id(
    cluster: Cluster, client: Client, namespace: str, machine_specs: Any
) -> None:
    """The proxy lets the write reach the server and commit, then resets the connection
    instead of delivering the answer (UNAVAILABLE). The client retries with the same
    request id and gets the first outcome: applied once, not twice, not an error."""
    spec = spec_of(machine_specs, "task")
    task = client.create_entity(spec.kind).entity
    proxy = TcpProxy(cluster.main.addr)
    # No service config: gRPC's own UNAVAILABLE retry would hide whether the wrapper retries.
    via = Client(proxy.addr, namespace, options=CHANNEL_OPTIONS, service_config=False)
    try:
        via.get_entity(task.id)  # the connection is up
        proxy.cut_next_response()
        resp = via.append_events(task.id, [("progress", "exactly once")])
        assert proxy.cuts == 1
        assert list(resp.seqs) == [1]
        assert client.get_entity(task.id).last_seq == 1, "the retry did not append again"

        # A transition retried with a fresh id would fail INVALID_TRANSITION and hide the
        # success; with the same id it answers `applied`.
        proxy.cut_next_response()
        moved = via.transition(task.id, "start")
        assert proxy.cuts == 2 and moved.applied and moved.entity.state == "running"
        assert client.get_entity(task.id).version == 2

        # Without retries the caller learns the call may have committed, and how to ask.
        once = Client(
            proxy.addr, namespace, options=CHANNEL_OPTIONS, service_config=False, retry=RetryPolicy(max_attempts=1)
        )
        try:
            once.get_entity(task.id)
            proxy.cut_next_response()
            with pytest.raises(baton_client.Unavailable) as ei:
                once.append_events(task.id, [("progress", "maybe")])
            err = ei.value
            assert err.maybe_committed and err.request_id and "may have committed" in str(err)
            assert client.get_entity(task.id).last_seq == 3, "it did commit"
            again = once.append_events(task.id, [("progress", "maybe")], request_id=err.request_id)
            assert list(again.seqs) == [3]
            assert client.get_entity(task.id).last_seq == 3
        finally:
            once.close()
    finally:
        via.close()
        proxy.close()


def test_async_write_whose_answer_is_lost_is_retried_with_the_same_request_id(
    cluster: Cluster, client: Client, namespace: str, machine_specs: Any
) -> None:
    spec = spec_of(machine_specs, "task")
    task = client.create_entity(spec.kind).entity
    proxy = TcpProxy(cluster.main.addr)

    async def main() -> List[int]:
        async with AsyncClient(proxy.addr, namespace, options=CHANNEL_OPTIONS, service_config=False) as via:
            await via.get_entity(task.id)
            proxy.cut_next_response()
            resp = await via.append_events(task.id, [("progress", "exactly once")])
            return list(resp.seqs)

    try:
        assert asyncio.run(main()) == [1]
        assert proxy.cuts == 1
        assert client.get_entity(task.id).last_seq == 1
    finally:
        proxy.close()


def _consume(stream: Any, out: "queue.Queue[Any]") -> threading.Thread:
    def run() -> None:
        try:
            for event in stream:
                out.put(event)
            out.put(None)
        except Exception as err:
            out.put(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _drain(out: "queue.Queue[Any]") -> List[pb.Event]:
    items = []
    while True:
        item = out.get(timeout=30)
        if item is None:
            return items
        if isinstance(item, Exception):
            raise item
        items.append(item)


def test_stream_live_tail_ends_after_final(client: Client, machine_specs: Any) -> None:
    spec = spec_of(machine_specs, "task")
    task = client.create_entity(spec.kind).entity
    out: "queue.Queue[Any]" = queue.Queue()
    stream = client.stream_events(task.id)
    thread = _consume(stream, out)
    for i in range(20):
        client.append_events(task.id, [("progress", {"i": i})])
    drive(client, spec, task.id, spec.terminal_states)
    events = _drain(out)
    thread.join(5)
    assert_sealed_tape(events)
    assert sum(e.type == "progress" for e in events) == 20
    assert stream.resumes == 0 and stream.last_seq == events[-1].seq
    assert_sealed_tape(tape(client, task.id, after_seq=5), after_seq=5)
    # A cursor at `final` ends at once; one past the head is a baton answer, not a resume.
    assert tape(client, task.id, after_seq=events[-1].seq) == []
    with pytest.raises(baton_client.InvalidArgument):
        tape(client, task.id, after_seq=events[-1].seq + 1)


def test_async_client_has_the_sync_surface(cluster: Cluster, namespace: str, machine_specs: Any) -> None:
    public = lambda cls: {n for n in dir(cls) if not n.startswith("_")}  # noqa: E731
    assert public(Client) == public(AsyncClient)
    assert public(baton_client.Lease) - {"wait_lost"} == public(baton_client.AsyncLease) - {"wait_lost"}
    for name in public(Client) - {"close", "lease", "stream_events", "list_entities"}:
        sync_sig = inspect.signature(getattr(Client, name))
        async_sig = inspect.signature(getattr(AsyncClient, name))
        assert list(sync_sig.parameters) == list(async_sig.parameters), name
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name
    spec = spec_of(machine_specs, "task")

    async def main() -> None:
        async with AsyncClient(cluster.main.addr, namespace, options=CHANNEL_OPTIONS) as c:
            await c.apply_machines(machine_specs)
            task = (await c.create_entity(spec.kind, fields={})).entity
            stream = c.stream_events(task.id)
            got: List[pb.Event] = []

            async def read() -> None:
                async for event in stream:
                    got.append(event)

            reader = asyncio.create_task(read())
            for i in range(10):
                await c.append_events(task.id, [("progress", str(i))])
            with pytest.raises(baton_client.InvalidTransition):
                await c.transition(task.id, "succeed")
            await c.transition(task.id, "start")
            await c.transition(task.id, "succeed", final_payload=b"ok")
            await asyncio.wait_for(reader, 30)
            assert_sealed_tape(got)
            assert sum(e.type == "progress" for e in got) == 10 and got[-1].payload == b"ok"
            listed = [e.id async for e in c.list_entities(spec.kind, states=[got[-1].state])]
            assert listed == [task.id]

    asyncio.run(main())


def test_channel_has_the_packaged_service_config(client: Client) -> None:
    # grpc exposes the options it was built with only through its C core; what is
    # checkable is that the wrapper passed the packaged config and enabled retries.
    from baton_client._options import channel_options

    opts = dict(channel_options(None, ()))
    cfg = json.loads(opts["grpc.service_config"])
    assert cfg["methodConfig"][0]["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert opts["grpc.enable_retries"] == 1
    assert "grpc.service_config" not in dict(channel_options(False, ()))
