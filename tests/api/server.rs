//! The `baton` binary as users run it: health, reflection, signals, bad configuration, and
//! a real SIGKILL mid-stream.

use crate::helpers::*;
use baton::process::{ServeProcess, Signal};
use baton::proto;
use prost::Message;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

/// `baton serve` (the binary under test) on 127.0.0.1:0, through the one spawning helper.
fn spawn(database_url: &str, extra: &[&str]) -> ServeProcess {
    ServeProcess::spawn(Path::new(env!("CARGO_BIN_EXE_baton")), database_url, extra).expect("baton serves")
}

async fn channel(baton: &ServeProcess) -> Channel {
    Channel::from_shared(baton.url()).unwrap().connect().await.unwrap()
}

/// The binary serves health (SERVING) and reflection, v1 and v1alpha (lists
/// baton.v1.Coordinator and its methods with no proto file) on both backends.
async fn health_and_reflection(backend: Backend) {
    let db = TestDb::new(backend).await;
    let baton = spawn(&db.url, &[]);
    let channel = channel(&baton).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "baton.v1.Coordinator"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let asks = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("baton.v1.Coordinator".into()),
    ];
    let requests = tokio_stream::iter(asks.map(|m| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    }));
    let mut answers = reflection.server_reflection_info(requests).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"baton.v1.Coordinator"), "{names:?}");
    let Some(MessageResponse::FileDescriptorResponse(files)) = answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("file")
    };
    let methods: Vec<String> = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).unwrap())
        .flat_map(|f| f.service)
        .filter(|s| s.name() == "Coordinator")
        .flat_map(|s| s.method.into_iter().map(|m| m.name().to_string()))
        .collect();
    let expected = crate::raw::METHODS;
    assert_eq!(methods, expected);

    // v1alpha too: grpcio's reflection client, older grpcurl and Postman speak only it.
    use tonic_reflection::pb::v1alpha;
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let ask = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = alpha
        .server_reflection_info(tokio_stream::iter([ask]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha list")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"baton.v1.Coordinator"), "{names:?}");
}

/// SIGTERM: an open stream ends with UNAVAILABLE (so the client resumes elsewhere), new
/// connections are refused, and the process exits 0 within the drain bound.
async fn sigterm_drains_and_exits_zero(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut baton = spawn(&db.url, &["--drain", "3s"]);
    let mut c = proto::coordinator_client::CoordinatorClient::new(channel(&baton).await);
    define_examples_with(&mut c, NS).await;
    create(&mut c, "task", "t").await;
    transition(&mut c, "t", "start").await;
    let mut stream = c
        .stream_events(proto::StreamEventsRequest {
            namespace: NS.into(),
            entity_id: "t".into(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    baton.signal(Signal::Term).unwrap();
    let end = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let s = end.expect_err("stream ends with an error status");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    let status = baton.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(0));
    let log = baton.drain_log();
    assert!(log.iter().any(|l| l.contains("draining")), "{log:?}");
}

/// I8 with a real kill: SIGKILL the replica serving a stream; the client resumes on
/// another replica (Postgres) or a restarted node (SQLite) from its last seq and the union
/// is the whole tape with no duplicates. I11: nothing acknowledged is lost.
async fn i8_resume_after_sigkill(backend: Backend) {
    let db = TestDb::new(backend).await;
    let a = spawn(&db.url, &[]);
    let mut ca = proto::coordinator_client::CoordinatorClient::new(channel(&a).await);
    define_examples_with(&mut ca, NS).await;
    create(&mut ca, "task", "k").await;
    transition(&mut ca, "k", "start").await;
    for i in 0..10 {
        append(&mut ca, "k", vec![ev("progress", &i.to_string())])
            .await
            .unwrap();
    }
    let mut stream = ca
        .stream_events(proto::StreamEventsRequest {
            namespace: NS.into(),
            entity_id: "k".into(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut got = vec![];
    while got.len() < 11 {
        if let Some(proto::stream_events_response::Item::Event(e)) = stream.message().await.unwrap().unwrap().item {
            got.push(e);
        }
    }
    let mut a = a;
    a.signal(Signal::Kill).unwrap();
    a.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(stream.message().await.is_err(), "a killed replica's stream fails");
    let b = spawn(&db.url, &[]);
    let mut cb = proto::coordinator_client::CoordinatorClient::new(channel(&b).await);
    let last = got.last().unwrap().seq;
    let resumed = tokio::spawn({
        let mut c = cb.clone();
        async move { collect_stream(&mut c, "k", last).await }
    });
    for i in 10..20 {
        append(&mut cb, "k", vec![ev("progress", &i.to_string())])
            .await
            .unwrap();
    }
    transition(&mut cb, "k", "succeed").await;
    let (rest, end) = resumed.await.unwrap();
    end.unwrap();
    got.extend(rest);
    assert_complete(&got, 0);
    assert_eq!(got.len(), 23);
}

/// State timeouts in real processes and real time (no injected clock across processes):
/// two `baton serve` on one Postgres database (one on SQLite), 30 entities whose state
/// times out after 1 s. Every one fires exactly once; the time from due to fired is
/// printed (the README promises about a second on an idle server; asserted loosely).
async fn timeouts_fire_once_across_processes(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut servers = vec![spawn(&db.url, &[])];
    if backend == Backend::Postgres {
        servers.push(spawn(&db.url, &[]));
    }
    let mut clients = vec![];
    for s in &servers {
        clients.push(proto::coordinator_client::CoordinatorClient::new(channel(s).await));
    }
    let spec: baton::domain::machine::MachineSpec = toml::from_str(
        r#"
        kind = "approval"
        states = ["waiting", "approved", "expired"]
        initial_state = "waiting"
        terminal_states = ["approved", "expired"]
        [[transition]]
        name = "expire"
        from = ["waiting"]
        to = "expired"
        [[timeout]]
        state = "waiting"
        after = "1s"
        transition = "expire"
        "#,
    )
    .unwrap();
    clients[0]
        .define_machine(proto::DefineMachineRequest {
            namespace: NS.into(),
            spec: Some(baton::grpc::convert::spec_to_proto(&spec)),
        })
        .await
        .unwrap();
    let n = clients.len();
    let mut created = vec![];
    for i in 0..30 {
        created.push(create(&mut clients[i % n], "approval", &format!("a{i}")).await);
    }
    let mut worst = Duration::ZERO;
    for (i, e) in created.iter().enumerate() {
        // The stream ends right after `final`: it waits for the timeout, no sleeping.
        let tape = read_tape(&mut clients[(i + 1) % n], &e.id).await;
        let types: Vec<&str> = tape.iter().map(|e| e.r#type.as_str()).collect();
        assert_eq!(types, ["baton.transition", "baton.timeout", "final"], "{}", e.id);
        let micros = |t: &Option<prost_types::Timestamp>| {
            let t = t.as_ref().unwrap();
            t.seconds as i128 * 1_000_000 + t.nanos as i128 / 1000
        };
        let due = micros(&e.created_at) + 1_000_000;
        let late = Duration::from_micros((micros(&tape[0].created_at) - due).max(0) as u64);
        worst = worst.max(late);
    }
    eprintln!("{backend}: 30 timeouts fired once each, at most {worst:?} past due");
    assert!(worst < Duration::from_secs(5), "fired {worst:?} past due");
}

crate::both_backends!(
    health_and_reflection,
    sigterm_drains_and_exits_zero,
    i8_resume_after_sigkill,
    timeouts_fire_once_across_processes
);

/// Runs `baton serve` expecting a start-up failure; returns its stderr.
pub(crate) fn failing_start(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .arg("serve")
        .args(args)
        .output()
        .expect("run baton");
    assert!(!out.status.success(), "baton {args:?} should fail");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one clear error line: {stderr}");
    lines[0].to_string()
}

/// Bad configuration exits non-zero with one clear line, never a panic.
#[test]
fn bad_configuration_fails_with_one_line() {
    let scheme = failing_start(&["--database-url", "mysql://localhost/x"]);
    assert!(scheme.contains("unsupported database URL"), "{scheme}");
    let unreachable = failing_start(&[
        "--database-url",
        "postgres://postgres:secret@127.0.0.1:1/x",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(unreachable.contains("cannot connect to Postgres"), "{unreachable}");
    assert!(!unreachable.contains("secret"), "passwords are redacted: {unreachable}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("b.db").display());
    let port_in_use = failing_start(&[
        "--database-url",
        &url,
        "--listen",
        &taken.local_addr().unwrap().to_string(),
    ]);
    assert!(port_in_use.contains("cannot listen on"), "{port_in_use}");
    let bad_flag = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["serve", "--drain", "soon"])
        .output()
        .unwrap();
    assert!(!bad_flag.status.success());
}
