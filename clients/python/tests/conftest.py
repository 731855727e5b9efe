"""Fixtures: every test runs on SQLite and on Postgres, against real `baton serve`
processes (see harness.py)."""

from __future__ import annotations

import signal
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence

import pytest

import baton_client
from baton_client import Client
from harness import BATON_BIN, BatonServer, Postgres, TcpProxy, machines_path
from tls_helpers import Secured

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

    def replica(self, url: str = "", args: Sequence[str] = ()) -> BatonServer:
        srv = BatonServer(url or self.url, self.workdir / f"baton-{len(self.servers)}.log", args=args)
        self.servers.append(srv)
        return srv.start()

    def fresh_sqlite_url(self) -> str:
        return f"sqlite:{self.workdir / ('own-' + uuid.uuid4().hex[:8] + '.db')}"

    def own_url(self) -> str:
        """A database for servers of their own: the same one on Postgres (replicas share
        it), a fresh file on SQLite (one server per file)."""
        return self.url if self.pg else self.fresh_sqlite_url()

    def close(self) -> List[str]:
        died = [f"{s.log_path.name}:\n{s.log_tail()}" for s in self.servers if s is self.main and not s.alive()]
        for s in self.servers:
            s.stop()
        if self.pg:
            self.pg.drop()
        return died


class TwoReplicas:
    """Replica A behind a proxy; `fail_over()` stops A (SIGKILL by default) and points the
    proxy at replica B. On Postgres B runs beside A on the same database; on SQLite (one
    node) B is A's successor on the same file. `args` go to both; with `tls`, they serve
    TLS."""

    def __init__(self, cluster: Cluster, args: Sequence[str] = (), *, tls: bool = False) -> None:
        self.cluster = cluster
        self.args = args
        self.url = cluster.own_url()
        self.a = cluster.replica(self.url, args)
        self.b: Optional[BatonServer] = cluster.replica(self.url, args) if cluster.pg else None
        self.proxy = TcpProxy(self.a.addr, tls=tls)

    def fail_over(self, sig: int = signal.SIGKILL) -> BatonServer:
        self.a.stop(sig)
        if self.b is None:
            self.b = self.cluster.replica(self.url, self.args)
        self.proxy.set_upstream(self.b.addr)
        return self.b

    def close(self) -> None:
        """Stops the proxy and both replicas: each holds Postgres connections, and the
        shared server has only so many."""
        self.proxy.close()
        for srv in (self.a, self.b):
            if srv is not None:
                srv.stop()


@pytest.fixture(scope="session", params=BACKENDS)
def cluster(request: Any, tmp_path_factory: Any) -> Iterator[Cluster]:
    c = Cluster(request.param, tmp_path_factory.mktemp(request.param))
    yield c
    died = c.close()
    if died:
        pytest.fail("baton serve died during the session:\n" + "\n".join(died), pytrace=False)


@pytest.fixture(scope="session")
def secured(tmp_path_factory: Any) -> Secured:
    """Certificates and a tokens file for the TLS tests, made once per session."""
    return Secured(tmp_path_factory.mktemp("secured"))


class SecureServers:
    """Two servers of one backend serving TLS with tokens: `tls`, and `mtls`, which also
    requires a client certificate."""

    def __init__(self, cluster: Cluster, secured: Secured) -> None:
        self.tls = cluster.replica(cluster.own_url(), secured.args())
        self.mtls = cluster.replica(cluster.own_url(), secured.args(mtls=True))


@pytest.fixture(scope="session")
def secure_servers(cluster: Cluster, secured: Secured) -> SecureServers:
    return SecureServers(cluster, secured)


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
