"""Fixtures: a real `baton serve` (SQLite in a temp dir) and clients bound to it.

BATON_BIN       server binary (default <repo>/target/debug/baton)
BATON_MACHINES  machines TOML (default <repo>/examples/machines.toml, else the fallback
                copy in clients/testdata/machines.toml)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import List, Optional

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import baton_client
from baton_client import Client

REPO = Path(__file__).resolve().parents[3]
BATON_BIN = Path(os.environ.get("BATON_BIN", REPO / "target" / "debug" / "baton"))
EXAMPLE_MACHINES = REPO / "examples" / "machines.toml"
FALLBACK_MACHINES = REPO / "clients" / "testdata" / "machines.toml"
READY_TIMEOUT = float(os.environ.get("BATON_READY_TIMEOUT", "30"))

# Fast reconnects: the tests restart servers and should not sit in gRPC's default
# reconnect backoff (1 s growing to 120 s).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def machines_path() -> Path:
    env = os.environ.get("BATON_MACHINES")
    if env:
        return Path(env)
    return EXAMPLE_MACHINES if EXAMPLE_MACHINES.exists() else FALLBACK_MACHINES


def pytest_report_header(config):
    return [f"baton binary: {BATON_BIN}", f"baton machines: {machines_path()}"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BatonServer:
    """One `baton serve` process on a free loopback port with a SQLite database."""

    def __init__(self, workdir: Path, port: Optional[int] = None) -> None:
        self.workdir = workdir
        self.db_path = workdir / "t.db"
        self.port = port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"baton-{self.starts}.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def start(self) -> "BatonServer":
        if not BATON_BIN.exists():
            pytest.fail(
                f"baton binary not found at {BATON_BIN}: build it (cargo build) or set BATON_BIN",
                pytrace=False,
            )
        self.starts += 1
        cmd = [
            str(BATON_BIN),
            "serve",
            "--listen",
            self.addr,
            "--database-url",
            f"sqlite:{self.db_path}",
        ]
        log = open(self.log_path, "wb")
        env = dict(os.environ)
        # Short heartbeats so idle streams exercise the heartbeat-skipping path.
        env.setdefault("BATON_HEARTBEAT", "1s")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self.wait_ready(READY_TIMEOUT)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Retry grpc.health.v1.Health/Check (service "") until SERVING or the deadline."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(
                    f"baton serve exited with {self.proc.returncode} before it was ready:\n"
                    + self.log_tail(),
                    pytrace=False,
                )
            with grpc.insecure_channel(self.addr) as channel:
                try:
                    resp = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=1.0
                    )
                    if resp.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                    last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
                except grpc.RpcError as err:
                    last = f"{err.code().name}: {err.details()}"
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"baton serve at {self.addr} not SERVING after {timeout}s (last: {last}):\n"
                    + self.log_tail(),
                    pytrace=False,
                )
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> Optional[int]:
        """Signal the server and wait; SIGKILL if it does not exit within `timeout`."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> Optional[int]:
        """Crash the server (SIGKILL)."""
        return self.stop(signal.SIGKILL)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture(scope="session")
def machine_specs() -> List[baton_client.pb.MachineSpec]:
    return baton_client.load_machines(machines_path())


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = BatonServer(tmp_path_factory.mktemp("baton")).start()
    yield srv
    crashed = not srv.alive()
    srv.stop()
    if crashed:
        pytest.fail("baton serve died during the session:\n" + srv.log_tail(), pytrace=False)


@pytest.fixture
def server_factory(tmp_path):
    """Start private servers (for tests that kill or restart them)."""
    started: List[BatonServer] = []

    def make(port: Optional[int] = None) -> BatonServer:
        srv = BatonServer(tmp_path, port)
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture
def namespace() -> str:
    return "t-" + uuid.uuid4().hex[:12]


@pytest.fixture
def make_client(server, namespace, machine_specs):
    """Clients (each with its own channel) on the shared server, in this test's namespace,
    with the machines defined."""
    clients: List[Client] = []

    def make(addr: Optional[str] = None, ns: Optional[str] = None, **kw) -> Client:
        kw.setdefault("options", CHANNEL_OPTIONS)
        c = Client(addr or server.addr, namespace=ns or namespace, **kw)
        clients.append(c)
        return c

    first = make()
    first.apply_machines(machine_specs)
    yield make
    for c in clients:
        c.close()


@pytest.fixture
def client(make_client) -> Client:
    return make_client()
