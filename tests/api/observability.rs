//! Running baton in production, as a platform engineer would: the metrics a scrape shows,
//! the span a caller's trace gets, streams on aged connections, SIGTERM with health
//! watches open and a drain delay, and the admin listener's /healthz and /readyz. Each test
//! runs the real binary (metrics are process-wide, so counts are exact only in a process
//! of their own).

use crate::helpers::*;
use baton::process::{ServeProcess, Signal, logged_addr};
use baton::proto;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_baton"))
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// `baton serve` with its admin listener; the process and the admin address.
fn spawn_with_admin(url: &str, extra: &[&str], env: &[(&str, &str)]) -> (ServeProcess, SocketAddr) {
    let mut args = vec!["--admin-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let baton = ServeProcess::spawn_with_env(bin(), loopback(), url, &args, env).expect("baton serves");
    let line = baton
        .wait_for_log(Duration::from_secs(10), |l| logged_addr(l, "admin serving").is_some())
        .expect("admin serving line");
    let admin = logged_addr(&line, "admin serving").unwrap();
    (baton, admin)
}

async fn connect(url: &str) -> Channel {
    Channel::from_shared(url.to_string()).unwrap().connect().await.unwrap()
}

/// `GET path` on the admin listener: the status code and the body (HTTP/1.0, no client
/// library needed).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body.to_string())
}

/// The samples of `name` in a Prometheus text page: labels → value.
fn samples(page: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let labels = labels
                .split(',')
                .filter(|kv| !kv.is_empty())
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// The value of `name` whose labels include every pair of `want` (0 when absent).
fn value(page: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    samples(page, name)
        .into_iter()
        .filter(|(labels, _)| want.iter().all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, v)| v)
        .sum()
}

/// A known mix of calls, then one scrape: every (method, code) count is exact, the latency
/// histogram counted the same calls, and the gauges see the open stream.
async fn metrics_count_calls_by_method_and_code(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (baton, admin) = spawn_with_admin(&db.url, &[], &[]);
    let mut c = proto::coordinator_client::CoordinatorClient::new(connect(&baton.url()).await);
    define_examples_with(&mut c, NS).await;
    let machines = example_machines().len() as f64;
    create(&mut c, "task", "a").await;
    create(&mut c, "task", "b").await;
    let dup = c
        .create_entity(proto::CreateEntityRequest {
            namespace: NS.into(),
            kind: "task".into(),
            id: "a".into(),
            ..Default::default()
        })
        .await;
    expect_err(dup, Code::AlreadyExists, "ENTITY_EXISTS");
    let missing = c
        .get_entity(proto::GetEntityRequest {
            namespace: NS.into(),
            id: "nope".into(),
        })
        .await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
    get_entity(&mut c, "a").await;
    transition(&mut c, "a", "start").await;
    let refused = c.transition(tr("b", "succeed")).await;
    assert_eq!(refused.unwrap_err().code(), Code::FailedPrecondition);
    for i in 0..3 {
        append(&mut c, "a", vec![ev("progress", &i.to_string())]).await.unwrap();
    }
    acquire(&mut c, "k", "h", 30).await;
    let bad = c
        .get_lease(proto::GetLeaseRequest {
            namespace: "NOT A NAMESPACE".into(),
            key: "k".into(),
        })
        .await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
    // One stream that ends OK (the tape of a finished task), one left open.
    transition(&mut c, "b", "start").await;
    transition(&mut c, "b", "succeed").await;
    let (_, end) = collect_stream(&mut c, "b", 0).await;
    end.unwrap();
    let mut open = open_stream(&mut c, "a", 0).await;
    open.message().await.unwrap().unwrap();

    let (code, page) = http_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    let count =
        |method: &str, code: &str| value(&page, "baton_rpc_requests_total", &[("method", method), ("code", code)]);
    let expected = [
        ("DefineMachine", "OK", machines),
        ("CreateEntity", "OK", 2.0),
        ("CreateEntity", "ALREADY_EXISTS", 1.0),
        ("GetEntity", "NOT_FOUND", 1.0),
        ("GetEntity", "OK", 1.0),
        ("Transition", "OK", 3.0),
        ("Transition", "FAILED_PRECONDITION", 1.0),
        ("AppendEvents", "OK", 3.0),
        ("AcquireLease", "OK", 1.0),
        ("GetLease", "INVALID_ARGUMENT", 1.0),
        ("StreamEvents", "OK", 1.0),
    ];
    for (method, code, n) in expected {
        assert_eq!(count(method, code), n, "{method} {code}\n{page}");
        let timed = value(
            &page,
            "baton_rpc_duration_seconds_count",
            &[("method", method), ("code", code)],
        );
        assert_eq!(timed, n, "latency of {method} {code}");
    }
    let total: f64 = samples(&page, "baton_rpc_requests_total").iter().map(|(_, v)| v).sum();
    let sum: f64 = expected.iter().map(|(_, _, n)| n).sum();
    assert_eq!(total, sum, "no other RPC was counted:\n{page}");
    assert_eq!(value(&page, "baton_streams_open", &[]), 1.0);
    assert_eq!(value(&page, "baton_stream_entities", &[]), 1.0);
    assert_eq!(value(&page, "baton_lease_waiters", &[]), 0.0);
    assert_eq!(
        value(&page, "baton_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );
    assert!(!samples(&page, "baton_db_connections").is_empty(), "{page}");
    // Every write batch is in the batch-size histogram.
    let batches = value(&page, "baton_write_batches_total", &[]);
    assert!(batches >= 1.0);
    assert_eq!(value(&page, "baton_write_batch_size_count", &[]), batches);
    if backend == Backend::Postgres {
        assert!(value(&page, "baton_notifications_sent_total", &[]) >= 1.0, "{page}");
    }
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
}

/// The spans a receiver got, forwarded to the test.
struct Receiver(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let _ = self.0.send(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A tiny OTLP/gRPC receiver on loopback gets the call's span, parented on the trace the
/// test sent in `traceparent`, with the store phases as children in the same trace.
async fn otlp_span_is_parented_on_traceparent(backend: Backend) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let receiver = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let db = TestDb::new(backend).await;
    let endpoint = format!("http://{receiver}");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
    ];
    let baton = ServeProcess::spawn_with_env(bin(), loopback(), &db.url, &[], &env).expect("baton serves");
    let mut c = proto::coordinator_client::CoordinatorClient::new(connect(&baton.url()).await);
    define_examples_with(&mut c, NS).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let mut request = Request::new(proto::CreateEntityRequest {
        namespace: NS.into(),
        kind: "task".into(),
        id: "traced".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("traceparent", format!("00-{trace_id}-{parent_id}-01").parse().unwrap());
    c.create_entity(request).await.unwrap();

    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let rpc_name = "baton.v1.Coordinator/CreateEntity";
    // The call's span and its store phases, in one export or several.
    let mut ours = vec![];
    while !(ours.iter().any(|s: &Span| s.name == rpc_name) && ours.iter().any(|s| s.name == "store.commit")) {
        let got = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("the call's spans within 30 s")
            .expect("receiver alive");
        let spans = got
            .resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans)
            .filter(|s| hex(&s.trace_id) == trace_id);
        ours.extend(spans);
    }
    let rpc = ours.iter().find(|s| s.name == rpc_name).unwrap();
    assert_eq!(hex(&rpc.parent_span_id), parent_id, "the caller's span is the parent");
    let attribute = |key: &str| {
        rpc.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    assert_eq!(attribute("namespace"), Some(Value::StringValue(NS.into())));
    assert_eq!(attribute("rpc.grpc.status_code"), Some(Value::IntValue(0)));
    for phase in ["store.queue", "store.read", "store.decide", "store.commit"] {
        assert!(ours.iter().any(|s| s.name == phase), "{phase} in the trace");
    }
}

/// A stream on a connection older than max age + grace ends UNAVAILABLE/SHUTTING_DOWN (cause CONNECTION_AGED) with
/// its last seq, within the grace; resumed on another replica (Postgres) or a new
/// connection (SQLite) from that seq, it misses nothing.
async fn aged_connection_ends_streams_with_last_seq(backend: Backend) {
    let db = TestDb::new(backend).await;
    let aged = ["--max-connection-age", "2s", "--max-connection-age-grace", "1s"];
    let a = ServeProcess::spawn(bin(), &db.url, &aged).expect("baton serves");
    let b = match backend {
        Backend::Postgres => Some(ServeProcess::spawn(bin(), &db.url, &[]).expect("second replica")),
        Backend::Sqlite => None,
    };
    let resume_url = b.as_ref().map_or_else(|| a.url(), ServeProcess::url);
    let mut setup = proto::coordinator_client::CoordinatorClient::new(connect(&a.url()).await);
    define_examples_with(&mut setup, NS).await;
    create(&mut setup, "task", "aged").await;
    transition(&mut setup, "aged", "start").await;
    append(&mut setup, "aged", vec![ev("progress", "1")]).await.unwrap();
    drop(setup);

    let opened = Instant::now();
    let mut c = proto::coordinator_client::CoordinatorClient::new(connect(&a.url()).await);
    let (events, end) = collect_stream(&mut c, "aged", 0).await;
    let took = opened.elapsed();
    let status = end.expect_err("the stream ends with an error");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::Unavailable, "SHUTTING_DOWN")
    );
    assert_eq!(meta(&status, "cause").as_deref(), Some("CONNECTION_AGED"));
    let last = events.last().unwrap().seq;
    assert_eq!(meta(&status, "last_seq"), Some(last.to_string()));
    assert!(took >= Duration::from_secs(3), "not before age + grace: {took:?}");
    assert!(took < Duration::from_secs(6), "within the grace: {took:?}");

    let mut r = proto::coordinator_client::CoordinatorClient::new(connect(&resume_url).await);
    let resumed = tokio::spawn({
        let mut r = r.clone();
        async move { collect_stream(&mut r, "aged", last).await }
    });
    append(&mut r, "aged", vec![ev("progress", "2")]).await.unwrap();
    transition(&mut r, "aged", "succeed").await;
    let (rest, end) = resumed.await.unwrap();
    end.unwrap();
    let mut all = events;
    all.extend(rest);
    assert_complete(&all, 0);
}

/// SIGTERM with a health Watch and event streams open: the watch says NOT_SERVING at once,
/// the listener keeps accepting (and serving) for the drain delay while health and /readyz
/// say not serving, then the streams end UNAVAILABLE with their last seq, the watch ends,
/// and the process exits 0 long before the drain bound.
async fn sigterm_with_watch_and_streams_exits_within_delay(backend: Backend) {
    let db = TestDb::new(backend).await;
    let delay = Duration::from_secs(2);
    let (mut baton, admin) = spawn_with_admin(&db.url, &["--drain", "20s", "--drain-delay", "2s"], &[]);
    let channel = connect(&baton.url()).await;
    let mut c = proto::coordinator_client::CoordinatorClient::new(channel.clone());
    define_examples_with(&mut c, NS).await;
    let mut streams = vec![];
    for id in ["s1", "s2"] {
        create(&mut c, "task", id).await;
        transition(&mut c, id, "start").await;
        let mut s = open_stream(&mut c, id, 0).await;
        let first = s.message().await.unwrap().unwrap();
        let Some(proto::stream_events_response::Item::Event(e)) = first.item else {
            panic!("an event first")
        };
        streams.push((s, e.seq));
    }
    let mut health = HealthClient::new(channel);
    let mut watch = health
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let signalled = Instant::now();
    baton.signal(Signal::Term).unwrap();
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // Within the delay: a new connection is accepted and served, and says NOT_SERVING.
    let fresh = connect(&baton.url()).await;
    let check = HealthClient::new(fresh.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(check.status, ServingStatus::NotServing as i32);
    get_entity(&mut proto::coordinator_client::CoordinatorClient::new(fresh), "s1").await;
    assert_eq!(http_get(admin, "/readyz").await.0, 503);
    assert_eq!(http_get(admin, "/healthz").await.0, 200);
    assert!(
        signalled.elapsed() < delay,
        "checked within the delay: {:?}",
        signalled.elapsed()
    );

    for (mut s, mut last) in streams {
        let end = loop {
            match s.message().await {
                Ok(Some(m)) => {
                    if let Some(proto::stream_events_response::Item::Event(e)) = m.item {
                        last = e.seq;
                    }
                }
                other => break other,
            }
        };
        let status = end.expect_err("the stream ends with an error");
        assert_eq!(
            (status.code(), reason(&status).as_str()),
            (Code::Unavailable, "SHUTTING_DOWN")
        );
        assert_eq!(meta(&status, "last_seq"), Some(last.to_string()));
    }
    assert!(signalled.elapsed() >= delay, "streams end after the delay");
    loop {
        match watch.message().await {
            Ok(Some(m)) => assert_eq!(m.status, ServingStatus::NotServing as i32),
            Ok(None) => break,
            Err(e) => panic!("the watch ends OK, not {e:?}"),
        }
    }
    let exit = baton.wait_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(exit.code(), Some(0));
    let took = signalled.elapsed();
    assert!(
        took < delay + Duration::from_secs(4),
        "exit well inside the 20 s drain: {took:?}"
    );
}

crate::both_backends!(
    metrics_count_calls_by_method_and_code,
    otlp_span_is_parented_on_traceparent,
    aged_connection_ends_streams_with_last_seq,
    sigterm_with_watch_and_streams_exits_within_delay
);
