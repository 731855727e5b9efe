"""token=, https:// and mTLS options, seen on the wire by a forwarder in front of a real
baton (see tls_helpers.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

import baton_client
from baton_client import AsyncClient, Client, RetryPolicy
from conftest import CHANNEL_OPTIONS, Cluster
from tls_helpers import Forwarder, make_certs

FAIL_FAST = RetryPolicy(max_attempts=2, initial_backoff=0.05)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: Any) -> Dict[str, Path]:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def forwarders(cluster: Cluster) -> Iterator[Any]:
    made = []

    def make(**kw: Any) -> Forwarder:
        f = Forwarder(cluster.main.addr, **kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def _calls(client: Client) -> None:
    task = client.create_entity("task").entity
    client.transition(task.id, "cancel")
    assert [e.type for e in client.stream_events(task.id)] == ["baton.transition", "final"]


def test_token_is_sent_on_every_call(forwarders: Any, client: Client, namespace: str) -> None:
    fwd = forwarders()
    with Client(f"http://127.0.0.1:{fwd.port}", namespace, token="s3cret-token") as c:
        _calls(c)
    assert [m for m, _ in fwd.seen] == ["CreateEntity", "Transition", "StreamEvents"]
    assert all(md.get("authorization") == "Bearer s3cret-token" for _, md in fwd.seen), fwd.seen
    fwd.seen.clear()
    with Client(f"127.0.0.1:{fwd.port}", namespace) as c:
        c.get_lease("k")
    assert fwd.seen and "authorization" not in fwd.seen[0][1]


def test_https_target_means_tls_verified_against_ca_file(forwarders: Any, certs: Dict[str, Path], client: Client, namespace: str) -> None:
    fwd = forwarders(certs=certs)
    with Client(f"https://127.0.0.1:{fwd.port}", namespace, ca_file=certs["ca"], token="t") as c:
        _calls(c)
    assert len(fwd.seen) == 3 and fwd.seen[0][1]["authorization"] == "Bearer t"
    # Plaintext to a TLS port, and TLS without trusting the CA, both fail.
    with Client(f"127.0.0.1:{fwd.port}", namespace, timeout=3, retry=FAIL_FAST, options=CHANNEL_OPTIONS) as c:
        with pytest.raises(baton_client.Unavailable):
            c.get_lease("k")
    with Client(f"https://127.0.0.1:{fwd.port}", namespace, timeout=3, retry=FAIL_FAST, options=CHANNEL_OPTIONS) as c:
        with pytest.raises(baton_client.Unavailable):
            c.get_lease("k")
    assert len(fwd.seen) == 3


def test_mtls_with_cert_file_and_key_file(forwarders: Any, certs: Dict[str, Path], client: Client, namespace: str) -> None:
    fwd = forwarders(certs=certs, mtls=True)
    with Client(
        f"https://127.0.0.1:{fwd.port}", namespace, ca_file=certs["ca"], cert_file=certs["client"], key_file=certs["client_key"]
    ) as c:
        _calls(c)
    with Client(f"https://127.0.0.1:{fwd.port}", namespace, ca_file=certs["ca"], timeout=3, retry=FAIL_FAST, options=CHANNEL_OPTIONS) as c:
        with pytest.raises(baton_client.Unavailable):
            c.get_lease("k")
    assert len(fwd.seen) == 3

    async def aio() -> None:
        async with AsyncClient(
            f"https://127.0.0.1:{fwd.port}", namespace, ca_file=certs["ca"], cert_file=certs["client"],
            key_file=certs["client_key"], token="aio-token",
        ) as c:  # fmt: skip
            task = (await c.create_entity("task")).entity
            await c.transition(task.id, "cancel")
            assert [e.type async for e in c.stream_events(task.id)] == ["baton.transition", "final"]

    asyncio.run(aio())
    assert [md.get("authorization") for _, md in fwd.seen[3:]] == ["Bearer aio-token"] * 3
