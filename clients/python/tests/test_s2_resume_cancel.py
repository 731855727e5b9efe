"""S2 resume / cancel: one shared "resumable" predicate (failed, paused, or running but
stale), exactly one of N concurrent resumes applies, a typed error names the current
state otherwise, and cancelling a finished run is an idempotent no-op."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from baton_client import BatonError, InvalidTransition, pb
from helpers import assert_sealed_tape, drive, find_transition, spec_of, tape

N = 16
CLIENTS = 4


@pytest.fixture
def run_spec(machine_specs):
    return spec_of(machine_specs, "workflow_run")


def resume_of(spec):
    return find_transition(spec, to="running", stale_from="running")


def cancel_of(spec):
    if "cancelled" in spec.states:
        return find_transition(spec, to="cancelled")
    return next(t for t in spec.transitions if t.noop_from and t.to in spec.terminal_states)


def run_in(client, spec, state) -> pb.Entity:
    run = client.create_entity(spec.kind).entity
    entity = drive(client, spec, run.id, [state])
    assert entity.state == state
    return entity


def race(make_client, entity_id, transition, n=N):
    """n concurrent identical transitions; returns a list of responses or BatonErrors."""
    clients = [make_client() for _ in range(CLIENTS)]
    start = threading.Barrier(n)

    def one(i):
        c = clients[i % CLIENTS]
        start.wait()
        try:
            return c.transition(entity_id, transition)
        except BatonError as err:
            return err

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def assert_not_resumable(err, state, version=None):
    assert isinstance(err, InvalidTransition), f"expected a typed error, got {err!r}"
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION, err
    assert err.metadata.get("current_state") == state, err
    if version is not None:
        assert err.metadata.get("version") == str(version), err


def unchanged(before: pb.Entity, after: pb.Entity):
    assert after.state == before.state
    assert after.version == before.version
    assert after.updated_at == before.updated_at, "updated_at must not change"
    assert after.last_activity_at == before.last_activity_at
    assert after.last_seq == before.last_seq
    assert dict(after.fields) == dict(before.fields)


@pytest.mark.parametrize("state", ["failed", "paused"])
def test_s2_concurrent_resume_applies_once(client, make_client, run_spec, state):
    resume = resume_of(run_spec)
    assert state in list(getattr(resume, "from"))
    run = run_in(client, run_spec, state)
    results = race(make_client, run.id, resume.name)
    applied = [r for r in results if isinstance(r, pb.TransitionResponse) and r.applied]
    errors = [r for r in results if isinstance(r, BatonError)]
    assert len(applied) == 1, results
    assert len(errors) == N - 1, results
    for err in errors:
        assert_not_resumable(err, "running")
    after = client.get_entity(run.id)
    assert after.state == "running" and after.version == run.version + 1


def test_s2_fresh_running_is_not_resumable(client, make_client, run_spec):
    resume = resume_of(run_spec)
    run = run_in(client, run_spec, "running")
    results = race(make_client, run.id, resume.name)
    for r in results:
        assert_not_resumable(r, "running", run.version)
    unchanged(run, client.get_entity(run.id))


def test_s2_stale_running_is_resumable(client, make_client, run_spec):
    """The same machine with the staleness threshold cut to 2 s (the example's is days)."""
    fast = pb.MachineSpec()
    fast.CopyFrom(run_spec)
    fast.kind = run_spec.kind + "_fast"
    for t in fast.transitions:
        if t.stale_from:
            t.stale_after.FromSeconds(2)
    client.define_machine(fast)
    resume = resume_of(fast)

    run = run_in(client, fast, "running")
    assert_not_resumable(_try(client, run.id, resume.name), "running")
    time.sleep(1.2)
    # An appended event is activity: it restarts the staleness clock.
    client.append_events(run.id, [("progress", "alive")])
    time.sleep(1.2)  # 2.4 s after the transition, 1.2 s after the event
    assert_not_resumable(_try(client, run.id, resume.name), "running")
    time.sleep(1.3)  # now 2.5 s after the last activity

    results = race(make_client, run.id, resume.name)
    applied = [r for r in results if isinstance(r, pb.TransitionResponse) and r.applied]
    assert len(applied) == 1, results
    for r in results:
        if isinstance(r, BatonError):
            assert_not_resumable(r, "running")  # fresh again after the one resume
        else:
            assert r.applied
    assert client.get_entity(run.id).version == run.version + 1


@pytest.mark.parametrize("state", ["completed", "cancelled"])
def test_s2_finished_run_cancel_is_noop_and_resume_is_typed_error(client, run_spec, state):
    resume, cancel = resume_of(run_spec), cancel_of(run_spec)
    assert state in run_spec.terminal_states
    assert state in cancel.noop_from, f"cancel must be a no-op on a finished run ({state})"
    run = run_in(client, run_spec, state)
    assert run.sealed

    resp = client.transition(run.id, cancel.name)
    assert not resp.applied
    assert list(resp.seqs) == []
    unchanged(run, resp.entity)
    unchanged(run, client.get_entity(run.id))

    assert_not_resumable(_try(client, run.id, resume.name), state, run.version)
    unchanged(run, client.get_entity(run.id))
    assert_sealed_tape(tape(client, run.id))


def test_s2_concurrent_cancel_applies_once(client, make_client, run_spec):
    cancel = cancel_of(run_spec)
    run = run_in(client, run_spec, "running")
    results = race(make_client, run.id, cancel.name)
    assert not [r for r in results if isinstance(r, BatonError)], results
    assert sum(r.applied for r in results) == 1, results
    events = tape(client, run.id)
    assert_sealed_tape(events)
    assert events[-1].state == cancel.to


def _try(client, entity_id, transition):
    try:
        return client.transition(entity_id, transition)
    except BatonError as err:
        return err
