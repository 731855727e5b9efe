"""Find transitions by their states, so the scenarios follow whatever
examples/machines.toml names them; tape assertions."""

from __future__ import annotations

from collections import deque
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from baton_client import Client, pb


def spec_of(specs: Sequence[pb.MachineSpec], kind: str) -> pb.MachineSpec:
    for spec in specs:
        if spec.kind == kind:
            return spec
    raise AssertionError(f"no machine of kind {kind!r} in the machines file")


def from_states(t: pb.TransitionSpec) -> List[str]:
    return list(getattr(t, "from"))


def find_transition(
    spec: pb.MachineSpec,
    *,
    to: Optional[str] = None,
    from_state: Optional[str] = None,
    stale_from: Optional[str] = None,
    noop_from: Optional[str] = None,
) -> pb.TransitionSpec:
    hits = [
        t
        for t in spec.transitions
        if (to is None or t.to == to)
        and (from_state is None or from_state in from_states(t))
        and (stale_from is None or stale_from in t.stale_from)
        and (noop_from is None or noop_from in t.noop_from)
    ]
    assert hits, f"machine {spec.kind!r} has no transition to={to} from={from_state} stale_from={stale_from}"
    return hits[0]


def path(spec: pb.MachineSpec, start: str, goal: Iterable[str]) -> List[str]:
    """Shortest list of transition names from `start` to any goal state (`from` edges)."""
    goals = set(goal)
    if start in goals:
        return []
    seen = {start}
    queue: deque[Tuple[str, List[str]]] = deque([(start, [])])
    while queue:
        state, names = queue.popleft()
        for t in spec.transitions:
            if state in from_states(t) and t.to not in seen:
                if t.to in goals:
                    return names + [t.name]
                seen.add(t.to)
                queue.append((t.to, names + [t.name]))
    raise AssertionError(f"machine {spec.kind!r}: no path from {start!r} to {sorted(goals)}")


def drive(client: Client, spec: pb.MachineSpec, entity_id: str, goal: Iterable[str], **kw: Any) -> pb.Entity:
    entity = client.get_entity(entity_id)
    for name in path(spec, entity.state, goal):
        resp = client.transition(entity_id, name, **kw)
        assert resp.applied, f"{name} not applied on {entity_id}"
        entity = resp.entity
    return entity


def tape(client: Client, entity_id: str, after_seq: int = 0) -> List[pb.Event]:
    return list(client.stream_events(entity_id, after_seq))


def assert_sealed_tape(events: Sequence[pb.Event], after_seq: int = 0) -> None:
    """Gapless seqs after_seq+1..n, exactly one `final`, and it is the last event."""
    seqs = [e.seq for e in events]
    assert seqs == list(range(after_seq + 1, after_seq + 1 + len(events))), f"gaps/dups: {seqs}"
    finals = [e for e in events if e.type == "final"]
    assert len(finals) == 1, f"{len(finals)} final events in {[(e.seq, e.type) for e in events]}"
    assert events[-1].type == "final", f"last event is {events[-1].type!r}, not final"


def lease_renews_and_fences(client: Client) -> None:
    """A lease (TTL 1.5 s, renewed every 0.3 s) lives through two TTLs on renewals alone,
    fences a transition, and is released on exit."""
    task = client.create_entity("task").entity
    key = f"task:{task.id}"
    with client.lease(key, "worker", ttl=1.5, renew_interval=0.3) as lease:
        assert not lease.wait_lost(3.0), lease.lost_cause
        assert lease.renewals >= 6, lease.renewals
        assert client.get_lease(key).lease.token == lease.token
        resp = lease.transition(task.id, "start", events=[("progress", "mine")])
        assert resp.applied and len(resp.seqs) == 2
    assert not client.get_lease(key).HasField("lease"), "released on exit"
