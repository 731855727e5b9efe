//! `baton-bench` as users run it: a very short run of every scenario against a spawned
//! server on each backend, and the Postgres baseline. Asserts the checks and the shape of
//! the JSON, never speed.

use baton::Backend;
use baton::process::{TempDatabase, sibling_binary};
use serde_json::Value;
use std::process::{Command, Output};

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
    }
}

/// Bad flags are one clear line and a non-zero exit, never a panic.
#[tokio::test]
async fn bad_flags_are_refused_clearly() {
    for bad in [
        vec!["--clients", "0"],
        vec!["--duration", "0s"],
        vec!["--scenario", "nope"],
        vec!["--spawn", "sqlite", "--target", "http://127.0.0.1:1"],
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
