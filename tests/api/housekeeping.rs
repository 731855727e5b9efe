//! State timeouts, retention, `while_active` dedup keys and the operator's calls, on both
//! backends. Time is the injected clock: tests move it past a timeout instead of sleeping,
//! then make the housekeeper's pass (`Coordinator::run_due`) race itself and callers.

use crate::both_backends;
use crate::helpers::*;
use baton::domain::time::Clock;
use baton::proto;
use std::collections::BTreeSet;
use std::time::Duration;
use tonic::Code;

/// `approval`: awaiting_approval expires after 1 h. `job`: running idle for 1 h fails;
/// finished jobs are kept 10 minutes. `review`: one active review per dedup key.
const MACHINES: &str = r#"
[[machine]]
kind = "approval"
states = ["awaiting_approval", "approved", "expired"]
initial_state = "awaiting_approval"
terminal_states = ["approved", "expired"]
[[machine.transition]]
name = "approve"
from = ["awaiting_approval"]
to = "approved"
[[machine.transition]]
name = "expire"
from = ["awaiting_approval"]
to = "expired"
[[machine.timeout]]
state = "awaiting_approval"
after = "1h"
transition = "expire"

[[machine]]
kind = "job"
states = ["running", "failed", "done"]
initial_state = "running"
terminal_states = ["failed", "done"]
retain_after_final = "10m"
[[machine.transition]]
name = "finish"
from = ["running"]
to = "done"
[[machine.transition]]
name = "fail"
from = ["running"]
to = "failed"
[[machine.field_rule]]
field = "worker"
allowed_in = ["running"]
[[machine.timeout]]
state = "running"
after = "1h"
idle = true
transition = "fail"

[[machine]]
kind = "review"
states = ["reviewing", "done"]
initial_state = "reviewing"
terminal_states = ["done"]
dedup = "while_active"
[[machine.transition]]
name = "finish"
from = ["reviewing"]
to = "done"
"#;

fn specs() -> Vec<baton::domain::machine::MachineSpec> {
    #[derive(serde::Deserialize)]
    struct File {
        machine: Vec<baton::domain::machine::MachineSpec>,
    }
    toml::from_str::<File>(MACHINES).unwrap().machine
}

async fn define(c: &mut Client, spec: &baton::domain::machine::MachineSpec) -> Result<(), tonic::Status> {
    c.define_machine(proto::DefineMachineRequest {
        namespace: NS.into(),
        spec: Some(baton::grpc::convert::spec_to_proto(spec)),
    })
    .await
    .map(drop)
}

/// A server (two replicas on Postgres) on a fresh database with the machines above, and
/// the clock they share.
async fn replicas(backend: Backend) -> (TestDb, Vec<TestApp>, Clock) {
    let db = TestDb::new(backend).await;
    let clock = Clock::system();
    let mut apps = vec![TestApp::start(&db, clock.clone()).await];
    if backend == Backend::Postgres {
        apps.push(TestApp::start(&db, clock.clone()).await);
    }
    let mut c = apps[0].client().await;
    for spec in specs() {
        define(&mut c, &spec).await.unwrap();
    }
    (db, apps, clock)
}

/// Eight passes of the housekeeper at once, spread over the replicas.
async fn race_due(apps: &[TestApp]) {
    let passes: Vec<_> = (0..8)
        .map(|i| {
            let coordinator = apps[i % apps.len()].coordinator.clone();
            tokio::spawn(async move { coordinator.run_due().await })
        })
        .collect();
    for pass in passes {
        pass.await.unwrap().expect("a due pass");
    }
}

fn types(tape: &[proto::Event]) -> Vec<&str> {
    tape.iter().map(|e| e.r#type.as_str()).collect()
}

/// 40 approvals; 20 approved by a caller before the hour, 20 not. Past the hour, eight
/// passes race (and a caller approves 10 more at the same time): each expired approval
/// has exactly one timeout on its tape, and none that a caller moved first has any.
async fn a_timeout_fires_once_and_never_after_a_caller_moved_first(backend: Backend) {
    let (_db, apps, clock) = replicas(backend).await;
    let mut c = apps[0].client().await;
    for i in 0..40 {
        let e = create(&mut c, "approval", &format!("a{i}")).await;
        assert_eq!(e.state, "awaiting_approval");
    }
    for i in 0..20 {
        transition(&mut c, &format!("a{i}"), "approve").await;
    }
    clock.advance(Duration::from_secs(3600) + Duration::from_secs(1));
    // Callers race the housekeeper for a20..a29: either may win, never both.
    let callers: Vec<_> = (20..30)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move { c.transition(tr(&format!("a{i}"), "approve")).await })
        })
        .collect();
    race_due(&apps).await;
    let mut approved_by_caller = BTreeSet::new();
    for (i, call) in (20..30).zip(callers) {
        match call.await.unwrap() {
            Ok(_) => drop(approved_by_caller.insert(i)),
            Err(s) => assert_eq!(reason(&s), "INVALID_TRANSITION", "{s:?}"),
        }
    }
    for i in 0..40 {
        let id = format!("a{i}");
        let tape = read_tape(&mut c, &id).await;
        assert_complete(&tape, 0);
        let entity = get_entity(&mut c, &id).await;
        if i < 20 || approved_by_caller.contains(&i) {
            assert_eq!(entity.state, "approved", "{id}");
            assert_eq!(types(&tape), ["baton.transition", "final"], "{id}");
        } else {
            assert_eq!(entity.state, "expired", "{id}");
            assert_eq!(types(&tape), ["baton.transition", "baton.timeout", "final"], "{id}");
            let why: serde_json::Value = serde_json::from_slice(&tape[1].payload).unwrap();
            assert_eq!(why["state"], "awaiting_approval");
            assert_eq!(why["transition"], "expire");
            assert_eq!(why["after"], "1h");
        }
    }
}

/// An idle timeout counts from the last activity: an append puts it off, the housekeeper
/// looks too early, finds it not due, and fires it when it is. The failure clears the
/// fields the failed state forbids.
async fn an_idle_timeout_counts_from_the_last_activity(backend: Backend) {
    let (_db, apps, clock) = replicas(backend).await;
    let mut c = apps[0].client().await;
    let job = c
        .create_entity(proto::CreateEntityRequest {
            namespace: NS.into(),
            kind: "job".into(),
            id: "j1".into(),
            fields: [("worker".to_string(), "w-7".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entity
        .unwrap();
    assert_eq!(job.fields["worker"], "w-7");
    clock.advance(Duration::from_secs(40 * 60));
    append(&mut c, "j1", vec![ev("progress", "half")]).await.unwrap();
    clock.advance(Duration::from_secs(30 * 60));
    // 70 minutes after creation, 30 after the append: looked at, not due.
    race_due(&apps).await;
    assert_eq!(get_entity(&mut c, "j1").await.state, "running");
    clock.advance(Duration::from_secs(31 * 60));
    race_due(&apps).await;
    let failed = get_entity(&mut c, "j1").await;
    assert_eq!(failed.state, "failed");
    assert!(
        failed.fields.is_empty(),
        "I5: worker is cleared by the timeout's transition"
    );
    let tape = read_tape(&mut c, "j1").await;
    assert_eq!(types(&tape), ["progress", "baton.transition", "baton.timeout", "final"]);
}

/// A redefinition that adds a timeout schedules the entities already in that state; one
/// that takes it away leaves them alone.
async fn a_redefinition_reschedules_entities_in_the_state(backend: Backend) {
    let (_db, apps, clock) = replicas(backend).await;
    let mut c = apps[0].client().await;
    let approval = specs().remove(0);
    let without = baton::domain::machine::MachineSpec {
        timeouts: vec![],
        ..approval.clone()
    };
    define(&mut c, &without).await.unwrap();
    create(&mut c, "approval", "old").await;
    clock.advance(Duration::from_secs(2 * 3600));
    race_due(&apps).await;
    assert_eq!(get_entity(&mut c, "old").await.state, "awaiting_approval");
    // Now a timeout of 1 h: "old" entered the state two hours ago, so it is due at once.
    define(&mut c, &approval).await.unwrap();
    create(&mut c, "approval", "new").await;
    race_due(&apps).await;
    assert_eq!(get_entity(&mut c, "old").await.state, "expired");
    // Taken away again: "new" keeps its stale due time, which the housekeeper drops.
    define(&mut c, &without).await.unwrap();
    clock.advance(Duration::from_secs(2 * 3600));
    race_due(&apps).await;
    assert_eq!(get_entity(&mut c, "new").await.state, "awaiting_approval");
}

/// A server that starts after a timeout came due fires it at once (due times are stored,
/// never held in memory).
async fn a_server_started_past_the_due_time_fires_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let clock = Clock::system();
    let first = TestApp::start(&db, clock.clone()).await;
    let mut c = first.client().await;
    define(&mut c, &specs()[0]).await.unwrap();
    create(&mut c, "approval", "a1").await;
    first.stop().await.unwrap();
    clock.advance(Duration::from_secs(2 * 3600));
    let second = TestApp::start(&db, clock).await;
    let mut c = second.client().await;
    // The housekeeper's first pass runs at start: the stream ends once the timeout fired.
    let (tape, end) = collect_stream(&mut c, "a1", 0).await;
    end.unwrap();
    assert_eq!(types(&tape), ["baton.transition", "baton.timeout", "final"]);
}

/// Finished entities are deleted with their tapes once past `retain_after_final`; live
/// ones, younger finished ones and leases stay.
async fn retention_purges_only_what_finished_long_enough_ago(backend: Backend) {
    let (_db, apps, clock) = replicas(backend).await;
    let mut c = apps[0].client().await;
    let lease = acquire(&mut c, "job/old", "w-1", 3600).await;
    for id in ["old", "young", "live"] {
        create(&mut c, "job", id).await;
    }
    transition(&mut c, "old", "finish").await;
    clock.advance(Duration::from_secs(5 * 60));
    transition(&mut c, "young", "finish").await;
    append(&mut c, "live", vec![ev("progress", "1")]).await.unwrap();
    clock.advance(Duration::from_secs(6 * 60));
    race_due(&apps).await;
    for gone in [
        c.get_entity(proto::GetEntityRequest {
            namespace: NS.into(),
            id: "old".into(),
        })
        .await
        .map(drop),
        collect_stream(&mut c, "old", 0).await.1,
    ] {
        expect_err(gone, Code::NotFound, "ENTITY_NOT_FOUND");
    }
    assert_eq!(read_tape(&mut c, "young").await.len(), 2);
    assert_eq!(get_entity(&mut c, "live").await.state, "running");
    let held = c
        .get_lease(proto::GetLeaseRequest {
            namespace: NS.into(),
            key: "job/old".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.lease.unwrap().token, lease.lease.unwrap().token);
    // The id is free again.
    assert_eq!(create(&mut c, "job", "old").await.version, 1);
}

/// `while_active`: once the entity of a dedup key is finished, 64 concurrent creates make
/// exactly one new entity, and every caller gets it; the finished one gives the key up.
/// `forever` (the default): they all get the finished one.
async fn while_active_dedup_keys_are_free_once_finished(backend: Backend) {
    let (_db, apps, _clock) = replicas(backend).await;
    let mut c = apps[0].client().await;
    define_examples(&apps[0], NS).await;
    for (kind, finish) in [("review", "finish"), ("review_run", "abandon")] {
        let first = create_64(&c, kind).await;
        assert_eq!(first.iter().filter(|r| r.created).count(), 1, "{kind}");
        let old = first[0].entity.clone().unwrap();
        transition(&mut c, &old.id, finish).await;
        let second = create_64(&c, kind).await;
        let ids: BTreeSet<String> = second.iter().map(|r| r.entity.clone().unwrap().id).collect();
        assert_eq!(ids.len(), 1, "{kind}: every caller gets the one entity");
        if kind == "review" {
            assert_eq!(second.iter().filter(|r| r.created).count(), 1);
            assert_ne!(ids.first().unwrap(), &old.id, "a new entity");
            assert_eq!(
                get_entity(&mut c, &old.id).await.dedup_key,
                "",
                "the old one gave the key up"
            );
        } else {
            assert_eq!(second.iter().filter(|r| r.created).count(), 0);
            assert_eq!(ids.first().unwrap(), &old.id, "forever: the finished one");
        }
    }
}

/// 64 concurrent CreateEntity calls with one dedup key.
async fn create_64(c: &Client, kind: &'static str) -> Vec<proto::CreateEntityResponse> {
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move {
                c.create_entity(proto::CreateEntityRequest {
                    namespace: NS.into(),
                    kind: kind.into(),
                    dedup_key: "worker-7:3f2a9c".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
            })
        })
        .collect();
    let mut out = vec![];
    for call in calls {
        out.push(call.await.unwrap());
    }
    out
}

/// ForceReleaseLease fences the old holder out: its fenced write fails with LEASE_LOST and
/// the next grant's token is higher. ListLeases lists live leases by key prefix, in pages.
async fn force_release_fences_the_holder_out(backend: Backend) {
    let (_db, apps, _clock) = replicas(backend).await;
    let mut c = apps[0].client().await;
    create(&mut c, "job", "j1").await;
    let held = acquire(&mut c, "job/j1", "stuck-worker", 60).await.lease.unwrap();
    for k in ["job/j2", "job/j3", "other/x"] {
        acquire(&mut c, k, "w", 60).await;
    }
    let page = |prefix: &str, token: &str| proto::ListLeasesRequest {
        namespace: NS.into(),
        key_prefix: prefix.into(),
        page_size: 2,
        page_token: token.into(),
    };
    let first = c.list_leases(page("job/", "")).await.unwrap().into_inner();
    let keys: Vec<&str> = first.leases.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(keys, ["job/j1", "job/j2"]);
    assert_eq!(first.leases[0].holder, "stuck-worker");
    let second = c
        .list_leases(page("job/", &first.next_page_token))
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<&str> = second.leases.iter().map(|l| l.key.as_str()).collect();
    assert_eq!((keys, second.next_page_token.as_str()), (vec!["job/j3"], ""));

    let ended = c
        .force_release_lease(proto::ForceReleaseLeaseRequest {
            namespace: NS.into(),
            key: "job/j1".into(),
            by: "ops:alice".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ended.released);
    assert_eq!(ended.lease.unwrap().token, held.token);
    let fenced = c
        .transition(proto::TransitionRequest {
            fence: Some(proto::Fence {
                key: "job/j1".into(),
                token: held.token,
            }),
            ..tr("j1", "finish")
        })
        .await;
    expect_err(fenced, Code::FailedPrecondition, "LEASE_LOST");
    let next = acquire(&mut c, "job/j1", "new-worker", 60).await.lease.unwrap();
    assert!(next.token > held.token, "{} > {}", next.token, held.token);
    let again = c
        .force_release_lease(proto::ForceReleaseLeaseRequest {
            namespace: NS.into(),
            key: "nobody/holds".into(),
            by: "ops:alice".into(),
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.released && again.lease.is_none());
}

/// DeleteEntity deletes a finished entity (an active one only with force); ListMachines
/// pages through the namespace's machines; a timeout whose transition is not allowed from
/// its state is refused naming it.
async fn delete_entity_list_machines_and_spec_checks(backend: Backend) {
    let (_db, apps, _clock) = replicas(backend).await;
    let mut c = apps[0].client().await;
    create(&mut c, "job", "active").await;
    create(&mut c, "job", "done").await;
    transition(&mut c, "done", "finish").await;
    let delete = |id: &str, force: bool| proto::DeleteEntityRequest {
        namespace: NS.into(),
        entity_id: id.into(),
        force,
        request_id: String::new(),
    };
    let refused = expect_err(
        c.delete_entity(delete("active", false)).await,
        Code::FailedPrecondition,
        "ENTITY_ACTIVE",
    );
    assert_eq!(meta(&refused, "current_state").as_deref(), Some("running"));
    for id in ["done", "active"] {
        assert!(c.delete_entity(delete(id, true)).await.unwrap().into_inner().deleted);
        expect_err(
            c.delete_entity(delete(id, false)).await,
            Code::NotFound,
            "ENTITY_NOT_FOUND",
        );
    }

    let list = |token: &str| proto::ListMachinesRequest {
        namespace: NS.into(),
        page_size: 2,
        page_token: token.into(),
    };
    let first = c.list_machines(list("")).await.unwrap().into_inner();
    let second = c
        .list_machines(list(&first.next_page_token))
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<String> = first
        .machines
        .iter()
        .chain(&second.machines)
        .map(|m| m.spec.clone().unwrap().kind)
        .collect();
    assert_eq!(kinds, ["approval", "job", "review"]);
    assert_eq!(second.next_page_token, "");
    let approval = &first.machines[0].spec.clone().unwrap();
    assert_eq!(approval.timeouts[0].transition, "expire");
    assert_eq!(approval.timeouts[0].after, secs(3600));

    let mut bad = specs().remove(0);
    bad.timeouts[0].transition = "approve".into();
    bad.timeouts[0].state = "expired".into();
    let s = expect_err(define(&mut c, &bad).await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(meta(&s, "field").as_deref(), Some("spec.timeouts[0].state"));
    let mut bad = specs().remove(1);
    bad.timeouts[0].transition = "finish".into();
    bad.transitions[0].from = vec![];
    bad.transitions[0].stale_from = vec!["running".into()];
    bad.transitions[0].stale_after = Some(Duration::from_secs(7200));
    let s = expect_err(define(&mut c, &bad).await, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert_eq!(meta(&s, "field").as_deref(), Some("spec.timeouts[0].transition"));
}

/// A stream open on an entity deleted with force ends NOT_FOUND (at the next heartbeat's
/// sweep, on whichever replica it is).
async fn a_forced_delete_ends_open_streams_not_found(backend: Backend) {
    let db = TestDb::new(backend).await;
    let settings = baton::app::Settings {
        heartbeat: Duration::from_secs(1),
        ..test_settings(&db.url)
    };
    let app = TestApp::start_with(settings, Clock::system()).await;
    let mut c = app.client().await;
    define(&mut c, &specs()[1]).await.unwrap();
    create(&mut c, "job", "j1").await;
    append(&mut c, "j1", vec![ev("progress", "1")]).await.unwrap();
    let (seen, mut progress) = tokio::sync::watch::channel(0);
    let mut reader = c.clone();
    let stream = tokio::spawn(async move { collect_stream_reporting(&mut reader, "j1", 0, Some(seen)).await });
    progress.wait_for(|s| *s == 1).await.unwrap();
    let deleted = c
        .delete_entity(proto::DeleteEntityRequest {
            namespace: NS.into(),
            entity_id: "j1".into(),
            force: true,
            request_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted);
    let (events, end) = tokio::time::timeout(Duration::from_secs(30), stream)
        .await
        .expect("the stream ends within a few heartbeats")
        .unwrap();
    assert_eq!(events.len(), 1);
    expect_err(end, Code::NotFound, "ENTITY_NOT_FOUND");
}

both_backends!(
    a_forced_delete_ends_open_streams_not_found,
    a_timeout_fires_once_and_never_after_a_caller_moved_first,
    an_idle_timeout_counts_from_the_last_activity,
    a_redefinition_reschedules_entities_in_the_state,
    a_server_started_past_the_due_time_fires_it,
    retention_purges_only_what_finished_long_enough_ago,
    while_active_dedup_keys_are_free_once_finished,
    force_release_fences_the_holder_out,
    delete_entity_list_machines_and_spec_checks,
);
