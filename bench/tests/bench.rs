//! `baton-bench` as users run it: a very short run of every scenario against a spawned
//! server on each backend, and the Postgres baseline; the server-counted figures from a
//! metrics endpoint. Asserts the checks and the shape of the JSON, never speed.

use baton::Backend;
use baton::process::{ServeProcess, TempDatabase, sibling_binary};
use serde_json::Value;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A short run: every scenario must still do real work.
const SHORT: &[&str] = &[
    "--duration",
    "300ms",
    "--warmup",
    "100ms",
    "--clients",
    "2",
    "--keys",
    "200",
    "--subscribers",
    "20",
    "--idle-streams",
    "50",
    "--json",
];

async fn bench(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_baton-bench"))
            .env("BATON_BIN", sibling_binary().expect("the baton binary is built"))
            .args(args)
            .output()
            .expect("run baton bench")
    })
    .await
    .unwrap()
}

fn args(extra: &[&str]) -> Vec<String> {
    SHORT.iter().chain(extra).map(|s| s.to_string()).collect()
}

/// The JSON document of a run that passed its checks.
fn passed(out: &Output) -> Value {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed: {stderr}\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("one JSON document on stdout");
    assert_eq!(doc["checks_ok"], true, "{doc:#}");
    doc
}

fn cells<'a>(doc: &'a Value, system: &str) -> Vec<&'a Value> {
    doc["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .filter(|c| c["system"] == system)
        .collect()
}

const SCENARIOS: [&str; 6] = [
    "lease-cycle",
    "transition",
    "transition-hot",
    "fenced-transition",
    "append",
    "stream-fanout",
];

/// The server-counted figures of a spawned server: from its admin endpoint when it has one
/// (every baton cell then has them), or none at all (and a note saying why) when it has not.
fn server_figures_are_real_or_absent(doc: &Value) {
    let baton = cells(doc, "baton");
    for cell in &baton {
        assert!(
            cell["calls"].as_u64().unwrap() >= cell["ops"].as_u64().unwrap(),
            "{cell:#}"
        );
    }
    if doc["server_metrics"]["url"].is_string() {
        for cell in &baton {
            assert!(cell["round_trips_per_call"].as_f64().unwrap() > 0.0, "{cell:#}");
            assert!(cell["mean_batch_size"].as_f64().unwrap() >= 1.0, "{cell:#}");
            // Every write went through the four phases, each timed by the server.
            let phases = cell["phase_means_us"].as_object().unwrap();
            let names: Vec<&str> = phases.keys().map(String::as_str).collect();
            assert_eq!(names, ["commit", "decide", "queue", "read"], "{cell:#}");
            // The spawned server's CPU is read from /proc around the cell.
            assert!(cell["server_cpu_per_call_us"].as_f64().unwrap() >= 0.0, "{cell:#}");
        }
    } else {
        let why = doc["server_metrics"]["error"].as_str().expect("why no metrics");
        assert!(
            doc["notes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n.as_str().unwrap().contains(why)),
            "{doc:#}"
        );
        for cell in &baton {
            assert!(cell["server"].is_null(), "{cell:#}");
            assert!(cell["round_trips_per_call"].is_null(), "{cell:#}");
            assert!(cell["mean_batch_size"].is_null(), "{cell:#}");
        }
    }
}

/// Every scenario ran on the spawned server, did work, and passed its checks: leases all
/// released with tokens matching grants, versions and seqs matching successes, gapless
/// tapes (hot entity, every fenced entity touched), every subscriber got every event and one
/// `final`; the idle-stream figure is there.
async fn bench_runs_every_scenario_with_checks(backend: Backend) {
    let db = TempDatabase::new(backend).await.unwrap();
    let spawn = backend.to_string();
    let out = bench(args(&["--spawn", &spawn, "--database-url", db.url()])).await;
    let doc = passed(&out);
    let baton = cells(&doc, "baton");
    assert_eq!(baton.len(), SCENARIOS.len(), "{doc:#}");
    for scenario in SCENARIOS {
        let cell = baton
            .iter()
            .find(|c| c["scenario"] == scenario)
            .unwrap_or_else(|| panic!("no {scenario} cell: {doc:#}"));
        assert_eq!(cell["checks"], "ok", "{cell:#}");
        assert!(cell["successes"].as_u64().unwrap() > 0, "{cell:#}");
        assert_eq!(cell["errors"], serde_json::json!({}), "{cell:#}");
    }
    server_figures_are_real_or_absent(&doc);
    let fan = &baton.iter().find(|c| c["scenario"] == "stream-fanout").unwrap()["fanout"];
    assert_eq!(fan["complete_subscribers"], 20, "{fan:#}");
    assert!(fan["deliveries"].as_u64().unwrap() > 0, "{fan:#}");
    let idle = &doc["idle_streams"];
    assert_eq!(idle["streams"], 50, "{idle:#}");
    assert!(idle["rss_after_kib"].as_u64().unwrap() > 0, "{idle:#}");
}

mod bench_runs_every_scenario_with_checks {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::bench_runs_every_scenario_with_checks(super::Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::bench_runs_every_scenario_with_checks(super::Backend::Postgres).await
    }
}

/// The Postgres baseline runs interleaved with baton in the same cells, passes the same
/// checks, and yields a baton/baseline ratio; stream-fanout has no Postgres row to measure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_baseline_runs_beside_baton() {
    let baseline = TempDatabase::new(Backend::Postgres).await.unwrap();
    let out = bench(args(&[
        "--spawn",
        "sqlite",
        "--baseline",
        "postgres",
        "--baseline-pg-url",
        baseline.url(),
        "--scenario",
        &SCENARIOS.join(","),
    ]))
    .await;
    let doc = passed(&out);
    let pg = cells(&doc, "postgres");
    assert_eq!(pg.len(), SCENARIOS.len(), "{doc:#}");
    for cell in pg {
        if cell["scenario"] == "stream-fanout" {
            assert!(cell["skipped"].is_string(), "{cell:#}");
            continue;
        }
        assert_eq!(cell["checks"], "ok", "{cell:#}");
        assert!(cell["successes"].as_u64().unwrap() > 0, "{cell:#}");
        assert_eq!(cell["errors"], serde_json::json!({}), "{cell:#}");
        assert!(cell["baton_over_this"].as_f64().unwrap() > 0.0, "{cell:#}");
        // Server-counted figures are baton's own; a baseline row never shows one.
        assert!(cell["round_trips_per_call"].is_null(), "{cell:#}");
        assert!(cell["mean_batch_size"].is_null(), "{cell:#}");
    }
}

/// A stand-in for a server's admin endpoint: answers the k-th request (from 1) with
/// `respond(k)`; the URL and the count of requests.
async fn fake_metrics(respond: fn(u64) -> String) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let scrapes = Arc::new(AtomicU64::new(0));
    let counter = scrapes.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut request = vec![];
            let mut buf = [0; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let k = counter.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = conn.write_all(respond(k).as_bytes()).await;
        }
    });
    (url, scrapes)
}

/// The k-th scrape reads round trips 1000·k, batches 10·k and commands 40·k, so any two
/// scrapes in a row differ by 1000 / 10 / 40.
fn counting(k: u64) -> String {
    let body = format!(
        "# TYPE baton_db_round_trips_total counter\nbaton_db_round_trips_total {}\n\
         baton_write_batches_total{{backend=\"x\"}} {}\nbaton_write_commands_total {}\n",
        1000 * k,
        10 * k,
        40 * k
    );
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

async fn spawn_sqlite_server() -> (ServeProcess, TempDatabase) {
    let db = TempDatabase::new(Backend::Sqlite).await.unwrap();
    let url = db.url().to_string();
    let server = tokio::task::spawn_blocking(move || ServeProcess::spawn(&sibling_binary().unwrap(), &url, &[]))
        .await
        .unwrap()
        .unwrap();
    (server, db)
}

/// With `--target` and `--metrics-url`, each baton cell is scraped right before and right
/// after its load: round trips per call are the counter's delta over the calls the bench
/// sent (warm-up included), batch size the commands' delta over the batches'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_counted_figures_come_from_the_metrics_endpoint() {
    let (server, _db) = spawn_sqlite_server().await;
    let (metrics, scrapes) = fake_metrics(counting).await;
    let baseline = TempDatabase::new(Backend::Postgres).await.unwrap();
    let out = bench(args(&[
        "--target",
        &server.url(),
        "--metrics-url",
        &metrics,
        "--scenario",
        "lease-cycle,fenced-transition,append",
        "--baseline",
        "postgres",
        "--baseline-pg-url",
        baseline.url(),
    ]))
    .await;
    let doc = passed(&out);
    assert_eq!(doc["server_metrics"]["url"], metrics.as_str(), "{doc:#}");
    let baton = cells(&doc, "baton");
    assert_eq!(baton.len(), 3, "{doc:#}");
    for cell in &baton {
        assert_eq!(cell["checks"], "ok", "{cell:#}");
        assert_eq!(
            cell["server"],
            serde_json::json!({ "round_trips": 1000.0, "batches": 10.0, "commands": 40.0, "cpu_seconds": null }),
            "{cell:#}"
        );
        let calls = cell["calls"].as_u64().unwrap();
        assert!(calls >= cell["ops"].as_u64().unwrap(), "{cell:#}");
        // serde_json's default float parsing may be one ulp off the printed value.
        let per_call = cell["round_trips_per_call"].as_f64().unwrap();
        assert!((per_call - 1000.0 / calls as f64).abs() < 1e-9, "{cell:#}");
        assert_eq!(cell["mean_batch_size"].as_f64().unwrap(), 4.0, "{cell:#}");
    }
    for cell in cells(&doc, "postgres") {
        assert!(
            cell["server"].is_null() && cell["round_trips_per_call"].is_null(),
            "{cell:#}"
        );
    }
    // One scrape to check the endpoint, then one before and one after each baton cell.
    assert_eq!(scrapes.load(Ordering::SeqCst), 1 + 2 * 3);
    drop(server);
}

/// A `--metrics-url` without metrics (a 404) leaves the figures empty, says why, and
/// measures everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_url_without_metrics_is_a_note_not_a_number() {
    let (server, _db) = spawn_sqlite_server().await;
    let (metrics, scrapes) = fake_metrics(|_| "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into()).await;
    let out = bench(args(&[
        "--target",
        &server.url(),
        "--metrics-url",
        &metrics,
        "--scenario",
        "append",
    ]))
    .await;
    let doc = passed(&out);
    let why = doc["server_metrics"]["error"].as_str().unwrap();
    assert!(why.contains("404"), "{doc:#}");
    server_figures_are_real_or_absent(&doc);
    // Only the first scrape was tried.
    assert_eq!(scrapes.load(Ordering::SeqCst), 1);
    drop(server);
}

/// Bad flags are one clear line and a non-zero exit, never a panic.
#[tokio::test]
async fn bad_flags_are_refused_clearly() {
    for bad in [
        vec!["--clients", "0"],
        vec!["--duration", "0s"],
        vec!["--scenario", "nope"],
        vec!["--spawn", "sqlite", "--target", "http://127.0.0.1:1"],
        vec!["--spawn", "sqlite", "--metrics-url", "http://127.0.0.1:1/metrics"],
        vec!["--metrics-url", "https://127.0.0.1:1/metrics"],
    ] {
        let out = bench(bad.iter().map(|s| s.to_string()).collect()).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(
            stderr.contains("error:") && !stderr.contains("panicked"),
            "{bad:?}: {stderr}"
        );
    }
}

/// Without the etcd feature, asking for the etcd baseline says how to get it.
#[cfg(not(feature = "etcd"))]
#[tokio::test]
async fn etcd_baseline_needs_the_feature() {
    let out = bench(vec![
        "--baseline".into(),
        "etcd".into(),
        "--target".into(),
        "http://127.0.0.1:1".into(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--features etcd") && stderr.contains("protobuf-compiler"),
        "{stderr}"
    );
}
