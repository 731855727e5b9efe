"""What needs no server: the installed package itself, its typing, durations, machines
TOML, error decoding, target and option checks."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

import baton_client
from baton_client import BatonError, Client, RetryPolicy, parse_target, pb
from harness import REPO, machines_path


def test_package_is_the_installed_one_with_generated_stubs() -> None:
    installed = Path(baton_client.__file__).resolve()
    assert Path(sys.prefix).resolve() in installed.parents, f"testing {installed}, not the venv's copy"
    gen = installed.parent / "_gen"
    assert (gen / "coordinator_pb2.py").is_file() and (gen / "coordinator_pb2.pyi").is_file()
    assert (installed.parent / "py.typed").is_file()
    # The generated descriptor is the contract in proto/, method for method.
    service = baton_client.pb.DESCRIPTOR.services_by_name["Coordinator"]
    proto = (REPO / "proto" / "baton" / "v1" / "coordinator.proto").read_text()
    declared = sorted(line.split("rpc ", 1)[1].split("(", 1)[0] for line in proto.splitlines() if line.strip().startswith("rpc "))
    assert sorted(m.name for m in service.methods) == declared


def test_packaged_service_config_is_clients_service_config() -> None:
    packaged = json.loads(baton_client.SERVICE_CONFIG_PATH.read_text())
    assert packaged == json.loads((REPO / "clients" / "service-config.json").read_text())


def test_wrapper_is_clean_under_mypy_strict(tmp_path: Path) -> None:
    """mypy --strict over the installed package (protoc's .pyi excepted), and over a
    user's file that uses both clients."""
    user = tmp_path / "user.py"
    user.write_text(
        "import asyncio\n"
        "from baton_client import AsyncClient, Client, LeaseLost, pb\n"
        "def sync(c: Client) -> int:\n"
        "    with c.lease('k', 'me', ttl=5) as lease:\n"
        "        r: pb.AppendEventsResponse = lease.append_events('e', [('progress', b'x')])\n"
        "    return sum(e.seq for e in c.stream_events('e')) + len(r.seqs)\n"
        "async def aio(c: AsyncClient) -> int:\n"
        "    async with c.lease('k', 'me', ttl=5) as lease:\n"
        "        await lease.transition('e', 'start')\n"
        "    return sum([e.seq async for e in c.stream_events('e')])\n"
    )
    for target in (["-p", "baton_client"], [str(user)]):
        proc = subprocess.run(
            [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *target],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "text,expected",
    [
        ("72h", timedelta(hours=72)),
        ("1h 30m", timedelta(minutes=90)),
        ("2days", timedelta(days=2)),
        ("500ms", timedelta(milliseconds=500)),
        ("3d 4h", timedelta(days=3, hours=4)),
        (1.5, timedelta(seconds=1.5)),
    ],
)
def test_parse_duration(text: Any, expected: timedelta) -> None:
    assert baton_client.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "72", "h", "1 fortnight", "-1h", "1.5h", -3])
def test_parse_duration_rejects(text: Any) -> None:
    with pytest.raises(ValueError):
        baton_client.parse_duration(text)


def test_machines_toml_to_spec_and_typos() -> None:
    spec = baton_client.load_machines(
        '[[machine]]\nkind = "run"\nstates = ["a", "b", "done"]\ninitial_state = "a"\n'
        'terminal_states = ["done"]\n[[machine.transition]]\nname = "go"\nfrom = ["a"]\n'
        'stale_from = ["b"]\nstale_after = "72h"\nto = "b"\nnoop_from = ["done"]\n'
    )[0]
    t = spec.transitions[0]
    assert list(getattr(t, "from")) == ["a"] and list(t.stale_from) == ["b"]
    assert t.stale_after.seconds == 72 * 3600 and list(t.noop_from) == ["done"]
    with pytest.raises(ValueError, match="stale_afer"):
        baton_client.load_machines('[[machine]]\nkind="k"\n[[machine.transition]]\nname="t"\nto="x"\nstale_afer="1h"\n')
    kinds = {s.kind for s in baton_client.load_machines(machines_path())}
    assert {"agent_session", "workflow_run", "task", "review_run"} <= kinds
    timed = baton_client.load_machines(
        '[[machine]]\nkind = "run"\nretain_after_final = "30days"\ndedup = "while_active"\n'
        '[[machine.timeout]]\nstate = "a"\nafter = "1h"\nidle = true\ntransition = "go"\n'
    )[0]
    assert timed.retain_after_final.seconds == 30 * 86400 and timed.dedup == pb.DEDUP_POLICY_WHILE_ACTIVE
    assert [(t.state, t.after.seconds, t.idle, t.transition) for t in timed.timeouts] == [("a", 3600, True, "go")]
    with pytest.raises(ValueError, match="dedup"):
        baton_client.load_machines('[[machine]]\nkind = "k"\ndedup = "sometimes"\n')
    with pytest.raises(ValueError, match="aftr"):
        baton_client.load_machines('[[machine]]\nkind = "k"\n[[machine.timeout]]\nstate = "a"\naftr = "1h"\n')


class _RpcError(grpc.RpcError):
    """A failed call as grpc hands it over, for decoding only."""

    def __init__(self, code: grpc.StatusCode, details: str, trailers: Any) -> None:
        self._c, self._d, self._t = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._c

    def details(self) -> str:
        return self._d

    def trailing_metadata(self) -> Any:
        return self._t


def _status(reason: str, domain: str, **metadata: str) -> bytes:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata))
    return status_pb2.Status(code=9, message="m", details=[detail]).SerializeToString()


@pytest.mark.parametrize(
    "reason,cls",
    [
        ("INVALID_TRANSITION", baton_client.InvalidTransition),
        ("LEASE_LOST", baton_client.LeaseLost),
        ("TAPE_SEALED", baton_client.TapeSealed),
        ("VERSION_MISMATCH", baton_client.VersionMismatch),
        ("REQUEST_ID_REUSED", baton_client.RequestIdReused),
        ("SHUTTING_DOWN", baton_client.ShuttingDown),
        ("UNAUTHENTICATED", baton_client.Unauthenticated),
        ("PERMISSION_DENIED", baton_client.PermissionDenied),
    ],
)
def test_error_classes_follow_the_reason(reason: str, cls: type) -> None:
    err = baton_client.from_rpc_error(
        _RpcError(grpc.StatusCode.FAILED_PRECONDITION, "m", (("grpc-status-details-bin", _status(reason, "baton", version="3")),))
    )
    assert type(err) is cls and err.reason == reason and err.metadata == {"version": "3"} and err.is_baton
    assert baton_client.Reason(reason).value == reason


def test_errors_without_baton_error_info_are_transport_errors() -> None:
    foreign = baton_client.from_rpc_error(
        _RpcError(grpc.StatusCode.UNAVAILABLE, "x", (("grpc-status-details-bin", _status("LEASE_LOST", "example.com")),))
    )
    assert type(foreign) is baton_client.Unavailable and not foreign.is_baton
    bare = baton_client.from_rpc_error(_RpcError(grpc.StatusCode.INTERNAL, "RST_STREAM", ()))
    assert type(bare) is baton_client.Internal and bare.reason is None and not bare.is_baton
    garbage = baton_client.from_rpc_error(_RpcError(grpc.StatusCode.UNKNOWN, "x", (("grpc-status-details-bin", b"\xff\xff"),)))
    assert type(garbage) is BatonError and garbage.reason is None
    # A proxy in front of baton may refuse credentials itself: still the typed error.
    proxy = baton_client.from_rpc_error(_RpcError(grpc.StatusCode.UNAUTHENTICATED, "no", ()))
    assert type(proxy) is baton_client.Unauthenticated and not proxy.is_baton
    denied = baton_client.from_rpc_error(
        _RpcError(grpc.StatusCode.PERMISSION_DENIED, "m", (("grpc-status-details-bin", _status("PERMISSION_DENIED", "baton", namespace="b", needs_role="write")),))
    )
    assert isinstance(denied, baton_client.PermissionDenied) and (denied.namespace, denied.needs_role) == ("b", "write")


@pytest.mark.parametrize(
    "target,address,secure",
    [
        ("127.0.0.1:50051", "127.0.0.1:50051", False),
        ("http://localhost:8080", "localhost:8080", False),
        ("https://baton.example:8443", "baton.example:8443", True),
        ("https://baton.example", "baton.example:443", True),
        ("[::1]:50051", "[::1]:50051", False),
        ("HTTPS://h:1/", "h:1", True),
    ],
)
def test_parse_target(target: str, address: str, secure: bool) -> None:
    t = parse_target(target)
    assert (t.address, t.secure) == (address, secure)


@pytest.mark.parametrize(
    "target,message",
    [
        ("", "non-empty"),
        ("localhost", "needs a port"),
        ("grpc://h:1", "unsupported target"),
        ("http://h:1/path", "only a host and a port"),
        ("h:notaport", "invalid port"),
    ],
)
def test_bad_targets_get_clear_errors(target: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Client(target)


def test_bad_options_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="namespace"):
        Client("127.0.0.1:1", "Bad Namespace")
    with pytest.raises(ValueError, match="https://"):
        Client("127.0.0.1:1", ca_file=tmp_path / "ca.pem")
    with pytest.raises(ValueError, match="both cert_file and key_file"):
        Client("https://127.0.0.1:1", cert_file=tmp_path / "c.pem")
    with pytest.raises(ValueError, match="cannot read ca_file"):
        Client("https://127.0.0.1:1", ca_file=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="token"):
        Client("127.0.0.1:1", token="has space")
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    c = Client("127.0.0.1:1")
    with pytest.raises(ValueError, match="if_sealed"):
        c.append_events("e", ["progress"], if_sealed="ignore")
    with pytest.raises(TypeError, match="list of events"):
        c.append_events("e", "progress")
    with pytest.raises(ValueError, match="request_id"):
        c.transition("e", "start", request_id="x" * 129)
    with pytest.raises(ValueError, match="renew_interval"):
        c.lease("k", "me", ttl=1, renew_interval=2)
    c.close()
