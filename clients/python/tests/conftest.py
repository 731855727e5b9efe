"""Fixtures: every test runs on SQLite and on Postgres, against real `baton serve`
processes (see harness.py)."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

import baton_client
from baton_client import Client
from harness import BATON_BIN, BatonServer, Postgres, machines_path

BACKENDS = ["sqlite", "postgres"]

# Fast reconnects: tests kill servers and should not sit in gRPC's default reconnect
# backoff (1 s growing to 120 s).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def pytest_report_header(config: Any) -> List[str]:
    return [
        f"baton binary: {BATON_BIN}",
        f"baton machines: {machines_path()}",
        f"baton_client: {baton_client.__file__}",
    ]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    counts: Counter[str] = Counter()
    for outcome in ("passed", "failed", "error"):
        for rep in terminalreporter.stats.get(outcome, []):
            if rep.when != "call" and outcome != "error":
                continue
            backend = next((b for b in BACKENDS if f"[{b}" in rep.nodeid or f"-{b}]" in rep.nodeid), "offline")
            counts[f"{backend} {outcome}"] += 1
    if counts:
        line = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        terminalreporter.write_line(f"python per backend: {line}")


class Cluster:
    """The servers of one backend: `main` is shared by the session; `replica()` starts
    another on the same database (a second replica on Postgres, a successor on SQLite)."""

    def __init__(self, backend: str, workdir: Path) -> None:
        self.backend = backend
        self.workdir = workdir
        self.pg = Postgres() if backend == "postgres" else None
        self.url = self.pg.url if self.pg else f"sqlite:{workdir / 'baton.db'}"
        self.servers: List[BatonServer] = []
        self.main = self.replica()

    def replica(self, url: str = "") -> BatonServer:
        srv = BatonServer(url or self.url, self.workdir / f"baton-{len(self.servers)}.log")
        self.servers.append(srv)
        return srv.start()

    def fresh_sqlite_url(self) -> str:
        return f"sqlite:{self.workdir / ('own-' + uuid.uuid4().hex[:8] + '.db')}"

    def close(self) -> List[str]:
        died = [f"{s.log_path.name}:\n{s.log_tail()}" for s in self.servers if s is self.main and not s.alive()]
        for s in self.servers:
            s.stop()
        if self.pg:
            self.pg.drop()
        return died


@pytest.fixture(scope="session", params=BACKENDS)
def cluster(request: Any, tmp_path_factory: Any) -> Iterator[Cluster]:
    c = Cluster(request.param, tmp_path_factory.mktemp(request.param))
    yield c
    died = c.close()
    if died:
        pytest.fail("baton serve died during the session:\n" + "\n".join(died), pytrace=False)


@pytest.fixture(scope="session")
def machine_specs() -> List[baton_client.pb.MachineSpec]:
    return baton_client.load_machines(machines_path())


@pytest.fixture
def namespace() -> str:
    return "t-" + uuid.uuid4().hex[:12]


@pytest.fixture
def make_client(cluster: Cluster, namespace: str, machine_specs: Any) -> Iterator[Callable[..., Client]]:
    """Clients (each its own channel) on the session's server, in this test's namespace,
    with the machines defined."""
    clients: List[Client] = []

    def make(addr: str = "", ns: str = "", **kw: Any) -> Client:
        kw.setdefault("options", CHANNEL_OPTIONS)
        c = Client(addr or cluster.main.addr, ns or namespace, **kw)
        clients.append(c)
        return c

    make().apply_machines(machine_specs)
    yield make
    for c in clients:
        c.close()


@pytest.fixture
def client(make_client: Callable[..., Client]) -> Client:
    return make_client()
