//! S1, the double-executed approval, end to end through examples/machines.toml. (S2, S3,
//! S5 are in `entities`, S4 in `tape`; all run on both backends with 32+ clients.)

use crate::both_backends;
use crate::helpers::*;
use baton::proto;
use std::time::Duration;
use tonic::Code;

const TOOL_CALLS: usize = 3;

fn fenced(token: u64) -> Option<proto::Fence> {
    Some(proto::Fence {
        key: "session/s".into(),
        token,
    })
}

/// A session parked for approval with three pending tool calls.
async fn parked_session(c: &mut Client) {
    create(c, "agent_session", "s").await;
    c.transition(proto::TransitionRequest {
        set_fields: [("active_turn_id".to_string(), "turn-1".to_string())].into(),
        ..tr("s", "start_turn")
    })
    .await
    .unwrap();
    transition(c, "s", "run").await;
    let pending = (0..TOOL_CALLS)
        .map(|i| ev("tool_pending", &format!("call-{i}")))
        .collect();
    c.transition(proto::TransitionRequest {
        events: pending,
        ..tr("s", "park_for_approval")
    })
    .await
    .unwrap();
}

/// One "approval resolved" wake-up, written the way an agent runtime would: take the
/// session lease, move awaiting_approval → executing under the fence, run every pending
/// tool call (each a fenced append), end the turn and close the session. Returns how many
/// tool calls it executed.
async fn wake(mut c: Client, who: String) -> usize {
    let lease = acquire(&mut c, "session/s", &who, 30).await;
    if !lease.acquired {
        return 0;
    }
    let token = lease.lease.unwrap().token;
    let approved = c
        .transition(proto::TransitionRequest {
            fence: fenced(token),
            ..tr("s", "approve")
        })
        .await;
    let executed = match approved {
        Err(s) => {
            assert_eq!(
                reason(&s),
                "INVALID_TRANSITION",
                "a late wake learns the state moved on: {s:?}"
            );
            0
        }
        Ok(_) => {
            for i in 0..TOOL_CALLS {
                c.append_events(proto::AppendEventsRequest {
                    namespace: NS.into(),
                    entity_id: "s".into(),
                    events: vec![ev("tool_executed", &format!("call-{i}"))],
                    fence: fenced(token),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
            c.transition(proto::TransitionRequest {
                fence: fenced(token),
                ..tr("s", "finish_turn")
            })
            .await
            .unwrap();
            c.transition(proto::TransitionRequest {
                fence: fenced(token),
                final_payload: b"turn_end".to_vec(),
                ..tr("s", "close")
            })
            .await
            .unwrap();
            TOOL_CALLS
        }
    };
    c.release_lease(proto::ReleaseLeaseRequest {
        namespace: NS.into(),
        key: "session/s".into(),
        token,
        request_id: String::new(),
    })
    .await
    .unwrap();
    executed
}

async fn approvals_with(backend: Backend, wakes: usize) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    parked_session(&mut c).await;
    let mut tasks = vec![];
    for i in 0..wakes {
        let client = app.client().await;
        tasks.push(tokio::spawn(wake(client, format!("wake-{i}"))));
    }
    let mut executed = 0;
    for t in tasks {
        executed += t.await.unwrap();
    }
    assert_eq!(executed, TOOL_CALLS, "{wakes} wakes: the calls ran once");
    let tape = read_tape(&mut c, "s").await;
    assert_complete(&tape, 0);
    assert_eq!(
        tape.iter().filter(|e| e.r#type == "tool_executed").count(),
        TOOL_CALLS,
        "3, not 6"
    );
    let session = get_entity(&mut c, "s").await;
    assert_eq!(session.state, "closed");
    assert!(!session.fields.contains_key("active_turn_id"));
}

async fn s1_approvals_2_wakes(backend: Backend) {
    approvals_with(backend, 2).await
}

async fn s1_approvals_8_wakes(backend: Backend) {
    approvals_with(backend, 8).await
}

async fn s1_approvals_64_wakes(backend: Backend) {
    approvals_with(backend, 64).await
}

/// A wake that paused past its TTL while executing: a second wake takes the session over
/// with a higher token; the first can no longer append or transition (LEASE_LOST), so each
/// tool call still runs once.
async fn s1_paused_holder_cannot_commit(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut slow = app.client().await;
    parked_session(&mut slow).await;
    let first = acquire(&mut slow, "session/s", "slow", 5).await.lease.unwrap();
    slow.transition(proto::TransitionRequest {
        fence: fenced(first.token),
        ..tr("s", "approve")
    })
    .await
    .unwrap();
    append_fenced(&mut slow, first.token, "call-0").await.unwrap();
    app.clock.advance(Duration::from_secs(6)); // the slow wake stalls past its TTL
    let mut fast = app.client().await;
    let second = acquire(&mut fast, "session/s", "fast", 5).await;
    assert!(second.acquired);
    let second = second.lease.unwrap();
    assert!(second.token > first.token);
    let s = expect_err(
        append_fenced(&mut slow, first.token, "call-1").await,
        Code::FailedPrecondition,
        "LEASE_LOST",
    );
    assert_eq!(meta(&s, "current_holder").as_deref(), Some("fast"));
    expect_err(
        slow.transition(proto::TransitionRequest {
            fence: fenced(first.token),
            ..tr("s", "finish_turn")
        })
        .await,
        Code::FailedPrecondition,
        "LEASE_LOST",
    );
    // The new holder finishes the remaining calls and closes the session.
    for call in ["call-1", "call-2"] {
        append_fenced(&mut fast, second.token, call).await.unwrap();
    }
    fast.transition(proto::TransitionRequest {
        fence: fenced(second.token),
        ..tr("s", "finish_turn")
    })
    .await
    .unwrap();
    fast.transition(proto::TransitionRequest {
        fence: fenced(second.token),
        ..tr("s", "close")
    })
    .await
    .unwrap();
    let tape = read_tape(&mut fast, "s").await;
    assert_complete(&tape, 0);
    let calls: Vec<_> = tape
        .iter()
        .filter(|e| e.r#type == "tool_executed")
        .map(|e| String::from_utf8_lossy(&e.payload).to_string())
        .collect();
    assert_eq!(calls, ["call-0", "call-1", "call-2"]);
}

/// A holder that crashed (never released) is recovered after its TTL with a higher token.
async fn s1_crashed_holder_recovered_after_ttl(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    parked_session(&mut c).await;
    let crashed = acquire(&mut c, "session/s", "crashed", 10).await.lease.unwrap();
    let mut next = app.client().await;
    assert!(
        !acquire(&mut next, "session/s", "next", 10).await.acquired,
        "not before the TTL"
    );
    app.clock.advance(Duration::from_secs(11));
    assert_eq!(wake(next, "next".into()).await, TOOL_CALLS);
    let view = c
        .get_lease(proto::GetLeaseRequest {
            namespace: NS.into(),
            key: "session/s".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(view.last_token, crashed.token + 1);
}

async fn append_fenced(c: &mut Client, token: u64, call: &str) -> Result<proto::AppendEventsResponse, tonic::Status> {
    c.append_events(proto::AppendEventsRequest {
        namespace: NS.into(),
        entity_id: "s".into(),
        events: vec![ev("tool_executed", call)],
        fence: fenced(token),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

both_backends!(
    s1_approvals_2_wakes,
    s1_approvals_8_wakes,
    s1_approvals_64_wakes,
    s1_paused_holder_cannot_commit,
    s1_crashed_holder_recovered_after_ttl,
);

/// S3 under contention: 32 clients fire turn transitions at one session at once (starting
/// turns with an active_turn_id, finishing, interrupting, stopping, failing). Whatever
/// interleaving wins, no answer and no stored state ever shows a turn outside
/// starting/running (I5), and the version counts exactly the applied transitions.
async fn s3_concurrent_turns_never_leave_a_stale_turn(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    create(&mut c, "agent_session", "s").await;
    let moves = [
        "start_turn",
        "run",
        "finish_turn",
        "interrupt",
        "stop",
        "fail",
        "park_for_approval",
        "approve",
        "resume_turn",
    ];
    let mut tasks = vec![];
    for i in 0..32usize {
        let mut c = app.client().await;
        tasks.push(tokio::spawn(async move {
            let mut applied = 0u64;
            for step in 0..20usize {
                let name = moves[(i * 7 + step * 3) % moves.len()];
                let mut req = tr("s", name);
                if name == "start_turn" || name == "run" {
                    req.set_fields = [("active_turn_id".to_string(), format!("turn-{i}-{step}"))].into();
                }
                match c.transition(req).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        let e = r.entity.unwrap();
                        let may_hold = e.state == "starting" || e.state == "running";
                        assert!(
                            may_hold || !e.fields.contains_key("active_turn_id"),
                            "stale turn in {}: {e:?}",
                            e.state
                        );
                        applied += u64::from(r.applied);
                    }
                    Err(s) => assert_eq!(reason(&s), "INVALID_TRANSITION", "{s:?}"),
                }
            }
            applied
        }));
    }
    let mut applied = 0;
    for t in tasks {
        applied += t.await.unwrap();
    }
    let e = get_entity(&mut c, "s").await;
    assert_eq!(e.version, applied + 1, "version = applied transitions + 1");
    assert!(e.state == "starting" || e.state == "running" || !e.fields.contains_key("active_turn_id"));
    assert!(applied > 0);
}

both_backends!(s3_concurrent_turns_never_leave_a_stale_turn);
