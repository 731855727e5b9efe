"""S5 double trigger: 64 concurrent CreateEntity with one dedup key create one entity."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from helpers import spec_of

CALLERS = 64
CLIENTS = 8


def test_s5_concurrent_create_with_dedup_key_creates_one(client, make_client, machine_specs):
    spec = spec_of(machine_specs, "review_run")
    dedup = f"worker-7:{uuid.uuid4().hex}"
    clients = [make_client() for _ in range(CLIENTS)]
    start = threading.Barrier(CALLERS)

    def trigger(i):
        c = clients[i % CLIENTS]
        start.wait()
        return c.create_entity(spec.kind, dedup_key=dedup, fields={"trigger": str(i)})

    with ThreadPoolExecutor(CALLERS) as pool:
        results = list(pool.map(trigger, range(CALLERS)))

    created = [r for r in results if r.created]
    assert len(created) == 1, f"{len(created)} callers saw created: true"
    assert sum(not r.created for r in results) == CALLERS - 1
    ids = {r.entity.id for r in results}
    assert len(ids) == 1, f"callers got different entities: {ids}"
    winner = created[0].entity
    for r in results:
        assert r.entity.kind == spec.kind
        assert r.entity.dedup_key == dedup
        assert r.entity.state == spec.initial_state
        # Losers get the existing entity as created, not their own fields.
        assert dict(r.entity.fields) == dict(winner.fields)

    listed = [e for e in client.list_entities(spec.kind) if e.dedup_key == dedup]
    assert [e.id for e in listed] == [winner.id]

    # Another key is another entity.
    other = client.create_entity(spec.kind, dedup_key=dedup + "-other")
    assert other.created and other.entity.id != winner.id
