//! Machines, entities and Transition over gRPC, both backends: I4, I5, I9, I10, S2, S3, S5.

use crate::both_backends;
use crate::helpers::*;
use baton::proto;
use std::collections::HashSet;
use std::time::Duration;
use tonic::Code;

/// Runs `n` concurrent copies of a transition, each on its own connection; returns the
/// applied count and the error statuses.
async fn race(app: &TestApp, n: usize, req: proto::TransitionRequest) -> (usize, Vec<tonic::Status>) {
    let mut tasks = vec![];
    for _ in 0..n {
        let mut c = app.client().await;
        let req = req.clone();
        tasks.push(tokio::spawn(
            async move { c.transition(req).await.map(|r| r.into_inner()) },
        ));
    }
    let (mut applied, mut errors) = (0, vec![]);
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) if r.applied => applied += 1,
            Ok(r) => panic!("unexpected no-op: {r:?}"),
            Err(s) => errors.push(s),
        }
    }
    (applied, errors)
}

/// S2: 32 concurrent resumes on runs in every state. Exactly one applies where the run is
/// resumable (failed, paused, stale running); none on fresh running or finished runs, and
/// every loser is told the current state. Cancel on a finished run changes nothing.
async fn s2_resume_races_and_idempotent_cancel(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    // The stale run goes first, then the clock moves 73 h, then the rest are made.
    create(&mut c, "workflow_run", "stale").await;
    transition(&mut c, "stale", "start").await;
    app.clock.advance(Duration::from_secs(73 * 3600));
    for (id, path) in [
        ("failed", &["start", "fail"][..]),
        ("paused", &["start", "pause"][..]),
        ("fresh", &["start"][..]),
        ("completed", &["start", "complete"][..]),
        ("cancelled", &["cancel"][..]),
    ] {
        create(&mut c, "workflow_run", id).await;
        for t in path {
            transition(&mut c, id, t).await;
        }
    }
    for (id, resumable) in [
        ("failed", true),
        ("paused", true),
        ("stale", true),
        ("fresh", false),
        ("completed", false),
        ("cancelled", false),
    ] {
        let before = get_entity(&mut c, id).await;
        let (applied, errors) = race(&app, 32, tr(id, "resume")).await;
        assert_eq!(applied, usize::from(resumable), "{id}");
        assert_eq!(errors.len(), 32 - applied, "{id}");
        for s in &errors {
            assert_eq!(
                (s.code(), reason(s).as_str()),
                (Code::FailedPrecondition, "INVALID_TRANSITION"),
                "{id}: {s:?}"
            );
            let expected_state = if resumable { "running" } else { before.state.as_str() };
            assert_eq!(meta(s, "current_state").as_deref(), Some(expected_state), "{id}");
            assert!(meta(s, "version").is_some());
        }
        let after = get_entity(&mut c, id).await;
        assert_eq!(after.version, before.version + u64::from(resumable), "{id}");
    }
    // Cancel on finished runs: applied=false, not even updated_at moves.
    for id in ["completed", "cancelled"] {
        let before = get_entity(&mut c, id).await;
        let (ok, _) = (transition(&mut c, id, "cancel").await, ());
        assert!(!ok.applied);
        assert!(ok.seqs.is_empty());
        let after = get_entity(&mut c, id).await;
        assert_eq!(
            (after.version, after.updated_at, after.last_seq),
            (before.version, before.updated_at, before.last_seq),
            "{id}"
        );
    }
}

/// S3 / I5: only starting and running hold an active turn; moving anywhere else clears it
/// in the same transaction, and listing sessions without a turn finds the settled ones.
async fn s3_active_turn_is_cleared_atomically(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    let set_turn = |id: &str| proto::TransitionRequest {
        set_fields: [("active_turn_id".to_string(), format!("turn-{id}"))].into(),
        ..tr(id, "start_turn")
    };
    for (id, last) in [
        ("s-ready", "finish_turn"),
        ("s-int", "interrupt"),
        ("s-stop", "stop"),
        ("s-err", "fail"),
        ("s-run", ""),
        ("s-start", ""),
    ] {
        create(&mut c, "agent_session", id).await;
        let started = c.transition(set_turn(id)).await.unwrap().into_inner().entity.unwrap();
        assert_eq!(
            started.fields.get("active_turn_id").map(String::as_str),
            Some(format!("turn-{id}").as_str()),
            "kept in starting"
        );
        if id == "s-start" {
            continue;
        }
        let running = transition(&mut c, id, "run").await.entity.unwrap();
        assert!(running.fields.contains_key("active_turn_id"), "kept in running");
        if !last.is_empty() {
            let settled = transition(&mut c, id, last).await.entity.unwrap();
            assert!(
                !settled.fields.contains_key("active_turn_id"),
                "{id}: cleared on {last}"
            );
            assert!(
                !get_entity(&mut c, id).await.fields.contains_key("active_turn_id"),
                "{id}: cleared in storage"
            );
        }
    }
    // Setting a turn where it is not allowed is refused, naming the field.
    let bad = c
        .transition(proto::TransitionRequest {
            set_fields: [("active_turn_id".to_string(), "t".to_string())].into(),
            ..tr("s-run", "finish_turn")
        })
        .await;
    let s = expect_err(bad, Code::InvalidArgument, "FIELD_NOT_ALLOWED");
    assert_eq!(meta(&s, "field").as_deref(), Some("active_turn_id"));
    let idle = c
        .list_entities(proto::ListEntitiesRequest {
            namespace: NS.into(),
            kind: "agent_session".into(),
            missing_fields: vec!["active_turn_id".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = idle.entities.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["s-err", "s-int", "s-ready", "s-stop"]);
    let busy = c
        .list_entities(proto::ListEntitiesRequest {
            namespace: NS.into(),
            kind: "agent_session".into(),
            has_fields: vec!["active_turn_id".into()],
            states: vec!["running".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        busy.entities.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["s-run"]
    );
}

/// S5 / I9: 64 concurrent creates with one dedup key make one entity; exactly one caller
/// sees created=true and all get the same id.
async fn s5_sixty_four_triggers_one_review(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut tasks = vec![];
    for _ in 0..64 {
        let mut c = app.client().await;
        tasks.push(tokio::spawn(async move {
            c.create_entity(proto::CreateEntityRequest {
                namespace: NS.into(),
                kind: "review_run".into(),
                dedup_key: "worker-7:3f2a9c".into(),
                fields: [("sha".to_string(), "3f2a9c".to_string())].into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        }));
    }
    let mut created = 0;
    let mut ids = HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        created += usize::from(r.created);
        ids.insert(r.entity.unwrap().id);
    }
    assert_eq!((created, ids.len()), (1, 1));
    let mut c = app.client().await;
    let all = c
        .list_entities(proto::ListEntitiesRequest {
            namespace: NS.into(),
            kind: "review_run".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.entities.len(), 1);
}

/// I4: 32 concurrent transitions with the same expect_version: exactly one applies, the
/// others get ABORTED / VERSION_MISMATCH with the current version and state.
async fn i4_version_cas_one_winner(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    create(&mut c, "workflow_run", "cas").await;
    transition(&mut c, "cas", "start").await;
    let (applied, errors) = race(
        &app,
        32,
        proto::TransitionRequest {
            expect_version: Some(2),
            ..tr("cas", "pause")
        },
    )
    .await;
    assert_eq!(applied, 1);
    assert_eq!(errors.len(), 31);
    for s in &errors {
        assert_eq!(
            (s.code(), reason(s).as_str()),
            (Code::Aborted, "VERSION_MISMATCH"),
            "{s:?}"
        );
        assert_eq!(meta(s, "version").as_deref(), Some("3"));
        assert_eq!(meta(s, "current_state").as_deref(), Some("paused"));
    }
}

/// I10: a Transition retried with its request id applies once and returns the first outcome.
async fn i10_transition_retry_applies_once(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    create(&mut c, "task", "t").await;
    let req = proto::TransitionRequest {
        request_id: "start-t-1".into(),
        events: vec![ev("note", "hi")],
        ..tr("t", "start")
    };
    let first = c.transition(req.clone()).await.unwrap().into_inner();
    let (applied, errors) = race(&app, 8, req).await;
    assert_eq!(
        (applied, errors.len()),
        (8, 0),
        "retries all see the first (applied) outcome"
    );
    let again = c
        .transition(proto::TransitionRequest {
            request_id: "start-t-1".into(),
            events: vec![ev("note", "hi")],
            ..tr("t", "start")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.seqs, first.seqs);
    let e = get_entity(&mut c, "t").await;
    assert_eq!(
        (e.version, e.last_seq),
        (2, 2),
        "applied once: one state change, one note"
    );
    let other_body = c
        .transition(proto::TransitionRequest {
            request_id: "start-t-1".into(),
            events: vec![ev("note", "bye")],
            ..tr("t", "start")
        })
        .await;
    expect_err(other_body, Code::InvalidArgument, "REQUEST_ID_REUSED");
    // Created with a request id and no id: the retry returns the same entity.
    let cr = proto::CreateEntityRequest {
        namespace: NS.into(),
        kind: "task".into(),
        request_id: "mk-1".into(),
        ..Default::default()
    };
    let a = c.create_entity(cr.clone()).await.unwrap().into_inner();
    let b = c.create_entity(cr).await.unwrap().into_inner();
    assert!(a.created && b.created);
    assert_eq!(a.entity.unwrap().id, b.entity.unwrap().id);
}

/// The stored `task` machine: its version and spec.
async fn task_spec(c: &mut Client) -> (u64, proto::MachineSpec) {
    let m = c
        .get_machine(proto::GetMachineRequest {
            namespace: NS.into(),
            kind: "task".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .machine
        .unwrap();
    (m.version, m.spec.unwrap())
}

/// Invalid machines are refused naming the rule; redefinition may not drop a state in use.
async fn machine_rules_are_validated(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    let (version, mut s) = task_spec(&mut c).await;
    assert_eq!(version, 1);
    let define = |s: proto::MachineSpec| proto::DefineMachineRequest {
        namespace: NS.into(),
        spec: Some(s),
    };
    // Same spec again: unchanged.
    let same = c.define_machine(define(s.clone())).await.unwrap().into_inner();
    assert!(!same.changed);
    let mut bad = s.clone();
    bad.transitions[0].from = vec!["nowhere".into()];
    let e = expect_err(
        c.define_machine(define(bad)).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(meta(&e, "field").as_deref(), Some("spec.transitions[0].from[0]"));
    let mut bad = s.clone();
    bad.terminal_states.clear();
    let e = expect_err(
        c.define_machine(define(bad)).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(meta(&e, "field").as_deref(), Some("spec.terminal_states"));
    // Remove `failed` while no task is in it: allowed. Then try to remove `running` while one is.
    create(&mut c, "task", "busy").await;
    transition(&mut c, "busy", "start").await;
    s.states.retain(|x| x != "failed");
    s.terminal_states.retain(|x| x != "failed");
    s.transitions.retain(|t| t.name != "fail");
    for t in &mut s.transitions {
        t.noop_from.retain(|x| x != "failed");
    }
    let v2 = c.define_machine(define(s.clone())).await.unwrap().into_inner();
    assert_eq!((v2.changed, v2.machine.unwrap().version), (true, 2));
    let drop_running = proto::MachineSpec {
        kind: "task".into(),
        states: vec!["pending".into(), "succeeded".into(), "cancelled".into()],
        initial_state: "pending".into(),
        terminal_states: vec!["succeeded".into(), "cancelled".into()],
        transitions: vec![proto::TransitionSpec {
            name: "cancel".into(),
            from: vec!["pending".into()],
            to: "cancelled".into(),
            ..Default::default()
        }],
        field_rules: vec![],
        ..Default::default()
    };
    let e = expect_err(
        c.define_machine(define(drop_running)).await,
        Code::FailedPrecondition,
        "STATE_IN_USE",
    );
    assert_eq!(meta(&e, "state").as_deref(), Some("running"));
    // Unknown kind, transition, entity.
    expect_err(
        c.create_entity(proto::CreateEntityRequest {
            namespace: NS.into(),
            kind: "nope".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "MACHINE_NOT_FOUND",
    );
    let e = expect_err(
        c.transition(tr("busy", "explode")).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(meta(&e, "field").as_deref(), Some("transition"));
    expect_err(
        c.transition(tr("ghost", "start")).await,
        Code::NotFound,
        "ENTITY_NOT_FOUND",
    );
    expect_err(
        c.create_entity(proto::CreateEntityRequest {
            namespace: NS.into(),
            kind: "task".into(),
            id: "busy".into(),
            ..Default::default()
        })
        .await,
        Code::AlreadyExists,
        "ENTITY_EXISTS",
    );
}

/// I12: another namespace sees nothing of this one.
async fn i12_namespaces_are_disjoint(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    create(&mut c, "task", "mine").await;
    expect_err(
        c.get_entity(proto::GetEntityRequest {
            namespace: "other".into(),
            id: "mine".into(),
        })
        .await,
        Code::NotFound,
        "ENTITY_NOT_FOUND",
    );
    expect_err(
        c.transition(proto::TransitionRequest {
            namespace: "other".into(),
            ..tr("mine", "start")
        })
        .await,
        Code::NotFound,
        "ENTITY_NOT_FOUND",
    );
    expect_err(
        c.get_machine(proto::GetMachineRequest {
            namespace: "other".into(),
            kind: "task".into(),
        })
        .await,
        Code::NotFound,
        "MACHINE_NOT_FOUND",
    );
}

/// Pagination walks every entity exactly once.
async fn list_pages_cover_everything_once(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    for i in 0..25 {
        create(&mut c, "task", &format!("t{i:02}")).await;
    }
    let (mut seen, mut token) = (vec![], String::new());
    loop {
        let page = c
            .list_entities(proto::ListEntitiesRequest {
                namespace: NS.into(),
                kind: "task".into(),
                page_size: 10,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.entities.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, (0..25).map(|i| format!("t{i:02}")).collect::<Vec<_>>());
    expect_err(
        c.list_entities(proto::ListEntitiesRequest {
            namespace: NS.into(),
            kind: "task".into(),
            page_token: "!!".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
}

both_backends!(
    s2_resume_races_and_idempotent_cancel,
    s3_active_turn_is_cleared_atomically,
    s5_sixty_four_triggers_one_review,
    i4_version_cas_one_winner,
    i10_transition_retry_applies_once,
    machine_rules_are_validated,
    i12_namespaces_are_disjoint,
    list_pages_cover_everything_once,
);

/// The property of `domain::machine`'s proptest, end to end through the store: a long
/// pseudo-random walk of transitions (fixed seed, so a failure reproduces) never leaves a
/// field outside its states, and the stored version equals applied transitions + 1.
async fn random_walk_keeps_field_rules_and_counts_versions(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    let machine = c
        .get_machine(proto::GetMachineRequest {
            namespace: NS.into(),
            kind: "agent_session".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let spec = machine.machine.unwrap().spec.unwrap();
    let allowed: std::collections::HashMap<String, Vec<String>> = spec
        .field_rules
        .iter()
        .map(|r| (r.field.clone(), r.allowed_in.clone()))
        .collect();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for walk in 0..4 {
        let id = format!("walk-{walk}");
        create(&mut c, "agent_session", &id).await;
        let mut applied = 0u64;
        for _ in 0..60 {
            let t = &spec.transitions[next(spec.transitions.len())];
            let mut req = tr(&id, &t.name);
            if next(2) == 0 {
                req.set_fields = [
                    ("active_turn_id".to_string(), "t".to_string()),
                    ("note".to_string(), "n".to_string()),
                ]
                .into();
            }
            match c.transition(req).await {
                Ok(r) => applied += u64::from(r.into_inner().applied),
                Err(s) => assert!(
                    matches!(reason(&s).as_str(), "INVALID_TRANSITION" | "FIELD_NOT_ALLOWED"),
                    "{s:?}"
                ),
            }
            let e = get_entity(&mut c, &id).await;
            for field in e.fields.keys() {
                if let Some(states) = allowed.get(field) {
                    assert!(states.contains(&e.state), "{field} present in {}", e.state);
                }
            }
            assert_eq!(e.version, applied + 1);
        }
    }
}

both_backends!(random_walk_keeps_field_rules_and_counts_versions);

/// A replica plans transitions with the machines it has cached; a redefinition made on
/// another replica takes effect there at once: a refusal by the stale copy is re-checked
/// (a newly added transition applies), and a write planned with it is not committed (a
/// removed transition is refused, nothing written).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redefinition_on_another_replica_applies_at_once() {
    let (_db, a, b) = spawn_two_replicas().await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    for id in ["m1", "m2"] {
        create(&mut ca, "task", id).await;
        transition(&mut ca, id, "start").await; // A now has task v1 cached
    }
    let (_, v1) = task_spec(&mut cb).await;
    let define = |s: proto::MachineSpec| proto::DefineMachineRequest {
        namespace: NS.into(),
        spec: Some(s),
    };
    let mut v2 = v1.clone();
    v2.transitions.push(proto::TransitionSpec {
        name: "requeue".into(),
        from: vec!["running".into()],
        to: "pending".into(),
        ..Default::default()
    });
    cb.define_machine(define(v2)).await.unwrap();
    // Unknown to A's cached v1, known to the stored v2: applies.
    let r = ca.transition(tr("m1", "requeue")).await.unwrap().into_inner();
    assert!(r.applied);
    assert_eq!(r.entity.unwrap().state, "pending");
    // v3 drops `requeue` again; A's cached v2 would allow it on m2.
    cb.define_machine(define(v1)).await.unwrap();
    let e = expect_err(
        ca.transition(tr("m2", "requeue")).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(meta(&e, "field").as_deref(), Some("transition"));
    let m2 = get_entity(&mut ca, "m2").await;
    assert_eq!((m2.state.as_str(), m2.version), ("running", 2), "nothing written");
}
