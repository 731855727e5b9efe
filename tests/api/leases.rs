//! Leases over gRPC, both backends: I1, I2, I3, I10, waits, bad input.

use crate::both_backends;
use crate::helpers::*;
use baton::domain::names::{LeaseKey, Namespace};
use baton::domain::time::Clock;
use baton::proto;
use std::collections::HashSet;
use std::time::Duration;
use tonic::Code;

/// I1: 64 clients race for one key; exactly one is granted, all agree on holder and token.
async fn i1_sixty_four_clients_one_lease(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut tasks = vec![];
    for i in 0..64 {
        let mut c = app.client().await;
        tasks.push(tokio::spawn(async move {
            acquire(&mut c, "hot", &format!("h{i}"), 30).await
        }));
    }
    let mut results = vec![];
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results.iter().filter(|r| r.acquired).count(), 1);
    let views: HashSet<(String, u64)> = results
        .iter()
        .map(|r| r.lease.as_ref().map(|l| (l.holder.clone(), l.token)).unwrap())
        .collect();
    assert_eq!(views.len(), 1, "everyone sees the same lease: {views:?}");
    assert_eq!(views.into_iter().next().unwrap().1, 1);
}

/// I2: 1,000 acquire / expire / steal / release cycles across two server instances on one
/// database (Postgres; one instance on SQLite, its one-node shape): every grant is the
/// previous token + 1, never repeated. Expiry uses the shared injected clock, not sleeps.
async fn i2_tokens_strictly_increase_over_1000_cycles(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clock = Clock::system();
    let a = TestApp::start(&db, clock.clone()).await;
    let b = if backend == Backend::Postgres {
        Some(TestApp::start(&db, clock.clone()).await)
    } else {
        None
    };
    let mut clients = vec![a.client().await];
    if let Some(b) = &b {
        clients.push(b.client().await);
    }
    let mut last = 0u64;
    let mut held: Option<(usize, u64)> = None;
    for i in 0..1000usize {
        let c = i % clients.len();
        let holder = format!("h{i}");
        // Free the key one of three ways: release, expiry, or steal after expiry.
        match (i % 3, held.take()) {
            (0, Some((hc, token))) => {
                let r = clients[hc]
                    .release_lease(proto::ReleaseLeaseRequest {
                        namespace: NS.into(),
                        key: "k".into(),
                        token,
                        request_id: String::new(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(r.released);
            }
            (_, Some(_)) => clock.advance(Duration::from_secs(31)),
            (_, None) => {}
        }
        let r = acquire(&mut clients[c], "k", &holder, 30).await;
        assert!(r.acquired, "cycle {i}");
        let token = r.lease.unwrap().token;
        assert_eq!(token, last + 1, "cycle {i}: tokens increase by one, never repeat");
        last = token;
        held = Some((c, token));
    }
    assert_eq!(last, 1000);
}

/// I3: a holder whose lease expired and was taken over can neither renew nor write; the
/// new holder can. The losers learn the current token and holder from the error.
async fn i3_taken_over_holder_is_fenced_out(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    create(&mut c, "task", "t1").await;
    let old = acquire(&mut c, "task/t1", "old", 5).await.lease.unwrap();
    app.clock.advance(Duration::from_secs(6));
    let new = acquire(&mut c, "task/t1", "new", 5).await;
    assert!(new.acquired);
    let new = new.lease.unwrap();
    assert_eq!(new.token, old.token + 1);

    let renew = c
        .renew_lease(proto::RenewLeaseRequest {
            namespace: NS.into(),
            key: "task/t1".into(),
            token: old.token,
            ttl: secs(5),
            request_id: String::new(),
        })
        .await;
    let s = expect_err(renew, Code::FailedPrecondition, "LEASE_LOST");
    assert_eq!(meta(&s, "current_token"), Some(new.token.to_string()));
    assert_eq!(meta(&s, "current_holder"), Some("new".into()));

    let fence = |t: u64| {
        Some(proto::Fence {
            key: "task/t1".into(),
            token: t,
        })
    };
    let stale_append = c
        .append_events(proto::AppendEventsRequest {
            namespace: NS.into(),
            entity_id: "t1".into(),
            events: vec![ev("p", "x")],
            fence: fence(old.token),
            ..Default::default()
        })
        .await;
    expect_err(stale_append, Code::FailedPrecondition, "LEASE_LOST");
    let stale_transition = c
        .transition(proto::TransitionRequest {
            fence: fence(old.token),
            ..tr("t1", "start")
        })
        .await;
    expect_err(stale_transition, Code::FailedPrecondition, "LEASE_LOST");
    let stale_create = c
        .create_entity(proto::CreateEntityRequest {
            namespace: NS.into(),
            kind: "task".into(),
            fence: fence(old.token),
            ..Default::default()
        })
        .await;
    expect_err(stale_create, Code::FailedPrecondition, "LEASE_LOST");
    let entity = get_entity(&mut c, "t1").await;
    assert_eq!(
        (entity.state.as_str(), entity.version, entity.last_seq),
        ("pending", 1, 0),
        "nothing committed"
    );

    let ok = c
        .transition(proto::TransitionRequest {
            fence: fence(new.token),
            ..tr("t1", "start")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.applied);
    c.append_events(proto::AppendEventsRequest {
        namespace: NS.into(),
        entity_id: "t1".into(),
        events: vec![ev("p", "x")],
        fence: fence(new.token),
        ..Default::default()
    })
    .await
    .unwrap();
    // Once the new lease expires too, its token is as dead as the old one.
    app.clock.advance(Duration::from_secs(6));
    let late = c
        .transition(proto::TransitionRequest {
            fence: fence(new.token),
            ..tr("t1", "cancel")
        })
        .await;
    let s = expect_err(late, Code::FailedPrecondition, "LEASE_LOST");
    assert_eq!(meta(&s, "current_holder"), None);
}

/// A waiter parked on a held key is woken by the release (on any replica), not by polling.
async fn wait_is_granted_after_release(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    let held = acquire(&mut c, "w", "a", 60).await.lease.unwrap();
    let mut c2 = app.client().await;
    let started = tokio::time::Instant::now();
    let waiter = tokio::spawn(async move {
        c2.acquire_lease(proto::AcquireLeaseRequest {
            namespace: NS.into(),
            key: "w".into(),
            holder: "b".into(),
            ttl: secs(10),
            wait: secs(60),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
    });
    let (ns, key) = (
        Namespace::parse("n", NS.into()).unwrap(),
        LeaseKey::parse("k", "w".into()).unwrap(),
    );
    let mut waiting = app.coordinator.hub().watch_lease_waiters();
    tokio::time::timeout(Duration::from_secs(10), waiting.wait_for(|n| *n == 1))
        .await
        .expect("the waiter parks")
        .unwrap();
    assert_eq!(app.coordinator.hub().lease_waiters(&ns, &key), 1, "on this key");
    let released = c
        .release_lease(proto::ReleaseLeaseRequest {
            namespace: NS.into(),
            key: "w".into(),
            token: held.token,
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(released.released);
    let got = waiter.await.unwrap();
    assert!(got.acquired);
    assert_eq!(got.lease.unwrap().token, held.token + 1);
    // The 60 s TTL and 60 s wait were never run out: the release woke the waiter.
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// A waiter is granted at the holder's expiry (store time), timed by the expiry itself.
async fn wait_is_granted_after_expiry(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    let held = acquire(&mut c, "x", "a", 1).await.lease.unwrap();
    let started = tokio::time::Instant::now();
    let got = c
        .acquire_lease(proto::AcquireLeaseRequest {
            namespace: NS.into(),
            key: "x".into(),
            holder: "b".into(),
            ttl: secs(10),
            wait: secs(60),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(got.acquired);
    assert_eq!(got.lease.unwrap().token, held.token + 1);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "woken at expiry, not at the end of the wait"
    );
    // Without wait, a busy key answers at once with the holder.
    let busy = acquire(&mut c, "x", "c", 10).await;
    assert!(!busy.acquired);
    assert_eq!(busy.lease.unwrap().holder, "b");
}

/// I10: a retried acquire or release with the same request id is not applied twice.
async fn i10_retries_apply_once(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    let req = |rid: &str| proto::AcquireLeaseRequest {
        namespace: NS.into(),
        key: "r".into(),
        holder: "a".into(),
        ttl: secs(30),
        wait: None,
        request_id: rid.into(),
    };
    let first = c.acquire_lease(req("acq-1")).await.unwrap().into_inner();
    let rel = proto::ReleaseLeaseRequest {
        namespace: NS.into(),
        key: "r".into(),
        token: 1,
        request_id: "rel-1".into(),
    };
    assert!(c.release_lease(rel.clone()).await.unwrap().into_inner().released);
    // The retry of the acquire returns the first outcome; it does not take a new token.
    let again = c.acquire_lease(req("acq-1")).await.unwrap().into_inner();
    assert_eq!(again, first);
    let view = c
        .get_lease(proto::GetLeaseRequest {
            namespace: NS.into(),
            key: "r".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((view.lease, view.last_token), (None, 1));
    assert!(
        c.release_lease(rel).await.unwrap().into_inner().released,
        "the retried release reports its first outcome"
    );
    // A different call under a used id is refused.
    let reused = c
        .renew_lease(proto::RenewLeaseRequest {
            namespace: NS.into(),
            key: "r".into(),
            token: 1,
            ttl: secs(5),
            request_id: "acq-1".into(),
        })
        .await;
    expect_err(reused, Code::InvalidArgument, "REQUEST_ID_REUSED");
    // The same id with a different body is a different call, refused rather than
    // answered with the first call's outcome.
    let changed = c
        .acquire_lease(proto::AcquireLeaseRequest {
            holder: "someone-else".into(),
            ..req("acq-1")
        })
        .await;
    expect_err(changed, Code::InvalidArgument, "REQUEST_ID_REUSED");
    // A holder re-acquiring its live lease keeps the token (idempotent, TTL extended).
    let a = acquire(&mut c, "r", "a", 30).await.lease.unwrap();
    let b = acquire(&mut c, "r", "a", 30).await.lease.unwrap();
    assert_eq!(a.token, b.token);
    assert_eq!(a.token, 2);
}

/// Bad input is INVALID_ARGUMENT naming the field, never a panic.
async fn bad_lease_input_names_the_field(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    let base = proto::AcquireLeaseRequest {
        namespace: NS.into(),
        key: "k".into(),
        holder: "h".into(),
        ttl: secs(10),
        wait: None,
        request_id: String::new(),
    };
    let cases = vec![
        (
            proto::AcquireLeaseRequest {
                ttl: None,
                ..base.clone()
            },
            "ttl",
        ),
        (
            proto::AcquireLeaseRequest {
                ttl: secs(0),
                ..base.clone()
            },
            "ttl",
        ),
        (
            proto::AcquireLeaseRequest {
                ttl: secs(3601),
                ..base.clone()
            },
            "ttl",
        ),
        (
            proto::AcquireLeaseRequest {
                wait: secs(301),
                ..base.clone()
            },
            "wait",
        ),
        (
            proto::AcquireLeaseRequest {
                key: "k".repeat(257),
                ..base.clone()
            },
            "key",
        ),
        (
            proto::AcquireLeaseRequest {
                key: String::new(),
                ..base.clone()
            },
            "key",
        ),
        (
            proto::AcquireLeaseRequest {
                holder: "h".repeat(129),
                ..base.clone()
            },
            "holder",
        ),
        (
            proto::AcquireLeaseRequest {
                namespace: "Bad Namespace".into(),
                ..base.clone()
            },
            "namespace",
        ),
        (
            proto::AcquireLeaseRequest {
                request_id: "r".repeat(129),
                ..base.clone()
            },
            "request_id",
        ),
    ];
    for (req, field) in cases {
        let s = expect_err(c.acquire_lease(req).await, Code::InvalidArgument, "INVALID_ARGUMENT");
        assert_eq!(meta(&s, "field").as_deref(), Some(field), "{s:?}");
    }
    let s = expect_err(
        c.release_lease(proto::ReleaseLeaseRequest {
            namespace: NS.into(),
            key: "k".into(),
            token: 0,
            request_id: String::new(),
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(meta(&s, "field").as_deref(), Some("token"));
}

both_backends!(
    i1_sixty_four_clients_one_lease,
    i2_tokens_strictly_increase_over_1000_cycles,
    i3_taken_over_holder_is_fenced_out,
    wait_is_granted_after_release,
    wait_is_granted_after_expiry,
    i10_retries_apply_once,
    bad_lease_input_names_the_field,
);
