//! The tape over gRPC, both backends: I6, I7, I8, S4, heartbeats, cross-replica streams,
//! resume after a replica dies.

use crate::both_backends;
use crate::helpers::*;
use baton::domain::time::Clock;
use baton::proto::{self, stream_events_response::Item};
use std::time::Duration;
use tonic::Code;

/// A stream being collected: the events and how it ended.
type Collected = tokio::task::JoinHandle<(Vec<proto::Event>, Result<(), tonic::Status>)>;

/// A subscriber: the cursor it asked to start after, its collecting task, and a watch of
/// the highest seq it has seen (so tests wait for progress without sleeping).
struct Subscriber {
    after: u64,
    task: Collected,
    seen: tokio::sync::watch::Receiver<u64>,
}

/// Opens a stream after `after` and collects it in a task.
fn subscribe(mut c: Client, id: &str, after: u64) -> Subscriber {
    let (seen_tx, seen) = tokio::sync::watch::channel(after);
    let id = id.to_string();
    let task = tokio::spawn(async move { collect_stream_reporting(&mut c, &id, after, Some(seen_tx)).await });
    Subscriber { after, task, seen }
}

async fn reached(seen: &mut tokio::sync::watch::Receiver<u64>, seq: u64) {
    tokio::time::timeout(Duration::from_secs(30), seen.wait_for(|s| *s >= seq))
        .await
        .expect("stream progressed")
        .expect("stream alive");
}

/// S4: a runner appends progress as fast as it can while another client cancels. The tape
/// is gapless and ends with exactly one `final`; 50 subscribers started before, during and
/// after the cancel each get every event once, in order, and a stream that closes OK.
async fn s4_late_progress_never_lands_after_final(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    create(&mut c, "task", "job").await;
    transition(&mut c, "job", "start").await;
    let mut subs = vec![];
    for _ in 0..20 {
        subs.push(subscribe(app.client().await, "job", 0));
    }
    let mut runner_client = app.client().await;
    let runner = tokio::spawn(async move {
        let mut stored = 0u64;
        loop {
            match append(&mut runner_client, "job", vec![ev("progress", "tick")]).await {
                Ok(r) => stored += r.seqs.len() as u64,
                Err(s) => {
                    assert_eq!(reason(&s), "TAPE_SEALED", "{s:?}");
                    return stored;
                }
            }
        }
    });
    // Subscribers joining mid-run, from various cursors.
    reached(&mut subs[0].seen, 10).await;
    for i in 0..20u64 {
        subs.push(subscribe(app.client().await, "job", i % 5));
    }
    reached(&mut subs[25].seen, 30).await;
    let cancelled = transition(&mut c, "job", "cancel").await;
    assert!(cancelled.applied);
    let final_seq = *cancelled.seqs.last().unwrap();
    let appended = runner.await.unwrap();
    for _ in 0..10 {
        subs.push(subscribe(app.client().await, "job", 3));
    }
    let tape = read_tape(&mut c, "job").await;
    assert_complete(&tape, 0);
    assert_eq!(tape.last().unwrap().seq, final_seq);
    assert_eq!(
        tape.iter().filter(|e| e.r#type == "progress").count() as u64,
        appended,
        "every acknowledged append is stored"
    );
    for (i, sub) in subs.into_iter().enumerate() {
        let (events, end) = sub.task.await.unwrap();
        end.unwrap_or_else(|s| panic!("subscriber {i} ended with {s:?}"));
        // From the cursor it asked for: a subscriber that skipped or repeated any seq fails.
        assert_complete(&events, sub.after);
        assert_eq!(
            events.as_slice(),
            &tape[sub.after as usize..],
            "subscriber {i} (after {}) saw the tape exactly",
            sub.after
        );
    }
}

/// A task cancelled before it ever started still reaches a terminal state with `final`.
async fn cancel_before_start_seals_with_final(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    create(&mut c, "task", "never").await;
    let r = c
        .transition(proto::TransitionRequest {
            final_payload: b"cancelled by user".to_vec(),
            ..tr("never", "cancel")
        })
        .await
        .unwrap()
        .into_inner();
    let e = r.entity.unwrap();
    assert_eq!(
        (e.state.as_str(), e.sealed, r.seqs.as_slice()),
        ("cancelled", true, &[1, 2][..])
    );
    let tape = read_tape(&mut c, "never").await;
    assert_complete(&tape, 0);
    assert_eq!(tape[1].payload, b"cancelled by user");
    assert_eq!(tape[1].state, "cancelled");
}

/// I7: appends after `final` are rejected (TAPE_SEALED, with final_seq) or dropped on
/// request, and never stored.
async fn i7_nothing_is_stored_after_final(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    create(&mut c, "task", "done").await;
    transition(&mut c, "done", "start").await;
    append(&mut c, "done", vec![ev("progress", "1"), ev("progress", "2")])
        .await
        .unwrap();
    let fin = transition(&mut c, "done", "succeed").await;
    let final_seq = *fin.seqs.last().unwrap();
    let s = expect_err(
        append(&mut c, "done", vec![ev("progress", "late")]).await,
        Code::FailedPrecondition,
        "TAPE_SEALED",
    );
    assert_eq!(meta(&s, "final_seq"), Some(final_seq.to_string()));
    let dropped = c
        .append_events(proto::AppendEventsRequest {
            namespace: NS.into(),
            entity_id: "done".into(),
            events: vec![ev("progress", "late")],
            if_sealed: proto::IfSealed::Drop as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (dropped.dropped, dropped.seqs.len(), dropped.final_seq),
        (true, 0, final_seq)
    );
    // Nor can a transition move a sealed entity.
    expect_err(
        c.transition(tr("done", "start")).await,
        Code::FailedPrecondition,
        "INVALID_TRANSITION",
    );
    let tape = read_tape(&mut c, "done").await;
    assert_complete(&tape, 0);
    assert_eq!(tape.len() as u64, final_seq);
    // A subscriber at or past final gets the end at once.
    let (events, end) = collect_stream(&mut c, "done", final_seq).await;
    assert!(events.is_empty());
    end.unwrap();
}

/// Idle streams get heartbeats carrying the latest seq.
async fn idle_streams_get_heartbeats(backend: Backend) {
    let db = TestDb::new(backend).await;
    let settings = baton::app::Settings {
        heartbeat: Duration::from_millis(50),
        ..test_settings(&db.url)
    };
    let app = TestApp::start_with(settings, Clock::system()).await;
    define_examples(&app, NS).await;
    let mut c = app.client().await;
    create(&mut c, "task", "idle").await;
    transition(&mut c, "idle", "start").await;
    let mut stream = c
        .stream_events(proto::StreamEventsRequest {
            namespace: NS.into(),
            entity_id: "idle".into(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(matches!(first.item, Some(Item::Event(ref e)) if e.seq == 1));
    let hb = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("heartbeat")
        .unwrap()
        .unwrap();
    assert_eq!(hb.item, Some(Item::Heartbeat(proto::Heartbeat { latest_seq: 1 })));
}

/// Bad tape input names the field.
async fn bad_tape_input_names_the_field(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    create(&mut c, "task", "t").await;
    let cases = vec![
        (vec![], "events"),
        (vec![ev("final", "x")], "events[0].type"),
        (vec![ev("ok", "x"), ev("Bad Type", "x")], "events[1].type"),
        (
            vec![proto::EventInput {
                r#type: "big".into(),
                payload: vec![0; 64 * 1024 + 1],
                content_type: String::new(),
            }],
            "events[0].payload",
        ),
    ];
    for (events, field) in cases {
        let s = expect_err(
            append(&mut c, "t", events).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(meta(&s, "field").as_deref(), Some(field));
    }
    expect_err(
        append(&mut c, "ghost", vec![ev("p", "x")]).await,
        Code::NotFound,
        "ENTITY_NOT_FOUND",
    );
    let (_, end) = collect_stream(&mut c, "ghost", 0).await;
    assert_eq!(end.unwrap_err().code(), Code::NotFound);
}

/// I8 across replicas (Postgres): a subscriber on instance A sees appends made through
/// instance B, woken by NOTIFY.
async fn i8_subscriber_on_one_replica_sees_writes_on_another(backend: Backend) {
    assert_eq!(backend, Backend::Postgres);
    let (_db, a, b) = spawn_two_replicas().await;
    let mut cb = b.client().await;
    create(&mut cb, "task", "x").await;
    let Subscriber { task, mut seen, .. } = subscribe(a.client().await, "x", 0);
    transition(&mut cb, "x", "start").await;
    reached(&mut seen, 1).await;
    for i in 0..20 {
        append(&mut cb, "x", vec![ev("progress", &i.to_string())])
            .await
            .unwrap();
    }
    reached(&mut seen, 21).await;
    transition(&mut cb, "x", "succeed").await;
    let (events, end) = task.await.unwrap();
    end.unwrap();
    assert_complete(&events, 0);
    assert_eq!(events.len(), 23);
}

/// I8 when the serving replica stops mid-tape (in-process; `server::i8_resume_after_sigkill`
/// kills a real process): the client resumes elsewhere (another
/// Postgres replica; a restarted node on SQLite) from its last seq, and the union of what
/// it received is the whole tape with no duplicates.
async fn i8_resume_after_replica_stops(backend: Backend) {
    let db = TestDb::new(backend).await;
    let a = TestApp::start(&db, Clock::system()).await;
    define_examples(&a, NS).await;
    let mut ca = a.client().await;
    create(&mut ca, "task", "r").await;
    transition(&mut ca, "r", "start").await;
    for i in 0..10 {
        append(&mut ca, "r", vec![ev("progress", &i.to_string())])
            .await
            .unwrap();
    }
    let Subscriber { task, mut seen, .. } = subscribe(a.client().await, "r", 0);
    reached(&mut seen, 11).await;
    a.kill();
    let (first, end) = task.await.unwrap();
    assert!(end.is_err(), "the dying replica's stream does not end OK");
    let last = first.last().unwrap().seq;
    let b = TestApp::start(&db, Clock::system()).await;
    let mut cb = b.client().await;
    let Subscriber { task, .. } = subscribe(b.client().await, "r", last);
    for i in 10..20 {
        append(&mut cb, "r", vec![ev("progress", &i.to_string())])
            .await
            .unwrap();
    }
    transition(&mut cb, "r", "succeed").await;
    let (rest, end) = task.await.unwrap();
    end.unwrap();
    let all: Vec<_> = first.into_iter().chain(rest).collect();
    assert_complete(&all, 0);
    assert_eq!(all.len(), 23);
}

/// Graceful drain ends open streams with UNAVAILABLE / SHUTTING_DOWN carrying last_seq,
/// and the server stops within its drain bound.
async fn drain_ends_streams_with_unavailable(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    create(&mut c, "task", "d").await;
    transition(&mut c, "d", "start").await;
    let Subscriber { task, mut seen, .. } = subscribe(app.client().await, "d", 0);
    reached(&mut seen, 1).await;
    let started = tokio::time::Instant::now();
    app.stop().await.expect("clean stop");
    assert!(started.elapsed() < Duration::from_secs(5), "within the drain bound");
    let (events, end) = task.await.unwrap();
    assert_eq!(events.len(), 1);
    let s = end.unwrap_err();
    assert_eq!((s.code(), reason(&s).as_str()), (Code::Unavailable, "SHUTTING_DOWN"));
    assert_eq!(meta(&s, "last_seq").as_deref(), Some("1"));
}

both_backends!(
    s4_late_progress_never_lands_after_final,
    cancel_before_start_seals_with_final,
    i7_nothing_is_stored_after_final,
    idle_streams_get_heartbeats,
    bad_tape_input_names_the_field,
    i8_resume_after_replica_stops,
    drain_ends_streams_with_unavailable,
);

both_backends!(postgres_only: i8_subscriber_on_one_replica_sees_writes_on_another);

/// A cursor past the tape's head was never delivered by any replica: INVALID_ARGUMENT,
/// not a silent wait.
async fn cursor_past_head_is_refused(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    create(&mut c, "task", "t").await;
    transition(&mut c, "t", "start").await;
    let (_, end) = collect_stream(&mut c, "t", 2).await;
    let s = end.unwrap_err();
    assert_eq!(
        (s.code(), meta(&s, "field").as_deref()),
        (Code::InvalidArgument, Some("after_seq"))
    );
}

both_backends!(cursor_past_head_is_refused);

/// A lost notification connection is re-established and subscribers re-read from their
/// last seq, so nothing is missed (Postgres: the replicas' LISTEN backends are terminated
/// while a subscriber waits; the next appends, made through another replica, still arrive,
/// which they could not without the reconnect).
async fn lost_listen_connection_misses_nothing(backend: Backend) {
    assert_eq!(backend, Backend::Postgres);
    let (db, a, b) = spawn_two_replicas().await;
    let mut cb = b.client().await;
    create(&mut cb, "task", "l").await;
    transition(&mut cb, "l", "start").await;
    let Subscriber { task, mut seen, .. } = subscribe(a.client().await, "l", 0);
    reached(&mut seen, 1).await;
    // Cut every LISTEN connection (both replicas'): the listeners reconnect and resync.
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    let cut: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!cut.is_empty(), "found the LISTEN connections");
    for i in 0..5 {
        append(&mut cb, "l", vec![ev("progress", &i.to_string())])
            .await
            .unwrap();
    }
    transition(&mut cb, "l", "succeed").await;
    let (events, end) = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("stream completes")
        .unwrap();
    end.unwrap();
    assert_complete(&events, 0);
    assert_eq!(events.len(), 8, "start, 5 progress, succeed, final");
}

both_backends!(postgres_only: lost_listen_connection_misses_nothing);

/// Postgres replicas notify each other after commit, so a replica that dies in between
/// loses the notification. Simulated here by committing a tape write straight into the
/// table, with no notification at all: a subscriber still gets it, at its next heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_notification_is_made_up_at_the_next_heartbeat() {
    let db = TestDb::new(Backend::Postgres).await;
    let settings = baton::app::Settings {
        heartbeat: Duration::from_millis(100),
        ..test_settings(&db.url)
    };
    let app = TestApp::start_with(settings, Clock::system()).await;
    define_examples(&app, NS).await;
    let mut c = app.client().await;
    create(&mut c, "task", "quiet").await;
    transition(&mut c, "quiet", "start").await;
    let Subscriber { task, mut seen, .. } = subscribe(app.client().await, "quiet", 0);
    reached(&mut seen, 1).await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    sqlx::raw_sql(
        "BEGIN; \
         INSERT INTO events (namespace, entity_id, seq, type, payload, created_at_us) \
           VALUES ('test', 'quiet', 2, 'progress', '\\x00', 0); \
         UPDATE entities SET last_seq = 2 WHERE namespace = 'test' AND id = 'quiet'; \
         COMMIT",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    reached(&mut seen, 2).await;
    transition(&mut c, "quiet", "succeed").await;
    let (events, end) = task.await.unwrap();
    end.unwrap();
    assert_complete(&events, 0);
}
