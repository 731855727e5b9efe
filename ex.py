from baton_client import Client

with Client("127.0.0.1:50777", namespace="default") as baton:
    # At most one review per (worker, commit), however many triggers fire at once.
    run = baton.create_entity("review_run", dedup_key="worker-7:3f2a9c").entity
    # The lease renews itself in the background; its fence makes stale writers fail.
    with baton.lease(f"review/{run.id}", holder="worker-7", ttl_seconds=30) as lease:
        baton.transition(run.id, "start", fence=lease.fence())
        baton.append_events(run.id, [("progress", b"looking")], fence=lease.fence())
        baton.transition(run.id, "finish", fence=lease.fence(), final_payload=b"lgtm")
    for event in baton.stream_events(run.id):   # resumes on UNAVAILABLE, stops after final
        print(event.seq, event.type)

