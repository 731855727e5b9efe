//! The fault-injection suite: real `baton serve` processes on both backends, concurrent
//! clients recording every call, one fault per run, then the record is checked:
//! linearizability of each lease key with the entity it guards (a WGL checker against an
//! independent model), tokens granted once and in order, every acknowledged write read back
//! after recovery, tapes gapless with one `final` last, every stream subscriber saw every
//! seq once and `final`, retried request ids applied at most once — plus the time the
//! system took to serve again on every replica after the fault healed.
//!
//! `cargo test --test fault` runs the bounded form (each fault once per backend, a few
//! seconds each). `BATON_FAULT_LONG=1 cargo test --release --test fault -- --nocapture`
//! runs the long form (longer runs, more clients, three seeds each). Every run prints one
//! summary line; a failing run names its seed: `BATON_FAULT_SEED=<seed> cargo test --test
//! fault <name> -- --nocapture` replays its choices (the timing of a fault is the
//! machine's, so a replay is likely, not certain, to fail the same way).

mod checks;
mod cluster;
mod lincheck;
mod model;
mod proxy;
mod workload;

use baton::Backend;
use baton::process::Signal;
use baton::proto::{self, coordinator_client::CoordinatorClient};
use cluster::Cluster;
use model::{Input, Output, Tr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use workload::{KIND, Load, NS, World, now_us};

/// One fault per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// kill -9 of replica 0, restarted on the same address once healed.
    Kill9,
    /// SIGSTOP of replica 0 for longer than a lease TTL, then SIGCONT.
    StopPastTtl,
    /// Postgres killed and restarted at once (crash recovery from its WAL).
    PgRestart,
    /// Replica 0 cut off from Postgres, then reconnected.
    Partition,
    /// 30 ms added each way between replica 0 and Postgres.
    Delay,
    /// A third of all calls cancelled by a deadline of a few milliseconds, mid-call.
    ClientCancel,
    /// SIGTERM of replica 0 while streams are open on it; restarted once drained.
    SigtermMidStream,
}

/// How long and how big a run is.
struct Scale {
    load: Load,
    warmup: Duration,
    hold: Duration,
    after: Duration,
    seeds: u64,
}

fn scale() -> Scale {
    let long = std::env::var_os("BATON_FAULT_LONG").is_some();
    let load = Load {
        partitions: if long { 6 } else { 4 },
        clients_per_partition: if long { 4 } else { 3 },
        subscribers_per_partition: 2,
        ttl: Duration::from_secs(1),
        stall_chance: 0.05,
    };
    if long {
        Scale {
            load,
            warmup: Duration::from_secs(5),
            hold: Duration::from_secs(5),
            after: Duration::from_secs(10),
            seeds: 3,
        }
    } else {
        Scale {
            load,
            warmup: Duration::from_millis(1500),
            hold: Duration::from_millis(2500),
            after: Duration::from_millis(2000),
            seeds: 1,
        }
    }
}

/// What one run found.
struct Report {
    backend: Backend,
    fault: Fault,
    seed: u64,
    ops: usize,
    unknown: usize,
    retried_attempts: u64,
    subscribers: usize,
    resumes: u32,
    recovery: Option<Duration>,
    check_time: Duration,
    violations: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fault run: backend={} fault={:?} seed={} ops={} unknown={} retried_attempts={} subscribers={} resumes={} recovery={} checked_in={:?} violations={}",
            self.backend,
            self.fault,
            self.seed,
            self.ops,
            self.unknown,
            self.retried_attempts,
            self.subscribers,
            self.resumes,
            self.recovery.map_or("-".into(), |r| format!("{}ms", r.as_millis())),
            self.check_time,
            self.violations.len()
        )
    }
}

async fn connect(url: &str) -> CoordinatorClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    CoordinatorClient::new(channel)
}

/// The machine and one entity per partition, started (the Start is recorded, so the model
/// begins from the entity's creation).
async fn setup(world: &World, url: &str, partitions: usize) {
    let mut c = connect(url).await;
    c.define_machine(proto::DefineMachineRequest {
        namespace: NS.into(),
        spec: Some(workload::machine()),
    })
    .await
    .unwrap();
    let mut rng = fastrand::Rng::with_seed(0);
    for p in 0..partitions {
        c.create_entity(proto::CreateEntityRequest {
            namespace: NS.into(),
            kind: KIND.into(),
            id: format!("e{p}"),
            ..Default::default()
        })
        .await
        .unwrap();
        let start = Input::Transition {
            name: Tr::Start,
            expect_version: None,
            fence: None,
        };
        let out = world.call(&mut rng, p, usize::MAX - p, start).await;
        assert!(matches!(out, Some(Output::Applied { .. })), "start e{p}: {out:?}");
    }
}

/// Replica or network faults: inject, then heal.
async fn inject(cluster: &mut Cluster, fault: Fault, cancel: &watch::Sender<bool>) {
    match fault {
        Fault::Kill9 => tokio::task::block_in_place(|| cluster.kill(0)),
        Fault::StopPastTtl => cluster.signal(0, Signal::Stop),
        Fault::PgRestart => {
            let pg = cluster.pg.as_ref().expect("a Postgres run");
            tokio::task::block_in_place(|| pg.restart_immediately()).expect("restart Postgres");
        }
        Fault::Partition => cluster.proxy(0).set(proxy::Mode::Partition),
        Fault::Delay => cluster.proxy(0).set(proxy::Mode::Delay(Duration::from_millis(30))),
        Fault::ClientCancel => {
            cancel.send_replace(true);
        }
        Fault::SigtermMidStream => tokio::task::block_in_place(|| cluster.terminate(0)),
    }
}

async fn heal(cluster: &mut Cluster, fault: Fault, cancel: &watch::Sender<bool>) {
    match fault {
        Fault::Kill9 | Fault::SigtermMidStream => cluster.restart(0).await,
        Fault::StopPastTtl => cluster.signal(0, Signal::Cont),
        Fault::PgRestart => {}
        Fault::Partition | Fault::Delay => cluster.proxy(0).set(proxy::Mode::Pass),
        Fault::ClientCancel => {
            cancel.send_replace(false);
        }
    }
}

/// One run: load, fault, heal, load, close every tape, check.
async fn run(backend: Backend, fault: Fault, seed: u64) -> Report {
    let scale = scale();
    let load = scale.load;
    let mut cluster = Cluster::start(backend).await;
    let endpoints = cluster.endpoints();
    let (stop_tx, stop) = watch::channel(false);
    let (cancel_tx, cancel) = watch::channel(false);
    let world = Arc::new(World::new(&endpoints, stop, cancel));
    setup(&world, &endpoints[0], load.partitions).await;

    let (until_tx, until) = watch::channel(false);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut subscribers = tokio::task::JoinSet::new();
    let mut clients = tokio::task::JoinSet::new();
    for p in 0..load.partitions {
        for s in 0..load.subscribers_per_partition {
            // Half follow from the start; half join at a random moment, from a random cursor.
            let joins_at = if s % 2 == 0 {
                Duration::ZERO
            } else {
                scale.warmup.mul_f64(rng.f64() * 2.0)
            };
            let (world, until, sub_seed) = (world.clone(), until.clone(), rng.u64(..));
            subscribers.spawn(async move {
                tokio::time::sleep(joins_at).await;
                let mut rng = fastrand::Rng::with_seed(sub_seed);
                // (A replica may be down right now: then follow from the start.)
                let head = world.head(p).await.unwrap_or(0);
                let after = if head == 0 { 0 } else { rng.u64(0..=head) };
                workload::subscribe(&world, p, after, s, until).await
            });
        }
        for c in 0..load.clients_per_partition {
            let client = p * load.clients_per_partition + c;
            let (world, client_seed) = (world.clone(), rng.u64(..));
            clients.spawn(async move { workload::client(&world, client_seed, p, client, load).await });
        }
    }

    tokio::time::sleep(scale.warmup).await;
    inject(&mut cluster, fault, &cancel_tx).await;
    tokio::time::sleep(scale.hold).await;
    heal(&mut cluster, fault, &cancel_tx).await;
    let healed = now_us();
    tokio::time::sleep(scale.after).await;
    stop_tx.send_replace(true);
    world.give_up_after(Duration::from_secs(20));
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }

    // Close every tape: its subscribers must then get `final` promptly — a lost wake-up
    // shows up here, since the heartbeat sweep is far off (60 s).
    let mut violations = vec![];
    let mut closer = fastrand::Rng::with_seed(seed ^ 1);
    for p in 0..load.partitions {
        let finish = Input::Transition {
            name: Tr::Finish,
            expect_version: None,
            fence: None,
        };
        world.call(&mut closer, p, usize::MAX - p, finish).await;
        world.call(&mut closer, p, usize::MAX - p, Input::Read).await;
    }
    let closed = Instant::now();
    let mut subs = vec![];
    while let Ok(next) = tokio::time::timeout_at(closed + Duration::from_secs(10), subscribers.join_next()).await {
        match next {
            Some(sub) => subs.push(sub.unwrap()),
            None => break,
        }
    }
    if !subscribers.is_empty() {
        violations.push(format!(
            "{} subscriber(s) did not get final within 10 s of the tape's close",
            subscribers.len()
        ));
        until_tx.send_replace(true);
        while let Some(sub) = subscribers.join_next().await {
            subs.push(sub.unwrap());
        }
    }
    let mut tapes = vec![];
    for p in 0..load.partitions {
        let read = workload::subscribe(&world, p, 0, 0, watch::channel(false).1).await;
        if !read.complete {
            violations.push(format!("tape {p} could not be read back to its final"));
        }
        tapes.push(read.events);
    }

    let history = world.take_history();
    let checking = Instant::now();
    violations.extend(world.anomalies());
    violations.extend(checks::tokens(&history, load.partitions));
    violations.extend(checks::tapes(&history, &tapes));
    violations.extend(checks::subscriptions(&subs, &tapes));
    violations.extend(checks::linearizable(&history, load.partitions, Duration::from_secs(60)));
    let check_time = checking.elapsed();

    // Recovery: after the heal, how long until every replica served a call again.
    let served = world.served();
    let mut recovery = Some(Duration::ZERO);
    for r in 0..endpoints.len() {
        match served
            .iter()
            .filter(|(q, t)| *q == r && *t >= healed)
            .map(|(_, t)| *t)
            .min()
        {
            Some(t) => recovery = recovery.map(|m| m.max(Duration::from_micros(t - healed))),
            None => {
                violations.push(format!("replica {r} served nothing after the fault healed"));
                recovery = None;
            }
        }
    }
    Report {
        backend,
        fault,
        seed,
        ops: history.len(),
        unknown: history.iter().filter(|r| r.op.output.is_none()).count(),
        retried_attempts: world.unknown_attempts(),
        subscribers: subs.len(),
        resumes: subs.iter().map(|s| s.resumed).sum(),
        recovery,
        check_time,
        violations,
    }
}

/// Runs are serialized: two at once would fight over two cores and blur each other's faults.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The seeds of a (backend, fault) run: `BATON_FAULT_SEED`, or fixed ones per run.
fn seeds(backend: Backend, fault: Fault) -> Vec<u64> {
    if let Some(seed) = std::env::var("BATON_FAULT_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let base = baton::domain::names::stable_hash(format!("{backend}/{fault:?}").into_bytes());
    (0..scale().seeds).map(|i| base.wrapping_add(i)).collect()
}

async fn fault_run(name: &str, backend: Backend, fault: Fault) {
    let _serial = SERIAL.lock().await;
    for seed in seeds(backend, fault) {
        let report = run(backend, fault, seed).await;
        eprintln!("{report}");
        // Kept on disk too, so a failure in CI leaves its evidence whatever the output shows.
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault-reports");
        let _ = std::fs::create_dir_all(&dir);
        let text = format!("{report}\n{}\n", report.violations.join("\n"));
        let _ = std::fs::write(dir.join(format!("{name}-{seed}.txt")), text);
        assert!(
            report.violations.is_empty(),
            "{report}\n{}\nreproduce with: BATON_FAULT_SEED={seed} cargo test --test fault {name} -- --nocapture",
            report.violations.join("\n")
        );
    }
}

macro_rules! fault_runs {
    ($($name:ident: $backend:ident, $fault:ident;)+) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            fault_run(stringify!($name), Backend::$backend, Fault::$fault).await
        }
    )+};
}

fault_runs! {
    sqlite_kill9: Sqlite, Kill9;
    sqlite_stop_past_ttl: Sqlite, StopPastTtl;
    sqlite_client_cancel: Sqlite, ClientCancel;
    sqlite_sigterm_mid_stream: Sqlite, SigtermMidStream;
    postgres_kill9: Postgres, Kill9;
    postgres_stop_past_ttl: Postgres, StopPastTtl;
    postgres_restart: Postgres, PgRestart;
    postgres_partition: Postgres, Partition;
    postgres_delay: Postgres, Delay;
    postgres_client_cancel: Postgres, ClientCancel;
    postgres_sigterm_mid_stream: Postgres, SigtermMidStream;
}

/// The canary: the suite must be able to fail. An in-process server built to skip the
/// fence check (a deliberately broken build) serves a holder that stalls past its TTL while
/// another takes the lease, then writes with its stale fence; the same checker must report
/// the history as not linearizable. The same script against a sound server is linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_a_broken_fence_check_is_caught() {
    let _serial = SERIAL.lock().await;
    let broken = scripted_stale_write(baton::faults::Faults {
        skip_fence_check: true,
        ..Default::default()
    })
    .await;
    assert!(
        !broken.is_empty() && broken.iter().any(|v| v.contains("not linearizable")),
        "the checker must catch the broken build: {broken:?}"
    );
    let sound = scripted_stale_write(baton::faults::Faults::default()).await;
    assert!(sound.is_empty(), "the sound build passes: {sound:?}");
}

/// Holder 0 takes the lease, stalls past its TTL, holder 1 takes over, holder 0 appends
/// with its old token; then a read. Returns the violations the checks find.
async fn scripted_stale_write(faults: baton::faults::Faults) -> Vec<String> {
    use baton::app::{Application, Settings, Wiring};
    let db = baton::process::TempDatabase::new(Backend::Sqlite).await.unwrap();
    let settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: db.url().to_string(),
        ..Settings::default()
    };
    let wiring = Wiring {
        faults,
        ..Wiring::default()
    };
    let app = Application::build_with(settings, wiring).await.unwrap();
    let url = format!("http://{}", app.local_addr());
    let (stop_tx, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let (_stop, stop) = watch::channel(false);
    let (_cancel, cancel) = watch::channel(false);
    let world = World::new(std::slice::from_ref(&url), stop, cancel);
    setup(&world, &url, 1).await;
    let mut rng = fastrand::Rng::with_seed(1);
    let ttl_us = 1_000_000;
    let Some(Output::Acquired { token, .. }) = world.call(&mut rng, 0, 0, Input::Acquire { holder: 0, ttl_us }).await
    else {
        panic!("holder 0 acquires a free lease")
    };
    // Holder 0 freezes past its TTL (the fault being simulated is exactly this pause).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let takeover = world.call(&mut rng, 0, 1, Input::Acquire { holder: 1, ttl_us }).await;
    assert!(matches!(takeover, Some(Output::Acquired { .. })), "{takeover:?}");
    let stale = Input::Append {
        n: 1,
        fence: Some(token),
    };
    world.call(&mut rng, 0, 0, stale).await;
    world.call(&mut rng, 0, 1, Input::Read).await;
    let history = world.take_history();
    let mut violations = world.anomalies();
    violations.extend(checks::tokens(&history, 1));
    violations.extend(checks::linearizable(&history, 1, Duration::from_secs(10)));
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    violations
}
