"""S1 approvals: one parked session, many concurrent wakes; exactly one executes the
pending tool calls, and a holder whose lease was taken over cannot commit anything."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from baton_client import InvalidTransition, LeaseLost, LeaseNotAcquired, pb
from helpers import assert_sealed_tape, drive, find_transition, path, spec_of, tape

PENDING_TOOL_CALLS = ["call-1", "call-2", "call-3"]
WAKES = 32
CLIENTS = 8


def parked_session(client, spec):
    session = client.create_entity(spec.kind).entity
    entity = drive(client, spec, session.id, ["awaiting_approval"])
    assert entity.state == "awaiting_approval"
    return entity


def test_s1_concurrent_wakes_execute_tool_calls_once(client, make_client, machine_specs):
    spec = spec_of(machine_specs, "agent_session")
    approve = find_transition(spec, from_state="awaiting_approval", to="executing")
    finish = path(spec, "executing", spec.terminal_states)
    session = parked_session(client, spec)
    key = f"session:{session.id}"
    clients = [make_client() for _ in range(CLIENTS)]
    start = threading.Barrier(WAKES)
    lost_race_states = []

    def wake(i: int) -> str:
        c = clients[i % CLIENTS]
        start.wait()
        try:
            # Half the wakes give up at once, half wait for the lease to be free.
            with c.lease(key, f"wake-{i}", ttl=10, wait=5 if i % 2 else 0) as lease:
                try:
                    lease.transition(session.id, approve.name)
                except InvalidTransition as err:
                    lost_race_states.append(err.current_state)
                    return "not-awaiting-approval"
                for call in PENDING_TOOL_CALLS:  # the side effects, once
                    lease.append_events(session.id, [("tool_executed", {"tool_call": call})])
                for n, name in enumerate(finish, 1):
                    last = n == len(finish)
                    lease.transition(session.id, name, final_payload={"turn": "end"} if last else None)
                return "executed"
        except LeaseNotAcquired:
            return "lease-busy"

    with ThreadPoolExecutor(WAKES) as pool:
        outcomes = Counter(pool.map(wake, range(WAKES)))

    assert outcomes["executed"] == 1, outcomes
    assert sum(outcomes.values()) == WAKES
    assert set(outcomes) <= {"executed", "lease-busy", "not-awaiting-approval"}, outcomes
    # Whoever got the lease after the winner saw the state it left, with the typed error.
    assert all(s and s != "awaiting_approval" for s in lost_race_states), lost_race_states

    events = tape(client, session.id)
    assert_sealed_tape(events)
    kinds = Counter(e.type for e in events)
    assert kinds["tool_executed"] == 3, kinds
    assert kinds["final"] == 1, kinds
    assert events[-1].state in spec.terminal_states
    entity = client.get_entity(session.id)
    assert entity.sealed and entity.last_seq == events[-1].seq
    assert not client.get_lease(key).HasField("lease"), "the winner released its lease"


def test_s1_expired_holder_is_fenced_out(client, machine_specs):
    spec = spec_of(machine_specs, "agent_session")
    approve = find_transition(spec, from_state="awaiting_approval", to="executing")
    session = parked_session(client, spec)
    key = f"session:{session.id}"

    a = client.acquire_lease(key, "holder-a", ttl=1)
    assert a.acquired and a.lease.token >= 1
    busy = client.acquire_lease(key, "holder-b", ttl=10)
    assert not busy.acquired
    assert busy.lease.holder == "holder-a" and busy.lease.token == a.lease.token

    # holder-a "crashes" (stops renewing); holder-b waits, and is woken at its expiry.
    b = client.acquire_lease(key, "holder-b", ttl=10, wait=5)
    assert b.acquired, b
    assert b.lease.token > a.lease.token, "a recovered lease gets a higher token"
    got = client.get_lease(key)
    assert got.lease.holder == "holder-b" and got.last_token == b.lease.token

    stale = client.get_entity(session.id)
    for attempt in (
        lambda: client.transition(session.id, approve.name, fence=_fence(key, a.lease.token)),
        lambda: client.append_events(session.id, ["tool_executed"], fence=_fence(key, a.lease.token)),
        lambda: client.renew_lease(key, a.lease.token, 10),
    ):
        with pytest.raises(LeaseLost) as ei:
            attempt()
        err = ei.value
        assert err.code == grpc.StatusCode.FAILED_PRECONDITION, err
        assert err.is_baton and not err.local, err
    # The fenced-write errors name the current lease.
    with pytest.raises(LeaseLost) as ei:
        client.transition(session.id, approve.name, fence=_fence(key, a.lease.token))
    assert ei.value.metadata.get("current_token") == str(b.lease.token), ei.value
    assert ei.value.metadata.get("current_holder") == "holder-b", ei.value

    after = client.get_entity(session.id)
    assert (after.state, after.version, after.last_seq) == (stale.state, stale.version, stale.last_seq)
    assert not client.release_lease(key, a.lease.token).released

    # The new holder commits.
    resp = client.transition(session.id, approve.name, fence=_fence(key, b.lease.token))
    assert resp.applied and resp.entity.state == "executing"
    assert client.release_lease(key, b.lease.token).released


def test_s1_waiter_takes_over_crashed_holder_after_ttl(client):
    key = f"session:{uuid.uuid4().hex}"
    crashed = client.acquire_lease(key, "crashed", ttl=1)
    assert crashed.acquired
    t0 = time.monotonic()
    waiter = client.acquire_lease(key, "waiter", ttl=5, wait=4)
    waited = time.monotonic() - t0
    assert waiter.acquired, waiter
    assert waiter.lease.token > crashed.lease.token
    assert 0.5 < waited < 3.5, f"waiter should be woken at the holder's expiry, waited {waited:.2f}s"


def test_lease_tokens_strictly_increase(client):
    key = f"k-{uuid.uuid4().hex}"
    tokens = []
    for i in range(5):
        resp = client.acquire_lease(key, f"h{i}", ttl=5)
        assert resp.acquired
        tokens.append(resp.lease.token)
        assert client.release_lease(key, resp.lease.token).released
        assert not client.release_lease(key, resp.lease.token).released, "release is idempotent"
    assert tokens == sorted(set(tokens)), tokens


def test_lease_reacquire_by_holder_is_idempotent(client):
    key = f"k-{uuid.uuid4().hex}"
    first = client.acquire_lease(key, "me", ttl=5)
    again = client.acquire_lease(key, "me", ttl=20)
    assert first.acquired and again.acquired
    assert again.lease.token == first.lease.token
    assert again.lease.expires_at.ToDatetime() > first.lease.expires_at.ToDatetime()


def test_lease_context_manager_raises_when_held(client):
    key = f"k-{uuid.uuid4().hex}"
    with client.lease(key, "owner", ttl=10):
        with pytest.raises(LeaseNotAcquired) as ei:
            with client.lease(key, "intruder", ttl=10):
                pytest.fail("must not enter")
        assert ei.value.current_holder == "owner"
        assert "owner" in str(ei.value)


def _fence(key: str, token: int) -> pb.Fence:
    return pb.Fence(key=key, token=token)
