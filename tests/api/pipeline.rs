//! The commit pipeline under contention: batches of several replicas whose key sets cross.

use crate::both_backends;
use crate::helpers::*;
use baton::proto;

/// Two replicas, 32 clients at once, commands whose key sets cross: a fenced append locks
/// its entity and, shared, another entity's lease key, which renewals of that lease lock
/// exclusively — on both replicas. No call may fail (no deadlock, no lock timeout), and the
/// counts are exact.
async fn crossing_keys_on_two_replicas_never_deadlock(backend: Backend) {
    assert_eq!(backend, Backend::Postgres);
    let (_db, a, b) = spawn_two_replicas().await;
    let mut c = a.client().await;
    let mut tokens = vec![];
    for i in 0..4 {
        create(&mut c, "task", &format!("e{i}")).await;
        transition(&mut c, &format!("e{i}"), "start").await;
        tokens.push(acquire(&mut c, &format!("k{i}"), "h", 3600).await.lease.unwrap().token);
    }
    const ROUNDS: u64 = 20;
    let mut clients = vec![];
    for n in 0..32usize {
        let mut c = if n % 2 == 0 { a.client().await } else { b.client().await };
        let (entity, fence) = (n % 4, (n + 1) % 4);
        let tokens = tokens.clone();
        clients.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                c.append_events(proto::AppendEventsRequest {
                    namespace: NS.into(),
                    entity_id: format!("e{entity}"),
                    events: vec![ev("progress", "x")],
                    fence: Some(proto::Fence {
                        key: format!("k{fence}"),
                        token: tokens[fence],
                    }),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|s| panic!("append on e{entity} fenced by k{fence}: {s:?}"));
                c.renew_lease(proto::RenewLeaseRequest {
                    namespace: NS.into(),
                    key: format!("k{entity}"),
                    token: tokens[entity],
                    ttl: secs(3600),
                    request_id: String::new(),
                })
                .await
                .unwrap_or_else(|s| panic!("renew k{entity}: {s:?}"));
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    for i in 0..4 {
        let e = get_entity(&mut c, &format!("e{i}")).await;
        assert_eq!(
            e.last_seq,
            1 + 8 * ROUNDS,
            "e{i}: the start, then 8 clients × {ROUNDS} appends"
        );
    }
    let deferred = |app: &TestApp| {
        app.coordinator
            .pipeline_stats()
            .deferred
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    eprintln!(
        "commands put off for a key held by the other replica: {} + {}",
        deferred(&a),
        deferred(&b)
    );
}

both_backends!(postgres_only: crossing_keys_on_two_replicas_never_deadlock);

/// A hot key's calls commit together, in arrival order: while one batch is in flight (held
/// here by a pause after its commit), 63 more appends to the same entity arrive; they all
/// go in the next batch, each seeing the one before it.
async fn a_hot_key_commits_in_one_batch(backend: Backend) {
    use std::sync::atomic::Ordering::Relaxed;
    let db = TestDb::new(backend).await;
    let wiring = baton::app::Wiring {
        faults: baton::faults::Faults {
            pause_after_commit: Some(std::time::Duration::from_millis(500)),
            ..Default::default()
        },
        ..Default::default()
    };
    let app = TestApp::start_wired(test_settings(&db.url), wiring).await;
    define_examples(&app, NS).await;
    let mut c = app.client().await;
    create(&mut c, "task", "hot").await;
    transition(&mut c, "hot", "start").await;
    let mut clients = vec![];
    for _ in 0..64 {
        clients.push(app.client().await);
    }
    let stats = app.coordinator.pipeline_stats().clone();
    let (batches, commands) = (stats.batches.load(Relaxed), stats.commands.load(Relaxed));
    let mut first = clients.pop().unwrap();
    let first = tokio::spawn(async move { append(&mut first, "hot", vec![ev("progress", "p")]).await.unwrap().seqs });
    // The first batch has begun once its lane holds it; the rest arrive meanwhile.
    let mut calls = vec![];
    for mut c in clients {
        calls.push(tokio::spawn(async move {
            append(&mut c, "hot", vec![ev("progress", "p")]).await.unwrap().seqs
        }));
    }
    let mut seqs = first.await.unwrap();
    for call in calls {
        seqs.extend(call.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (2..=65).collect::<Vec<_>>(),
        "each append got its own seq, one gapless run"
    );
    let batches = stats.batches.load(Relaxed) - batches;
    let commands = stats.commands.load(Relaxed) - commands;
    assert_eq!(commands, 64);
    assert!(
        batches <= 3,
        "64 appends took {batches} batches: the 63 that waited go together"
    );
}

both_backends!(a_hot_key_commits_in_one_batch);
