"""The wrapper itself: durations, machines TOML, error decoding, request ids, and
stream_events (heartbeats skipped, live tail, resume after a server restart)."""

from __future__ import annotations

import queue
import threading
import time
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

import baton_client
from baton_client import BatonError, Client, pb
from conftest import CHANNEL_OPTIONS
from helpers import assert_sealed_tape, drive, spec_of, tape

SERVICE_CONFIG = Path(__file__).resolve().parents[2] / "service-config.json"

# --- offline -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("72h", timedelta(hours=72)),
        ("1h 30m", timedelta(minutes=90)),
        ("2days", timedelta(days=2)),
        ("500ms", timedelta(milliseconds=500)),
        ("1s", timedelta(seconds=1)),
        ("3d 4h", timedelta(days=3, hours=4)),
    ],
)
def test_parse_duration(text, expected):
    assert baton_client.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "72", "h", "1 fortnight", "-1h", "1.5h"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        baton_client.parse_duration(text)


def test_machines_toml_to_spec():
    specs = baton_client.load_machines(
        """
[[machine]]
kind = "run"
states = ["a", "b", "done"]
initial_state = "a"
terminal_states = ["done"]
[[machine.transition]]
name = "go"
from = ["a"]
stale_from = ["b"]
stale_after = "72h"
to = "b"
noop_from = ["done"]
[[machine.field_rule]]
field = "turn"
allowed_in = ["a"]
"""
    )
    assert len(specs) == 1
    spec = specs[0]
    assert spec.kind == "run" and list(spec.terminal_states) == ["done"]
    t = spec.transitions[0]
    assert list(getattr(t, "from")) == ["a"] and list(t.stale_from) == ["b"]
    assert t.stale_after.seconds == 72 * 3600
    assert list(t.noop_from) == ["done"]
    assert spec.field_rules[0].field == "turn"


def test_machines_toml_rejects_typos():
    with pytest.raises(ValueError, match="stale_afer"):
        baton_client.load_machines(
            '[[machine]]\nkind="k"\n[[machine.transition]]\nname="t"\nto="x"\nstale_afer="1h"\n'
        )


def test_machines_file_loads():
    from conftest import machines_path

    kinds = {s.kind for s in baton_client.load_machines(machines_path())}
    assert {"agent_session", "workflow_run", "task", "review_run"} <= kinds


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code, details, trailers):
        self._c, self._d, self._t = code, details, trailers

    def code(self):
        return self._c

    def details(self):
        return self._d

    def trailing_metadata(self):
        return self._t


def test_baton_error_decodes_error_info():
    info = error_details_pb2.ErrorInfo(
        reason="INVALID_TRANSITION", domain="baton", metadata={"current_state": "running", "version": "3"}
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=9, message="not resumable (status: running)", details=[detail])
    err = BatonError.from_rpc_error(
        _FakeRpcError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "not resumable (status: running)",
            (("grpc-status-details-bin", status.SerializeToString()),),
        )
    )
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == "INVALID_TRANSITION"
    assert err.metadata == {"current_state": "running", "version": "3"}
    assert err.message == "not resumable (status: running)"
    assert "INVALID_TRANSITION" in str(err)


def test_baton_error_without_details():
    err = BatonError.from_rpc_error(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connect failed", ()))
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.reason is None and err.metadata == {}


def test_service_config_loads():
    c = Client("127.0.0.1:1", service_config=SERVICE_CONFIG)
    c.close()


# --- against the server ----------------------------------------------------------------


def test_error_details_reach_the_caller(client, machine_specs):
    spec = spec_of(machine_specs, "task")
    task = client.create_entity(spec.kind).entity

    with pytest.raises(BatonError) as ei:
        client.transition(task.id, "no_such_transition")
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT, ei.value
    assert ei.value.reason == "INVALID_ARGUMENT", ei.value
    assert ei.value.metadata.get("field") == "transition", ei.value

    with pytest.raises(BatonError) as ei:
        client.get_entity("no-such-entity")
    assert ei.value.code == grpc.StatusCode.NOT_FOUND, ei.value

    start = next(t for t in spec.transitions if spec.initial_state in list(getattr(t, "from")))
    with pytest.raises(BatonError) as ei:
        client.transition(task.id, start.name, expect_version=task.version + 5)
    assert ei.value.code == grpc.StatusCode.ABORTED, ei.value
    assert ei.value.reason == "VERSION_MISMATCH", ei.value
    assert ei.value.metadata.get("version") == str(task.version), ei.value
    assert ei.value.metadata.get("current_state") == spec.initial_state, ei.value

    with pytest.raises(BatonError) as ei:
        client.create_entity(spec.kind, id=task.id)
    assert ei.value.code == grpc.StatusCode.ALREADY_EXISTS, ei.value

    with pytest.raises(BatonError) as ei:
        client.append_events(task.id, ["final"])
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT, "`final` is reserved"


def test_sealed_tape_rejects_or_drops(client, machine_specs):
    spec = spec_of(machine_specs, "task")
    task = client.create_entity(spec.kind).entity
    sealed = drive(client, spec, task.id, spec.terminal_states)
    assert sealed.sealed

    with pytest.raises(BatonError) as ei:
        client.append_events(task.id, [("progress", "late")])
    assert ei.value.code == grpc.StatusCode.FAILED_PRECONDITION, ei.value
    assert ei.value.reason == "TAPE_SEALED", ei.value
    assert ei.value.metadata.get("final_seq") == str(sealed.last_seq), ei.value

    dropped = client.append_events(task.id, [("progress", "late")], if_sealed="drop")
    assert dropped.dropped and list(dropped.seqs) == []
    assert dropped.final_seq == sealed.last_seq
    assert client.get_entity(task.id).last_seq == sealed.last_seq
    assert_sealed_tape(tape(client, task.id))


def test_request_id_retry_returns_first_outcome(client, machine_specs):
    spec = spec_of(machine_specs, "task")
    first = client.create_entity(spec.kind, request_id="rid-create-1")
    again = client.create_entity(spec.kind, request_id="rid-create-1")
    assert first.created and again.created
    assert again.entity.id == first.entity.id

    ev = client.append_events(first.entity.id, [("progress", "once")], request_id="rid-append-1")
    ev2 = client.append_events(first.entity.id, [("progress", "once")], request_id="rid-append-1")
    assert list(ev2.seqs) == list(ev.seqs)
    assert client.get_entity(first.entity.id).last_seq == ev.seqs[-1], "applied once"

    with pytest.raises(BatonError) as ei:  # same id, another method
        client.create_entity(spec.kind, request_id="rid-append-1")
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT, ei.value
    assert ei.value.reason == "REQUEST_ID_REUSED", ei.value


def test_request_id_reused_with_different_events_is_rejected(client, machine_specs):
    """The same request id on the same method and entity but with different events is a
    different call (INVALID_ARGUMENT / REQUEST_ID_REUSED), not a retry: answering it with
    the first call's seqs would silently drop the caller's events."""
    spec = spec_of(machine_specs, "task")
    task = client.create_entity(spec.kind).entity
    first = client.append_events(task.id, [("progress", "once")], request_id="rid-append-2")
    try:
        other = client.append_events(task.id, [("progress", "other")], request_id="rid-append-2")
    except BatonError as err:
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT, err
        assert err.reason == "REQUEST_ID_REUSED", err
    else:
        pytest.fail(
            f"different events under a reused request id were answered as a retry "
            f"(seqs {list(other.seqs)} == first call's {list(first.seqs)}) and not stored"
        )


def test_stream_events_live_tail(client, machine_specs):
    spec = spec_of(machine_specs, "task")
    task = client.create_entity(spec.kind).entity
    got: "queue.Queue" = queue.Queue()

    def consume():
        try:
            for event in client.stream_events(task.id):
                got.put(event)
            got.put(None)
        except Exception as err:  # surfaced below
            got.put(err)

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    for i in range(20):
        client.append_events(task.id, [("progress", {"i": i})])
    drive(client, spec, task.id, spec.terminal_states)
    reader.join(20)
    assert not reader.is_alive(), "the stream did not end after final"
    items = []
    while not got.empty():
        items.append(got.get())
    assert items[-1] is None, items[-1]
    events = items[:-1]
    assert_sealed_tape(events)
    assert sum(e.type == "progress" for e in events) == 20

    # Resuming from a cursor replays only what follows it.
    assert_sealed_tape(tape(client, task.id, after_seq=5), after_seq=5)


def test_stream_events_resumes_after_server_restart(server_factory, machine_specs, namespace):
    """I8: the server dies mid-stream; the iterator reconnects to its successor (same
    port, same database) and resumes after the last seq it received."""
    srv = server_factory()
    spec = spec_of(machine_specs, "task")
    writer = Client(srv.addr, namespace, options=CHANNEL_OPTIONS)
    reader = Client(srv.addr, namespace, options=CHANNEL_OPTIONS)
    try:
        writer.apply_machines(machine_specs)
        task = writer.create_entity(spec.kind).entity
        writer.append_events(task.id, [("progress", {"i": i}) for i in range(5)])

        got: "queue.Queue" = queue.Queue()

        def consume():
            try:
                for event in reader.stream_events(task.id, give_up_after=30):
                    got.put(event)
                got.put(None)
            except Exception as err:
                got.put(err)

        thread = threading.Thread(target=consume, daemon=True)
        thread.start()
        before = [got.get(timeout=10) for _ in range(5)]
        assert [getattr(e, "seq", e) for e in before] == [1, 2, 3, 4, 5]

        srv.kill()  # a crash: the stream breaks with UNAVAILABLE, reconnects keep failing
        time.sleep(1.0)
        srv.start()  # same port and database
        writer.close()  # its channel is still backing off from the crash: use a new one
        writer = Client(srv.addr, namespace, options=CHANNEL_OPTIONS, service_config=SERVICE_CONFIG)
        writer.append_events(task.id, [("progress", {"i": i}) for i in range(5, 10)])
        drive(writer, spec, task.id, spec.terminal_states)

        thread.join(30)
        assert not thread.is_alive(), "the resumed stream did not end after final"
        items = []
        while not got.empty():
            items.append(got.get())
        assert items and items[-1] is None, items[-1:]
        events = before + items[:-1]
        assert_sealed_tape(events)
        assert sum(e.type == "progress" for e in events) == 10
    finally:
        writer.close()
        reader.close()
