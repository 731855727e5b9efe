"""token=, https:// and mTLS against a real secured `baton serve` (TLS, a tokens file,
client certificates; see tls_helpers.py), for the sync and the asyncio client. A call
that succeeds proves the token went with it: the server refuses calls without one."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Awaitable, Callable, Iterator, List, Optional, Type, TypeVar

import grpc
import pytest

import baton_client
from baton_client import AsyncClient, BatonError, Client
from conftest import CHANNEL_OPTIONS, SecureServers
from harness import BatonServer
from helpers import lease_renews_and_fences
from tls_helpers import Secured

#: A client that cannot connect must say so within this long (default timeout and retries).
FAILS_WITHIN = 10.0

E = TypeVar("E", bound=BatonError)


class Secure:
    """Clients of the secured servers in this test's namespace, where the machines are
    defined (with the admin token) on both servers."""

    def __init__(self, servers: SecureServers, secured: Secured, namespace: str, machine_specs: Any) -> None:
        self.servers = servers
        self.secured = secured
        self.namespace = namespace
        self._clients: List[Client] = []
        self.client(servers.tls, "admin").apply_machines(machine_specs)
        self.client(servers.mtls, "admin", cert=True).apply_machines(machine_specs)

    def kw(self, token: Optional[str] = "writer", *, cert: bool = False, **kw: Any) -> Any:
        kw.setdefault("options", CHANNEL_OPTIONS)
        return {**self.secured.client_kw(token, cert=cert), **kw}

    def client(self, server: BatonServer, token: Optional[str] = "writer", *, cert: bool = False, ns: str = "", **kw: Any) -> Client:
        c = Client(f"https://{server.addr}", ns or self.namespace, **self.kw(token, cert=cert, **kw))
        self._clients.append(c)
        return c

    def aio(self, server: BatonServer, token: Optional[str] = "writer", *, cert: bool = False, ns: str = "", **kw: Any) -> AsyncClient:
        """An asyncio client (make it inside the event loop; `async with` closes it)."""
        return AsyncClient(f"https://{server.addr}", ns or self.namespace, **self.kw(token, cert=cert, **kw))

    def close(self) -> None:
        for c in self._clients:
            c.close()


@pytest.fixture
def secure(secure_servers: SecureServers, secured: Secured, namespace: str, machine_specs: Any) -> Iterator[Secure]:
    s = Secure(secure_servers, secured, namespace, machine_specs)
    yield s
    s.close()


def _round_trip(c: Client) -> None:
    task = c.create_entity("task").entity
    c.transition(task.id, "start")
    c.append_events(task.id, [("progress", "over tls")])
    c.transition(task.id, "succeed", final_payload=b"ok")
    events = list(c.stream_events(task.id))
    assert [(e.seq, e.type) for e in events] == [(1, "baton.transition"), (2, "progress"), (3, "baton.transition"), (4, "final")]
    assert events[-1].payload == b"ok"


async def _aio_round_trip(c: AsyncClient) -> None:
    task = (await c.create_entity("task")).entity
    await c.transition(task.id, "start")
    await c.append_events(task.id, [("progress", "over tls")])
    await c.transition(task.id, "succeed", final_payload=b"ok")
    events = [e async for e in c.stream_events(task.id)]
    assert [(e.seq, e.type) for e in events] == [(1, "baton.transition"), (2, "progress"), (3, "baton.transition"), (4, "final")]


def _raises(cls: Type[E], call: Callable[[], Any]) -> E:
    """The error `call` raises, which must be a `cls`, within FAILS_WITHIN seconds."""
    started = time.monotonic()
    with pytest.raises(cls) as ei:
        call()
    took = time.monotonic() - started
    assert took < FAILS_WITHIN, f"{cls.__name__} after {took:.1f} s"
    return ei.value


async def _aio_raises(cls: Type[E], call: Callable[[], Awaitable[Any]]) -> E:
    """The error awaiting `call()` raises, which must be a `cls`, within FAILS_WITHIN seconds."""
    with pytest.raises(cls) as ei:
        await asyncio.wait_for(call(), FAILS_WITHIN)
    return ei.value


def test_https_with_ca_file_and_token_round_trip(secure: Secure) -> None:
    """create, transition, append and a stream to `final`, over TLS with a write token,
    from the sync and the asyncio client."""
    _round_trip(secure.client(secure.servers.tls))

    async def aio() -> None:
        async with secure.aio(secure.servers.tls) as c:
            await _aio_round_trip(c)

    asyncio.run(aio())


def test_mtls_client_certificate_stands_for_the_caller_without_a_token(secure: Secure) -> None:
    """The client certificate's CN is an [[identity]] of the tokens file: with it and no
    token, calls work and are held to its grant. Without a certificate the server ends
    the handshake: an error, at once."""
    mtls = secure.servers.mtls
    worker = secure.client(mtls, None, cert=True)
    _round_trip(worker)
    elsewhere = "u-" + uuid.uuid4().hex[:12]
    denied = _raises(baton_client.PermissionDenied, lambda: secure.client(mtls, None, cert=True, ns=elsewhere).get_lease("k"))
    assert denied.namespace == elsewhere

    no_cert = _raises(baton_client.Unavailable, lambda: secure.client(mtls, "admin").get_lease("k"))
    assert not no_cert.is_baton

    async def aio() -> None:
        async with secure.aio(mtls, None, cert=True) as c:
            await _aio_round_trip(c)
        async with secure.aio(mtls, "admin") as c:
            await _aio_raises(baton_client.Unavailable, lambda: c.get_lease("k"))

    asyncio.run(aio())


def test_missing_or_wrong_token_is_unauthenticated(secure: Secure) -> None:
    """No token, an unknown one: UNAUTHENTICATED with its ErrorInfo, on unary calls and on
    streams (which end with it instead of resuming). The server's message tells whether a
    token came: without one the client sends no authorization header."""
    tls = secure.servers.tls
    task = secure.client(tls).create_entity("task").entity
    for token in (None, "bt_not-a-token"):
        c = Client(f"https://{tls.addr}", secure.namespace, ca_file=secure.secured.certs["ca"], token=token)
        try:
            err = _raises(baton_client.Unauthenticated, lambda: c.get_entity(task.id))
            assert err.code == grpc.StatusCode.UNAUTHENTICATED and err.reason == "UNAUTHENTICATED" and err.is_baton
            assert ("no credentials" in err.message) == (token is None), err.message
            _raises(baton_client.Unauthenticated, lambda: c.create_entity("task"))
            _raises(baton_client.Unauthenticated, lambda: list(c.stream_events(task.id)))
        finally:
            c.close()

    async def aio() -> None:
        for token in (None, "bt_not-a-token"):
            async with AsyncClient(f"https://{tls.addr}", secure.namespace, ca_file=secure.secured.certs["ca"], token=token) as c:
                err = await _aio_raises(baton_client.Unauthenticated, lambda: c.transition(task.id, "start"))
                assert err.reason == "UNAUTHENTICATED"

                async def stream() -> None:
                    _ = [e async for e in c.stream_events(task.id)]

                await _aio_raises(baton_client.Unauthenticated, stream)

    asyncio.run(aio())
    assert secure.client(tls).get_entity(task.id).version == 1, "nothing was written"


def test_a_grant_is_held_to_its_namespaces_and_role(secure: Secure) -> None:
    """A token for the test's namespaces used in another: PERMISSION_DENIED naming that
    namespace. A read token that writes: PERMISSION_DENIED naming the role it needs."""
    tls = secure.servers.tls
    elsewhere = "u-" + uuid.uuid4().hex[:12]
    other = secure.client(tls, ns=elsewhere)
    err = _raises(baton_client.PermissionDenied, lambda: other.create_entity("task"))
    assert err.code == grpc.StatusCode.PERMISSION_DENIED and err.is_baton
    assert err.namespace == elsewhere and err.needs_role is None
    _raises(baton_client.PermissionDenied, lambda: list(other.stream_events("any")))

    reader = secure.client(tls, "reader")
    low = _raises(baton_client.PermissionDenied, lambda: reader.create_entity("task"))
    assert (low.namespace, low.needs_role) == (secure.namespace, "write")
    assert not reader.get_lease("k").HasField("lease"), "reads are allowed"

    async def aio() -> None:
        async with secure.aio(tls, ns=elsewhere) as c:
            denied = await _aio_raises(baton_client.PermissionDenied, lambda: c.get_lease("k"))
            assert denied.metadata == {"namespace": elsewhere}

    asyncio.run(aio())


def test_plaintext_or_untrusting_client_against_the_tls_port_fails_within_seconds(secure: Secure) -> None:
    """http:// against the TLS port, and https:// without trusting the test CA: a clean
    error (UNAVAILABLE, no baton answer) within seconds, with the default retries."""
    addr = secure.servers.tls.addr
    token = secure.secured.tokens["writer"]
    for target in (f"http://{addr}", f"https://{addr}"):
        with Client(target, secure.namespace, token=token) as c:
            err = _raises(baton_client.Unavailable, lambda: c.get_lease("k"))
            assert not err.is_baton

    async def aio() -> None:
        async with AsyncClient(f"http://{addr}", secure.namespace, token=token) as c:
            await _aio_raises(baton_client.Unavailable, lambda: c.get_lease("k"))

    asyncio.run(aio())


def test_lease_renews_over_tls_with_a_token(secure: Secure) -> None:
    """Each renewal carries the token (without it the server would refuse it and the lease
    would be lost): two TTLs pass on renewals alone, and fenced writes go through."""
    lease_renews_and_fences(secure.client(secure.servers.tls))
